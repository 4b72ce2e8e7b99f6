//! `slipway build-engine`: the Docker engine for builds inside a cluster, as the git server's
//! sidecar (deploy/git-server.yaml).
//!
//! It replaces the Docker-in-Docker image's entrypoint, which adds `--host=tcp://0.0.0.0:2375`
//! (an unauthenticated, privileged API for every pod that can reach the pod) before whatever
//! arguments it is given. Here the command line is written out in full:
//! - the engine listens on a unix socket only, in a directory the pod shares between the engine
//!   and the git server (an `emptyDir`), owned by the git server's group; no TCP port exists for
//!   anyone to reach, whatever the cluster's network policies;
//! - the build egress rules of a single host ([`slipway_hook::egress`]) are installed in the pod's
//!   network namespace *before* the engine starts, for the bridge the engine is told to make (name
//!   and subnet fixed here), so no `RUN` step ever runs without them: steps reach the internet and
//!   the resolvers, never the cluster (API server, registry, other pods and Services), the node or
//!   the metadata endpoint, unless a range is allowed with `--build-allow-range`;
//! - no frame passes between two ports of that bridge (ebtables, then the ports' isolation flag):
//!   the steps of concurrent builds cannot reach each other, ARP included;
//! - then it starts `dockerd` and stays beside it: it gives every BuildKit step the limits of a
//!   single host (`--build-step-memory`, `-pids`, `-cpus`, [`slipway_hook::steps`]; the engine
//!   applies none to BuildKit's steps) and passes SIGTERM/SIGINT on to the engine, whose exit
//!   status it returns.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

/// The bridge the engine makes for builds' `RUN` steps, fixed so its rules exist before it does.
const BRIDGE: &str = "docker0";
/// Its gateway address and subnet: a private range the rules reject for everything but replies.
const BRIDGE_IP: &str = "172.17.0.1/16";
const BRIDGE_SUBNET: &str = "172.17.0.0/16";
/// The comment tag of `--build-allow-range` rules (one installation per pod).
const INSTANCE: &str = "build-engine";

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// The unix socket the engine listens on (its directory is shared with the git server).
    #[arg(long, default_value = "/run/slipway-engine/docker.sock")]
    socket: PathBuf,
    /// The group that owns the socket: the git server's (runAsGroup in deploy/).
    #[arg(long, default_value_t = 10001)]
    group: u32,
    /// Where the engine keeps images and build cache.
    #[arg(long, default_value = "/var/lib/docker")]
    data_root: PathBuf,
    /// A registry the engine pushes to over plain HTTP (`HOST:PORT` or a CIDR); repeatable.
    #[arg(long)]
    insecure_registry: Vec<String>,
    /// A range builds' `RUN` steps may reach although it is private (e.g. a package mirror);
    /// repeatable.
    #[arg(long, env = "SLIPWAY_BUILD_ALLOW_RANGES", value_delimiter = ',')]
    build_allow_range: Vec<String>,
    #[command(flatten)]
    build_steps: crate::BuildStepArgs,
    /// Print the engine's command line instead of running it (the rules are not installed).
    #[arg(long)]
    dry_run: bool,
    /// More `dockerd` arguments, after `--`.
    #[arg(last = true)]
    dockerd_args: Vec<String>,
}

/// `dockerd`'s arguments: the socket, the fixed bridge, and what the operator adds.
fn dockerd_args(args: &EngineArgs) -> anyhow::Result<Vec<String>> {
    for extra in &args.dockerd_args {
        // Anything that would open the engine to the network, or move its bridge out from under
        // the rules, is refused rather than passed on.
        // (`-Htcp://...` and `--host=...` alike: matched by prefix.)
        let refused = [
            "-H",
            "--host",
            "--bip",
            "-b",
            "--bridge",
            "--iptables",
            "--group",
            "-G",
        ];
        if refused.iter().any(|flag| extra.starts_with(flag)) {
            bail!("`{extra}` is set by `slipway build-engine` itself and cannot be given");
        }
    }
    let mut out = vec![
        format!("--host=unix://{}", args.socket.display()),
        format!("--group={}", args.group),
        format!("--data-root={}", args.data_root.display()),
        format!("--bip={BRIDGE_IP}"),
        // Containers of the engine never get the host's (the pod's) ports published.
        "--userland-proxy=false".to_owned(),
    ];
    out.extend(
        args.insecure_registry
            .iter()
            .map(|r| format!("--insecure-registry={r}")),
    );
    out.extend(args.dockerd_args.iter().cloned());
    Ok(out)
}

/// Installs the rules, then runs `dockerd` and limits its build steps until it exits; its exit
/// code.
pub fn run(args: EngineArgs) -> anyhow::Result<u8> {
    let allowed = args
        .build_allow_range
        .iter()
        .map(|range| slipway_hook::egress::parse_range(range.trim()))
        .collect::<Result<Vec<_>, _>>()
        .context("--build-allow-range")?;
    let dockerd = dockerd_args(&args)?;
    if args.dry_run {
        println!("dockerd {}", dockerd.join(" "));
        return Ok(0);
    }
    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket directory {}", dir.display()))?;
    }
    // The engine adds its own rules to DOCKER-USER, the chain it leaves to users, and jumps to it
    // first on the forward path; made now so the build rules hang off it from the start.
    let _ = Command::new("iptables")
        .args(["-w", "-N", "DOCKER-USER"])
        .output();
    slipway_hook::egress::install(BRIDGE, BRIDGE_SUBNET, INSTANCE, &allowed).context(
        "cannot install the build egress rules (iptables in the pod's network namespace); \
         the engine was not started",
    )?;
    // Every veth here is a port of the build bridge: none forwards to another, so one build's
    // step cannot answer ARP for another's gateway.
    slipway_hook::egress::isolate_veth_ports().context(
        "cannot keep builds apart on the build bridge (ebtables in the pod's network namespace); \
         the engine was not started",
    )?;
    let limits = args.build_steps.limits();
    crate::init_tracing();
    eprintln!(
        "slipway build-engine: builds reach the internet only (rules on {BRIDGE} {BRIDGE_SUBNET}{}); \
         each build step gets {} MiB, {} processes, {} CPU(s); engine on unix://{}",
        if allowed.is_empty() {
            String::new()
        } else {
            format!(", and {}", allowed.join(", "))
        },
        limits.memory >> 20,
        limits.pids,
        limits.cpus,
        args.socket.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(supervise(dockerd, limits))
}

async fn supervise(
    dockerd: Vec<String>,
    limits: slipway_hook::steps::StepLimits,
) -> anyhow::Result<u8> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut engine = tokio::process::Command::new("dockerd")
        .args(&dockerd)
        .spawn()
        .context("cannot run dockerd")?;
    let pid = engine
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(nix::unistd::Pid::from_raw)
        .context("dockerd has no process id")?;
    let stop = tokio_util::sync::CancellationToken::new();
    let steps = tokio::spawn(slipway_hook::steps::enforce(
        PathBuf::from("/sys/fs/cgroup"),
        limits,
        stop.clone(),
    ));
    let isolation = tokio::spawn(slipway_hook::egress::isolate_ports(
        BRIDGE.to_owned(),
        stop.clone(),
    ));
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let status = loop {
        let forwarded = tokio::select! {
            status = engine.wait() => break status.context("waiting for dockerd")?,
            _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
            _ = int.recv() => nix::sys::signal::Signal::SIGINT,
        };
        // dockerd stops its containers and exits; the kubelet's grace period bounds it.
        let _ = nix::sys::signal::kill(pid, forwarded);
    };
    stop.cancel();
    let _ = steps.await;
    let _ = isolation.await;
    eprintln!("slipway build-engine: dockerd exited ({status})");
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    fn args(words: &[&str]) -> EngineArgs {
        Cli::parse_from(std::iter::once("build-engine").chain(words.iter().copied())).engine
    }

    #[test]
    fn the_engine_listens_on_its_socket_only_with_the_fixed_bridge() {
        let out = dockerd_args(&args(&["--insecure-registry", "10.96.0.0/16"])).expect("args");
        assert!(out.contains(&"--host=unix:///run/slipway-engine/docker.sock".to_owned()));
        assert!(out.contains(&"--bip=172.17.0.1/16".to_owned()));
        assert!(out.contains(&"--insecure-registry=10.96.0.0/16".to_owned()));
        assert!(!out.iter().any(|a| a.contains("tcp://")));
    }

    #[test]
    fn a_tcp_host_or_another_bridge_is_refused() {
        for extra in [
            "--host=tcp://0.0.0.0:2375",
            "-Htcp://0.0.0.0:2375",
            "-H",
            "--bip=10.0.0.1/8",
            "--iptables=false",
        ] {
            let error = dockerd_args(&args(&["--", extra])).expect_err(extra);
            assert!(error.to_string().contains("cannot be given"), "{error}");
        }
        assert!(dockerd_args(&args(&["--", "--mtu=1400"])).is_ok());
    }
}
