//! Slipway's git hooks. `pre-receive` decides every ref of a push, builds each pushed branch
//! into an image (the repository's Dockerfile, else its Webspace's Runtime), pushes it to the
//! registry and records a staged Release; its exit status is the verdict, so a failed build
//! moves no ref. `post-receive` runs after git moved the refs and promotes what was staged.

pub mod build;
pub mod context;
pub mod credentials;
pub mod detect;
pub mod egress;
pub mod policy;
pub mod release;
pub mod report;
pub mod slots;
pub mod steps;
pub mod tree;
pub mod updates;

use std::path::PathBuf;

use slipway_api::names::branch_label;
use slipway_api::resources::phase;
use slipway_api::{Release, Runtime, Webspace};
use slipway_store::{AnyStore, Backend, Store};

use crate::report::Reporter;
use crate::tree::{Budget, Dockerfile};
use crate::updates::Update;

/// Everything a hook knows, from the SLIPWAY_* contract and git's hook environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data: PathBuf,
    /// Webspace pushed to (a validated name).
    pub webspace: String,
    /// Customer that pushed.
    pub customer: String,
    /// Fingerprint of the key that pushed.
    pub pusher: String,
    /// Registry to push images to (`HOST:PORT`), if any.
    pub registry: Option<String>,
    /// Whether to build (`false` on a plain git host started with `--no-build`).
    pub build: bool,
    /// Whether an operator on this host rolls releases out (`slipway up`): pre-receive then
    /// waits for its verdict on each staged release, post-receive waits until it serves.
    pub rollout: bool,
    /// Where resources live; on a cluster post-receive waits for the operator's rollout.
    pub store: Backend,
    /// How long the operator gives a new release to answer its health check (pre-receive
    /// waits that long for the verdict, and a little more).
    pub health_timeout: std::time::Duration,
    /// Docker client configuration directory (`DOCKER_CONFIG`, else `~/.docker`), for
    /// registry credentials.
    pub docker_config: Option<PathBuf>,
    /// The bare repository (`GIT_DIR`).
    pub git_dir: PathBuf,
    /// git's quarantine directory with the pushed objects (`GIT_QUARANTINE_PATH`).
    pub quarantine: Option<PathBuf>,
    /// Builds running at once on this host, across pushes.
    pub max_builds: usize,
    /// Limits of each build.
    pub limits: build::Limits,
}

/// How often the pusher hears what the push waits for (a verdict, a rollout).
const WAITING_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest hook input read: one line per ref, and nobody pushes 10,000 refs to a webspace.
const MAX_INPUT: usize = 1 << 20;

/// One branch to build.
struct Plan {
    branch: String,
    commit: String,
    tree: String,
    /// The images the repository's Dockerfile uses (none for a Runtime's template).
    images: Vec<policy::ImageUse>,
    manifest: tree::Manifest,
    /// The rendered Runtime template, when the tree has no Dockerfile.
    dockerfile: Option<String>,
    /// What the image is built from, for the pusher.
    source: String,
    tag: String,
}

/// The image repository of a webspace: `<registry>/<webspace>`, or `slipway/<webspace>` on
/// the local engine.
fn image_repository(config: &Config) -> String {
    match &config.registry {
        Some(registry) => format!("{registry}/{}", config.webspace),
        None => format!("slipway/{}", config.webspace),
    }
}

fn short(id: &str) -> &str {
    id.get(..7).unwrap_or(id)
}

/// Makes this process die (SIGKILL) when its parent, git, does: a git killed with its server
/// takes its hooks along instead of leaving a build, or a wait for a verdict, running with
/// nobody to report to. Returns `false` when git is already gone.
pub fn die_with_git() -> bool {
    let parent = std::os::unix::process::parent_id();
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err() {
        return true;
    }
    // Set after git may have died: then this process was already handed to another parent.
    std::os::unix::process::parent_id() == parent
}

/// Runs pre-receive on git's `old new ref` lines. Returns whether the push is accepted.
pub async fn pre_receive(config: &Config, input: &str, reporter: &Reporter) -> bool {
    match pre_receive_inner(config, input, reporter).await {
        Ok(()) => true,
        Err(()) => {
            reporter.say("slipway: push rejected; nothing changed");
            false
        }
    }
}

async fn pre_receive_inner(config: &Config, input: &str, reporter: &Reporter) -> Result<(), ()> {
    if input.len() > MAX_INPUT {
        reporter.error(
            "too many refs in one push",
            Some("push fewer branches at once"),
        );
        return Err(());
    }
    let store = AnyStore::open(config.store, &config.data)
        .await
        .map_err(|e| reporter.failure("the server cannot read its configuration", &e))?;
    let webspace: Webspace = match store.get(&config.webspace).await {
        Ok(Some(webspace)) => webspace,
        Ok(None) => {
            reporter.error(
                &format!("webspace `{}` no longer exists", config.webspace),
                None,
            );
            return Err(());
        }
        Err(e) => {
            reporter.failure("the server cannot read its configuration", &e);
            return Err(());
        }
    };
    let updates = updates::decide(input, &webspace.spec.production_branch)
        .map_err(|e| reporter.error(&e.to_string(), e.hint()))?;
    for update in &updates {
        if let Update::Branch { branch, .. } = update
            && let Some(hint) = updates::production_hint(branch, &webspace.spec.production_branch)
        {
            reporter.say(&format!("hint: {hint}"));
        }
        if let Update::Tag { tag, deleted } = update {
            reporter.say(&format!(
                "slipway: tag `{tag}` {}, not deployed (branches deploy)",
                if *deleted { "deleted" } else { "stored" }
            ));
        }
    }
    if !config.build {
        for update in &updates {
            if let Update::Branch { branch, commit } = update {
                reporter.say(&format!(
                    "slipway: `{branch}` ({}) of `{}` accepted from `{}`; this server does not build",
                    short(commit),
                    config.webspace,
                    config.customer
                ));
            }
        }
        return Ok(());
    }
    let plans = plan(config, &store, &webspace, &updates, reporter).await?;
    if plans.is_empty() {
        return Ok(());
    }
    let docker = build::connect()
        .await
        .map_err(|e| reporter.failure("the build service is unavailable; try again later", &e))?;
    let mut built = Vec::new();
    let mut outcome = build_all(config, &docker, plans, &mut built, reporter).await;
    if outcome.is_ok() {
        outcome = stage_all(config, &store, &docker, &built, reporter).await;
    }
    if outcome.is_err() {
        discard(&store, &docker, &built, reporter).await;
    }
    outcome
}

/// Builds each plan's image, or finds it built; what it has so far is in `built` whether it
/// succeeds or not (a refusal removes the images it built).
async fn build_all(
    config: &Config,
    docker: &bollard::Docker,
    plans: Vec<Plan>,
    built: &mut Vec<Built>,
    reporter: &Reporter,
) -> Result<(), ()> {
    let repository = image_repository(config);
    for plan in plans {
        check_images(config, docker, &plan, reporter).await?;
        let image = format!("{repository}:{}", plan.tag);
        let fresh = !build::exists(docker, &image).await;
        if !fresh {
            reporter.say(&format!(
                "slipway: `{}` ({}): tree {} was built before; reusing `{image}`",
                plan.branch,
                short(&plan.commit),
                short(&plan.tree)
            ));
        } else {
            reporter.say(&format!(
                "slipway: building `{}` ({}) of `{}` from {}",
                plan.branch,
                short(&plan.commit),
                config.webspace,
                plan.source
            ));
            let slot = slots::take(&config.data.join("locks"), config.max_builds, || {
                reporter.say("slipway: queued: other builds are running; waiting for a build slot");
            })
            .await
            .map_err(|e| reporter.failure("the server cannot schedule the build", &e))?;
            let context = context::stream(
                config.git_dir.clone(),
                config.quarantine.clone(),
                plan.manifest.clone(),
                plan.dockerfile.clone(),
            );
            let result = build::build(docker, &image, context, config.limits, reporter).await;
            drop(slot);
            match result {
                Ok(_) => {}
                Err(build::BuildError::Failed {
                    step,
                    message,
                    tail,
                }) => {
                    let at = step.map(|s| format!(" at `{s}`")).unwrap_or_default();
                    let runtime_hint;
                    let hint = if build::pull_failed(&message, &tail) {
                        "a base image could not be pulled: check its name and tag; this server must reach its registry (public images need the internet)"
                    } else if steps::killed_in(&message, &tail) {
                        "a step went over its memory or process limit; an operator can raise them with `slipway up --build-step-memory`/`--build-step-pids` (on a cluster: SLIPWAY_BUILD_STEP_MEMORY/_PIDS in slipway-settings)"
                    } else if egress::refused_in(&tail) {
                        "builds reach the internet, not this server's network or private ranges; an operator can allow a range with `slipway up --build-allow-range CIDR` (on a cluster: SLIPWAY_BUILD_ALLOW_RANGES in slipway-settings)"
                    } else if plan.dockerfile.is_some() {
                        // No Dockerfile to fix: the repository built from a Runtime's template.
                        runtime_hint = format!(
                            "the app was built from {}; check that it fits that runtime (`slipway get runtimes`), or commit a Dockerfile of its own",
                            plan.source
                        );
                        &runtime_hint
                    } else {
                        "fix the Dockerfile (or the app) and push again; `docker build .` reproduces it locally"
                    };
                    reporter.error(
                        &format!("building `{}` failed{at}: {message}", plan.branch),
                        Some(hint),
                    );
                    return Err(());
                }
                Err(build::BuildError::TimedOut(limit)) => {
                    reporter.error(
                        &format!(
                            "building `{}` took longer than {}s",
                            plan.branch,
                            limit.as_secs()
                        ),
                        Some("make the build faster (cache dependencies in an early layer)"),
                    );
                    return Err(());
                }
                Err(e @ build::BuildError::Engine(_)) => {
                    reporter.failure("the build service failed; try again later", &e);
                    return Err(());
                }
            }
        }
        let port = build::exposed_port(docker, &image).await;
        built.push(Built {
            branch: plan.branch,
            commit: plan.commit,
            tree: plan.tree,
            tag: plan.tag,
            image,
            port,
            fresh,
        });
    }
    Ok(())
}

/// Records a staged Release for every built branch and waits for the operator's verdict on
/// each (all at once). A refusal of any branch (it did not start, the registry failed)
/// withdraws every Release this push recorded, so a refused push leaves none behind; the
/// operator then removes what it started for them.
async fn stage_all(
    config: &Config,
    store: &AnyStore,
    docker: &bollard::Docker,
    built: &[Built],
    reporter: &Reporter,
) -> Result<(), ()> {
    let mut recorded = Vec::new();
    // Held until the verdicts are in: the operator fails a staged release whose push is gone.
    let mut markers = Vec::new();
    let result = stage_and_verify(
        config,
        store,
        docker,
        built,
        &mut recorded,
        &mut markers,
        reporter,
    )
    .await;
    if result.is_err() {
        withdraw(store, &recorded, reporter).await;
    }
    result
}

/// Whether an operator verifies staged releases: `slipway up` on this host, or the cluster's.
fn verified(config: &Config) -> bool {
    config.rollout || config.store == Backend::Kube
}

async fn stage_and_verify(
    config: &Config,
    store: &AnyStore,
    docker: &bollard::Docker,
    built: &[Built],
    recorded: &mut Vec<String>,
    markers: &mut Vec<slipway_store::pushes::Pushing>,
    reporter: &Reporter,
) -> Result<(), ()> {
    // On one host the operator starts the release from the engine's local copy while the image
    // goes to the registry; a cluster's nodes pull it, so there it is pushed first.
    let alongside = config.rollout && config.store == Backend::Directory;
    // Pushes to a webspace are serialized by the git server: nobody else numbers its releases
    // meanwhile.
    let existing = store
        .list::<Release>()
        .await
        .map_err(|e| reporter.failure("the server cannot read the releases", &e))?;
    let mut version = release::next_version(&existing, &config.webspace);
    let config_keys = config_keys(
        config.store,
        &config.data,
        &config.customer,
        &config.webspace,
        reporter,
    )
    .await;
    for branch in built {
        let reference = if alongside {
            branch.image.clone()
        } else {
            push_image(config, docker, branch, reporter)
                .await?
                .unwrap_or_else(|| branch.image.clone())
        };
        let name = release::name(&config.webspace, &branch.branch, &branch.commit);
        if config.store == Backend::Directory {
            let marker = slipway_store::pushes::Pushing::hold(&config.data, &name)
                .map_err(|e| reporter.failure("the server cannot record the release", &e))?;
            markers.push(marker);
        }
        stage(
            store,
            branch,
            &reference,
            version,
            &config_keys,
            config,
            reporter,
        )
        .await?;
        version = version.saturating_add(1);
        recorded.push(name);
    }
    if !verified(config) {
        return Ok(());
    }
    let checks = built
        .iter()
        .zip(recorded.iter())
        .map(|(branch, name)| async move {
            let pushed = async {
                if alongside {
                    push_image(config, docker, branch, reporter).await
                } else {
                    Ok(None)
                }
            };
            let wait = verdict_wait(config.store, config.health_timeout);
            let verdict = verdict(
                store,
                wait,
                &config.webspace,
                &branch.branch,
                name,
                reporter,
            );
            let (pushed, verdict) = tokio::join!(pushed, verdict);
            verdict?;
            if let Some(reference) = pushed? {
                record_image(store, name, &reference, reporter).await?;
            }
            Ok::<(), ()>(())
        });
    let results = futures_util::future::join_all(checks).await;
    results.into_iter().collect()
}

/// Pushes `built`'s image to the registry, if there is one; returns the reference with its
/// digest.
async fn push_image(
    config: &Config,
    docker: &bollard::Docker,
    built: &Built,
    reporter: &Reporter,
) -> Result<Option<String>, ()> {
    let Some(registry) = &config.registry else {
        return Ok(None);
    };
    let credentials = config
        .docker_config
        .as_ref()
        .and_then(|dir| credentials::for_registry(dir, registry));
    let digest = build::push(docker, &image_repository(config), &built.tag, credentials)
        .await
        .map_err(|e| reporter.failure("the image registry is unavailable; try again later", &e))?;
    reporter.say(&format!("slipway: pushed `{}` ({digest})", built.image));
    Ok(Some(format!("{}@{digest}", built.image)))
}

/// Records the pushed reference of a verified release (it was verified from the engine's local
/// copy). The operator writes nothing to a `Verified` release until it is promoted, so the
/// status read here is the one written back.
async fn record_image(
    store: &AnyStore,
    name: &str,
    reference: &str,
    reporter: &Reporter,
) -> Result<(), ()> {
    let release = store
        .get::<Release>(name)
        .await
        .map_err(|e| reporter.failure("the server cannot record the release", &e))?;
    let Some(mut release) = release else {
        reporter.error(
            &format!("release `{name}` was removed during the push"),
            None,
        );
        return Err(());
    };
    release.spec.image = reference.to_owned();
    store
        .put(&release)
        .await
        .map_err(|e| reporter.failure("the server cannot record the release", &e))?;
    Ok(())
}

/// One branch's image, built (or found built) and not yet pushed or staged.
struct Built {
    branch: String,
    commit: String,
    tree: String,
    tag: String,
    image: String,
    /// The one port the image exposes, if it does.
    port: Option<u16>,
    /// Built by this push (not found built): a refused push removes it again.
    fresh: bool,
}

/// Takes back the Releases a refused push recorded; the operator removes what it started for
/// them. Best effort: what cannot be removed now goes to the hook log (and the operator fails
/// it once its push is gone).
async fn withdraw(store: &AnyStore, releases: &[String], reporter: &Reporter) {
    for name in releases {
        if let Err(error) = store.delete::<Release>(name).await {
            reporter.log(&format!(
                "cannot withdraw the staged release `{name}`: {error}"
            ));
        }
    }
}

/// Removes the images a refused push built, so refused pushes do not fill the disk (the
/// operator prunes only images of Releases, and a refused push leaves none). An image some
/// Release uses (the same tree pushed meanwhile) stays, and so does one a container still uses:
/// the engine refuses to remove it. The build cache keeps the layers, so pushing again is quick.
async fn discard(store: &AnyStore, docker: &bollard::Docker, built: &[Built], reporter: &Reporter) {
    let fresh: Vec<&Built> = built.iter().filter(|b| b.fresh).collect();
    if fresh.is_empty() {
        return;
    }
    let in_use: Vec<String> = match store.list::<Release>().await {
        Ok(releases) => releases.into_iter().map(|r| r.spec.image).collect(),
        Err(error) => {
            reporter.log(&format!("cannot list releases; built images kept: {error}"));
            return;
        }
    };
    for built in fresh {
        let used = in_use
            .iter()
            .any(|image| image == &built.image || image.starts_with(&format!("{}@", built.image)));
        if used {
            continue;
        }
        // The operator may still be removing the container it started from it.
        for attempt in 0..20 {
            match docker
                .remove_image(
                    &built.image,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await
            {
                Ok(_) => break,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) if attempt < 19 => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => {
                    reporter.log(&format!(
                        "cannot remove the image `{}`: {error}",
                        built.image
                    ));
                    break;
                }
            }
        }
    }
}

/// Records a staged Release of `image` (the local tag or the pushed reference) for `built`.
async fn stage(
    store: &AnyStore,
    built: &Built,
    image: &str,
    version: u32,
    config_keys: &[String],
    config: &Config,
    reporter: &Reporter,
) -> Result<Release, ()> {
    let mut release = release::staged(
        &config.webspace,
        &built.branch,
        &built.commit,
        &built.tree,
        image,
        &config.pusher,
    );
    release.spec.port = built.port;
    release.spec.version = Some(version);
    release.spec.config_keys = config_keys.to_vec();
    let name = release.metadata.name.clone().unwrap_or_default();
    store
        .put(&release)
        .await
        .map_err(|e| reporter.failure("the server cannot record the release", &e))?;
    reporter.say(&format!(
        "slipway: staged release v{version} (`{name}`) for `{}`",
        built.branch
    ));
    Ok(release)
}

/// The names of `webspace`'s config values (`config:set`), for the Release a push or an owner's
/// command stages: on one host from its file, on a cluster from its Secret in the customer's
/// namespace (which the git server may read). Unreadable config counts as none, said in the log.
pub async fn config_keys(
    store: Backend,
    data: &std::path::Path,
    customer: &str,
    webspace: &str,
    reporter: &Reporter,
) -> Vec<String> {
    let keys: Result<Vec<String>, String> = match store {
        Backend::Directory => slipway_store::config::read(data, webspace)
            .map(|values| values.into_keys().collect())
            .map_err(|e| e.to_string()),
        Backend::Kube => {
            async {
                use k8s_openapi::api::core::v1::Secret;
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| e.to_string())?;
                let secrets: kube::Api<Secret> =
                    kube::Api::namespaced(client, &slipway_api::names::namespace_name(customer));
                let secret = secrets
                    .get_opt(&slipway_api::names::config_secret_name(webspace))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(secret
                    .and_then(|s| s.data)
                    .map(|data| data.into_keys().collect())
                    .unwrap_or_default())
            }
            .await
        }
    };
    keys.unwrap_or_else(|error| {
        reporter.log(&format!("cannot read the config of `{webspace}`: {error}"));
        Vec::new()
    })
}

/// Longest pre-receive waits for a verdict beyond the health check's own time: the operator
/// has to notice the release and start it (on a cluster: schedule it and pull its image).
const VERDICT_SLACK: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest pre-receive waits for a cluster's verdict.
const CLUSTER_VERDICT_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// How long pre-receive waits for a verdict: the operator's health timeout and some slack on
/// one host, [`CLUSTER_VERDICT_WAIT`] on a cluster.
pub fn verdict_wait(store: Backend, health_timeout: std::time::Duration) -> std::time::Duration {
    match store {
        Backend::Kube => CLUSTER_VERDICT_WAIT,
        Backend::Directory => health_timeout + VERDICT_SLACK,
    }
}

/// Waits for the operator's verdict on the staged release `name`, with a line every few
/// seconds saying what it waits for: `Ok` when it is `Verified`; the reason, hint and the app's
/// last log lines when it `Failed`; a refusal when no verdict came in time.
pub async fn verdict(
    store: &AnyStore,
    wait: std::time::Duration,
    webspace: &str,
    branch: &str,
    name: &str,
    reporter: &Reporter,
) -> Result<(), ()> {
    let tool = tool(store);
    let mut changes = store.changes();
    let started = tokio::time::Instant::now();
    let deadline = started + wait;
    let mut next_progress = started + WAITING_EVERY;
    loop {
        let release = store
            .get::<Release>(name)
            .await
            .map_err(|e| reporter.failure("the server cannot read the release", &e))?;
        let Some(release) = release else {
            reporter.error(
                &format!("release `{name}` was removed during the push"),
                None,
            );
            return Err(());
        };
        let status = release.status.clone().unwrap_or_default();
        let doing = status
            .reason
            .clone()
            .unwrap_or_else(|| "waiting for the operator to start it".to_owned());
        match release.phase() {
            phase::VERIFIED => {
                reporter.say(&format!("slipway: `{branch}` started and {doing}"));
                return Ok(());
            }
            phase::FAILED => {
                let serving = serving_now(store, webspace, branch).await;
                reporter.error(
                    &format!("`{branch}` {doing}; {serving}"),
                    status.hint.as_deref(),
                );
                if !status.logs.is_empty() {
                    reporter.say("slipway: last lines of its log:");
                    for line in &status.logs {
                        reporter.say(&format!("  | {}", report::clean(line)));
                    }
                }
                return Err(());
            }
            phase::STAGED => {}
            other => {
                reporter.error(
                    &format!("release `{name}` is `{other}` before its push finished"),
                    Some(&format!("`{tool} get releases` shows its state")),
                );
                return Err(());
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let serving = serving_now(store, webspace, branch).await;
            reporter.error(
                &format!(
                    "`{branch}` was not verified within {} s ({doing}); {serving}",
                    wait.as_secs()
                ),
                Some(&format!(
                    "the operator verifies releases; `{tool} get releases` and `{tool} describe webspace {}` show what it did",
                    webspace
                )),
            );
            return Err(());
        }
        if now >= next_progress {
            next_progress = now + WAITING_EVERY;
            reporter.say(&format!(
                "slipway: `{branch}`: {doing} ({} s)",
                now.duration_since(started).as_secs()
            ));
        }
        wait_for_change(&mut changes, name, deadline.min(next_progress)).await;
    }
}

/// What serves `branch` while its new release was refused: the release before, or nothing.
async fn serving_now(store: &AnyStore, webspace: &str, branch: &str) -> &'static str {
    let live = store.list::<Release>().await.is_ok_and(|releases| {
        releases.iter().any(|r| {
            r.spec.webspace == webspace && r.spec.branch == branch && r.phase() == phase::LIVE
        })
    });
    if live {
        "the previous release keeps serving"
    } else {
        "nothing was deployed"
    }
}

/// Waits until the store reports a change of Release `name` (or may have: it lagged, or a
/// watch restarted), or until `until`, or a second at most in case a change was missed.
async fn wait_for_change(
    changes: &mut tokio::sync::broadcast::Receiver<slipway_store::Change>,
    name: &str,
    until: tokio::time::Instant,
) {
    let wake = until.min(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
    loop {
        let change = tokio::select! {
            () = tokio::time::sleep_until(wake) => return,
            change = changes.recv() => change,
        };
        match change {
            Ok(change)
                if change.plural != "releases"
                    || (change.name != name && !change.name.is_empty()) => {}
            Ok(_) | Err(_) => return,
        }
    }
}

/// The command that shows resources: `kubectl` on a cluster, `slipway` on one host.
fn tool(store: &AnyStore) -> &'static str {
    match store {
        AnyStore::Kube(_) => "kubectl",
        AnyStore::Directory(_) => "slipway",
    }
}

/// Longest post-receive waits for the operator to put a release live.
const LIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until the operator took `name` live (or failed it), and tells the pusher: woken by the
/// store's change feed (a watch on a cluster), re-read every second in case a change was missed,
/// with a progress line every few seconds saying what the rollout is waiting for.
pub async fn report_rollout(
    store: &AnyStore,
    webspace: &str,
    branch: &str,
    name: &str,
    reporter: &Reporter,
) {
    let tool = tool(store);
    // A cluster may first have to pull the image onto a node.
    let wait = match store {
        AnyStore::Kube(_) => LIVE_WAIT * 3,
        AnyStore::Directory(_) => LIVE_WAIT,
    };
    let mut changes = store.changes();
    let started = tokio::time::Instant::now();
    let deadline = started + wait;
    let mut next_progress = started + WAITING_EVERY;
    loop {
        let release = store.get::<Release>(name).await.ok().flatten();
        let version = release
            .as_ref()
            .and_then(|r| r.spec.version)
            .map(|v| format!(" v{v}"))
            .unwrap_or_default();
        let status = release.and_then(|r| r.status).unwrap_or_default();
        match status.phase.as_deref() {
            Some("Live") => {
                reporter.say(&format!(
                    "slipway: deployed `{branch}`{version} → {}",
                    status.url.unwrap_or_default()
                ));
                return;
            }
            Some("Failed") => {
                reporter.error(
                    &format!(
                        "`{branch}` failed to go live: {}; the previous release keeps serving",
                        status.reason.unwrap_or_default()
                    ),
                    Some(&format!(
                        "`{tool} get releases` and `{tool} describe webspace` show more"
                    )),
                );
                return;
            }
            _ => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let why = rollout_state(store, webspace, branch).await;
            reporter.say(&format!(
                "slipway: `{branch}` is not live after {}s ({why}); it may still go live: `{tool} get releases` shows its state",
                wait.as_secs()
            ));
            return;
        }
        if now >= next_progress {
            next_progress = now + WAITING_EVERY;
            let state = rollout_state(store, webspace, branch).await;
            reporter.say(&format!(
                "slipway: waiting for `{branch}` to go live ({}s): {state}",
                now.duration_since(started).as_secs()
            ));
        }
        wait_for_change(&mut changes, name, deadline.min(next_progress)).await;
    }
}

/// What the operator last said about `branch`: its instances and the Webspace's `Ready`
/// condition.
async fn rollout_state(store: &AnyStore, webspace: &str, branch: &str) -> String {
    let Some(webspace) = store.get::<Webspace>(webspace).await.ok().flatten() else {
        return "no status yet".to_owned();
    };
    let status = webspace.status.unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_else(|| "no status yet".to_owned());
    match status.branches.iter().find(|b| b.branch == branch) {
        Some(b) => format!(
            "{} instance(s) of `{}` ready; {ready}",
            b.ready_replicas, b.release
        ),
        None => ready,
    }
}

/// Checks every branch of the push and prepares its build, before anything is built.
async fn plan(
    config: &Config,
    store: &AnyStore,
    webspace: &Webspace,
    updates: &[Update],
    reporter: &Reporter,
) -> Result<Vec<Plan>, ()> {
    let repository = tree::open(&config.git_dir, config.quarantine.as_ref())
        .map_err(|e| reporter.failure("the server cannot read the pushed objects", &e))?;
    check_labels(&repository, updates, reporter)?;
    let mut plans = Vec::new();
    for update in updates {
        let Update::Branch { branch, commit } = update else {
            continue;
        };
        let tree = git2::Oid::from_str(commit)
            .and_then(|id| repository.find_commit(id))
            .map(|c| c.tree_id())
            .map_err(|e| reporter.failure("the server cannot read the pushed objects", &e))?;
        let manifest = tree::walk(&repository, tree, Budget::default())
            .map_err(|e| reporter.error(&format!("`{branch}`: {e}"), e.hint()))?;
        let mut images = Vec::new();
        let (dockerfile, source, tag) = match manifest.dockerfile {
            Dockerfile::Present => {
                images = screen(&repository, &manifest, branch, reporter)?;
                (None, "its `Dockerfile`".to_owned(), tree.to_string())
            }
            Dockerfile::Symlink => {
                reporter.error(
                    &format!("`{branch}`: the `Dockerfile` is a symlink"),
                    Some("commit the Dockerfile itself at the repository root"),
                );
                return Err(());
            }
            Dockerfile::Missing => {
                // `spec.runtime` wins; without it, the tree's root files pick one.
                let name = match &webspace.spec.runtime {
                    Some(name) => name.as_str(),
                    None => match detect::detect(&manifest.entries) {
                        Some(detected) => {
                            reporter.say(&format!("slipway: `{branch}` has no Dockerfile; detected runtime `{}` (from {}); set `spec.runtime` to choose another", detected.runtime, detected.marker));
                            detected.runtime
                        }
                        None => {
                            reporter.error(&format!("`{branch}` has no `Dockerfile` and webspace `{}` has no runtime", config.webspace), Some(&format!("add a Dockerfile at the repository root, or a root file to detect a runtime from ({}), or set `spec.runtime` of webspace `{}` (e.g. `static`)", detect::markers(), config.webspace)));
                            return Err(());
                        }
                    },
                };
                let runtime = find_runtime(store, name).await.map_err(|e| {
                    reporter.failure("the server cannot read its configuration", &e)
                })?;
                let Some(runtime) = runtime else {
                    reporter.error(&format!("runtime `{name}` of webspace `{}` does not exist", config.webspace), Some("`slipway get runtimes` lists them; add a Dockerfile, or fix `spec.runtime`"));
                    return Err(());
                };
                let context = slipway_runtimes::RenderContext::new(
                    config.webspace.clone(),
                    branch_label(branch),
                )
                .map_err(|e| reporter.failure("the server cannot render the runtime", &e))?;
                let rendered = slipway_runtimes::render(&runtime.spec, &context).map_err(|e| reporter.error(&format!("runtime `{name}`: {}", report::chain(&e)), Some("fix the Runtime's dockerfileTemplate, or add a Dockerfile to the repository")))?;
                // The template is part of what is built: the same tree with another template is
                // another image.
                let template = release::short_hash(rendered.as_bytes());
                (
                    Some(rendered),
                    format!("runtime `{name}`"),
                    format!("{tree}-{template}"),
                )
            }
        };
        plans.push(Plan {
            branch: branch.clone(),
            commit: commit.clone(),
            tree: tree.to_string(),
            images,
            manifest,
            dockerfile,
            source,
            tag,
        });
    }
    Ok(plans)
}

/// The largest Dockerfile read.
const MAX_DOCKERFILE: u64 = 1 << 20;

/// Reads the tree's Dockerfile and refuses what the shared build engine must not be asked
/// ([`policy`]); returns the images it uses, checked before the build.
fn screen(
    repository: &git2::Repository,
    manifest: &tree::Manifest,
    branch: &str,
    reporter: &Reporter,
) -> Result<Vec<policy::ImageUse>, ()> {
    let blob = manifest.entries.iter().find_map(|entry| match entry {
        tree::Entry::File {
            path, blob, size, ..
        } if path == b"Dockerfile" => Some((*blob, *size)),
        _ => None,
    });
    let Some((blob, size)) = blob else {
        return Ok(Vec::new());
    };
    if size > MAX_DOCKERFILE {
        reporter.error(
            &format!("`{branch}`: the Dockerfile is larger than 1 MiB"),
            Some("a Dockerfile that large is not one; check what was committed as `Dockerfile`"),
        );
        return Err(());
    }
    let blob = repository
        .find_blob(blob)
        .map_err(|e| reporter.failure("the server cannot read the pushed objects", &e))?;
    policy::scan(blob.content()).map_err(|refusal| {
        reporter.error(&format!("`{branch}`: {refusal}"), Some(refusal.hint));
    })
}

/// Refuses a plan whose Dockerfile uses another webspace's image (by name, through another
/// name of this server's registry, or by ID), or a base image with `ONBUILD` triggers (they
/// would run instructions this server never screened).
async fn check_images(
    config: &Config,
    docker: &bollard::Docker,
    plan: &Plan,
    reporter: &Reporter,
) -> Result<(), ()> {
    let owner = policy::Owner {
        webspace: &config.webspace,
        registry: config.registry.as_deref(),
    };
    for image in &plan.images {
        let refuse = |why: &str| {
            reporter.error(
                &format!(
                    "`{}`: the Dockerfile's line {}: {why}",
                    plan.branch, image.line
                ),
                Some("build FROM a public image or one of this webspace's own images"),
            );
        };
        if let Some(why) = policy::foreign(&image.reference, &owner) {
            refuse(&why);
            return Err(());
        }
        if let Some(host) = policy::registry_host(&image.reference)
            && !owner.registry.is_some_and(|r| r.eq_ignore_ascii_case(host))
        {
            let target = if host.contains(':') && !host.ends_with(']') {
                host.to_owned()
            } else {
                format!("{host}:443")
            };
            let resolved = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                tokio::net::lookup_host(target),
            )
            .await;
            // Fails closed: a name that does not resolve now cannot be shown to be public.
            let addresses: Vec<_> = match resolved {
                Ok(Ok(addresses)) => addresses.collect(),
                _ => {
                    refuse(&format!("registry `{host}` cannot be resolved"));
                    return Err(());
                }
            };
            if addresses.is_empty() || addresses.iter().any(|a| !policy::is_public(a.ip())) {
                refuse(&format!(
                    "registry `{host}` is on this server's network, not the internet"
                ));
                return Err(());
            }
        }
        // Fails closed: a base image that cannot be inspected cannot be shown to have no
        // triggers (and the build could not use it either).
        match build::onbuild_triggers(docker, &image.reference).await {
            None => {
                reporter.error(
                    &format!(
                        "`{}`: the Dockerfile's line {}: base image `{}` cannot be pulled",
                        plan.branch, image.line, image.reference
                    ),
                    Some("check the image's name and tag; this server pulls public images from their registry"),
                );
                return Err(());
            }
            Some(triggers) if !triggers.is_empty() => {
                refuse(&format!(
                    "base image `{}` has ONBUILD triggers ({}), which this server does not run",
                    image.reference,
                    triggers.join("; ")
                ));
                return Err(());
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Two branches whose names map to one host label would share a preview URL: refused.
fn check_labels(
    repository: &git2::Repository,
    updates: &[Update],
    reporter: &Reporter,
) -> Result<(), ()> {
    let mut branches: Vec<String> = repository
        .branches(Some(git2::BranchType::Local))
        .map(|iter| {
            iter.flatten()
                .filter_map(|(b, _)| b.name().ok().flatten().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for update in updates {
        match update {
            Update::Deletion { branch } => branches.retain(|b| b != branch),
            Update::Branch { branch, .. } if !branches.contains(branch) => {
                branches.push(branch.clone())
            }
            Update::Branch { .. } | Update::Tag { .. } => {}
        }
    }
    for update in updates {
        let Update::Branch { branch, .. } = update else {
            continue;
        };
        let label = branch_label(branch);
        if let Some(other) = branches
            .iter()
            .find(|b| *b != branch && branch_label(b) == label)
        {
            reporter.error(
                &format!(
                    "branch `{}` would share the host name `{label}` with branch `{}`",
                    branch.escape_debug(),
                    other.escape_debug()
                ),
                Some("rename one of the branches"),
            );
            return Err(());
        }
    }
    Ok(())
}

async fn find_runtime(
    store: &AnyStore,
    name: &str,
) -> Result<Option<Runtime>, slipway_store::StoreError> {
    if let Some(runtime) = store.get::<Runtime>(name).await? {
        return Ok(Some(runtime));
    }
    Ok(slipway_runtimes::defaults()
        .into_iter()
        .find(|r| r.metadata.name.as_deref() == Some(name)))
}

/// Runs post-receive: promotes the staged Releases of the branches that moved, and records
/// deleted branches.
pub async fn post_receive(config: &Config, input: &str, reporter: &Reporter) -> bool {
    let store = match AnyStore::open(config.store, &config.data).await {
        Ok(store) => store,
        Err(e) => {
            reporter.failure("the server cannot record the releases", &e);
            return false;
        }
    };
    let production = store
        .get::<Webspace>(&config.webspace)
        .await
        .ok()
        .flatten()
        .map(|w| w.spec.production_branch)
        .unwrap_or_else(|| "main".to_owned());
    let Ok(updates) = updates::decide(input, &production) else {
        return false;
    };
    let releases = match store.list::<Release>().await {
        Ok(releases) => releases,
        Err(e) => {
            reporter.failure("the server cannot record the releases", &e);
            return false;
        }
    };
    if !config.build {
        for update in &updates {
            match update {
                Update::Branch { branch, commit } => reporter.say(&format!(
                    "slipway: `{branch}` of `{}` is now at {}",
                    config.webspace,
                    short(commit)
                )),
                Update::Deletion { branch } => reporter.say(&format!(
                    "slipway: branch `{branch}` of `{}` deleted",
                    config.webspace
                )),
                Update::Tag { .. } => {}
            }
        }
        return true;
    }
    let mut ok = true;
    for update in &updates {
        let changed = release::after_push(&releases, &config.webspace, update);
        for release in &changed {
            if let Err(e) = store.put(release).await {
                reporter.failure("the server cannot record the releases", &e);
                ok = false;
            }
        }
        match update {
            Update::Branch { branch, commit } => {
                let name = release::name(&config.webspace, branch, commit);
                if config.rollout || config.store == Backend::Kube {
                    report_rollout(&store, &config.webspace, branch, &name, reporter).await;
                } else {
                    reporter.say(&format!(
                        "slipway: `{branch}` at {} is released as `{name}`; this server does not run apps (`slipway up` does)",
                        short(commit)
                    ));
                }
            }
            Update::Deletion { branch } => {
                if config.rollout || config.store == Backend::Kube {
                    wait_unrouted(&store, &config.webspace, branch).await;
                }
                reporter.say(&format!(
                    "slipway: branch `{branch}` deleted; its releases are retired"
                ));
            }
            Update::Tag { .. } => {}
        }
    }
    ok
}

/// Waits (a few seconds at most) until the operator stopped serving a deleted branch: the
/// Webspace's status no longer lists it, so when `git push origin :branch` returns, its preview
/// is gone.
async fn wait_unrouted(store: &AnyStore, webspace: &str, branch: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let listed = store
            .get::<Webspace>(webspace)
            .await
            .ok()
            .flatten()
            .and_then(|w| w.status)
            .is_some_and(|s| s.branches.iter().any(|b| b.branch == branch));
        if !listed {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
