//! `slipway ops VERB ...`: the commands a webspace's owner runs over SSH (`ssh git@HOST logs
//! blog`). The git server authorizes the caller and the webspace exactly as for git, then runs
//! this with the hooks' environment contract (data directory, store, customer); what it prints
//! goes to the caller. Plain text for people, `--json` for scripts, `error:`/`hint:` lines and a
//! non-zero exit on failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use slipway_api::{Release, Webspace, env};
use slipway_store::{AnyStore, Backend, Store};

/// What the SSH client sent after the verb, parsed.
#[derive(Debug, Parser)]
#[command(name = "ssh git@HOST", disable_help_subcommand = true)]
struct Request {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// What you can run here.
    Help,
    /// Your webspaces, with their URL and phase.
    Apps {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A webspace: its branches, what serves each, and its conditions.
    Info {
        webspace: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A webspace's releases, newest first.
    Releases {
        webspace: String,
        /// Only this branch.
        branch: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// An app's output (stdout and stderr).
    Logs {
        webspace: String,
        /// The branch (default: the production branch).
        branch: Option<String>,
        /// Lines from the end.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: u32,
        /// Keep following, across redeploys, until you leave.
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

/// How the git server runs it.
#[derive(Debug, Args)]
pub struct OpsArgs {
    /// Data directory.
    #[arg(long, env = env::DATA)]
    data: PathBuf,
    /// The customer who asks (authorized by the git server).
    #[arg(long, env = env::CUSTOMER)]
    customer: String,
    /// Where resources live: `directory` or `kube`.
    #[arg(long, env = env::STORE, default_value = "directory", value_parser = crate::parse_backend)]
    store: Backend,
    /// The verb and its arguments, as the SSH client sent them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    words: Vec<String>,
}

/// A refusal for the caller: a message and, where they can fix it, a hint.
struct Refusal {
    message: String,
    hint: Option<String>,
}

impl Refusal {
    fn new(message: impl Into<String>, hint: Option<&str>) -> Self {
        Self {
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }
}

impl From<slipway_store::StoreError> for Refusal {
    fn from(error: slipway_store::StoreError) -> Self {
        tracing::error!(error = %slipway_operator::chain(&error), "store");
        Refusal::new(
            "the server cannot read its configuration; try again later",
            None,
        )
    }
}

/// Runs one owner's command; the exit code says whether it worked.
pub fn run(args: OpsArgs) -> ExitCode {
    let request = match Request::try_parse_from(
        std::iter::once("ssh git@HOST".to_owned()).chain(args.words.iter().cloned()),
    ) {
        Ok(request) => request,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(_) => {
            eprintln!("error: the server cannot run the command; try again later");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(verb(&args, request.verb)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(refusal) => {
            eprintln!("error: {}", refusal.message);
            if let Some(hint) = refusal.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

const HELP: &str = "\
Commands for your webspaces (ssh git@HOST COMMAND ...):
  help                                   this list
  apps [--json]                          your webspaces, their URL and phase
  info WEBSPACE [--json]                 branches, what serves each, conditions
  releases WEBSPACE [BRANCH] [--json]    releases, newest first
  logs WEBSPACE [BRANCH] [-n N] [-f]     the app's output; -f follows until you leave
Push with: git push ssh://git@HOST/WEBSPACE.git BRANCH
";

async fn verb(args: &OpsArgs, verb: Verb) -> Result<(), Refusal> {
    if let Verb::Help = verb {
        print!("{HELP}");
        return Ok(());
    }
    let store = AnyStore::open(args.store, &args.data)
        .await
        .map_err(Refusal::from)?;
    match verb {
        Verb::Help => Ok(()),
        Verb::Apps { json } => apps(&store, &args.customer, json).await,
        Verb::Info { webspace, json } => {
            let webspace = owned(&store, &args.customer, &webspace).await?;
            info(&webspace, json)
        }
        Verb::Releases {
            webspace,
            branch,
            json,
        } => {
            let webspace = owned(&store, &args.customer, &webspace).await?;
            releases(&store, &webspace, branch.as_deref(), json).await
        }
        Verb::Logs {
            webspace,
            branch,
            lines,
            follow,
        } => {
            let webspace = owned(&store, &args.customer, &webspace).await?;
            logs(args, &store, &webspace, branch.as_deref(), lines, follow).await
        }
    }
}

/// The webspace `name` if `customer` owns it; an unknown one and another's answer alike.
async fn owned(store: &AnyStore, customer: &str, name: &str) -> Result<Webspace, Refusal> {
    match store.get::<Webspace>(name).await? {
        Some(webspace) if webspace.spec.customer == customer => Ok(webspace),
        _ => Err(Refusal::new(
            format!("webspace `{name}` does not exist or you have no access to it"),
            Some("`ssh git@HOST apps` lists yours"),
        )),
    }
}

fn print_json(value: &serde_json::Value) -> Result<(), Refusal> {
    let text =
        serde_json::to_string_pretty(value).map_err(|_| Refusal::new("cannot print JSON", None))?;
    println!("{text}");
    Ok(())
}

/// Prints `rows` as columns separated by two spaces, the first row a header.
fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

fn name_of(webspace: &Webspace) -> &str {
    webspace.metadata.name.as_deref().unwrap_or_default()
}

async fn apps(store: &AnyStore, customer: &str, json: bool) -> Result<(), Refusal> {
    let mine: Vec<Webspace> = store
        .list::<Webspace>()
        .await?
        .into_iter()
        .filter(|w| w.spec.customer == customer)
        .collect();
    let row = |w: &Webspace| {
        let status = w.status.clone().unwrap_or_default();
        (
            name_of(w).to_owned(),
            status.url.unwrap_or_default(),
            status.phase.unwrap_or_else(|| "Pending".to_owned()),
        )
    };
    if json {
        let items: Vec<serde_json::Value> = mine
            .iter()
            .map(|w| {
                let (name, url, phase) = row(w);
                serde_json::json!({"name": name, "url": url, "phase": phase})
            })
            .collect();
        return print_json(&serde_json::Value::Array(items));
    }
    if mine.is_empty() {
        println!("no webspaces yet; an administrator creates them");
        return Ok(());
    }
    let mut rows = vec![vec!["NAME".into(), "URL".into(), "PHASE".into()]];
    rows.extend(mine.iter().map(|w| {
        let (name, url, phase) = row(w);
        vec![name, url, phase]
    }));
    print_table(&rows);
    Ok(())
}

fn info(webspace: &Webspace, json: bool) -> Result<(), Refusal> {
    let status = webspace.status.clone().unwrap_or_default();
    if json {
        return print_json(&serde_json::json!({
            "name": name_of(webspace),
            "productionBranch": webspace.spec.production_branch,
            "replicas": webspace.spec.replicas,
            "status": status,
        }));
    }
    println!(
        "webspace {}: {} ({})",
        name_of(webspace),
        status.phase.as_deref().unwrap_or("Pending"),
        status.url.as_deref().unwrap_or("no URL yet")
    );
    println!(
        "production branch `{}`, {} replica(s)",
        webspace.spec.production_branch, webspace.spec.replicas
    );
    if status.branches.is_empty() {
        println!("nothing serves yet: push a branch");
    } else {
        let mut rows = vec![vec![
            "BRANCH".into(),
            "URL".into(),
            "READY".into(),
            "RELEASE".into(),
        ]];
        rows.extend(status.branches.iter().map(|b| {
            vec![
                b.branch.clone(),
                b.url.clone(),
                b.ready_replicas.to_string(),
                b.release.clone(),
            ]
        }));
        print_table(&rows);
    }
    for condition in &status.conditions {
        println!(
            "{}: {} ({}) {}",
            condition.type_, condition.status, condition.reason, condition.message
        );
    }
    if let Some(error) = &status.last_error {
        println!("last error: {error}");
    }
    Ok(())
}

/// The releases of `webspace` (of `branch`, if given), newest first.
async fn releases_of(
    store: &AnyStore,
    webspace: &str,
    branch: Option<&str>,
) -> Result<Vec<Release>, Refusal> {
    let mut releases: Vec<Release> = store
        .list::<Release>()
        .await?
        .into_iter()
        .filter(|r| r.spec.webspace == webspace && branch.is_none_or(|b| r.spec.branch == b))
        .collect();
    releases.sort_by(|a, b| b.order().cmp(&a.order()));
    Ok(releases)
}

async fn releases(
    store: &AnyStore,
    webspace: &Webspace,
    branch: Option<&str>,
    json: bool,
) -> Result<(), Refusal> {
    let releases = releases_of(store, name_of(webspace), branch).await?;
    if json {
        let items: Vec<serde_json::Value> = releases
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.metadata.name,
                    "version": r.spec.version,
                    "branch": r.spec.branch,
                    "commit": r.spec.commit,
                    "image": r.spec.image,
                    "pusher": r.spec.pusher,
                    "pushedAt": r.pushed_at().map(|t| t.to_string()),
                    "status": r.status,
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(items));
    }
    if releases.is_empty() {
        println!("no releases yet: push a branch");
        return Ok(());
    }
    let mut rows = vec![vec![
        "VERSION".into(),
        "BRANCH".into(),
        "COMMIT".into(),
        "PHASE".into(),
        "PUSHED".into(),
        "BY".into(),
        "REASON".into(),
    ]];
    rows.extend(releases.iter().map(|r| {
        let status = r.status.clone().unwrap_or_default();
        vec![
            r.spec.version.map(|v| format!("v{v}")).unwrap_or_default(),
            r.spec.branch.clone(),
            r.spec.commit.chars().take(7).collect(),
            status.phase.unwrap_or_default(),
            r.pushed_at().map(|t| t.to_string()).unwrap_or_default(),
            r.spec.pusher.chars().take(20).collect(),
            status.reason.unwrap_or_default(),
        ]
    }));
    print_table(&rows);
    Ok(())
}

/// How long `logs -f` waits for a branch to serve again after its container went away (a
/// redeploy takes about a second; a deleted branch never comes back).
const FOLLOW_GAP: std::time::Duration = std::time::Duration::from_secs(30);

/// The release serving `branch` of `webspace` now, from the webspace's status.
async fn serving(
    store: &AnyStore,
    webspace: &str,
    branch: &str,
) -> Result<Option<String>, Refusal> {
    Ok(store
        .get::<Webspace>(webspace)
        .await?
        .and_then(|w| w.status)
        .and_then(|s| s.branches.into_iter().find(|b| b.branch == branch))
        .map(|b| b.release))
}

async fn logs(
    args: &OpsArgs,
    store: &AnyStore,
    webspace: &Webspace,
    branch: Option<&str>,
    lines: u32,
    follow: bool,
) -> Result<(), Refusal> {
    let name = name_of(webspace);
    let branch = branch.unwrap_or(&webspace.spec.production_branch);
    if args.store == Backend::Kube {
        return Err(Refusal::new(
            "logs over SSH are not served on a cluster yet",
            Some(&format!(
                "an administrator can run `kubectl logs -n slipway-{} -l slipway.dev/webspace={name}`",
                webspace.spec.customer
            )),
        ));
    }
    let Some(mut release) = serving(store, name, branch).await? else {
        return Err(Refusal::new(
            format!("nothing serves branch `{branch}` of `{name}`"),
            Some(&format!("`ssh git@HOST info {name}` lists its branches")),
        ));
    };
    let docker = bollard::Docker::connect_with_defaults()
        .map_err(|_| Refusal::new("the app engine is unavailable; try again later", None))?;
    let instance = slipway_operator::docker::instance(&args.data);
    let mut tail = lines.to_string();
    loop {
        let container = slipway_operator::docker::container_name(&instance, &release);
        let mut stream = docker.logs(
            &container,
            Some(bollard::query_parameters::LogsOptions {
                stdout: true,
                stderr: true,
                follow,
                tail: tail.clone(),
                ..Default::default()
            }),
        );
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            let mut out = std::io::stdout().lock();
            if out.write_all(&chunk.into_bytes()).is_err() || out.flush().is_err() {
                // The caller left.
                return Ok(());
            }
        }
        if !follow {
            return Ok(());
        }
        // The container stopped: a redeploy replaces it, the engine restarts it after a crash,
        // or the branch is gone.
        let deadline = tokio::time::Instant::now() + FOLLOW_GAP;
        let next = loop {
            match serving(store, name, branch).await? {
                Some(next) if next != release => break Some(next),
                _ if running(&docker, &container).await => break Some(release.clone()),
                _ if tokio::time::Instant::now() >= deadline => break None,
                _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        };
        let Some(next) = next else {
            eprintln!("slipway: `{branch}` of `{name}` no longer serves; stopped following");
            return Ok(());
        };
        if next == release {
            eprintln!("slipway: the app restarted; following it");
            tail = "0".to_owned();
            continue;
        }
        let version = store
            .get::<Release>(&next)
            .await?
            .and_then(|r| r.spec.version)
            .map(|v| format!("v{v} "))
            .unwrap_or_default();
        eprintln!("slipway: `{branch}` is now served by {version}`{next}`; following it");
        release = next;
        tail = "all".to_owned();
    }
}

/// Whether the container named `container` runs.
async fn running(docker: &bollard::Docker, container: &str) -> bool {
    docker
        .inspect_container(container, None)
        .await
        .ok()
        .and_then(|i| i.state)
        .and_then(|s| s.running)
        .unwrap_or(false)
}
