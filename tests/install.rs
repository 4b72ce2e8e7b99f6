//! The in-cluster install on the real one-node cluster (`scripts/cluster up`): the `slipway`
//! image built from Debian here (`scripts/images`), loaded onto the node, `deploy/` applied with
//! `kubectl apply -k` (through tests/install/, which adds only what this cluster lacks: a fixed
//! address for the registry's Service, as there is no cluster DNS, and two hostPath volumes), a
//! `git push` through the `slipway-ssh` Service, the app served through its Service; then what a
//! tenant's pod tries against the registry and the build engine, what a build tries against the
//! cluster, and `kubectl delete -k` leaving nothing behind.
//!
//! It shares the cluster with tests/kubernetes.rs (the same CRDs, the same operator Lease):
//! .config/nextest.toml runs the two one after the other.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::cluster::{Cluster, eventually, get};
use common::{Client, Scratch, assert_ok, commit, keygen, stderr, work_tree};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The registry Service's address (tests/install/kustomization.yaml).
const REGISTRY: &str = "10.96.50.50:5000";
/// The node as pods reach it: the pod bridge's address (scripts/cluster).
const NODE_FROM_PODS: &str = "10.88.0.1";
/// The hostPath volumes of tests/install/volumes.yaml.
const VOLUMES: &str = "/var/lib/slipway-install";
const OVERLAY: &str = "tests/install";
const SYSTEM: &str = "slipway-system";
const NAME: &str = "installed";

/// `kubectl delete -k` of the overlay and the volumes' directories, also when a step fails.
struct Uninstall<'a> {
    cluster: &'a Cluster,
}

impl Drop for Uninstall<'_> {
    fn drop(&mut self) {
        for kind in ["webspace", "customer"] {
            let _ =
                self.cluster
                    .kubectl(&["delete", "--ignore-not-found", "--wait=false", kind, NAME]);
        }
        let _ = self.cluster.kubectl(&[
            "delete",
            "-k",
            &format!("{ROOT}/{OVERLAY}"),
            "--ignore-not-found",
            "--timeout=120s",
        ]);
        let _ = std::fs::remove_dir_all(VOLUMES);
    }
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("spawn");
    assert_ok(&output);
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The HTTP status of `METHOD URL` from this host, with no credentials.
fn status(method: &str, url: &str) -> String {
    status_as(None, method, url)
}

/// The HTTP status of `METHOD URL` from this host, as `USER:PASSWORD` when given.
fn status_as(user: Option<&str>, method: &str, url: &str) -> String {
    let mut curl = Command::new("curl");
    if let Some(user) = user {
        curl.args(["-u", user]);
    }
    let output = curl
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(["-X", method, url])
        .output()
        .expect("curl");
    stdout(&output)
}

/// `USER:PASSWORD` of the Secret the operator put in the tenant's namespace for the kubelet,
/// read as the hook reads registry credentials (`config.json`).
fn puller_credentials(cluster: &Cluster, namespace: &str, scratch: &Scratch) -> String {
    let config = cluster.ok(&[
        "-n",
        namespace,
        "get",
        "secret",
        "slipway-image-pull",
        "-o",
        r#"go-template={{index .data ".dockerconfigjson" | base64decode}}"#,
    ]);
    let dir = scratch.path("pull-config");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("config.json"), config).expect("config.json");
    let found = slipway_hook::credentials::for_registry(&dir, "localhost:30500")
        .expect("credentials for localhost:30500");
    format!(
        "{}:{}",
        found.username.unwrap_or_default(),
        found.password.unwrap_or_default()
    )
}

/// What a hostile tenant's pod tries, one line per attempt (`NAME: RESULT`): plain bash, no
/// tools, so the image the cluster already has serves.
const PROBE: &str = r#"
http() { # NAME HOST PORT METHOD PATH: the status line, or `unreachable`
  if exec 3<>"/dev/tcp/$2/$3" 2>/dev/null; then
    printf '%s %s HTTP/1.0\r\nHost: %s\r\nContent-Length: 0\r\n\r\n' "$4" "$5" "$2" >&3
    read -r line <&3 || line=closed
    echo "$1: ${line%$'\r'}"
    exec 3>&-
  else
    echo "$1: unreachable"
  fi
}
connect() { # NAME HOST PORT
  if timeout 5 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; then echo "$1: connected"; else echo "$1: unreachable"; fi
}
http push-upload REGISTRY_HOST REGISTRY_PORT POST /v2/installed/blobs/uploads/
http push-delete REGISTRY_HOST REGISTRY_PORT DELETE /v2/installed/manifests/DIGEST
http push-catalog REGISTRY_HOST REGISTRY_PORT GET /v2/_catalog
http pull-catalog REGISTRY_POD 5001 GET /v2/_catalog
http pull-manifest REGISTRY_POD 5001 GET /v2/installed/manifests/DIGEST
connect node-pull NODE 30500
connect engine-2375 ENGINE 2375
connect engine-2376 ENGINE 2376
echo done
"#;

fn probe_pod(namespace: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: tenant-probe
  namespace: {namespace}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
  - name: probe
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["bash", "-c", {script:?}]
    resources:
      requests: {{cpu: 10m, memory: 16Mi}}
      limits: {{cpu: 100m, memory: 64Mi}}
"#,
        image = image_tag(),
    )
}

fn image_tag() -> String {
    let output = run(Command::new(format!("{ROOT}/scripts/images")).arg("--tag"));
    stdout(&output).trim().to_owned()
}

/// The TCP ports listened on in a container's network namespace (`/proc/net/tcp*`).
fn listening_ports(cluster: &Cluster, pod: &str, container: &str) -> Vec<u16> {
    let out = cluster.ok(&[
        "-n",
        SYSTEM,
        "exec",
        pod,
        "-c",
        container,
        "--",
        "cat",
        "/proc/net/tcp",
        "/proc/net/tcp6",
    ]);
    let mut ports: Vec<u16> = out
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN.
            (fields.get(3) == Some(&"0A"))
                .then(|| fields.get(1)?.rsplit_once(':'))
                .flatten()
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// busybox-static's httpd `FROM scratch` (the build engine has no base image and pulls none),
/// after `steps` (shell form, busybox's applets installed).
fn app_files(body: &str, steps: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Dockerfile",
            format!(
                "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY index.html /www/index.html\n{steps}CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
            ),
        ),
        ("index.html", format!("{body}\n")),
    ]
}

/// What a build's RUN step tries inside the cluster: the registry's Service, the API server's
/// Service, the node (the API server's own port); each outcome goes into /www/egress.txt, which
/// the app serves.
fn egress_steps() -> String {
    let registry = REGISTRY.replace(':', " ");
    format!(
        "RUN for t in \"registry {registry}\" \"api 10.96.0.1 443\" \"node {NODE_FROM_PODS} 6443\"; do set -- $t; (nc -w 3 $2 $3 </dev/null >/dev/null 2>&1 && echo $1=reached || echo $1=refused) >> /www/egress.txt; done\n"
    )
}

fn as_refs<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(n, c)| (*n, c.as_str())).collect()
}

#[test]
fn the_in_cluster_install_serves_a_push_keeps_tenants_out_and_uninstalls_cleanly() {
    let cluster = Cluster::new();
    let scratch = Scratch::new();
    let kubeconfig = cluster.admin.clone();
    let logs = || {
        let mut text = String::new();
        for (deployment, container) in [
            ("slipway-git-server", "git-server"),
            ("slipway-git-server", "build-engine"),
            ("slipway-operator", "operator"),
            ("slipway-registry", "push"),
        ] {
            let output = cluster.kubectl(&[
                "-n",
                SYSTEM,
                "logs",
                &format!("deploy/{deployment}"),
                "-c",
                container,
                "--tail=30",
            ]);
            text += &format!(
                "--- {deployment}/{container}\n{}{}",
                stdout(&output),
                stderr(&output)
            );
        }
        text += &stdout(&cluster.kubectl(&["get", "pods,events", "-A"]));
        text
    };

    // 1. The image, from Debian (debootstrap + docker import), with this build's binary, loaded
    //    onto the node: nothing is pulled from anywhere.
    let built = run(Command::new(format!("{ROOT}/scripts/images"))
        .env("SLIPWAY_BINARY", common::SLIPWAY)
        .current_dir(ROOT));
    let image = stdout(&built).lines().last().unwrap_or_default().to_owned();
    assert_eq!(
        image,
        image_tag(),
        "scripts/images prints the image it built"
    );
    run(Command::new(format!("{ROOT}/scripts/cluster"))
        .args(["load", &image])
        .current_dir(ROOT));

    // 2. The volumes a provisioner would make, the two Secrets (deploy/create-secrets), and
    //    `kubectl apply -k`.
    let uninstall = Uninstall { cluster: &cluster };
    let _ = std::fs::remove_dir_all(VOLUMES);
    for volume in ["git", "registry"] {
        let dir = Path::new(VOLUMES).join(volume);
        std::fs::create_dir_all(&dir).expect("volume dir");
        std::os::unix::fs::chown(&dir, Some(10001), Some(10001)).expect("chown volume");
    }
    run(Command::new(format!("{ROOT}/deploy/create-secrets"))
        .arg(REGISTRY)
        .env("KUBECONFIG", &kubeconfig));
    cluster.ok(&["apply", "-k", &format!("{ROOT}/{OVERLAY}")]);
    for deployment in ["slipway-registry", "slipway-git-server", "slipway-operator"] {
        let output = cluster.kubectl(&[
            "-n",
            SYSTEM,
            "rollout",
            "status",
            &format!("deploy/{deployment}"),
            "--timeout=240s",
        ]);
        assert!(
            output.status.success(),
            "{deployment} did not roll out: {}\n{}",
            stderr(&output),
            logs()
        );
    }

    // 3. A customer and a webspace, and a push through the slipway-ssh Service.
    let key = keygen(&scratch, "owner");
    cluster.apply(&format!(
        "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata:\n  name: {NAME}\nspec:\n  email: owner@example.com\n  sshKeys:\n    - \"{}\"\n---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: {NAME}\nspec:\n  customer: {NAME}\n  port: 8080\n",
        key.public_line
    ));
    let ssh = cluster.jsonpath(
        &["-n", SYSTEM, "service", "slipway-ssh"],
        "{.spec.clusterIP}",
    );
    let remote = format!("ssh://git@{}/{NAME}.git", ssh.trim());
    let client = Client::new(&key);
    let work = scratch.path("work");
    // The app is busybox-static's httpd `FROM scratch`: the build engine has no base image and
    // pulls none.
    std::fs::create_dir_all(&work).expect("work tree");
    std::fs::copy("/bin/busybox", work.join("busybox")).expect("busybox-static (scripts/services)");
    let files = app_files("served from the cluster", &egress_steps());
    work_tree(&client, &work, &as_refs(&files));
    let mut pushed = None;
    let mut attempts = vec![];
    eventually(
        "the git server to take the new key and the push",
        Duration::from_secs(60),
        &logs,
        || {
            let output = client.git(&work, &["push", &remote, "main"]);
            let said = stderr(&output);
            // Until the git server's key index has the new Customer (a watch event) the login
            // fails; once the hook runs, its verdict stands.
            let done = output.status.success() || said.contains("remote: slipway:");
            if !done {
                attempts.push(said);
            }
            pushed = Some(output);
            done
        },
    );
    if !attempts.is_empty() {
        eprintln!(
            "attempts before the git server took the push:\n{}",
            attempts.join("\n---\n")
        );
    }
    let pushed = pushed.expect("pushed");
    let said = stderr(&pushed);
    assert!(pushed.status.success(), "push failed: {said}\n{}", logs());
    assert!(said.contains("deployed `main`"), "{said}");

    // 4. Served through its Service; its image comes from the read-only NodePort, by digest.
    let namespace = cluster.jsonpath(
        &[
            "services",
            "-A",
            "-l",
            &format!("slipway.dev/webspace={NAME}"),
        ],
        "{.items[0].metadata.namespace}",
    );
    let service = cluster.jsonpath(
        &[
            "-n",
            &namespace,
            "services",
            "-l",
            "slipway.dev/branch=main",
        ],
        "{.items[0].spec.clusterIP}",
    );
    let app = format!("{}:80", service.trim());
    eventually(
        "the app served through its Service",
        Duration::from_secs(60),
        &logs,
        || get(&app).as_deref() == Some("served from the cluster"),
    );
    let pod_image = cluster.jsonpath(
        &[
            "-n",
            &namespace,
            "pods",
            "-l",
            &format!("slipway.dev/webspace={NAME}"),
        ],
        "{.items[0].spec.containers[0].image}",
    );
    assert!(
        pod_image.starts_with(&format!("localhost:30500/{NAME}:"))
            && pod_image.contains("@sha256:"),
        "{pod_image}"
    );
    let digest = pod_image.rsplit_once('@').expect("digest").1.to_owned();
    // What the build's RUN step reached: nothing of the cluster.
    let egress = get(&format!("{app}/egress.txt")).unwrap_or_default();
    assert_eq!(
        egress, "registry=refused\napi=refused\nnode=refused",
        "what the build reached"
    );

    // 5. The registry from outside the git server: the push port wants credentials for anything,
    //    the nodes' pull port serves reads and refuses writes.
    let push = format!("http://{REGISTRY}/v2");
    assert_eq!(status("GET", &format!("{push}/_catalog")), "401");
    assert_eq!(
        status("POST", &format!("{push}/{NAME}/blobs/uploads/")),
        "401"
    );
    assert_eq!(
        status("DELETE", &format!("{push}/{NAME}/manifests/{digest}")),
        "401"
    );
    // The pull port: reads only, and only with the `puller` credentials, which the operator
    // copied into the tenant's namespace for the kubelet (the pod above pulled with them).
    let pull = "http://127.0.0.1:30500/v2";
    let manifest = format!("{pull}/{NAME}/manifests/{digest}");
    assert_eq!(status("GET", &manifest), "401");
    assert_eq!(status("GET", &format!("{pull}/_catalog")), "401");
    let puller = puller_credentials(&cluster, namespace.trim(), &scratch);
    assert!(
        puller.starts_with("puller:"),
        "the tenant's pull Secret: {puller}"
    );
    assert_eq!(status_as(Some(&puller), "GET", &manifest), "200");
    for (method, path) in [
        ("POST", format!("{pull}/{NAME}/blobs/uploads/")),
        ("DELETE", manifest.clone()),
    ] {
        let code = status_as(Some(&puller), method, &path);
        assert!(
            !code.starts_with('2'),
            "{method} {path} on the read-only port: {code}"
        );
    }

    // 6. A tenant's pod: both registry ports refuse it (the pull port also at the registry pod's
    //    own address, which a network plugin without NetworkPolicy lets it reach), the NodePort
    //    and the build engine are not reachable at all.
    let git_pod = cluster.jsonpath(
        &[
            "-n",
            SYSTEM,
            "pods",
            "-l",
            "app.kubernetes.io/name=slipway-git-server",
        ],
        "{.items[0].metadata.name}",
    );
    let git_pod_ip = cluster.jsonpath(&["-n", SYSTEM, "pod", &git_pod], "{.status.podIP}");
    let registry_pod_ip = cluster.jsonpath(
        &[
            "-n",
            SYSTEM,
            "pods",
            "-l",
            "app.kubernetes.io/name=slipway-registry",
        ],
        "{.items[0].status.podIP}",
    );
    let (registry_host, registry_port) = REGISTRY.split_once(':').expect("host:port");
    let script = PROBE
        .replace("REGISTRY_HOST", registry_host)
        .replace("REGISTRY_PORT", registry_port)
        .replace("DIGEST", &digest)
        .replace("NODE", NODE_FROM_PODS)
        .replace("ENGINE", git_pod_ip.trim())
        .replace("REGISTRY_POD", registry_pod_ip.trim());
    cluster.apply(&probe_pod(&namespace, &script));
    eventually(
        "the tenant's probe pod to finish",
        Duration::from_secs(90),
        &logs,
        || {
            let phase = cluster.jsonpath(
                &["-n", &namespace, "pod", "tenant-probe"],
                "{.status.phase}",
            );
            phase == "Succeeded" || phase == "Failed"
        },
    );
    let probed = cluster.ok(&["-n", &namespace, "logs", "tenant-probe"]);
    for (attempt, expected) in [
        ("push-upload", "401 Unauthorized"),
        ("push-delete", "401 Unauthorized"),
        ("push-catalog", "401 Unauthorized"),
        ("pull-catalog", "401 Unauthorized"),
        ("pull-manifest", "401 Unauthorized"),
        ("node-pull", "unreachable"),
        ("engine-2375", "unreachable"),
        ("engine-2376", "unreachable"),
    ] {
        let line = probed
            .lines()
            .find(|l| l.starts_with(&format!("{attempt}:")))
            .unwrap_or_else(|| panic!("no {attempt} line in the probe's output:\n{probed}"));
        assert!(
            line.contains(expected),
            "{line} (wanted {expected})\n{probed}"
        );
    }
    assert!(probed.contains("done"), "{probed}");
    // The engine listens on no TCP port in the pod: only the git server's SSH and probe ports.
    // Frames between two ports of the build bridge are dropped: one build's step cannot answer
    // ARP for another's gateway (tests/single_host.rs tries it with two containers).
    let bridge_rules = cluster.ok(&[
        "-n",
        SYSTEM,
        "exec",
        &git_pod,
        "-c",
        "build-engine",
        "--",
        "ebtables",
        "-L",
        "FORWARD",
    ]);
    assert!(
        bridge_rules.contains("-i veth+ -o veth+ -j DROP"),
        "{bridge_rules}"
    );
    assert_eq!(
        listening_ports(&cluster, &git_pod, "build-engine"),
        vec![2222, 9090]
    );

    // 7. A step that needs the cluster (here: the registry's Service) fails the build with the
    //    egress hint: the push is rejected, the ref does not move, the app serves on.
    let before = common::rev_parse(&work, "HEAD").expect("head");
    let hostile = app_files(
        "never served",
        &format!("RUN nc -w 3 {} </dev/null\n", REGISTRY.replace(':', " ")),
    );
    commit(&client, &work, &as_refs(&hostile), "reach the registry");
    let refused = client.git(&work, &["push", &remote, "main"]);
    let said = stderr(&refused);
    assert!(
        !refused.status.success(),
        "a build reached the registry: {said}"
    );
    assert!(
        said.contains("SLIPWAY_BUILD_ALLOW_RANGES"),
        "no egress hint: {said}"
    );
    let remote_head = stdout(&client.git(&work, &["ls-remote", &remote, "refs/heads/main"]));
    assert!(
        remote_head.starts_with(&before),
        "the ref moved: {remote_head}"
    );
    assert_eq!(get(&app).as_deref(), Some("served from the cluster"));

    // A fork bomb in a build step is stopped at the step's process limit (64 here, from
    // slipway-settings) with the limits hint, and the engine builds on.
    let bomb = app_files(
        "never served",
        "RUN i=0; while [ $i -lt 300 ]; do sleep 30 & i=$((i+1)); done; wait\n",
    );
    commit(&client, &work, &as_refs(&bomb), "fork bomb");
    let bombed = client.git(&work, &["push", &remote, "main"]);
    let said = stderr(&bombed);
    assert!(!bombed.status.success(), "a fork bomb built: {said}");
    assert!(
        said.contains("SLIPWAY_BUILD_STEP_MEMORY"),
        "no limits hint: {said}\n{}",
        logs()
    );
    assert_eq!(get(&app).as_deref(), Some("served from the cluster"));

    // 8. Uninstall as deploy/README.md says: the Customers first, while the operator runs (their
    //    namespaces go with them), then `kubectl delete -k`. Nothing is left: the install's
    //    namespace, CRDs, cluster roles and bindings, volumes, the tenant's namespace.
    cluster.ok(&["delete", "customers", "--all"]);
    cluster.ok(&[
        "wait",
        "--for=delete",
        "namespace",
        "-l",
        "slipway.dev/customer",
        "--timeout=120s",
    ]);
    cluster.ok(&[
        "delete",
        "-k",
        &format!("{ROOT}/{OVERLAY}"),
        "--timeout=180s",
    ]);
    let made = [
        format!("namespace/{SYSTEM}"),
        format!("namespace/{}", namespace.trim()),
        "customresourcedefinition.apiextensions.k8s.io/customers.slipway.dev".to_owned(),
        "customresourcedefinition.apiextensions.k8s.io/webspaces.slipway.dev".to_owned(),
        "clusterrole.rbac.authorization.k8s.io/slipway-operator".to_owned(),
        "clusterrole.rbac.authorization.k8s.io/slipway-git-server".to_owned(),
        "clusterrole.rbac.authorization.k8s.io/slipway-tenant-logs".to_owned(),
        "clusterrolebinding.rbac.authorization.k8s.io/slipway-operator".to_owned(),
        "persistentvolume/slipway-install-git".to_owned(),
        "persistentvolume/slipway-install-registry".to_owned(),
    ];
    let mut left = vec![];
    eventually(
        "everything the install made to be gone",
        Duration::from_secs(180),
        &logs,
        || {
            let listed = cluster.ok(&[
                "get",
                "namespaces,crd,clusterroles,clusterrolebindings,pv",
                "-o",
                "name",
            ]);
            left = made
                .iter()
                .filter(|m| listed.lines().any(|l| l == m.as_str()))
                .cloned()
                .collect();
            left.is_empty()
        },
    );
    drop(uninstall);
    assert!(!Path::new(VOLUMES).exists());
}
