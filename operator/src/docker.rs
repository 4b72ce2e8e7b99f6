//! The single-host driver: one container per (webspace, branch, release), found again by its
//! labels after a restart, published on 127.0.0.1 only, with an init process as PID 1 (without
//! one most app servers ignore SIGTERM and every stop waits the full 10 s grace).
//!
//! The router and the health checks reach a container from inside its network namespace when
//! this process may enter it (root, with a rootful engine): that skips the engine's userland
//! proxy (`docker-proxy`, a process that copies every byte of a published port), and a stopped
//! container's namespace is never another container's (see [`crate::netns`]). Otherwise (a
//! rootless engine, say) they use the published port.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
};
use futures_util::StreamExt;
use nix::fcntl::{Flock, FlockArg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::desired::Deployment;
use crate::netns::Namespace;
use crate::router::Target;

/// Label holding the webspace name.
pub const LABEL_WEBSPACE: &str = "dev.slipway.webspace";
/// Label holding the branch's DNS label.
pub const LABEL_BRANCH: &str = "dev.slipway.branch";
/// Label holding the release name.
pub const LABEL_RELEASE: &str = "dev.slipway.release";
/// Label naming the Slipway installation (its data directory) that owns the container, so two
/// installations on one engine never adopt or remove each other's containers.
pub const LABEL_INSTANCE: &str = "dev.slipway.instance";

/// The installation id of a data directory: 12 hex digits of a hash of its absolute path
/// (FNV-1a: stable across builds and platforms, unlike `DefaultHasher`).
pub fn instance(data: &std::path::Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", hash & 0xffff_ffff_ffff)
}

/// The engine network every app container joins: a bridge on which containers cannot reach
/// each other (`enable_icc=false`), so one customer's app cannot connect to another's behind
/// the router (Docker's default bridge lets them). One network for every installation on the
/// engine: networks come from a small address pool (about 30 by default).
pub const NETWORK: &str = "slipway-apps";
/// The network option that isolates its containers from each other.
const NO_ICC: (&str, &str) = ("com.docker.network.bridge.enable_icc", "false");

/// The id of [`NETWORK`], made if it does not exist yet.
///
/// Engines before API 1.44 make a second network of the same name when two callers create it
/// at once (two installations, or two pushes, on a fresh engine): then every caller keeps the
/// one with the smallest id and removes the others, so all agree, and containers join by id.
///
/// # Errors
/// When the engine refuses, or a network of that name lets its containers reach each other.
pub async fn network(docker: &Docker) -> Result<String, bollard::errors::Error> {
    let mut found = networks_named(docker).await?;
    // Made once per engine: under a lock every Slipway process on this host takes, so two never
    // make it at once (the engine would keep both, and refuse containers on an ambiguous name).
    let _lock = if found.len() == 1 {
        None
    } else {
        let lock = creation_lock().await;
        found = networks_named(docker).await?;
        lock
    };
    if found.is_empty() {
        let created = docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: NETWORK.to_owned(),
                driver: Some("bridge".to_owned()),
                options: Some(HashMap::from([(NO_ICC.0.to_owned(), NO_ICC.1.to_owned())])),
                labels: Some(HashMap::from([(
                    "dev.slipway.network".to_owned(),
                    "apps".to_owned(),
                )])),
                ..Default::default()
            })
            .await;
        match created {
            // Newer engines refuse a second network of a name: made meanwhile elsewhere.
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(error) => return Err(error),
        }
        found = networks_named(docker).await?;
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    let mut found = found.into_iter();
    let kept = found
        .next()
        .ok_or_else(|| bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message: format!("the network `{NETWORK}` vanished after it was made"),
        })?;
    for duplicate in found.filter_map(|n| n.id) {
        let _ = docker.remove_network(&duplicate).await;
    }
    let isolating = kept
        .options
        .as_ref()
        .and_then(|o| o.get(NO_ICC.0))
        .map(String::as_str)
        == Some(NO_ICC.1);
    if !isolating {
        return Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message: format!(
                "the network `{NETWORK}` lets its containers reach each other; remove it (`docker network rm {NETWORK}`) so Slipway makes it with {}={}",
                NO_ICC.0, NO_ICC.1
            ),
        });
    }
    kept.id
        .ok_or_else(|| bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: format!("the network `{NETWORK}` has no id"),
        })
}

/// The lock held while [`NETWORK`] is made or tidied, released when dropped (or when the
/// process dies); `None` when it cannot be had (then duplicates are still tidied away).
async fn creation_lock() -> Option<Flock<File>> {
    let path = std::env::temp_dir().join("slipway-apps-network.lock");
    let locked = tokio::task::spawn_blocking(move || {
        let file = lock_file(&path)?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| std::io::Error::from(errno))
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|locked| locked);
    match locked {
        Ok(lock) => Some(lock),
        Err(error) => {
            tracing::warn!(%error, "cannot lock the creation of the app network; creating it anyway");
            None
        }
    }
}

/// Opens `path` to lock it, made if missing: read-only (a lock needs no more), and made
/// writable by all, so a file another user's Slipway made serves as well.
///
/// # Errors
/// When it can be neither opened nor made.
pub fn lock_file(path: &std::path::Path) -> std::io::Result<File> {
    match File::open(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::OpenOptionsExt;
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o666)
                .open(path)?;
            File::open(path)
        }
        opened => opened,
    }
}

/// The networks named exactly [`NETWORK`] (the engine's name filter matches parts of names).
async fn networks_named(
    docker: &Docker,
) -> Result<Vec<bollard::models::Network>, bollard::errors::Error> {
    let all = docker
        .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
            filters: Some(HashMap::from([(
                "name".to_owned(),
                vec![NETWORK.to_owned()],
            )])),
        }))
        .await?;
    Ok(all
        .into_iter()
        .filter(|n| n.name.as_deref() == Some(NETWORK))
        .collect())
}

/// Removes [`NETWORK`] (every network of that name) unless a container, of any installation
/// and running or not, is on it: a stopped container keeps its place on the network and could
/// not start again without it. Whether any was removed.
///
/// # Errors
/// When the engine does not answer, or refuses the removal.
pub async fn remove_network_if_unused(docker: &Docker) -> Result<bool, bollard::errors::Error> {
    if !containers_where(docker, "network", NETWORK)
        .await?
        .is_empty()
    {
        return Ok(false);
    }
    let mut removed = false;
    for id in networks_named(docker)
        .await?
        .into_iter()
        .filter_map(|n| n.id)
    {
        match docker.remove_network(&id).await {
            Ok(()) => removed = true,
            // Gone meanwhile, or a container joined it meanwhile: either way it stays as it is.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 403 | 409,
                ..
            }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(removed)
}

/// The installations (their ids, see [`instance`]) that have containers on the engine,
/// running or not.
///
/// # Errors
/// When the engine does not answer.
pub async fn instances(
    docker: &Docker,
) -> Result<std::collections::BTreeSet<String>, bollard::errors::Error> {
    Ok(containers_where(docker, "label", LABEL_INSTANCE)
        .await?
        .into_iter()
        .filter_map(|c| c.labels?.remove(LABEL_INSTANCE))
        .collect())
}

/// Every container on the engine, running or not, that matches the engine's filter `key=value`.
async fn containers_where(
    docker: &Docker,
    key: &str,
    value: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, bollard::errors::Error> {
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(key.to_owned(), vec![value.to_owned()])])),
            ..Default::default()
        }))
        .await
}

/// Memory of one app container: 512 MiB fits the usual small web app; the Webspace resource
/// has no field for it yet.
const MEMORY: i64 = 512 << 20;
/// CPU of one app container, in billionths of a CPU: one CPU.
const NANO_CPUS: i64 = 1_000_000_000;
/// Path probed when nothing else is configured (see [`healthy`]).
pub const DEFAULT_HEALTH_PATH: &str = "/";
/// Time a new release has to answer: long enough for an interpreter to boot and load an app,
/// short enough that a push that will never serve fails while the pusher still watches.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Times a container is created again while its name is still taken by one being removed
/// ([`POLL`] apart: 5 s in all).
const NAME_TAKEN_RETRIES: u32 = 200;
/// Log lines shown when a release does not become healthy.
const LOG_LINES: &str = "20";

/// An app container Slipway started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppContainer {
    /// Container id.
    pub id: String,
    /// Webspace label.
    pub webspace: String,
    /// Branch label.
    pub branch: String,
    /// Release label.
    pub release: String,
    /// Where the router reaches it, when it runs: from [`list`] its published port, from
    /// [`ensure`] where [`reach`] says.
    pub target: Option<Target>,
    /// Whether it is running.
    pub running: bool,
    /// Whether the engine is restarting it (its restart policy, after it exited).
    pub restarting: bool,
}

/// The container name of a release: release names are DNS labels, unique per release within
/// an installation.
pub fn container_name(instance: &str, release: &str) -> String {
    format!("slipway-{instance}-{release}")
}

/// Every container Slipway started (running or not).
///
/// # Errors
/// When the engine does not answer.
pub async fn list(
    docker: &Docker,
    instance: &str,
) -> Result<Vec<AppContainer>, bollard::errors::Error> {
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_INSTANCE}={instance}")],
            )])),
            ..Default::default()
        }))
        .await?;
    Ok(containers
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            let published = c
                .ports
                .unwrap_or_default()
                .iter()
                .find_map(|p| p.public_port);
            Some(AppContainer {
                id: c.id?,
                webspace: labels.get(LABEL_WEBSPACE)?.clone(),
                branch: labels.get(LABEL_BRANCH)?.clone(),
                release: labels.get(LABEL_RELEASE)?.clone(),
                target: published
                    .map(|port| Target::from(SocketAddr::from(([127, 0, 0, 1], port)))),
                running: matches!(
                    c.state,
                    Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                ),
                restarting: matches!(
                    c.state,
                    Some(bollard::models::ContainerSummaryStateEnum::RESTARTING)
                ),
            })
        })
        .collect())
}

/// Starts the container of `deployment`, or returns it if it already runs.
///
/// # Errors
/// When the engine refuses.
pub async fn ensure(
    docker: &Docker,
    instance: &str,
    deployment: &Deployment,
) -> Result<AppContainer, bollard::errors::Error> {
    let containers = list(docker, instance).await?;
    ensure_among(docker, instance, deployment, &containers).await
}

/// [`ensure`], with the installation's containers as [`list`] gave them (a pass over many
/// deployments lists them once).
///
/// # Errors
/// When the engine refuses.
pub async fn ensure_among(
    docker: &Docker,
    instance: &str,
    deployment: &Deployment,
    containers: &[AppContainer],
) -> Result<AppContainer, bollard::errors::Error> {
    let mine: Vec<&AppContainer> = containers
        .iter()
        .filter(|c| c.release == deployment.release)
        .collect();
    if let Some(mut existing) = mine
        .iter()
        .find(|c| c.running && c.target.is_some())
        .map(|c| (*c).clone())
    {
        let inspect = docker.inspect_container(&existing.id, None).await?;
        existing.target = reach(&inspect, deployment.port);
        return Ok(existing);
    }
    // The engine brings it back itself (its restart policy, after a crash): replacing it would
    // throw away its logs; it is reachable again once it runs.
    if let Some(restarting) = mine.into_iter().find(|c| c.restarting) {
        return Ok(AppContainer {
            target: None,
            ..restarting.clone()
        });
    }
    start(docker, instance, deployment).await
}

/// Starts a new container of `deployment`, replacing any container of its release (a stopped
/// or half-created one, or one left by an earlier push of the same commit that a pass may be
/// removing right now).
///
/// # Errors
/// When the engine refuses.
pub async fn start(
    docker: &Docker,
    instance: &str,
    deployment: &Deployment,
) -> Result<AppContainer, bollard::errors::Error> {
    let name = container_name(instance, &deployment.release);
    // Both on the way of every push's verification: at once.
    let (_, network) = tokio::join!(
        docker.remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        ),
        network(docker)
    );
    let network = network?;
    let port = format!("{}/tcp", deployment.port);
    let labels = HashMap::from([
        (LABEL_WEBSPACE.to_owned(), deployment.webspace.clone()),
        (LABEL_BRANCH.to_owned(), deployment.label.clone()),
        (LABEL_RELEASE.to_owned(), deployment.release.clone()),
        (LABEL_INSTANCE.to_owned(), instance.to_owned()),
    ]);
    let body = ContainerCreateBody {
        image: Some(deployment.image.clone()),
        env: Some(
            deployment
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        exposed_ports: Some(vec![port.clone()]),
        labels: Some(labels),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                port,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_owned()),
                    host_port: Some(String::new()),
                }]),
            )])),
            init: Some(true),
            network_mode: Some(network),
            // Raw sockets would let an app forge ARP and IP packets to its neighbours on the
            // shared network (Kubernetes' restricted profile drops it too).
            cap_drop: Some(vec!["NET_RAW".to_owned()]),
            memory: Some(MEMORY),
            nano_cpus: Some(NANO_CPUS),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The name is taken until the engine finished removing the container before (a removal
    // already in progress is not sped up by asking again).
    let mut attempts = 0;
    loop {
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body.clone(),
            )
            .await;
        match created {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) if attempts < NAME_TAKEN_RETRIES => {
                attempts += 1;
                tokio::time::sleep(POLL).await;
                let _ = docker
                    .remove_container(
                        &name,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
            created => {
                created?;
                break;
            }
        }
    }
    docker.start_container(&name, None).await?;
    let inspect = docker.inspect_container(&name, None).await?;
    Ok(AppContainer {
        target: reach(&inspect, deployment.port),
        id: inspect.id.unwrap_or(name),
        webspace: deployment.webspace.clone(),
        branch: deployment.label.clone(),
        release: deployment.release.clone(),
        running: true,
        restarting: false,
    })
}

/// Where the router reaches a running container: its `private` port at its own address, from
/// inside its network namespace when this process may enter it, else its published port on
/// 127.0.0.1.
///
/// # Never the bridge address from this host's network
/// It also skips Docker's userland proxy, but the engine hands a stopped container's address to
/// the next container it starts, often at once, and apps listen on the same port: until the
/// next pass noticed the stop, requests for one app would reach another customer's. Neither a
/// namespace nor a published port is handed to another container that soon (a published port
/// only after the engine went through its whole port range).
fn reach(inspect: &bollard::models::ContainerInspectResponse, private: u16) -> Option<Target> {
    let settings = inspect.network_settings.as_ref();
    let inside = || {
        let endpoint = settings?.networks.as_ref()?.values().find_map(|endpoint| {
            let ip = endpoint.ip_address.as_deref().filter(|ip| !ip.is_empty());
            let ip = ip.or(endpoint.global_ipv6_address.as_deref());
            ip?.parse::<IpAddr>().ok()
        })?;
        match Namespace::of_container(settings?.sandbox_key.as_deref()?) {
            Ok(namespace) => {
                announce(Ok(()));
                Some(Target {
                    address: SocketAddr::new(endpoint, private),
                    namespace: Some(namespace),
                    max_body: None,
                })
            }
            Err(error) => {
                announce(Err(&error));
                None
            }
        }
    };
    inside().or_else(|| {
        let published = settings?
            .ports
            .as_ref()?
            .values()
            .flatten()
            .flatten()
            .find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())?;
        Some(Target::from(SocketAddr::from(([127, 0, 0, 1], published))))
    })
}

/// Logs how containers are reached (inside their namespaces, or else why not), once and again
/// whenever that changes, so an operator sees whether the router goes through docker-proxy.
fn announce(inside: Result<(), &std::io::Error>) {
    static LAST: AtomicU8 = AtomicU8::new(0);
    let now = if inside.is_ok() { 1 } else { 2 };
    if LAST.swap(now, Ordering::Relaxed) == now {
        return;
    }
    match inside {
        Ok(()) => tracing::info!("reaching app containers inside their network namespaces"),
        Err(error) => tracing::info!(
            %error,
            "reaching app containers at their published ports, through docker-proxy: their network namespaces cannot be entered (that needs CAP_SYS_ADMIN on the engine's host)"
        ),
    }
}

/// One HTTP probe: the status code of `GET path`, if the app answered at all.
async fn probe(target: &Target, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = target.connect().await.ok()?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: slipway-health\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Pause between health probes: short, since a small app answers within a few hundred ms of
/// its start and every pause is added to the push.
const POLL: Duration = Duration::from_millis(25);

/// Whether a health probe's answer counts as healthy: 200-399, as a Kubernetes `httpGet`
/// readiness probe judges it, so a release is ready on the same answers in both modes.
pub fn healthy(status: u16) -> bool {
    (200..400).contains(&status)
}

/// Waits until the app answers `path` healthily ([`healthy`]); gives up as soon as the
/// container stopped running (an app that crashes at start fails in a second, not after the
/// whole timeout).
///
/// # Errors
/// The last probe result, or that the container exited.
pub async fn wait_ready(
    docker: &Docker,
    container: &AppContainer,
    path: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = "no answer".to_owned();
    loop {
        let answer = match &container.target {
            Some(target) => probe(target, path).await,
            None => None,
        };
        match answer {
            Some(status) if healthy(status) => return Ok(status),
            Some(status) => last = format!("HTTP {status}"),
            None => {}
        }
        let state = docker
            .inspect_container(&container.id, None)
            .await
            .ok()
            .and_then(|i| i.state)
            .unwrap_or_default();
        // A crashing app under a restart policy shows as restarting, not running.
        if state.running != Some(true) || state.restarting == Some(true) {
            let code = state
                .exit_code
                .map(|c| format!(" with code {c}"))
                .unwrap_or_default();
            return Err(format!("{last}; the container exited{code}"));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{last} within {}s; the container is running",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Why a container is unhealthy: its state and exit code, and its last log lines.
pub async fn diagnose(docker: &Docker, id: &str) -> (String, Vec<String>) {
    let state = match docker.inspect_container(id, None).await {
        Ok(inspect) => {
            let state = inspect.state.unwrap_or_default();
            match (state.running, state.restarting, state.exit_code) {
                (Some(true), Some(false) | None, _) => "is running".to_owned(),
                (_, _, Some(code)) => format!("exited with code {code}"),
                _ => "is not running".to_owned(),
            }
        }
        Err(error) => format!("unknown ({error})"),
    };
    let mut lines = Vec::new();
    let mut logs = docker.logs(
        id,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            tail: LOG_LINES.to_owned(),
            ..Default::default()
        }),
    );
    while let Some(Ok(chunk)) = logs.next().await {
        lines.extend(
            String::from_utf8_lossy(&chunk.into_bytes())
                .lines()
                .map(str::to_owned),
        );
    }
    (state, lines)
}

/// Stops and removes a container (its init process makes the stop quick).
pub async fn remove(docker: &Docker, id: &str) {
    if let Err(error) = docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
    {
        tracing::warn!(%id, %error, "cannot remove container");
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{
        ContainerInspectResponse, ContainerState, EndpointSettings, NetworkSettings,
    };

    use super::*;

    #[test]
    fn healthy_means_what_a_kubernetes_readiness_probe_accepts() {
        assert!(healthy(200) && healthy(204) && healthy(301) && healthy(399));
        assert!(!healthy(199) && !healthy(404) && !healthy(500) && !healthy(503));
    }

    /// What the engine says about a running container at 172.17.0.5 whose namespace is the
    /// file `sandbox_key`, published on `published`.
    fn inspect(sandbox_key: &str, published: Option<&str>) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("ab".repeat(32)),
            state: Some(ContainerState {
                running: Some(true),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                sandbox_key: Some(sandbox_key.to_owned()),
                networks: Some(HashMap::from([(
                    "bridge".to_owned(),
                    EndpointSettings {
                        ip_address: Some("172.17.0.5".to_owned()),
                        gateway: Some("172.17.0.1".to_owned()),
                        ..Default::default()
                    },
                )])),
                ports: Some(HashMap::from([(
                    "8080/tcp".to_owned(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_owned()),
                        host_port: published.map(str::to_owned),
                    }]),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn without_its_namespace_a_container_is_reached_at_its_published_port_never_its_bridge_address()
    {
        let published = Some(Target::from(
            "127.0.0.1:32768".parse::<SocketAddr>().expect("address"),
        ));
        // Gone (the container stopped), or this host's own: the published port.
        for key in [
            "/var/run/docker/netns/slipway-test-gone",
            "/proc/self/ns/net",
            "",
        ] {
            assert_eq!(
                reach(&inspect(key, Some("32768")), 8080),
                published,
                "{key:?}: a bridge address is handed to the next container when this one stops"
            );
            assert_eq!(reach(&inspect(key, None), 8080), None);
            assert_eq!(reach(&inspect(key, Some("")), 8080), None);
        }
    }
}
