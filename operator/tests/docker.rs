//! The Docker driver against the real engine: where the router reaches a container, and that
//! a stopped container's route can never reach the container that took its address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bollard::Docker;
use slipway_operator::Deployment;
use slipway_operator::docker::{self, AppContainer};
use slipway_operator::router::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An image that serves `$APP` on `$PORT`, and the containers made from it, removed on drop.
struct Fixture {
    image: String,
    instance: String,
}

impl Fixture {
    /// A fixture of its own for each `test` (tests may share a process).
    fn new(test: &str) -> Self {
        let tag = format!("{:x}-{test}", std::process::id());
        let image = format!("slipway-test/netns:{tag}");
        let dockerfile = "FROM slipway-test/busybox:latest\n\
            CMD mkdir -p /www && echo \"$APP\" > /www/index.html && exec httpd -f -p \"$PORT\" -h /www\n";
        let build = with_input(
            Command::new("docker").args(["build", "-q", "-t", &image, "-"]),
            dockerfile.as_bytes(),
        );
        assert!(build.status.success(), "docker build");
        Self {
            image,
            instance: format!("test-{tag}"),
        }
    }

    fn deployment(&self, release: &str, app: &str) -> Deployment {
        Deployment {
            webspace: "netns".to_owned(),
            branch: "main".to_owned(),
            label: "main".to_owned(),
            release: release.to_owned(),
            image: self.image.clone(),
            port: 8080,
            replicas: 1,
            env: BTreeMap::from([
                ("PORT".to_owned(), "8080".to_owned()),
                ("APP".to_owned(), app.to_owned()),
            ]),
            hosts: vec!["netns.localhost".to_owned()],
            max_body: None,
            config_keys: Vec::new(),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!(
                "label={}={}",
                docker::LABEL_INSTANCE,
                self.instance
            ))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .status();
        }
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .stdout(Stdio::null())
            .status();
    }
}

/// Runs `command` with `input` as its standard input; its output, standard error dropped.
fn with_input(command: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input).expect("input");
    child.wait_with_output().expect("wait")
}

/// The container's address on its network, at the app's port.
fn bridge_address(container: &AppContainer) -> SocketAddr {
    let output = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &container.id,
        ])
        .output()
        .expect("docker inspect");
    let ip = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    SocketAddr::new(ip.parse().expect("an address"), 8080)
}

/// The body of `GET /` at `target`, or why there is none.
async fn get(target: &Target) -> Result<String, String> {
    let mut stream = target.connect().await.map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: netns.localhost\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(response))
}

async fn start(docker: &Docker, fixture: &Fixture, release: &str, app: &str) -> AppContainer {
    let container = docker::ensure(docker, &fixture.instance, &fixture.deployment(release, app))
        .await
        .expect("start the container");
    docker::wait_ready(docker, &container, "/", Duration::from_secs(30))
        .await
        .expect("the app answers");
    container
}

/// Whether this process has CAP_SYS_ADMIN and sees the engine's namespace files (it runs on
/// the engine's host): what reaching a container inside its namespace needs.
fn may_enter_namespaces() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    effective & (1 << CAP_SYS_ADMIN) != 0 && std::path::Path::new("/var/run/docker/netns").is_dir()
}

/// Tries this many times to see the engine hand a stopped container's address to the next
/// container: other tests start containers too, and one of theirs may take it first.
const ATTEMPTS: usize = 10;

#[tokio::test]
async fn a_stopped_containers_route_never_reaches_the_container_that_took_its_address() {
    let docker = Docker::connect_with_local_defaults().expect("the engine");
    let fixture = Fixture::new("reuse");
    for attempt in 0..ATTEMPTS {
        let first = start(&docker, &fixture, &format!("first-{attempt}"), "first").await;
        let route = first.target.clone().expect("a route");
        assert_eq!(get(&route).await.as_deref(), Ok("first\n"));
        if !may_enter_namespaces() {
            // Without the right to enter namespaces: the published port, never the bridge.
            assert!(route.namespace.is_none());
            assert!(route.address.ip().is_loopback(), "{route}");
            return;
        }
        assert!(
            route.namespace.is_some(),
            "with CAP_SYS_ADMIN on the engine's host, containers are reached inside their namespace: {route}"
        );
        docker
            .stop_container(
                &first.id,
                Some(bollard::query_parameters::StopContainerOptions {
                    t: Some(1),
                    ..Default::default()
                }),
            )
            .await
            .expect("stop");
        let second = start(&docker, &fixture, &format!("second-{attempt}"), "second").await;
        let taken = second.target.clone().expect("a route");
        if taken.address != route.address {
            // Another test's container took the address: once more.
            docker::remove(&docker, &first.id).await;
            docker::remove(&docker, &second.id).await;
            continue;
        }
        // From this host's network the old address now answers with the other app ...
        assert_eq!(
            get(&Target::from(route.address)).await.as_deref(),
            Ok("second\n")
        );
        // ... but the first container's route fails (the router answers 502).
        let answer = get(&route).await;
        assert!(answer.is_err(), "{answer:?}");
        assert_eq!(get(&taken).await.as_deref(), Ok("second\n"));
        // A route is equal to another only when it reaches the same namespace: a kept backend
        // connection of the first is never reused for the second.
        assert_ne!(route, taken);
        let again = docker::ensure(
            &docker,
            &fixture.instance,
            &fixture.deployment(&format!("second-{attempt}"), "second"),
        )
        .await
        .expect("the running container")
        .target
        .expect("a route");
        assert_eq!(again, taken, "found again: the same namespace");
        let (Some(again), Some(taken)) = (&again.namespace, &taken.namespace) else {
            panic!("both in the namespace");
        };
        assert!(
            std::sync::Arc::ptr_eq(again, taken),
            "one handle per namespace, however often the routes are rebuilt"
        );
        return;
    }
    panic!(
        "in {ATTEMPTS} attempts the engine never gave a stopped container's address to the next one"
    );
}

#[tokio::test]
async fn one_customers_app_cannot_reach_anothers_behind_the_router() {
    let docker = Docker::connect_with_local_defaults().expect("the engine");
    let fixture = Fixture::new("isolation");
    let theirs = start(&docker, &fixture, "theirs", "private").await;
    let mine = start(&docker, &fixture, "mine", "mine").await;
    let address = bridge_address(&theirs);
    // This host reaches it (as the router does) ...
    assert_eq!(
        get(&theirs.target.clone().expect("a route"))
            .await
            .as_deref(),
        Ok("private\n")
    );
    // ... another app does not, though it is on the same network (its own address answers
    // it, so the probe itself works).
    let from_mine = |to: SocketAddr| {
        let output = with_input(
            Command::new("docker")
                .args(["exec", "-i", &mine.id, "nc", "-w", "2"])
                .args([to.ip().to_string(), to.port().to_string()]),
            b"GET / HTTP/1.0\r\n\r\n",
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let own = bridge_address(&mine);
    assert!(from_mine(own).ends_with("mine\n"), "{:?}", from_mine(own));
    // Nor can it forge packets to its neighbours: no raw sockets.
    let caps = Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.CapDrop}}", &mine.id])
        .output()
        .expect("docker inspect");
    assert!(
        String::from_utf8_lossy(&caps.stdout).contains("NET_RAW"),
        "{}",
        String::from_utf8_lossy(&caps.stdout)
    );
    let reached = from_mine(address);
    assert!(
        !reached.contains("private"),
        "reached another app: {reached:?}"
    );
}
