//! The single-host journey on a real cluster: apply a Customer and a Webspace with kubectl,
//! `git push` over SSH, `kubectl wait --for=condition=Ready`, then curl the app through the
//! Ingress. Runs only when `KUBECONFIG` points at a cluster with Slipway installed
//! (`kubectl apply -k deploy/`, see deploy/README.md); otherwise it says it was skipped and why.
//!
//! Settings (environment):
//! - `KUBECONFIG`: the cluster.
//! - `SLIPWAY_E2E_SSH`: `HOST:PORT` of the `slipway-ssh` Service (e.g. a port-forward to
//!   `svc/slipway-ssh 2222:22` gives `127.0.0.1:2222`).
//! - `SLIPWAY_E2E_HTTP`: `HOST:PORT` of the ingress controller (default `127.0.0.1:80`).
//! - `SLIPWAY_E2E_DOMAIN`: the operator's `SLIPWAY_DOMAIN` (default `apps.example.com`).
//! - `SLIPWAY_E2E_BASE_IMAGE`: an image with `httpd` (busybox) the cluster can pull (default
//!   `busybox:stable`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Client, Key, Scratch, assert_ok, keygen, stderr, wait_for, work_tree};

struct Cluster {
    ssh: String,
    http: String,
    domain: String,
    base_image: String,
}

fn cluster() -> Option<Cluster> {
    let Ok(kubeconfig) = std::env::var("KUBECONFIG") else {
        println!(
            "skipped: KUBECONFIG is not set; this test needs a cluster with Slipway installed (see deploy/README.md)"
        );
        return None;
    };
    let Ok(ssh) = std::env::var("SLIPWAY_E2E_SSH") else {
        println!(
            "skipped: KUBECONFIG={kubeconfig} is set but SLIPWAY_E2E_SSH (HOST:PORT of the slipway-ssh Service) is not"
        );
        return None;
    };
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    Some(Cluster {
        ssh,
        http: var("SLIPWAY_E2E_HTTP", "127.0.0.1:80"),
        domain: var("SLIPWAY_E2E_DOMAIN", "apps.example.com"),
        base_image: var("SLIPWAY_E2E_BASE_IMAGE", "busybox:stable"),
    })
}

fn kubectl(args: &[&str], input: Option<&str>) -> std::process::Output {
    let mut command = Command::new("kubectl");
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("kubectl");
    if let Some(input) = input {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
    }
    child.wait_with_output().expect("kubectl output")
}

/// Deletes what the test applied, also when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = kubectl(
            &[
                "delete",
                "--ignore-not-found",
                "--wait=false",
                "webspace",
                &self.0,
            ],
            None,
        );
        let _ = kubectl(
            &[
                "delete",
                "--ignore-not-found",
                "--wait=false",
                "customer",
                &self.0,
            ],
            None,
        );
    }
}

fn resources(name: &str, key: &Key) -> String {
    format!(
        "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata:\n  name: {name}\nspec:\n  email: e2e@example.com\n  sshKeys:\n    - \"{}\"\n---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: {name}\nspec:\n  customer: {name}\n  port: 8080\n",
        key.public_line
    )
}

fn curl(http: &str, host: &str) -> Option<String> {
    let output = Command::new("curl")
        .args(["-fsS", "--max-time", "5", "-H", &format!("Host: {host}")])
        .arg(format!("http://{http}/"))
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn push_wait_ready_and_curl_through_the_ingress() {
    let Some(cluster) = cluster() else { return };
    let scratch = Scratch::new();
    let key = keygen(&scratch, "e2e");
    let name = format!("e2e-{}", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let applied = kubectl(&["apply", "-f", "-"], Some(&resources(&name, &key)));
    assert_ok(&applied);

    let client = Client::new(&key);
    let app = scratch.path("app");
    let dockerfile = format!(
        "FROM {}\nCOPY index.html /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        cluster.base_image
    );
    work_tree(
        &client,
        &app,
        &[
            ("Dockerfile", dockerfile.as_str()),
            ("index.html", "hello from the cluster\n"),
        ],
    );
    let url = format!("ssh://git@{}/{name}.git", cluster.ssh);
    let pushed = client.git(&app, &["push", &url, "main"]);
    assert_ok(&pushed);
    assert!(
        stderr(&pushed).contains("deployed `main`"),
        "{}",
        stderr(&pushed)
    );

    let waited = kubectl(
        &[
            "wait",
            "--for=condition=Ready",
            &format!("webspace/{name}"),
            "--timeout=300s",
        ],
        None,
    );
    assert_ok(&waited);
    let host = format!("{name}.{}", cluster.domain);
    wait_for(
        "the app through the Ingress",
        Duration::from_secs(60),
        || curl(&cluster.http, &host).is_some_and(|body| body.contains("hello from the cluster")),
    );
}
