//! `slipway ops VERB ...`: the commands a webspace's owner runs over SSH (`ssh git@HOST logs
//! blog`). The git server authorizes the caller and the webspace exactly as for git, then runs
//! this with the hooks' environment contract (data directory, store, customer); what it prints
//! goes to the caller. Plain text for people, `--json` for scripts, `error:`/`hint:` lines and a
//! non-zero exit on failure.

use std::collections::BTreeMap;
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
    /// A new release from an earlier one's image (default: the one before what serves), with
    /// the current config; it goes through the health check like a push.
    Rollback {
        webspace: String,
        /// The branch (default: the production branch), or the version when alone.
        branch: Option<String>,
        /// The version to go back to, like `v3`.
        version: Option<String>,
    },
    /// A new release of what serves the branch, started afresh.
    Restart {
        webspace: String,
        /// The branch (default: the production branch).
        branch: Option<String>,
    },
    /// The webspace's config, values masked.
    Config {
        webspace: String,
        /// Show the values.
        #[arg(long)]
        reveal: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set config values; each serving branch gets a new release with them.
    #[command(name = "config:set")]
    ConfigSet {
        webspace: String,
        /// `KEY=VALUE` pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Remove config values; each serving branch gets a new release without them.
    #[command(name = "config:unset")]
    ConfigUnset {
        webspace: String,
        /// Names to remove.
        #[arg(required = true)]
        keys: Vec<String>,
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
    /// Fingerprint of the caller's key (recorded as who made a release).
    #[arg(long, env = env::PUSHER, default_value = "")]
    pusher: String,
    /// Seconds the operator gives a new release to answer.
    #[arg(long, env = env::HEALTH_TIMEOUT, default_value_t = 30)]
    health_timeout: u64,
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
        // The detail is the server's (its log), not the caller's.
        let log = std::env::var_os(env::DATA)
            .map(|data| PathBuf::from(data).join("logs").join("ops.log"));
        slipway_hook::report::Reporter::new(log)
            .log(&format!("store: {}", slipway_operator::chain(&error)));
        Refusal::new(
            "the server cannot read its configuration; try again later",
            None,
        )
    }
}

/// The same commands for an administrator (`slipway logs blog`): on the data directory (or
/// the cluster), as the webspace's owner.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Data directory.
    #[arg(long, env = env::DATA, default_value = "./slipway-data")]
    data: PathBuf,
    /// Where resources live: `directory` or `kube`.
    #[arg(long, env = env::STORE, default_value = "directory", value_parser = crate::parse_backend)]
    store: Backend,
    /// Seconds the operator gives a new release to answer.
    #[arg(long, env = env::HEALTH_TIMEOUT, default_value_t = 30)]
    health_timeout: u64,
    /// The webspace, then the command's own arguments (`slipway logs blog -n 20`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    words: Vec<String>,
}

/// Runs `verb` for an administrator: as the owner of the webspace its first argument names.
pub fn admin(verb: &str, args: AdminArgs) -> ExitCode {
    let webspace = args.words.first().cloned().unwrap_or_default();
    let owner = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|runtime| {
            runtime.block_on(async {
                let store = AnyStore::open(args.store, &args.data).await.ok()?;
                let found: Option<Webspace> = store.get(&webspace).await.ok()?;
                found.map(|w| w.spec.customer)
            })
        });
    let Some(customer) = owner else {
        eprintln!("error: webspace `{webspace}` does not exist");
        eprintln!("hint: `slipway get webspaces` lists them");
        return ExitCode::FAILURE;
    };
    // A change of what runs waits for a push to the webspace, and a push for it, as an owner's
    // command over SSH does (the git server holds the same lock file on this host).
    let mutates = slipway_git_server::command::Verb::named(verb)
        .is_some_and(slipway_git_server::command::Verb::mutates);
    let _changing = if mutates && args.store == Backend::Directory {
        match hold_changes(&args.data, &webspace) {
            Ok(held) => held,
            Err(()) => return ExitCode::FAILURE,
        }
    } else {
        None
    };
    run(OpsArgs {
        data: args.data,
        customer,
        store: args.store,
        pusher: "administrator".to_owned(),
        health_timeout: args.health_timeout,
        words: std::iter::once(verb.to_owned()).chain(args.words).collect(),
    })
}

/// How long an administrator's command waits for a push to the webspace (a push's own wait).
const CHANGES_WAIT: std::time::Duration = std::time::Duration::from_secs(1200);

/// Takes `webspace`'s change lock on this host, waiting for a push that holds it (`None` when
/// the lock file cannot be made: going on without it, as the git server does); `Err` after
/// telling why the wait ended.
fn hold_changes(
    data: &std::path::Path,
    webspace: &str,
) -> Result<Option<slipway_store::changes::Changing>, ()> {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        match slipway_store::changes::try_hold(data, webspace) {
            Ok(Some(held)) => return Ok(Some(held)),
            Ok(None) if started.elapsed() >= CHANGES_WAIT => {
                eprintln!("error: a push to `{webspace}` is still running");
                eprintln!("hint: run it again when the push has finished");
                return Err(());
            }
            Ok(None) => {
                if !told {
                    eprintln!("waiting for a push to `{webspace}` to finish...");
                    told = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(error) => {
                eprintln!(
                    "warning: cannot take `{webspace}`'s lock ({error}); going on without it"
                );
                return Ok(None);
            }
        }
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
  rollback WEBSPACE [BRANCH] [vN]        a new release from an earlier one's image
  restart WEBSPACE [BRANCH]              a new release of what serves, started afresh
  config WEBSPACE [--reveal] [--json]    config values (masked)
  config:set WEBSPACE KEY=VALUE...       set values: a new release with them
  config:unset WEBSPACE KEY...           remove values: a new release without them
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
        Verb::Rollback {
            webspace,
            branch,
            version,
        } => {
            let webspace = owned(&store, &args.customer, &webspace).await?;
            // `rollback blog v3`: a lone version, on the production branch.
            let (branch, version) = match (branch, version) {
                (Some(b), None) if parse_version(&b).is_some() => (None, Some(b)),
                other => other,
            };
            rollback(
                args,
                &store,
                &webspace,
                branch.as_deref(),
                version.as_deref(),
            )
            .await
        }
        Verb::Restart { webspace, branch } => {
            let webspace = owned(&store, &args.customer, &webspace).await?;
            let branch = branch.unwrap_or_else(|| webspace.spec.production_branch.clone());
            let serving = live_release(&store, name_of(&webspace), &branch).await?;
            redeploy(args, &store, &serving, "restart").await
        }
        Verb::Config {
            webspace,
            reveal,
            json,
        } => {
            let webspace = owned(&store, &args.customer, &webspace).await?;
            show_config(args, &webspace, reveal, json).await
        }
        Verb::ConfigSet { webspace, pairs } => {
            let webspace = owned(&store, &args.customer, &webspace).await?;
            let mut changes = Vec::new();
            for pair in &pairs {
                let Some((key, value)) = pair.split_once('=') else {
                    return Err(Refusal::new(
                        format!("`{pair}` is not KEY=VALUE"),
                        Some("config:set blog TOKEN=abc LEVEL=debug"),
                    ));
                };
                check_key(key)?;
                changes.push((key.to_owned(), Some(value.to_owned())));
            }
            change_config(args, &store, &webspace, changes).await
        }
        Verb::ConfigUnset { webspace, keys } => {
            let webspace = owned(&store, &args.customer, &webspace).await?;
            let mut changes = Vec::new();
            for key in &keys {
                check_key(key)?;
                changes.push((key.clone(), None));
            }
            change_config(args, &store, &webspace, changes).await
        }
    }
}

/// `v3` → 3.
fn parse_version(text: &str) -> Option<u32> {
    text.strip_prefix('v')?.parse().ok()
}

/// The release serving `branch` of `webspace` (its `Live` one).
async fn live_release(store: &AnyStore, webspace: &str, branch: &str) -> Result<Release, Refusal> {
    releases_of(store, webspace, Some(branch))
        .await?
        .into_iter()
        .find(|r| r.phase() == "Live")
        .ok_or_else(|| {
            Refusal::new(
                format!("nothing serves branch `{branch}` of `{webspace}`"),
                Some("push it first; `releases WEBSPACE` lists what there is"),
            )
        })
}

async fn rollback(
    args: &OpsArgs,
    store: &AnyStore,
    webspace: &Webspace,
    branch: Option<&str>,
    version: Option<&str>,
) -> Result<(), Refusal> {
    let name = name_of(webspace);
    let branch = branch.unwrap_or(&webspace.spec.production_branch);
    let releases = releases_of(store, name, Some(branch)).await?;
    let serving = releases.iter().find(|r| r.phase() == "Live");
    let target = match version {
        Some(text) => {
            let wanted = parse_version(text).ok_or_else(|| {
                Refusal::new(
                    format!("`{text}` is not a version"),
                    Some("versions look like `v3`"),
                )
            })?;
            releases
                .iter()
                .find(|r| r.spec.version == Some(wanted))
                .ok_or_else(|| {
                    Refusal::new(
                        format!("branch `{branch}` of `{name}` has no release {text}"),
                        Some(&format!(
                            "`releases {name} {branch}` lists what can be rolled back to"
                        )),
                    )
                })?
        }
        None => {
            let Some(serving) = serving else {
                return Err(Refusal::new(
                    format!("nothing serves branch `{branch}` of `{name}`"),
                    Some("push it first"),
                ));
            };
            // The newest one before it that once served (not a refused or abandoned one).
            releases
                .iter()
                .find(|r| r.order() < serving.order() && r.phase() == "Superseded")
                .ok_or_else(|| {
                    Refusal::new(
                        format!("branch `{branch}` of `{name}` has no earlier release"),
                        Some(&format!("`releases {name} {branch}` lists them")),
                    )
                })?
        }
    };
    if serving.is_some_and(|s| s.spec.image == target.spec.image) && version.is_none() {
        return Err(Refusal::new(
            "the earlier release runs the same image as the serving one",
            Some("name a version: `rollback WEBSPACE BRANCH vN`"),
        ));
    }
    if args.store == Backend::Directory && !image_present(&target.spec.image).await {
        return Err(Refusal::new(
            format!(
                "the image of {} is gone (old releases' images are pruned)",
                target
                    .spec
                    .version
                    .map(|v| format!("v{v}"))
                    .unwrap_or_default()
            ),
            Some("roll back to a newer release, or push that commit again"),
        ));
    }
    let cause = match target.spec.version {
        Some(v) => format!("rollback to v{v}"),
        None => "rollback".to_owned(),
    };
    redeploy(args, store, target, &cause).await
}

/// Whether the engine holds `image` (on one host, where releases start from its copy).
async fn image_present(image: &str) -> bool {
    let Ok(docker) = bollard::Docker::connect_with_defaults() else {
        return false;
    };
    docker.inspect_image(image).await.is_ok()
}

/// Stages a new release of `base`'s build for `cause`, waits for the operator's verdict like a
/// push, then promotes it and waits until it serves. A refused one is removed again: nothing
/// that serves changes.
async fn redeploy(
    args: &OpsArgs,
    store: &AnyStore,
    base: &Release,
    cause: &str,
) -> Result<(), Refusal> {
    let webspace = &base.spec.webspace;
    let branch = &base.spec.branch;
    let all = store.list::<Release>().await?;
    let version = slipway_hook::release::next_version(&all, webspace);
    let mut release = slipway_hook::release::derived(base, version, cause, &args.pusher);
    let name = release.metadata.name.clone().unwrap_or_default();
    let reporter =
        slipway_hook::report::Reporter::new(Some(args.data.join("logs").join("ops.log")));
    release.spec.config_keys =
        slipway_hook::config_keys(args.store, &args.data, &args.customer, webspace, &reporter)
            .await;
    // Held while the verdict is awaited: the operator fails a staged release whose maker died.
    let _marker = match args.store {
        Backend::Directory => Some(
            slipway_store::pushes::Pushing::hold(&args.data, &name)
                .map_err(|_| Refusal::new("the server cannot record the release", None))?,
        ),
        Backend::Kube => None,
    };
    store.put(&release).await?;
    reporter.say(&format!(
        "slipway: staged release v{version} (`{name}`) for `{branch}`: {cause}"
    ));
    let wait = slipway_hook::verdict_wait(
        args.store,
        std::time::Duration::from_secs(args.health_timeout),
    );
    if slipway_hook::verdict(store, wait, webspace, branch, &name, &reporter)
        .await
        .is_err()
    {
        let _ = store.delete::<Release>(&name).await;
        return Err(Refusal::new(
            format!("v{version} was refused; nothing changed"),
            None,
        ));
    }
    let current = store.get::<Release>(&name).await?.ok_or_else(|| {
        Refusal::new(
            "the new release was removed meanwhile; nothing changed",
            None,
        )
    })?;
    store
        .put(&slipway_hook::release::promoted(&current))
        .await?;
    slipway_hook::report_rollout(store, webspace, branch, &name, &reporter).await;
    Ok(())
}

/// Refuses a config key that is not an environment variable name, or is Slipway's own.
fn check_key(key: &str) -> Result<(), Refusal> {
    if !slipway_api::names::is_env_name(key) {
        return Err(Refusal::new(
            format!("`{key}` is not a variable name"),
            Some("names are letters, digits and `_`, not starting with a digit"),
        ));
    }
    if key == "PORT" {
        return Err(Refusal::new(
            "`PORT` is set by Slipway (the port the app must listen on)",
            Some("set `spec.port` of the webspace to change it"),
        ));
    }
    Ok(())
}

/// Where a webspace's config lives: its file on one host, its Secret in the customer's
/// namespace on a cluster (which the git server may keep, and nothing else there).
enum ConfigPlace {
    File(PathBuf, String),
    Secret(Box<kube::Api<k8s_openapi::api::core::v1::Secret>>, String),
}

impl ConfigPlace {
    async fn of(args: &OpsArgs, webspace: &Webspace) -> Result<Self, Refusal> {
        let name = name_of(webspace).to_owned();
        match args.store {
            Backend::Directory => Ok(Self::File(args.data.clone(), name)),
            Backend::Kube => {
                let client = kube::Client::try_default().await.map_err(|_| {
                    Refusal::new("the cluster is unavailable; try again later", None)
                })?;
                let namespace = slipway_api::names::namespace_name(&webspace.spec.customer);
                Ok(Self::Secret(
                    Box::new(kube::Api::namespaced(client, &namespace)),
                    slipway_api::names::config_secret_name(&name),
                ))
            }
        }
    }

    async fn read(&self) -> Result<BTreeMap<String, String>, Refusal> {
        let unreadable =
            || Refusal::new("the server cannot read the config; try again later", None);
        match self {
            Self::File(data, webspace) => {
                slipway_store::config::read(data, webspace).map_err(|_| unreadable())
            }
            Self::Secret(secrets, name) => Ok(secrets
                .get_opt(name)
                .await
                .map_err(|_| unreadable())?
                .and_then(|s| s.data)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect()),
        }
    }

    async fn write(&self, values: &BTreeMap<String, String>) -> Result<(), Refusal> {
        let unwritable =
            || Refusal::new("the server cannot write the config; try again later", None);
        match self {
            Self::File(data, webspace) => {
                slipway_store::config::write(data, webspace, values).map_err(|_| unwritable())
            }
            Self::Secret(secrets, name) => {
                let data: BTreeMap<String, k8s_openapi::ByteString> = values
                    .iter()
                    .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone().into_bytes())))
                    .collect();
                // Replaced whole: a key left out is removed.
                match secrets.get_opt(name).await.map_err(|_| unwritable())? {
                    Some(mut current) => {
                        current.data = Some(data);
                        current.string_data = None;
                        secrets
                            .replace(name, &kube::api::PostParams::default(), &current)
                            .await
                            .map_err(|_| unwritable())?;
                    }
                    None => {
                        let secret = k8s_openapi::api::core::v1::Secret {
                            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                                name: Some(name.clone()),
                                labels: Some(BTreeMap::from([(
                                    "app.kubernetes.io/managed-by".to_owned(),
                                    "slipway".to_owned(),
                                )])),
                                ..Default::default()
                            },
                            type_: Some("Opaque".to_owned()),
                            data: Some(data),
                            ..Default::default()
                        };
                        secrets
                            .create(&kube::api::PostParams::default(), &secret)
                            .await
                            .map_err(|_| unwritable())?;
                    }
                }
                Ok(())
            }
        }
    }
}

async fn show_config(
    args: &OpsArgs,
    webspace: &Webspace,
    reveal: bool,
    json: bool,
) -> Result<(), Refusal> {
    let values = ConfigPlace::of(args, webspace).await?.read().await?;
    let shown = |value: &String| {
        if reveal {
            value.clone()
        } else {
            "********".to_owned()
        }
    };
    if json {
        let map: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(shown(v))))
            .collect();
        return print_json(&serde_json::Value::Object(map));
    }
    if values.is_empty() {
        println!(
            "no config; `config:set {} KEY=VALUE` adds some",
            name_of(webspace)
        );
    }
    for (key, value) in &values {
        println!("{key}={}", shown(value));
    }
    Ok(())
}

/// Applies `changes` (a value to set, or `None` to remove) to the webspace's config and gives
/// every serving branch a new release with it; if one is refused, the config is put back and
/// the branches that already took it get a release with the old values again.
async fn change_config(
    args: &OpsArgs,
    store: &AnyStore,
    webspace: &Webspace,
    changes: Vec<(String, Option<String>)>,
) -> Result<(), Refusal> {
    let name = name_of(webspace);
    let place = ConfigPlace::of(args, webspace).await?;
    let before = place.read().await?;
    let mut after = before.clone();
    let mut set = Vec::new();
    let mut unset = Vec::new();
    for (key, value) in changes {
        match value {
            Some(value) => {
                after.insert(key.clone(), value);
                set.push(key);
            }
            None => {
                if after.remove(&key).is_some() {
                    unset.push(key);
                }
            }
        }
    }
    if after == before {
        println!("config of `{name}` unchanged");
        return Ok(());
    }
    place.write(&after).await?;
    let cause = match (set.is_empty(), unset.is_empty()) {
        (false, true) => format!("config: set {}", set.join(", ")),
        (true, false) => format!("config: unset {}", unset.join(", ")),
        _ => format!("config: set {}; unset {}", set.join(", "), unset.join(", ")),
    };
    let serving: Vec<Release> = releases_of(store, name, None)
        .await?
        .into_iter()
        .filter(|r| r.phase() == "Live")
        .collect();
    if serving.is_empty() {
        eprintln!("slipway: config of `{name}` changed; nothing serves yet, the next push uses it");
        return Ok(());
    }
    for (done, release) in serving.iter().enumerate() {
        if let Err(refusal) = redeploy(args, store, release, &cause).await {
            place.write(&before).await?;
            // The branches that already took the new values go back to the old ones: a new
            // release of what served them before, started with the config as it was.
            let mut message = format!("{}; the config was put back as it was", refusal.message);
            for earlier in &serving[..done] {
                let branch = &earlier.spec.branch;
                match redeploy(args, store, earlier, "config: put back").await {
                    Ok(()) => message.push_str(&format!(", and `{branch}` runs with it again")),
                    Err(again) => message.push_str(&format!(
                        ", but `{branch}` still runs with the new values ({})",
                        again.message
                    )),
                }
            }
            return Err(Refusal::new(
                message,
                Some("the app must start with the new values; `logs` shows why it did not"),
            ));
        }
    }
    Ok(())
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
                    "cause": r.spec.cause.as_deref().unwrap_or("push"),
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
        "CAUSE".into(),
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
            r.spec.cause.clone().unwrap_or_else(|| "push".to_owned()),
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
    let Some(release) = serving(store, name, branch).await? else {
        return Err(Refusal::new(
            format!("nothing serves branch `{branch}` of `{name}`"),
            Some(&format!("`ssh git@HOST info {name}` lists its branches")),
        ));
    };
    if args.store == Backend::Kube {
        return pod_logs(store, webspace, branch, release, lines, follow).await;
    }
    let mut release = release;
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
        let restarted = async || running(&docker, &container).await;
        let Some(next) = next_to_follow(store, name, branch, &release, restarted).await? else {
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

/// `logs` on a cluster: the output of a running pod of the release serving `branch`, read
/// through the API (the git server may read pods and logs in tenant namespaces only); `-f`
/// follows the branch's next release after a redeploy.
async fn pod_logs(
    store: &AnyStore,
    webspace: &Webspace,
    branch: &str,
    mut release: String,
    lines: u32,
    follow: bool,
) -> Result<(), Refusal> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{ListParams, LogParams};
    let name = name_of(webspace);
    let client = kube::Client::try_default()
        .await
        .map_err(|_| Refusal::new("the cluster is unavailable; try again later", None))?;
    let namespace = slipway_operator::kubernetes::objects::namespace_name(&webspace.spec.customer);
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, &namespace);
    let mut tail = Some(i64::from(lines));
    loop {
        let selector = format!(
            "{}={name},{}={release}",
            slipway_operator::kubernetes::objects::WEBSPACE_LABEL,
            slipway_operator::kubernetes::objects::RELEASE_LABEL
        );
        let listed = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|_| {
                Refusal::new(
                    "the server cannot read the app's pods; try again later",
                    None,
                )
            })?;
        let running = listed
            .items
            .iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        let Some(pod) = running.and_then(|p| p.metadata.name.clone()) else {
            return Err(Refusal::new(
                format!("no pod of `{branch}` runs right now"),
                Some(&format!("`ssh git@HOST info {name}` shows its state")),
            ));
        };
        let params = LogParams {
            container: Some("app".into()),
            follow,
            tail_lines: tail,
            ..Default::default()
        };
        let stream = pods.log_stream(&pod, &params).await.map_err(|_| {
            Refusal::new(
                "the server cannot read the app's log; try again later",
                None,
            )
        })?;
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = futures_util::AsyncBufReadExt::fill_buf(&mut stream)
            .await
            .ok()
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
        {
            let length = chunk.len();
            futures_util::AsyncBufReadExt::consume_unpin(&mut stream, length);
            let mut out = std::io::stdout().lock();
            if out.write_all(&chunk).is_err() || out.flush().is_err() {
                return Ok(());
            }
        }
        if !follow {
            return Ok(());
        }
        let Some(next) = next_to_follow(store, name, branch, &release, async || false).await?
        else {
            eprintln!("slipway: `{branch}` of `{name}` no longer serves; stopped following");
            return Ok(());
        };
        eprintln!("slipway: `{branch}` is now served by `{next}`; following it");
        release = next;
        tail = None;
    }
}

/// What `logs -f` follows once the output of `release` ended: the branch's next release, or
/// `release` again when `restarted` says its app came back; `None` when neither happens within
/// [`FOLLOW_GAP`] (the branch was deleted, say).
async fn next_to_follow(
    store: &AnyStore,
    webspace: &str,
    branch: &str,
    release: &str,
    restarted: impl AsyncFn() -> bool,
) -> Result<Option<String>, Refusal> {
    let deadline = tokio::time::Instant::now() + FOLLOW_GAP;
    loop {
        match serving(store, webspace, branch).await? {
            Some(next) if next != release => return Ok(Some(next)),
            _ if restarted().await => return Ok(Some(release.to_owned())),
            _ if tokio::time::Instant::now() >= deadline => return Ok(None),
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
