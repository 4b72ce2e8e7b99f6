//! The real one-node cluster (`scripts/cluster up`), as its admin sees it through `kubectl`:
//! shared by the tests that drive it (tests/kubernetes.rs, tests/install.rs).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{assert_ok, stderr};

/// Where `scripts/cluster up` writes the admin kubeconfig.
pub const DEFAULT_KUBECONFIG: &str = "/var/lib/slipway-cluster/admin.kubeconfig";

/// The cluster, as its admin sees it.
pub struct Cluster {
    pub admin: PathBuf,
}

impl Cluster {
    pub fn new() -> Self {
        let admin = std::env::var_os("SLIPWAY_TEST_KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBECONFIG));
        assert!(
            admin.exists(),
            "no cluster: {} does not exist; start one with `scripts/cluster up` (scripts/test does)",
            admin.display()
        );
        let cluster = Self { admin };
        let nodes = cluster.kubectl(&["get", "nodes", "-o", "name"]);
        assert!(
            nodes.status.success(),
            "the cluster does not answer ({}); `scripts/cluster status` says which part is down",
            stderr(&nodes).trim()
        );
        cluster
    }

    pub fn kubectl_with(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.admin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(input) = input {
            use std::io::Write;
            stdin.write_all(input.as_bytes()).expect("kubectl stdin");
        }
        drop(stdin);
        child.wait_with_output().expect("kubectl")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(args, None)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert_ok(&output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) {
        assert_ok(&self.kubectl_with(&["apply", "-f", "-"], Some(yaml)));
    }

    /// `kubectl get ... -o jsonpath=...`, empty when it fails (not found).
    pub fn jsonpath(&self, what: &[&str], path: &str) -> String {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        let path = format!("jsonpath={path}");
        args.extend_from_slice(&["-o", &path]);
        let output = self.kubectl(&args);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// Polls `condition` every 250 ms for `limit`; on timeout panics with `what` and the logs.
pub fn eventually(
    what: &str,
    limit: Duration,
    logs: &dyn Fn() -> String,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !condition() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}\n--- logs ---\n{}",
                logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// GET http://ADDRESS (`HOST:PORT[/PATH]`, 10 s at most): the body, or None.
pub fn get(address: &str) -> Option<String> {
    let output = Command::new("curl")
        .args(["-fsS", "--max-time", "10"])
        .arg(format!("http://{address}"))
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
