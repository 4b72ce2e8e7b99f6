//! `slipway hook pre-receive|post-receive`: run by git inside a push, configured only through
//! the SLIPWAY_* environment the git server sets (and git's own hook environment).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use slipway_api::env;
use slipway_hook::report::Reporter;

/// Which hook git is running.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    /// Before refs move: builds, and decides whether the push is accepted.
    PreReceive,
    /// After refs moved: promotes what was staged.
    PostReceive,
}

#[derive(Debug, Args)]
pub struct HookArgs {
    /// The hook to run.
    which: Which,
    /// Data directory.
    #[arg(long, env = env::DATA)]
    data: PathBuf,
    /// Webspace pushed to.
    #[arg(long, env = env::WEBSPACE)]
    webspace: String,
    /// Customer that pushed.
    #[arg(long, env = env::CUSTOMER)]
    customer: String,
    /// Fingerprint of the key that pushed.
    #[arg(long, env = env::PUSHER)]
    pusher: String,
    /// Registry to push images to.
    #[arg(long, env = env::REGISTRY)]
    registry: Option<String>,
    /// The repository (git runs hooks inside it).
    #[arg(long, env = env::GIT_DIR, default_value = ".")]
    git_dir: PathBuf,
    /// git's quarantine directory holding the pushed objects.
    #[arg(long, env = env::GIT_QUARANTINE_PATH)]
    quarantine: Option<PathBuf>,
    /// `0` when the server does not build (started with `--no-build`).
    #[arg(long, env = env::BUILD, default_value = "1")]
    build: String,
    /// Docker client configuration directory (registry credentials in `config.json`).
    #[arg(long, env = "DOCKER_CONFIG")]
    docker_config: Option<PathBuf>,
    /// Home directory, for `~/.docker` when `DOCKER_CONFIG` is unset.
    #[arg(long, env = "HOME", hide = true)]
    home: Option<PathBuf>,
    /// `1` when an operator on this host rolls releases out (`slipway up`).
    #[arg(long, env = env::ROLLOUT, default_value = "0")]
    rollout: String,
    /// The engine's builder: `buildkit`, or `classic` (memory and CPU limits on build steps).
    #[arg(long, env = env::BUILDER, default_value = "buildkit", value_parser = ["buildkit", "classic"])]
    builder: String,
    /// Where resources live: `directory` or `kube`.
    #[arg(long, env = env::STORE, default_value = "directory", value_parser = crate::parse_backend)]
    store: slipway_store::Backend,
    /// Seconds the operator gives a new release to answer (the verdict comes within them).
    #[arg(long, env = env::HEALTH_TIMEOUT, default_value_t = 30)]
    health_timeout: u64,
    /// Builds running at once on this host.
    #[arg(long, env = env::MAX_BUILDS, default_value_t = 2)]
    max_builds: usize,
    /// Seconds a build may take.
    #[arg(long, env = env::BUILD_TIMEOUT, default_value_t = 900)]
    build_timeout: u64,
}

/// Reads git's `old new ref` lines from stdin and runs the hook; the exit code is the verdict.
pub fn run(args: HookArgs) -> ExitCode {
    let reporter = Reporter::new(Some(args.data.join("logs").join("hooks.log")));
    if !slipway_hook::die_with_git() {
        reporter.log("git ended before its hook started; nothing done");
        return ExitCode::FAILURE;
    }
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        reporter.error("cannot read the pushed refs", None);
        return ExitCode::FAILURE;
    }
    let config = slipway_hook::Config {
        data: args.data,
        webspace: args.webspace,
        customer: args.customer,
        pusher: args.pusher,
        registry: args.registry.filter(|r| !r.is_empty()),
        build: args.build != "0",
        rollout: args.rollout == "1",
        store: args.store,
        health_timeout: Duration::from_secs(args.health_timeout),
        docker_config: args
            .docker_config
            .or_else(|| args.home.map(|home| home.join(".docker"))),
        git_dir: args.git_dir,
        quarantine: args.quarantine,
        max_builds: args.max_builds,
        limits: slipway_hook::build::Limits {
            timeout: Duration::from_secs(args.build_timeout),
            builder: if args.builder == "classic" {
                slipway_hook::build::Builder::Classic
            } else {
                slipway_hook::build::Builder::BuildKit
            },
            ..Default::default()
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            reporter.failure("the server cannot run the hook", &error);
            return ExitCode::FAILURE;
        }
    };
    let accepted = runtime.block_on(async {
        match args.which {
            Which::PreReceive => slipway_hook::pre_receive(&config, &input, &reporter).await,
            Which::PostReceive => slipway_hook::post_receive(&config, &input, &reporter).await,
        }
    });
    if accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
