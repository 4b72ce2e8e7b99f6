//! `slipway`: a thin command-line front to the library crates.

mod down;
mod engine;
mod hook;
mod ops;
mod probe;

use std::ffi::OsString;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use slipway_api::env;
use slipway_store::{DirectoryStore, Format, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// git push to deploy: an SSH git host that builds and runs what you push.
#[derive(Debug, Parser)]
#[command(name = "slipway", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything on this host: SSH git server, builds, operator, Docker driver and router.
    Up(UpArgs),
    /// Stop and remove what `slipway up` left running on this host (its app containers); the
    /// data directory stays unless `--purge`.
    Down(down::DownArgs),
    /// Run only the SSH git server (on a cluster: `--store kube`).
    GitServer(ServerArgs),
    /// Run the Kubernetes operator: Webspaces and Releases become Deployments, Services and
    /// Ingresses (in-cluster config or KUBECONFIG).
    Operator(OperatorArgs),
    /// Create or update resources from YAML (multi-document; `-` reads stdin).
    Apply(ApplyArgs),
    /// Show resources as a table, YAML or JSON.
    Get(GetArgs),
    /// Delete a resource.
    Delete(DeleteArgs),
    /// Print the CustomResourceDefinitions, or write them to a directory.
    Crds(CrdsArgs),
    /// Run the build engine of an in-cluster install (the git server's sidecar): dockerd on a
    /// unix socket only, its builds kept off the cluster's network.
    BuildEngine(engine::EngineArgs),
    /// Run a git hook (invoked by the repositories' hook scripts, not by people).
    #[command(hide = true)]
    Hook(hook::HookArgs),
    /// Run an owner's command for the git server (`ssh git@HOST logs blog`), not by people.
    #[command(hide = true)]
    Ops(ops::OpsArgs),
    /// An app's output: `slipway logs WEBSPACE [BRANCH] [-n N] [-f]`.
    Logs(ops::AdminArgs),
    /// A webspace's releases, newest first: `slipway releases WEBSPACE [BRANCH] [--json]`.
    Releases(ops::AdminArgs),
    /// A new release from an earlier one's image: `slipway rollback WEBSPACE [BRANCH] [vN]`.
    Rollback(ops::AdminArgs),
    /// A new release of what serves: `slipway restart WEBSPACE [BRANCH]`.
    Restart(ops::AdminArgs),
    /// A webspace's config, masked: `slipway config WEBSPACE [--reveal] [--json]`.
    Config(ops::AdminArgs),
    /// Set config values: `slipway config:set WEBSPACE KEY=VALUE...`.
    #[command(name = "config:set")]
    ConfigSet(ops::AdminArgs),
    /// Remove config values: `slipway config:unset WEBSPACE KEY...`.
    #[command(name = "config:unset")]
    ConfigUnset(ops::AdminArgs),
}

#[derive(Debug, Args)]
struct DataArgs {
    /// Data directory: resources, repositories, host key.
    #[arg(long, env = env::DATA, default_value = "./slipway-data")]
    data: PathBuf,
}

#[derive(Debug, Args)]
struct ServerArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Address the SSH git server listens on.
    #[arg(long, env = env::SSH_LISTEN, default_value = "127.0.0.1:2222")]
    ssh_listen: SocketAddr,
    /// Registry images are pushed to (`HOST:PORT`); without one images stay on the local engine.
    #[arg(long, env = env::REGISTRY)]
    registry: Option<String>,
    /// Accept pushes without building them: a plain git host (refs are still checked).
    #[arg(long)]
    no_build: bool,
    /// Seconds in-flight pushes get to finish after SIGTERM/SIGINT before they are killed.
    #[arg(long, default_value_t = 60)]
    shutdown_grace: u64,
    /// Seconds a push waits for an earlier push to the same webspace.
    #[arg(long, default_value_t = 1200)]
    push_wait: u64,
    /// Where Customers, Webspaces, Runtimes and Releases live: `directory` (DATA/resources) or
    /// `kube` (the Kubernetes API: in-cluster service account, else KUBECONFIG).
    #[arg(long, env = env::STORE, default_value = "directory", value_parser = parse_backend)]
    store: slipway_store::Backend,
    /// Address for `/healthz`, `/readyz` and `/metrics` (off when unset).
    #[arg(long, env = env::PROBE_LISTEN)]
    probe_listen: Option<SocketAddr>,
    /// SSH connections served at once, from all addresses (the reasons for the defaults:
    /// `slipway_git_server::admission`).
    #[arg(long, env = env::SSH_MAX_CONNECTIONS, default_value_t = slipway_git_server::admission::MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    ssh_max_connections: usize,
    /// SSH connections served at once from one source address (IPv6: one /64).
    #[arg(long, env = env::SSH_MAX_CONNECTIONS_PER_ADDRESS, default_value_t = slipway_git_server::admission::MAX_CONNECTIONS_PER_ADDRESS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    ssh_max_connections_per_address: usize,
    /// SSH connections from one source address that have not authenticated yet; more are
    /// closed at once, so a flood from one address never locks out another.
    #[arg(long, env = env::SSH_MAX_UNAUTHENTICATED_PER_ADDRESS, default_value_t = slipway_git_server::admission::MAX_UNAUTHENTICATED_PER_ADDRESS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    ssh_max_unauthenticated_per_address: usize,
}

/// `--store`'s values.
pub(crate) fn parse_backend(value: &str) -> Result<slipway_store::Backend, String> {
    match value {
        "directory" => Ok(slipway_store::Backend::Directory),
        "kube" => Ok(slipway_store::Backend::Kube),
        other => Err(format!(
            "`{other}` is not a store; use `directory` or `kube`"
        )),
    }
}

#[derive(Debug, Args)]
struct OperatorArgs {
    /// Domain of the app hosts: `WEBSPACE.DOMAIN`, previews `BRANCH.WEBSPACE.DOMAIN`.
    #[arg(long, env = env::DOMAIN, default_value = "localhost")]
    domain: String,
    /// Preview hosts as `BRANCH--WEBSPACE.DOMAIN` (one wildcard certificate covers them).
    #[arg(long)]
    flat_previews: bool,
    /// `ingressClassName` of the generated Ingresses (the cluster's default when unset).
    #[arg(long, env = env::INGRESS_CLASS)]
    ingress_class: Option<String>,
    /// cert-manager ClusterIssuer: Ingresses get TLS and URLs `https://` (none when empty).
    #[arg(long, env = env::CLUSTER_ISSUER)]
    cluster_issuer: Option<String>,
    /// Registry the git server's hooks push to (`HOST:PORT`).
    #[arg(long, env = env::REGISTRY)]
    registry: Option<String>,
    /// The same registry as the nodes pull from (`HOST:PORT`); images are rewritten to it.
    #[arg(long, env = env::IMAGE_REGISTRY)]
    image_registry: Option<String>,
    /// Docker client configuration (`config.json`) with the read-only credentials the nodes pull
    /// apps' images with; each tenant namespace gets it as the Secret `slipway-image-pull`.
    #[arg(long, env = "SLIPWAY_IMAGE_PULL_CONFIG")]
    image_pull_config: Option<PathBuf>,
    /// Path a pod must answer (HTTP 200-399, as a Kubernetes readiness probe) before it takes traffic.
    #[arg(long, default_value = "/")]
    health_path: String,
    /// Seconds a rollout may take; past it the release fails and the previous one returns.
    #[arg(long, default_value_t = 120)]
    progress_deadline: i32,
    /// Namespace of the ingress controller, let through the tenants' NetworkPolicy.
    #[arg(long, env = env::INGRESS_NAMESPACE, default_value = "ingress-nginx")]
    ingress_namespace: String,
    /// Address for `/healthz`, `/readyz` and `/metrics` (off when unset).
    #[arg(long, env = env::PROBE_LISTEN)]
    probe_listen: Option<SocketAddr>,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "slipway-system")]
    lease_namespace: String,
    /// This replica's name in the leader Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    holder: Option<String>,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Address the HTTP router listens on.
    #[arg(long, env = env::HTTP_LISTEN, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// Domain of the app hosts: `WEBSPACE.DOMAIN`, previews `BRANCH.WEBSPACE.DOMAIN`.
    #[arg(long, env = env::DOMAIN, default_value = "localhost")]
    domain: String,
    /// Preview hosts as `BRANCH--WEBSPACE.DOMAIN` (one wildcard certificate covers them).
    #[arg(long)]
    flat_previews: bool,
    /// Path a new release must answer (HTTP 200-399, as a Kubernetes readiness probe) before it takes traffic.
    #[arg(long, default_value = "/")]
    health_path: String,
    /// Seconds a new release has to answer its health check.
    #[arg(long, default_value_t = 30)]
    health_timeout: u64,
    /// Seconds an old release keeps running after traffic moved away from it.
    #[arg(long, default_value_t = 2)]
    drain: u64,
    /// Seconds between the operator's full passes when nothing changed (resource changes and
    /// container starts and stops start a pass at once).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    recheck: u64,
    /// Threads of the HTTP router (default: half the CPUs, at least one; the apps behind it
    /// need CPU too).
    #[arg(long, env = env::ROUTER_THREADS)]
    router_threads: Option<std::num::NonZeroUsize>,
    #[command(flatten)]
    router_limits: RouterLimits,
    /// Where builds' RUN steps may connect: `restricted` (the internet only: not this host, not
    /// its other containers, not private, link-local or loopback ranges; iptables rules on the
    /// engine's default bridge, needs root) or `open` (anything the host reaches).
    #[arg(long, env = "SLIPWAY_BUILD_EGRESS", value_enum, default_value_t = BuildEgress::Restricted)]
    build_egress: BuildEgress,
    /// An IPv4 range builds may reach although it is private (an internal package mirror, say):
    /// `10.1.0.0/16`. Repeat the flag, or separate ranges with commas in the variable.
    #[arg(
        long = "build-allow-range",
        env = "SLIPWAY_BUILD_ALLOW_RANGES",
        value_delimiter = ','
    )]
    build_allow_ranges: Vec<String>,
    #[command(flatten)]
    build_steps: BuildStepArgs,
}

/// What each BuildKit build step may use: for `slipway up`, and for the build engine of an
/// in-cluster install.
#[derive(Debug, Args)]
pub(crate) struct BuildStepArgs {
    /// Memory of each BuildKit build step, swap included (`512m`, `1g`).
    #[arg(long, env = "SLIPWAY_BUILD_STEP_MEMORY", default_value = "1g", value_parser = parse_size_arg)]
    build_step_memory: u64,
    /// Processes of each BuildKit build step; a step that reaches it is killed (fork bombs).
    #[arg(long, env = "SLIPWAY_BUILD_STEP_PIDS", default_value_t = slipway_hook::steps::StepLimits::default().pids, value_parser = clap::value_parser!(u64).range(16..))]
    build_step_pids: u64,
    /// CPUs of each BuildKit build step.
    #[arg(long, env = "SLIPWAY_BUILD_STEP_CPUS", default_value_t = slipway_hook::steps::StepLimits::default().cpus, value_parser = clap::value_parser!(u32).range(1..))]
    build_step_cpus: u32,
}

impl BuildStepArgs {
    pub(crate) fn limits(&self) -> slipway_hook::steps::StepLimits {
        slipway_hook::steps::StepLimits {
            memory: self.build_step_memory,
            pids: self.build_step_pids,
            cpus: self.build_step_cpus,
        }
    }
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    slipway_api::resources::parse_size(text)
        .filter(|bytes| *bytes >= 16 << 20)
        .ok_or_else(|| format!("`{text}` is not a size of at least 16m (bytes, or with k, m, g)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BuildEgress {
    Restricted,
    Open,
}

/// What one client of the router can hold (the defaults and their reasons:
/// `slipway_operator::router`'s constants).
#[derive(Debug, Args)]
struct RouterLimits {
    /// Seconds a client has for a whole request head (one deadline, from its first byte).
    #[arg(long, env = "SLIPWAY_ROUTER_HEAD_TIMEOUT", default_value_t = slipway_operator::router::HEAD_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    router_head_timeout: u64,
    /// Seconds an idle client connection stays open between requests.
    #[arg(long, env = "SLIPWAY_ROUTER_IDLE_TIMEOUT", default_value_t = slipway_operator::router::IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    router_idle_timeout: u64,
    /// Seconds a request body may stall between two reads.
    #[arg(long, env = "SLIPWAY_ROUTER_BODY_TIMEOUT", default_value_t = slipway_operator::router::BODY_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    router_body_timeout: u64,
    /// Seconds a write to a client may make no progress.
    #[arg(long, env = "SLIPWAY_ROUTER_WRITE_TIMEOUT", default_value_t = slipway_operator::router::WRITE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    router_write_timeout: u64,
    /// Seconds an upgraded (WebSocket) connection may carry no byte either way.
    #[arg(long, env = "SLIPWAY_ROUTER_TUNNEL_IDLE_TIMEOUT", default_value_t = slipway_operator::router::TUNNEL_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    router_tunnel_idle_timeout: u64,
    /// Seconds connecting to an app may take.
    #[arg(long, env = "SLIPWAY_ROUTER_CONNECT_TIMEOUT", default_value_t = slipway_operator::router::CONNECT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    router_connect_timeout: u64,
    /// Seconds an app may take to start its answer (then 504).
    #[arg(long, env = "SLIPWAY_ROUTER_RESPONSE_TIMEOUT", default_value_t = slipway_operator::router::RESPONSE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    router_response_timeout: u64,
    /// Client connections open at once, in all.
    #[arg(long, env = "SLIPWAY_ROUTER_MAX_CONNECTIONS", default_value_t = slipway_operator::router::MAX_CONNECTIONS)]
    router_max_connections: usize,
    /// Client connections open at once from one source address.
    #[arg(long, env = "SLIPWAY_ROUTER_MAX_CONNECTIONS_PER_SOURCE", default_value_t = slipway_operator::router::MAX_CONNECTIONS_PER_SOURCE)]
    router_max_connections_per_source: usize,
    /// The largest request body, in bytes, for apps whose Webspace sets no `maxRequestBody`
    /// (then 413).
    #[arg(long, env = "SLIPWAY_ROUTER_MAX_BODY", default_value_t = slipway_operator::router::MAX_BODY)]
    router_max_body: u64,
}

impl RouterLimits {
    fn limits(&self) -> slipway_operator::router::Limits {
        slipway_operator::router::Limits {
            head_timeout: Duration::from_secs(self.router_head_timeout),
            idle_timeout: Duration::from_secs(self.router_idle_timeout),
            body_timeout: Duration::from_secs(self.router_body_timeout),
            write_timeout: Duration::from_secs(self.router_write_timeout),
            tunnel_idle_timeout: Duration::from_secs(self.router_tunnel_idle_timeout),
            connect_timeout: Duration::from_secs(self.router_connect_timeout),
            response_timeout: Duration::from_secs(self.router_response_timeout),
            max_connections: self.router_max_connections,
            max_connections_per_source: self.router_max_connections_per_source,
            max_body: self.router_max_body,
        }
    }
}

#[derive(Debug, Args)]
struct ApplyArgs {
    #[command(flatten)]
    data: DataArgs,
    /// File to read, or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
struct GetArgs {
    #[command(flatten)]
    data: DataArgs,
    /// customers (cust), webspaces (ws), runtimes (rt) or releases (rel).
    kind: String,
    /// Show only this one.
    name: Option<String>,
    /// Only what belongs to this webspace (its releases).
    #[arg(long)]
    webspace: Option<String>,
    /// Output format instead of the table.
    #[arg(short, long)]
    output: Option<Output>,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    #[command(flatten)]
    data: DataArgs,
    /// customer, webspace, runtime or release.
    kind: String,
    /// Name of the resource.
    name: String,
}

#[derive(Debug, Args)]
struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// Log lines to stderr, filtered by `SLIPWAY_LOG` (default `info`).
pub(crate) fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(env::LOG)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        // Hooks talk to the pusher through stderr; their exit code is the verdict.
        Command::Hook(args) => return hook::run(args),
        // What an owner's command prints goes to the SSH client as it is.
        Command::Ops(args) => return ops::run(args),
        Command::Logs(args) => return ops::admin("logs", args),
        Command::Releases(args) => return ops::admin("releases", args),
        Command::Rollback(args) => return ops::admin("rollback", args),
        Command::Restart(args) => return ops::admin("restart", args),
        Command::Config(args) => return ops::admin("config", args),
        Command::ConfigSet(args) => return ops::admin("config:set", args),
        Command::ConfigUnset(args) => return ops::admin("config:unset", args),
        Command::BuildEngine(args) => {
            return match engine::run(args) {
                Ok(code) => ExitCode::from(code),
                Err(error) => {
                    eprintln!("error: {}", slipway_api::error_chain(error.as_ref()));
                    ExitCode::FAILURE
                }
            };
        }
        command => command,
    };
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => {
            let rollout = rollout_settings(&args);
            serve(args.server, Some(rollout)).await
        }
        Command::Down(args) => down::run(args).await,
        Command::GitServer(args) => serve(args, None).await,
        Command::Operator(args) => operator(args).await,
        Command::Apply(args) => apply(args).await,
        Command::Get(args) => get(args).await,
        Command::Delete(args) => delete(args).await,
        Command::Crds(args) => crds(args),
        Command::Hook(_)
        | Command::Ops(_)
        | Command::Logs(_)
        | Command::Releases(_)
        | Command::Rollback(_)
        | Command::Restart(_)
        | Command::Config(_)
        | Command::ConfigSet(_)
        | Command::ConfigUnset(_)
        | Command::BuildEngine(_) => unreachable!("handled before the runtime starts"),
    }
}

fn open_store(data: &Path) -> anyhow::Result<DirectoryStore> {
    DirectoryStore::open(data)
        .with_context(|| format!("cannot open data directory {}", data.display()))
}

/// Installs the firewall rules that keep builds' RUN steps on the internet
/// ([`slipway_hook::egress`]), for the engine's default bridge, where BuildKit runs them.
async fn restrict_builds(
    docker: &bollard::Docker,
    egress: BuildEgress,
    instance: &str,
    allowed: &[String],
) -> anyhow::Result<String> {
    let allowed = allowed
        .iter()
        .map(|range| slipway_hook::egress::parse_range(range.trim()))
        .collect::<Result<Vec<_>, _>>()
        .context("--build-allow-range")?;
    let (interface, subnet) = default_bridge(docker).await?;
    if egress == BuildEgress::Open {
        // Rules an earlier `slipway up` installed would otherwise still apply.
        if let Err(error) = slipway_hook::egress::remove(&interface, &subnet) {
            tracing::warn!(%error, "cannot remove earlier build egress rules");
        }
        return Ok("  builds reach everything this host reaches (--build-egress open)".to_owned());
    }
    slipway_hook::egress::install(&interface, &subnet, instance, &allowed).context(
        "cannot restrict where builds connect (iptables, as root); \
         `slipway up --build-egress open` runs without (builds then reach this host's network)",
    )?;
    Ok(format!(
        "  builds reach the internet only (rules on {interface} {subnet}{})",
        if allowed.is_empty() {
            String::new()
        } else {
            format!(", and {}", allowed.join(", "))
        }
    ))
}

/// The engine's default bridge, where BuildKit runs builds' RUN steps: (interface, IPv4 subnet).
pub(crate) async fn default_bridge(docker: &bollard::Docker) -> anyhow::Result<(String, String)> {
    let bridge = docker
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .context("cannot inspect the engine's default bridge, where builds run")?;
    let interface = bridge
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
        .unwrap_or_else(|| "docker0".to_owned());
    let subnet = bridge
        .ipam
        .and_then(|ipam| ipam.config)
        .and_then(|configs| configs.into_iter().find_map(|c| c.subnet))
        .filter(|s| s.contains('.'))
        .context("the engine's default bridge has no IPv4 subnet")?;
    Ok((interface, subnet))
}

/// What `slipway up` adds to the git server: where the router listens, and the operator.
struct Rollout {
    http_listen: SocketAddr,
    router_threads: std::num::NonZeroUsize,
    router_limits: slipway_operator::router::Limits,
    build_egress: BuildEgress,
    build_allow_ranges: Vec<String>,
    build_steps: slipway_hook::steps::StepLimits,
    settings: slipway_operator::single_host::Settings,
}

fn rollout_settings(args: &UpArgs) -> Rollout {
    let port = args.http_listen.port();
    Rollout {
        http_listen: args.http_listen,
        router_threads: args
            .router_threads
            .unwrap_or_else(slipway_operator::router::default_threads),
        router_limits: args.router_limits.limits(),
        build_egress: args.build_egress,
        build_allow_ranges: args.build_allow_ranges.clone(),
        build_steps: args.build_steps.limits(),
        settings: slipway_operator::single_host::Settings {
            hosts: slipway_operator::Hosts {
                domain: args.domain.clone(),
                style: if args.flat_previews {
                    slipway_operator::HostStyle::Flat
                } else {
                    slipway_operator::HostStyle::Nested
                },
            },
            url_scheme: "http://".to_owned(),
            url_port: if port == 80 {
                String::new()
            } else {
                format!(":{port}")
            },
            health_path: args.health_path.clone(),
            health_timeout: Duration::from_secs(args.health_timeout),
            drain: Duration::from_secs(args.drain),
            instance: String::new(),
            recheck: Duration::from_secs(args.recheck),
            data: None,
        },
    }
}

/// Opens a data directory that must already exist: `get` and `delete` in the wrong directory
/// should say so, not create an empty one there.
fn open_existing_store(data: &Path) -> anyhow::Result<DirectoryStore> {
    if !data.join("resources").is_dir() {
        bail!(
            "no Slipway data directory at {}; pass --data DIR or set SLIPWAY_DATA (where `slipway up` keeps its data)",
            data.display()
        );
    }
    open_store(data)
}

/// Warns about references that point nowhere yet: a Webspace whose customer or runtime does not
/// exist cannot be pushed to (or built without a Dockerfile).
async fn warn_dangling(store: &DirectoryStore) -> anyhow::Result<()> {
    use slipway_api::{Customer, Runtime, Webspace};
    for webspace in store.list::<Webspace>().await? {
        let name = webspace.metadata.name.clone().unwrap_or_default();
        if store
            .get::<Customer>(&webspace.spec.customer)
            .await?
            .is_none()
        {
            eprintln!(
                "warning: webspace `{name}` belongs to customer `{}`, which does not exist",
                webspace.spec.customer
            );
        }
        if let Some(runtime) = &webspace.spec.runtime {
            let shipped = slipway_runtimes::defaults()
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(runtime.as_str()));
            if !shipped && store.get::<Runtime>(runtime).await?.is_none() {
                eprintln!(
                    "warning: webspace `{name}` uses runtime `{runtime}`, which does not exist"
                );
            }
        }
    }
    Ok(())
}

async fn serve(args: ServerArgs, rollout: Option<Rollout>) -> anyhow::Result<()> {
    let data = std::path::absolute(&args.data.data).context("cannot resolve --data")?;
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone())?;
    let kube = args.store == slipway_store::Backend::Kube;
    if kube && rollout.is_some() {
        bail!(
            "`slipway up` runs on one host with a data directory; on a cluster run `slipway git-server --store kube` and `slipway operator`"
        );
    }
    // Held while `slipway up` runs (the kernel drops it when the process ends, however it
    // ends): `slipway down` and a second `slipway up` on this data directory see it.
    let _running = match rollout {
        Some(_) => Some(down::hold(&data)?),
        None => None,
    };
    let store = slipway_store::AnyStore::open_as(
        args.store,
        &data,
        slipway_store::GIT_SERVER_FIELD_MANAGER,
    )
    .await
    .with_context(|| format!("cannot open the {} store", args.store.as_str()))?;
    if !kube {
        // On a cluster the operator installs them (the git server may only read Runtimes).
        install_default_runtimes(&store).await?;
    }
    let key = slipway_git_server::host_key::load_or_create(&data)?;
    let listener = TcpListener::bind(args.ssh_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.ssh_listen))?;
    let address = listener.local_addr()?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let mut environment: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, _)| env::PASSED_FROM_SERVER.iter().any(|p| name == *p))
        .map(|(name, value)| {
            let value = env::anchored(&name, &value, &cwd);
            (name, value)
        })
        .collect();
    if kube {
        environment.push((env::STORE.into(), "kube".into()));
    }
    if let Some(rollout) = &rollout {
        // Pre-receive waits for the operator's verdict about that long.
        environment.push((
            env::HEALTH_TIMEOUT.into(),
            rollout.settings.health_timeout.as_secs().to_string().into(),
        ));
    }
    let config = slipway_git_server::Config {
        data: data.clone(),
        exe: std::env::current_exe().context("cannot find the slipway executable")?,
        registry: args.registry,
        build: !args.no_build,
        rollout: rollout.is_some(),
        environment,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        push_wait: Duration::from_secs(args.push_wait),
        admission: slipway_git_server::admission::Limits {
            connections: args.ssh_max_connections,
            connections_per_address: args.ssh_max_connections_per_address,
            unauthenticated_per_address: args.ssh_max_unauthenticated_per_address,
        },
        metrics: std::sync::Arc::new(slipway_git_server::metrics::Metrics::default()),
    };
    if let Some(probe_listen) = args.probe_listen {
        let metrics = config.metrics.clone();
        start_probe(
            probe_listen,
            probe::Probe {
                ready: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
                // Not ready while the key index and webspaces may be stale.
                watches: Some(store.watch_health()),
                metrics: std::sync::Arc::new(move || metrics.render()),
            },
            shutdown.clone(),
        )
        .await?;
    }
    say(&format!("slipway git server listening on {address}"));
    // The operator, the router and the build step limits stop once in-flight pushes are over,
    // not at the signal: a push that is still running needs them to be verified, to go live
    // and to answer when it says it is live.
    let pushes_over = CancellationToken::new();
    let mut background = Vec::new();
    if let Some(rollout) = rollout {
        let http = TcpListener::bind(rollout.http_listen)
            .await
            .with_context(|| format!("cannot listen on {}", rollout.http_listen))?;
        let http_address = http.local_addr()?;
        let mut settings = rollout.settings;
        settings.instance = slipway_operator::docker::instance(&data);
        settings.data = Some(data.clone());
        if rollout.http_listen.port() == 0 {
            settings.url_port = format!(":{}", http_address.port());
        }
        let docker = bollard::Docker::connect_with_defaults()
            .context("cannot reach the Docker engine")?
            .negotiate_version()
            .await
            .context(
                "cannot reach the Docker engine (is dockerd running? `scripts/services` starts it)",
            )?;
        let egress = restrict_builds(
            &docker,
            rollout.build_egress,
            &settings.instance,
            &rollout.build_allow_ranges,
        )
        .await?;
        let table = slipway_operator::router::RouteTable::default();
        say(&format!(
            "slipway router listening on {http_address}: apps at http://WEBSPACE.{}{}",
            settings.hosts.domain, settings.url_port
        ));
        say(&egress);
        background.push(tokio::spawn(slipway_hook::steps::enforce(
            PathBuf::from("/sys/fs/cgroup"),
            rollout.build_steps,
            pushes_over.clone(),
        )));
        if let Ok((bridge, _)) = default_bridge(&docker).await {
            background.push(tokio::spawn(slipway_hook::egress::isolate_ports(
                bridge,
                pushes_over.clone(),
            )));
        }
        background.push(tokio::spawn(slipway_operator::router::run(
            http,
            table.clone(),
            rollout.router_threads,
            rollout.router_limits,
            pushes_over.clone(),
        )));
        background.push(tokio::spawn(slipway_operator::single_host::run(
            store.clone(),
            docker,
            table,
            settings,
            pushes_over.clone(),
        )));
    }
    say(&format!(
        "  host key {}\n  data {}\n  push with: git push ssh://git@{address}/WEBSPACE.git main",
        slipway_git_server::host_key::fingerprint(&key),
        data.display()
    ));
    let drain = slipway_git_server::run(listener, config, store, shutdown).await;
    pushes_over.cancel();
    for task in background {
        let _ = task.await;
    }
    let drain = drain?;
    if drain.finished {
        say("slipway: stopped; every running push finished");
    } else {
        say("slipway: stopped; pushes still running after the grace period were killed");
    }
    Ok(())
}

/// Adds the shipped Runtimes (`runtimes/defaults/`) that the store does not have yet, so
/// `slipway get runtimes` lists them; a Runtime applied under the same name is never replaced.
async fn install_default_runtimes(store: &impl Store) -> anyhow::Result<()> {
    use slipway_api::Runtime;
    for runtime in slipway_runtimes::defaults() {
        let name = runtime.metadata.name.clone().unwrap_or_default();
        if store.get::<Runtime>(&name).await?.is_none() {
            store.put(&runtime).await?;
            tracing::info!(runtime = %name, "installed default runtime");
        }
    }
    Ok(())
}

/// Starts the probe endpoints on `address`.
async fn start_probe(
    address: SocketAddr,
    probe: probe::Probe,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    say(&format!(
        "slipway probes on {}: /healthz /readyz /metrics",
        listener.local_addr()?
    ));
    tokio::spawn(probe::serve(listener, probe, stop));
    Ok(())
}

async fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    use slipway_operator::kubernetes;
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone())?;
    let store = slipway_store::KubeStore::connect_as(slipway_store::OPERATOR_FIELD_MANAGER)
        .await
        .context("cannot start the operator")?;
    let metrics = std::sync::Arc::new(slipway_operator::metrics::Metrics::default());
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(address) = args.probe_listen {
        let metrics = metrics.clone();
        start_probe(
            address,
            probe::Probe {
                ready: ready.clone(),
                watches: None,
                metrics: std::sync::Arc::new(move || metrics.render()),
            },
            shutdown.clone(),
        )
        .await?;
    }
    install_default_runtimes(&store).await?;
    // A standby replica is ready too: it serves probes and takes over when the leader goes.
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let nonempty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    let image_pull_config = match &args.image_pull_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--image-pull-config {}", path.display()))?;
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .filter(|config| config.get("auths").is_some_and(serde_json::Value::is_object))
                .with_context(|| {
                    format!(
                        "--image-pull-config {}: not a Docker client configuration (`{{\"auths\": {{...}}}}`)",
                        path.display()
                    )
                })?;
            Some(text)
        }
        None => None,
    };
    let settings = kubernetes::Settings {
        hosts: slipway_operator::Hosts {
            domain: args.domain,
            style: if args.flat_previews {
                slipway_operator::HostStyle::Flat
            } else {
                slipway_operator::HostStyle::Nested
            },
        },
        ingress_class: nonempty(args.ingress_class),
        cluster_issuer: nonempty(args.cluster_issuer),
        registry_rewrite: nonempty(args.registry).zip(nonempty(args.image_registry)),
        health_path: args.health_path,
        progress_deadline: args.progress_deadline,
        ingress_namespace: args.ingress_namespace,
        git_server_account: (
            args.lease_namespace.clone(),
            "slipway-git-server".to_owned(),
        ),
        image_pull_config,
        ..Default::default()
    };
    let holder = nonempty(args.holder)
        .or_else(|| nonempty(std::env::var("HOSTNAME").ok()))
        .unwrap_or_else(|| format!("slipway-operator-{}", std::process::id()));
    say(&format!(
        "slipway operator {holder}: apps at WEBSPACE.{}; waiting for the leader Lease {}/slipway-operator",
        settings.hosts.domain, args.lease_namespace
    ));
    let election = kubernetes::lease::Election {
        name: "slipway-operator".into(),
        holder,
        duration: Duration::from_secs(15),
    };
    kubernetes::run(
        store.client().clone(),
        settings,
        election,
        &args.lease_namespace,
        metrics,
        shutdown,
    )
    .await;
    say("slipway operator: stopped");
    Ok(())
}

/// Prints a status line for whoever started the server. A closed stdout (a supervisor that
/// stopped reading) must never take the server down, so write errors are ignored.
fn say(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

/// Writes command output; a reader that went away (`slipway get ws | head`) ends it quietly.
fn write_out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT. The handlers are installed before this
/// returns, so a signal sent as soon as the server announced itself is never lost.
fn on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("signal received; shutting down");
        shutdown.cancel();
    });
    Ok(())
}

async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let text = if args.file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    if !args.data.data.exists() {
        eprintln!(
            "note: creating the data directory {} (pass --data or set SLIPWAY_DATA to use another)",
            args.data.data.display()
        );
    }
    let store = open_store(&args.data.data)?;
    for applied in slipway_store::apply_documents(&store, &text).await? {
        println!("{applied}");
    }
    warn_dangling(&store).await?;
    Ok(())
}

fn kind(word: &str) -> anyhow::Result<slipway_store::TableKind> {
    match slipway_store::kind_of(word) {
        Some(kind) => Ok(kind),
        None => bail!(
            "unknown kind `{}`; use customers, webspaces, runtimes or releases",
            word.escape_default()
        ),
    }
}

async fn get(args: GetArgs) -> anyhow::Result<()> {
    let store = open_existing_store(&args.data.data)?;
    let format = match args.output {
        None => Format::Table,
        Some(Output::Yaml) => Format::Yaml,
        Some(Output::Json) => Format::Json,
    };
    let text = slipway_store::show_of(
        &store,
        kind(&args.kind)?,
        args.name.as_deref(),
        args.webspace.as_deref(),
        format,
    )
    .await?;
    write_out(&text);
    Ok(())
}

async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    use slipway_api::{Customer, Release, Runtime, Webspace};
    use slipway_store::TableKind;
    let store = open_existing_store(&args.data.data)?;
    let kind = kind(&args.kind)?;
    let existed = match kind {
        TableKind::Customer => store.delete::<Customer>(&args.name).await?,
        TableKind::Webspace => store.delete::<Webspace>(&args.name).await?,
        TableKind::Runtime => store.delete::<Runtime>(&args.name).await?,
        TableKind::Release => store.delete::<Release>(&args.name).await?,
    };
    let label = format!("{kind:?}").to_ascii_lowercase();
    if !existed {
        bail!("{label} `{}` not found", args.name.escape_default());
    }
    let deleted = format!("{label}.{}/{} deleted", slipway_api::GROUP, args.name);
    if kind == TableKind::Customer {
        let owned: Vec<String> = store
            .list::<Webspace>()
            .await?
            .into_iter()
            .filter(|w| w.spec.customer == args.name)
            .filter_map(|w| w.metadata.name)
            .collect();
        println!("{deleted}{}", customer_deleted(&owned));
    } else {
        println!("{deleted}");
    }
    Ok(())
}

/// What deleting a Customer means for the webspaces it owns (`owned`), as the rest of the
/// `delete` line: they stop serving, as on Kubernetes, and serve again once it exists again.
fn customer_deleted(owned: &[String]) -> String {
    let names: Vec<String> = owned.iter().map(|name| format!("`{name}`")).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => format!("; its webspace {one} stops serving until the customer exists again"),
        many => format!(
            "; its {} webspaces ({}) stop serving until the customer exists again",
            many.len(),
            many.join(", ")
        ),
    }
}

fn crds(args: CrdsArgs) -> anyhow::Result<()> {
    let documents = slipway_api::crds::documents();
    match args.write {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in documents {
                let path = dir.join(&file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        None => {
            for (_, yaml) in documents {
                write_out(&format!("---\n{yaml}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn deleting_a_customer_names_the_webspaces_that_stop() {
        let owned = |names: &[&str]| {
            super::customer_deleted(&names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(owned(&[]), "");
        assert_eq!(
            owned(&["blog"]),
            "; its webspace `blog` stops serving until the customer exists again"
        );
        assert_eq!(
            owned(&["blog", "shop"]),
            "; its 2 webspaces (`blog`, `shop`) stop serving until the customer exists again"
        );
    }
}
