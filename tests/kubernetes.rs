//! The Kubernetes journey on a real cluster: the one-node cluster `scripts/cluster up` builds
//! from Debian's packages (`scripts/test` starts it). The operator and `git-server --store
//! kube` run as processes on this host, each with a kubeconfig that impersonates its own
//! ServiceAccount, so deploy/rbac.yaml is what authorizes them: a missing verb fails a step.
//!
//! One test, in steps, because the steps share the cluster-wide operator and its Lease. Each
//! step says what it checks; a failure names the step and shows the operator's log.
//!
//! Settings (environment): `SLIPWAY_TEST_KUBECONFIG`, the admin kubeconfig (default: the one
//! `scripts/cluster up` writes). There is no skip: without a cluster the test fails and says
//! how to start one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, eventually, get};
use common::{Client, Scratch, Server, assert_ok, commit, keygen, stderr, work_tree};

const REGISTRY: &str = "127.0.0.1:5000";
const BASE_IMAGE: &str = "127.0.0.1:5000/slipway-test/busybox:latest";
const DOMAIN: &str = "apps.test";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

impl Cluster {
    /// Merges `spec` (JSON) into Webspace `name`'s spec, as `kubectl patch` does.
    fn patch_spec(&self, name: &str, spec: &str) {
        let patch = format!(r#"{{"spec":{spec}}}"#);
        self.ok(&["patch", "webspace", name, "--type=merge", "-p", &patch]);
    }

    /// `FIELD` of Webspace `name`'s condition `KIND` (empty when it has none).
    fn condition(&self, name: &str, kind: &str, field: &str) -> String {
        self.jsonpath(
            &["webspace", name],
            &format!("{{.status.conditions[?(@.type==\"{kind}\")].{field}}}"),
        )
    }

    /// A kubeconfig impersonating `system:serviceaccount:slipway-system:ACCOUNT`.
    fn kubeconfig_as(&self, account: &str, into: &Path) -> PathBuf {
        let output = Command::new(format!("{ROOT}/scripts/cluster"))
            .args(["kubeconfig", "slipway-system", account])
            .output()
            .expect("scripts/cluster kubeconfig");
        assert_ok(&output);
        let path = into.join(format!("{account}.kubeconfig"));
        std::fs::write(&path, &output.stdout).expect("kubeconfig");
        path
    }
}

/// A `slipway operator` replica, killed on drop.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(kubeconfig: &Path, holder: &str, scratch: &Scratch) -> Self {
        let log = scratch.path(&format!("operator-{holder}.log"));
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(common::SLIPWAY)
            .args(["operator", "--domain", DOMAIN, "--holder", holder])
            .args(["--lease-namespace", "slipway-system"])
            // The progress deadline is the last resort for a pod that never gets ready; a short
            // one keeps the test short.
            .args(["--progress-deadline", "30"])
            .env("KUBECONFIG", kubeconfig)
            .env("SLIPWAY_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("slipway operator");
        Self { child, log }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes what the journey created, also when a step fails.
struct Cleanup<'a> {
    cluster: &'a Cluster,
    names: Mutex<Vec<String>>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for name in self.names.lock().map(|n| n.clone()).unwrap_or_default() {
            for kind in ["webspace", "customer"] {
                let _ = self.cluster.kubectl(&[
                    "delete",
                    "--ignore-not-found",
                    "--wait=false",
                    kind,
                    &name,
                ]);
            }
        }
    }
}

fn resources(name: &str, key_line: &str) -> String {
    format!(
        "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata:\n  name: {name}\nspec:\n  email: {name}@example.com\n  sshKeys:\n    - \"{key_line}\"\n---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: {name}\nspec:\n  customer: {name}\n  port: 8080\n"
    )
}

/// An app that serves `body` with busybox httpd on $PORT.
fn app_files(body: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Dockerfile",
            format!(
                "FROM {BASE_IMAGE}\nCOPY index.html /www/index.html\nCMD [\"sh\", \"-c\", \"echo serving $(cat /www/index.html); exec httpd -f -p $PORT -h /www\"]\n"
            ),
        ),
        ("index.html", format!("{body}\n")),
    ]
}

fn as_refs<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(n, c)| (*n, c.as_str())).collect()
}

/// The ClusterIP address of the Service serving `branch` of `webspace` (by its labels).
fn service_address(cluster: &Cluster, webspace: &str, branch: &str) -> Option<String> {
    let ip = cluster.jsonpath(
        &[
            "services",
            "-A",
            "-l",
            &format!("slipway.dev/webspace={webspace},slipway.dev/branch={branch}"),
        ],
        "{.items[0].spec.clusterIP}",
    );
    (!ip.trim().is_empty()).then(|| format!("{}:80", ip.trim()))
}

#[test]
fn the_kubernetes_journey_on_a_real_cluster() {
    let cluster = Cluster::new();
    let scratch = Scratch::new();
    let started = Instant::now();
    let step = |name: &str| eprintln!("[{:>6.1}s] step: {name}", started.elapsed().as_secs_f64());

    step("install the CRDs and RBAC from deploy/");
    cluster.ok(&["apply", "-f", &format!("{ROOT}/deploy/crds/")]);
    cluster.ok(&["apply", "-f", &format!("{ROOT}/deploy/namespace.yaml")]);
    cluster.ok(&[
        "apply",
        "-n",
        "slipway-system",
        "-f",
        &format!("{ROOT}/deploy/rbac.yaml"),
    ]);
    cluster.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/customers.slipway.dev",
        "crd/webspaces.slipway.dev",
        "crd/runtimes.slipway.dev",
        "crd/releases.slipway.dev",
    ]);
    // A clean Lease: a replica of an earlier run must not hold it.
    let _ = cluster.kubectl(&[
        "delete",
        "lease",
        "-n",
        "slipway-system",
        "slipway-operator",
        "--ignore-not-found",
    ]);

    step("start two operator replicas and the git server, each as its ServiceAccount");
    let operator_config = cluster.kubeconfig_as("slipway-operator", scratch.dir.path());
    let git_config = cluster.kubeconfig_as("slipway-git-server", scratch.dir.path());
    let first = Operator::start(&operator_config, "first", &scratch);
    let lease_holder = || {
        cluster.jsonpath(
            &["lease", "-n", "slipway-system", "slipway-operator"],
            "{.spec.holderIdentity}",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_holder() != "first" {
        assert!(
            Instant::now() < deadline,
            "the first replica never took the Lease"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = Operator::start(&operator_config, "second", &scratch);
    let git_config_text = git_config.display().to_string();
    let server = Server::start_with(
        &scratch.data(),
        &["--store", "kube", "--registry", REGISTRY],
        &[("KUBECONFIG", git_config_text.as_str())],
    );
    let log_files = [first.log.clone(), second.log.clone(), server.log.clone()];
    let logs = || {
        log_files
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                format!("--- {} ---\n{}", path.display(), tail(&text))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        lease_holder(),
        "first",
        "the second replica waits: {}",
        logs()
    );

    let run = std::process::id();
    let name = format!("k8s-{run}");
    let cleanup = Cleanup {
        cluster: &cluster,
        names: Mutex::new(vec![name.clone()]),
    };
    let key = keygen(&scratch, "owner");
    let client = Client::new(&key);

    step("kubectl apply a Customer and a Webspace");
    cluster.apply(&resources(&name, &key.public_line));
    eventually(
        "the webspace to be reconciled (status written)",
        Duration::from_secs(30),
        &logs,
        || {
            !cluster
                .jsonpath(&["webspace", &name], "{.status.phase}")
                .is_empty()
        },
    );
    assert_eq!(
        cluster.jsonpath(&["webspace", &name], "{.status.phase}"),
        "Pending",
        "nothing pushed yet"
    );

    step(
        "bad input: kubectl cannot store what slipway apply refuses; a missing customer is reported",
    );
    let refused = cluster.kubectl_with(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: {name}-bad\nspec:\n  customer: {name}\n  replicas: 101\n"
        )),
    );
    assert!(!refused.status.success(), "replicas 101 stored");
    assert!(
        stderr(&refused).contains("replicas"),
        "{}",
        stderr(&refused)
    );
    let orphan = format!("{name}-orphan");
    cleanup.names.lock().expect("names").push(orphan.clone());
    cluster.apply(&format!(
        "apiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: {orphan}\nspec:\n  customer: nobody-{run}\n"
    ));
    eventually(
        "the missing customer in the Ready condition",
        Duration::from_secs(30),
        &logs,
        || {
            cluster
                .condition(&orphan, "Ready", "message")
                .contains(&format!("customer `nobody-{run}` does not exist"))
        },
    );
    assert!(
        cluster
            .ok(&["describe", "webspace", &orphan])
            .contains("CustomerMissing"),
        "an Event says so"
    );

    step("git push main: image in the registry, Release Live, Ready, served by its Service");
    let app = scratch.path("app");
    work_tree(&client, &app, &as_refs(&app_files("version one")));
    let url = server.url(&format!("{name}.git"));
    let pushed = client.git(&app, &["push", &url, "main"]);
    assert_ok(&pushed);
    let said = stderr(&pushed);
    assert!(said.contains("deployed `main`"), "{said}\n{}", logs());
    assert!(
        said.contains(&format!("http://{name}.{DOMAIN}")),
        "the push prints the URL: {said}"
    );
    let tags = Command::new("curl")
        .args(["-fsS", &format!("http://{REGISTRY}/v2/{name}/tags/list")])
        .output()
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&tags.stdout).contains("\"tags\""),
        "the image is in the registry: {}",
        String::from_utf8_lossy(&tags.stdout)
    );
    let first_release = cluster.jsonpath(&["webspace", &name], "{.status.branches[0].release}");
    assert_eq!(
        cluster.jsonpath(&["release", &first_release], "{.status.phase}"),
        "Live"
    );
    cluster.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("webspace/{name}"),
        "--timeout=120s",
    ]);
    let namespace = format!("slipway-{name}");
    let deployment = cluster.jsonpath(
        &[
            "deployments",
            "-n",
            &namespace,
            "-l",
            "slipway.dev/branch=main",
        ],
        "{.items[0].metadata.name}",
    );
    cluster.ok(&[
        "rollout",
        "status",
        "-n",
        &namespace,
        &format!("deployment/{deployment}"),
        "--timeout=60s",
    ]);
    let main_address = service_address(&cluster, &name, "main").expect("main's Service");
    eventually(
        "main served through its Service",
        Duration::from_secs(30),
        &logs,
        || get(&main_address).as_deref() == Some("version one"),
    );
    // The pods run with the same hardening as on one host.
    let pod_spec = cluster.ok(&[
        "get",
        "pods",
        "-n",
        &namespace,
        "-l",
        "slipway.dev/branch=main",
        "-o",
        "jsonpath={.items[0].spec}",
    ]);
    assert!(
        pod_spec.contains("NET_RAW") && pod_spec.contains("RuntimeDefault"),
        "{pod_spec}"
    );

    step("the owner reads the app's output over SSH, as on one host");
    let read = client.ssh(&server, &[], Some(&format!("logs {name} -n 20")));
    assert!(
        read.status.success()
            && String::from_utf8_lossy(&read.stdout).contains("serving version one"),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&read.stdout),
        stderr(&read),
        logs()
    );
    let releases = client.ssh(&server, &[], Some(&format!("releases {name}")));
    assert!(
        String::from_utf8_lossy(&releases.stdout).contains("v1"),
        "{}",
        stderr(&releases)
    );

    step("a second push rolls out with zero failed requests to the Service");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let hammer = {
        let (stop, failures, requests, seen) = (
            stop.clone(),
            failures.clone(),
            requests.clone(),
            seen.clone(),
        );
        let address = main_address.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                requests.fetch_add(1, Ordering::Relaxed);
                match get(&address) {
                    Some(body) => {
                        let mut seen = seen.lock().expect("seen");
                        if seen.last() != Some(&body) {
                            seen.push(body);
                        }
                    }
                    None => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let files = app_files("version two");
    commit(&client, &app, &as_refs(&files), "two");
    let pushed = client.git(&app, &["push", &url, "main"]);
    assert_ok(&pushed);
    eventually("version two served", Duration::from_secs(60), &logs, || {
        get(&main_address).as_deref() == Some("version two")
    });
    // Past the old pod's stop (its pre-stop pause and the endpoint update).
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    hammer.join().expect("hammer");
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during the rollout, of {} (bodies in order: {seen:?})",
        requests.load(Ordering::Relaxed)
    );
    // While both pods are ready, and until kube-proxy drops the old one (it syncs at most once a
    // second), the Service answers from either: the versions may alternate, but only those two,
    // and it ends on the new one.
    assert_eq!(seen.first().map(String::as_str), Some("version one"));
    assert_eq!(
        seen.last().map(String::as_str),
        Some("version two"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|b| b == "version one" || b == "version two"),
        "{seen:?}"
    );

    step("rollback over SSH: a verified new release of an earlier image, then back again");
    let back = client.ssh(&server, &[], Some(&format!("rollback {name}")));
    assert!(
        back.status.success() && stderr(&back).contains("rollback to v1"),
        "{}\n{}",
        stderr(&back),
        logs()
    );
    eventually(
        "version one served again",
        Duration::from_secs(30),
        &logs,
        || get(&main_address).as_deref() == Some("version one"),
    );
    let forth = client.ssh(&server, &[], Some(&format!("rollback {name} main v2")));
    assert!(forth.status.success(), "{}\n{}", stderr(&forth), logs());
    eventually(
        "version two served again",
        Duration::from_secs(30),
        &logs,
        || get(&main_address).as_deref() == Some("version two"),
    );

    step(
        "config over SSH: a Secret in the customer's namespace that the pods read, nothing in clear",
    );
    let set = client.ssh(
        &server,
        &[],
        Some(&format!(
            "config:set {name} GREETING=hello API_TOKEN=s3cr3t-k8s"
        )),
    );
    assert!(
        set.status.success() && stderr(&set).contains("config: set GREETING, API_TOKEN"),
        "{}\n{}",
        stderr(&set),
        logs()
    );
    let shown = client.ssh(&server, &[], Some(&format!("config {name}")));
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("API_TOKEN=********"),
        "{}",
        stderr(&shown)
    );
    let live = cluster.jsonpath(&["webspace", &name], "{.status.branches[0].release}");
    let pod = cluster.jsonpath(
        &[
            "pods",
            "-n",
            &namespace,
            "-l",
            &format!("slipway.dev/release={live}"),
        ],
        "{.items[0].metadata.name}",
    );
    let env = cluster.ok(&["exec", "-n", &namespace, &pod, "-c", "app", "--", "env"]);
    assert!(
        env.contains("API_TOKEN=s3cr3t-k8s") && env.contains("GREETING=hello"),
        "{env}"
    );
    for what in [
        vec!["releases", "-o", "yaml"],
        vec!["webspaces", "-o", "yaml"],
        vec!["deployments", "-n", &namespace, "-o", "yaml"],
    ] {
        let mut args = vec!["get"];
        args.extend(what.iter().copied());
        assert!(!cluster.ok(&args).contains("s3cr3t"), "{what:?}");
    }
    assert_eq!(get(&main_address).as_deref(), Some("version two"));

    step("a later Customer lists the owner's key: its status names the holder, the owner pushes");
    let thief = format!("k8s-thief-{run}");
    cleanup.names.lock().expect("names").push(thief.clone());
    let thief_key = keygen(&scratch, "thief");
    let thief_customer = |keys: &[&str]| {
        let keys: Vec<String> = keys.iter().map(|k| format!("\n    - \"{k}\"")).collect();
        format!(
            "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata:\n  name: {thief}\nspec:\n  email: {thief}@example.com\n  sshKeys:{}\n",
            keys.concat()
        )
    };
    // kubectl stores what `slipway apply` refuses.
    cluster.apply(&thief_customer(&[&thief_key.public_line, &key.public_line]));
    let keys_condition = |customer: &str, field: &str| {
        cluster.jsonpath(
            &["customer", customer],
            &format!("{{.status.conditions[?(@.type==\"KeysAvailable\")].{field}}}"),
        )
    };
    eventually(
        "the conflict in the later Customer's KeysAvailable condition",
        Duration::from_secs(30),
        &logs,
        || keys_condition(&thief, "reason") == "KeyHeldByAnotherCustomer",
    );
    assert_eq!(keys_condition(&thief, "status"), "False");
    let listed = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.private.with_extension("pub"))
        .output()
        .expect("ssh-keygen -l");
    let fingerprint = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_owned();
    let message = keys_condition(&thief, "message");
    assert!(
        message.contains(&format!(
            "ssh key #2 ({fingerprint}) is held by the earlier customer `{name}`"
        )),
        "{message}"
    );
    assert_eq!(keys_condition(&name, "status"), "True");
    assert!(
        cluster
            .ok(&["get", "customer", &thief])
            .contains("KeyHeldByAnotherCustomer"),
        "`kubectl get customers` shows it"
    );
    // The key still identifies its owner: a push (nothing new) is admitted to the owner's repo.
    let pushed = client.git(&app, &["push", &url, "main"]);
    assert_ok(&pushed);
    cluster.apply(&thief_customer(&[&thief_key.public_line]));
    eventually(
        "the condition cleared once the key is gone from the later Customer",
        Duration::from_secs(30),
        &logs,
        || keys_condition(&thief, "status") == "True",
    );
    assert_eq!(keys_condition(&thief, "reason"), "KeysHeld");

    step("a branch gets its own Deployment, Service and Ingress; deleting it removes them");
    let pushed = client.git(&app, &["push", &url, "main:feature-x"]);
    assert_ok(&pushed);
    let said = stderr(&pushed);
    assert!(
        said.contains(&format!("http://feature-x.{name}.{DOMAIN}")),
        "{said}"
    );
    let labelled = format!("slipway.dev/webspace={name},slipway.dev/branch=feature-x");
    let host = cluster.jsonpath(
        &["ingress", "-n", &namespace, "-l", &labelled],
        "{.items[0].spec.rules[0].host}",
    );
    assert_eq!(host, format!("feature-x.{name}.{DOMAIN}"));
    let preview = service_address(&cluster, &name, "feature-x").expect("preview Service");
    eventually("the preview served", Duration::from_secs(30), &logs, || {
        get(&preview).as_deref() == Some("version two")
    });
    assert_ok(&client.git(&app, &["push", &url, ":feature-x"]));
    eventually(
        "the preview's objects removed",
        Duration::from_secs(30),
        &logs,
        || {
            ["deployments", "services", "ingresses"].iter().all(|kind| {
                cluster
                    .jsonpath(
                        &[kind, "-n", &namespace, "-l", &labelled],
                        "{.items[*].metadata.name}",
                    )
                    .trim()
                    .is_empty()
            })
        },
    );

    step(
        "an app that crashes: the push is rejected with the reason, no ref moves, the previous one serves",
    );
    let files = vec![
        (
            "Dockerfile",
            format!(
                "FROM {BASE_IMAGE}\nCMD [\"sh\", \"-c\", \"echo the-app-says-boom; exit 3\"]\n"
            ),
        ),
        ("index.html", "never\n".to_owned()),
    ];
    // A push whose release fails verification: rejected before the ref moves, nothing of it
    // left (no Release, no Deployment); what it printed.
    let push_failing = |files: &[(&'static str, String)], message: &str| {
        let remote_main = || {
            let listed = client.git(&app, &["ls-remote", &url, "refs/heads/main"]);
            String::from_utf8_lossy(&listed.stdout).trim().to_owned()
        };
        let before = remote_main();
        commit(&client, &app, &as_refs(files), message);
        let pushed = client.git(&app, &["push", &url, "main"]);
        let said = stderr(&pushed);
        assert!(!pushed.status.success(), "{said}");
        assert!(
            said.contains("remote: error: `main` did not become healthy")
                && said.contains("the previous release keeps serving")
                && said.contains("pre-receive hook declined"),
            "{said}\n{}",
            logs()
        );
        assert_eq!(remote_main(), before, "the ref did not move");
        let head = client.git(&app, &["rev-parse", "--short=10", "HEAD"]);
        let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
        eventually(
            "the rejected release and its Deployment gone",
            Duration::from_secs(30),
            &logs,
            || {
                !cluster
                    .jsonpath(&["releases"], "{.items[*].metadata.name}")
                    .contains(&head)
                    && !cluster
                        .jsonpath(
                            &["deployments", "-n", &namespace],
                            "{.items[*].metadata.name}",
                        )
                        .contains(&head)
            },
        );
        said
    };
    // The previous release serves, and the webspace is Ready on it again.
    let previous_serves = || {
        assert_eq!(
            get(&main_address).as_deref(),
            Some("version two"),
            "{}\n{}",
            cluster.ok(&[
                "get",
                "pods,services,endpoints",
                "-n",
                &namespace,
                "-o",
                "wide"
            ]),
            logs()
        );
        eventually(
            "the webspace Ready again on the previous release",
            Duration::from_secs(60),
            &logs,
            || cluster.jsonpath(&["webspace", &name], "{.status.phase}") == "Ready",
        );
    };
    let said = push_failing(&files, "crash");
    assert!(
        said.contains("the-app-says-boom"),
        "the app's last log line: {said}"
    );
    assert!(
        said.contains("CrashLoopBackOff"),
        "the pod's reason: {said}"
    );
    let described = cluster.ok(&["describe", "webspace", &name]);
    assert!(
        described.contains("ReleaseFailed"),
        "{described}\n{}",
        logs()
    );
    previous_serves();
    assert_eq!(get(&main_address).as_deref(), Some("version two"));

    step(
        "an app that never gets ready: rejected at the progress deadline, the previous one serves",
    );
    let files = vec![
        (
            "Dockerfile",
            // It serves, but not on $PORT, so its readiness probe never passes.
            format!(
                "FROM {BASE_IMAGE}\nCOPY index.html /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"9999\", \"-h\", \"/www\"]\n"
            ),
        ),
        ("index.html", "never ready\n".to_owned()),
    ];
    let said = push_failing(&files, "never ready");
    assert!(said.contains("progress deadline"), "{said}");
    previous_serves();

    step("more pods than the quota: the Webspace says why, and the serving release stays");
    cluster.patch_spec(&name, r#"{"replicas":20}"#);
    eventually(
        "the quota refusal in the Ready condition",
        Duration::from_secs(60),
        &logs,
        || {
            cluster
                .condition(&name, "Ready", "message")
                .contains("exceeded quota")
        },
    );
    assert_eq!(get(&main_address).as_deref(), Some("version two"));
    cluster.patch_spec(&name, r#"{"replicas":1}"#);
    // An error that no longer holds leaves the status (a merge patch would keep it forever).
    eventually(
        "the webspace Ready with one replica, and the quota error gone",
        Duration::from_secs(60),
        &logs,
        || {
            cluster.jsonpath(&["webspace", &name], "{.status.phase}") == "Ready"
                && cluster
                    .jsonpath(&["webspace", &name], "{.status.lastError}")
                    .is_empty()
        },
    );

    step("the webspace moves to another customer: its objects move, none stay behind");
    let other = format!("k8s-other-{run}");
    cleanup.names.lock().expect("names").push(other.clone());
    cluster.apply(&format!(
        "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata:\n  name: {other}\nspec:\n  email: {other}@example.com\n"
    ));
    cluster.patch_spec(&name, &format!(r#"{{"customer":"{other}"}}"#));
    let moved = format!("slipway-{other}");
    eventually(
        "the objects in the new namespace, none in the old",
        Duration::from_secs(60),
        &logs,
        || {
            let mine = format!("slipway.dev/webspace={name}");
            let names = |ns: &str, kind: &str| {
                cluster.jsonpath(&[kind, "-n", ns, "-l", &mine], "{.items[*].metadata.name}")
            };
            ["deployments", "services", "ingresses"].iter().all(|kind| {
                names(&namespace, kind).trim().is_empty() && !names(&moved, kind).trim().is_empty()
            })
        },
    );
    let main_address = service_address(&cluster, &name, "main").expect("main's Service");
    eventually(
        "served from the new namespace",
        Duration::from_secs(60),
        &logs,
        || get(&main_address).as_deref() == Some("version two"),
    );

    step("the API server restarts: a Customer created afterwards can push");
    let restarted = Command::new(format!("{ROOT}/scripts/cluster"))
        .arg("restart-apiserver")
        .output()
        .expect("scripts/cluster restart-apiserver");
    assert_ok(&restarted);
    let late = format!("k8s-late-{run}");
    cleanup.names.lock().expect("names").push(late.clone());
    let late_key = keygen(&scratch, "late");
    let late_client = Client::new(&late_key);
    cluster.apply(&resources(&late, &late_key.public_line));
    let late_app = scratch.path("late-app");
    work_tree(&late_client, &late_app, &as_refs(&app_files("late")));
    let pushed = late_client.git(
        &late_app,
        &["push", &server.url(&format!("{late}.git")), "main"],
    );
    assert_ok(&pushed);
    assert!(
        stderr(&pushed).contains("deployed `main`"),
        "{}\n{}",
        stderr(&pushed),
        logs()
    );

    step("deleting a Webspace removes its objects; deleting its Customer removes the namespace");
    cluster.ok(&["delete", "webspace", &late, "--wait=true", "--timeout=60s"]);
    let late_namespace = format!("slipway-{late}");
    eventually(
        "the webspace's Deployments garbage-collected",
        Duration::from_secs(60),
        &logs,
        || {
            cluster
                .jsonpath(
                    &["deployments", "-n", &late_namespace],
                    "{.items[*].metadata.name}",
                )
                .trim()
                .is_empty()
        },
    );
    cluster.ok(&["delete", "customer", &late, "--wait=true", "--timeout=60s"]);
    eventually(
        "the customer's namespace removed",
        Duration::from_secs(120),
        &logs,
        || {
            !cluster
                .kubectl(&["get", "namespace", &late_namespace])
                .status
                .success()
        },
    );

    step("the leader stops: the second replica takes the Lease and reconciles");
    drop(first);
    eventually(
        "the second replica to take the Lease",
        Duration::from_secs(60),
        &logs,
        || {
            cluster.jsonpath(
                &["lease", "-n", "slipway-system", "slipway-operator"],
                "{.spec.holderIdentity}",
            ) == "second"
        },
    );
    let after = format!("k8s-after-{run}");
    cleanup.names.lock().expect("names").push(after.clone());
    cluster.apply(&resources(&after, &keygen(&scratch, "after").public_line));
    eventually(
        "the new leader to reconcile",
        Duration::from_secs(30),
        &logs,
        || cluster.jsonpath(&["webspace", &after], "{.status.phase}") == "Pending",
    );
    eprintln!("[{:>6.1}s] journey done", started.elapsed().as_secs_f64());
    drop(server);
    drop(second);
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
