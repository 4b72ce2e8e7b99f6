//! The single-host operator loop: makes the containers and the router's table match the
//! desired state, on every store change, every start or stop of one of its containers (the
//! engine's events), and every [`Settings::recheck`].
//!
//! # Guarantees
//! - Level-based: each pass compares what should run with the containers found by their labels,
//!   so after a restart it adopts what already runs instead of starting duplicates.
//! - A staged release is started without traffic and verified ([`crate::verify`]): `Verified`
//!   once it answers its health check, else `Failed` with the reason, a hint and its last log
//!   lines, and its container removed. Verifications run beside the passes, never inside one.
//! - A release takes traffic only after it answered its health check; the routes of a branch
//!   switch in one table swap; the previous container stops only after [`Settings::drain`] (a
//!   container that never served stops at once).
//! - A release that does not become healthy is marked `Failed` with the reason, its container
//!   is removed, and the previous release keeps serving.
//! - A Webspace whose Customer does not exist serves nothing, as on Kubernetes (where the
//!   Customer's Namespace goes with it): its containers and routes go, a release staged for it
//!   fails, and its status says ``customer `X` does not exist``; its Releases and repository
//!   stay, and its apps come back (health-gated) once the Customer exists again.
//! - A staged release whose push is gone (the push's marker in [`Settings::data`] is not held,
//!   see [`slipway_store::pushes`]) is failed at the next pass, and its container removed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use futures_util::StreamExt;
use slipway_api::resources::{BranchStatus, ReleaseStatus, phase};
use slipway_api::resources::{MADE_FOR_ANNOTATION, PORT_ANNOTATION, RUNS_WITH_ANNOTATION};
use slipway_api::{Customer, Release, Runtime, Webspace};
use slipway_store::{Store, StoreError};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::desired::{Deployment, desired};
use crate::docker;
use crate::hosts::Hosts;
use crate::router::{RouteTable, Routes, Target};

/// Full pass even without a change notification: catches what the engine's events missed
/// (containers removed behind Slipway's back while the event stream was down, say).
pub const RECHECK: Duration = Duration::from_secs(10);

/// How the loop behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Host names.
    pub hosts: Hosts,
    /// Base URL scheme and port suffix for status URLs, e.g. `http://` and `:8080`.
    pub url_scheme: String,
    /// `:8080`, or empty for port 80.
    pub url_port: String,
    /// Health check path.
    pub health_path: String,
    /// How long a new release has to answer.
    pub health_timeout: Duration,
    /// How long an old container keeps running after traffic left it.
    pub drain: Duration,
    /// This installation's id ([`docker::instance`] of the data directory).
    pub instance: String,
    /// Time between full passes without any change ([`RECHECK`] by default).
    pub recheck: Duration,
    /// The data directory the pushes run in, where each running push holds a marker
    /// ([`slipway_store::pushes`]); `None`: abandoned pushes are judged by time only.
    pub data: Option<std::path::PathBuf>,
}

impl Settings {
    /// The URL of a deployment (its first host).
    pub fn url(&self, deployment: &Deployment) -> Option<String> {
        deployment
            .hosts
            .first()
            .map(|host| format!("{}{host}{}", self.url_scheme, self.url_port))
    }
}

/// Time until the next pass after one that could not reach every wanted container (the
/// engine was starting or stopping one); doubled after every such pass in a row, up to
/// [`Settings::recheck`].
const UNSETTLED: Duration = Duration::from_secs(1);

struct State {
    healthy: HashSet<String>,
    removing: HashSet<String>,
    /// Staged releases being verified now.
    verifying: HashSet<String>,
    /// A prune runs in the background; passes do not wait for it (or start another).
    pruning: bool,
    /// When this loop started: a Release staged before then belongs to a push of an earlier
    /// server process, which cannot finish any more.
    started: k8s_openapi::jiff::Timestamp,
    /// Host → (webspace, release) of every route in the table.
    routed: HashMap<String, (String, String)>,
}

/// Runs until `shutdown`.
pub async fn run<S: Store>(
    store: S,
    docker: Docker,
    table: RouteTable,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let state = Arc::new(Mutex::new(State {
        healthy: HashSet::new(),
        removing: HashSet::new(),
        verifying: HashSet::new(),
        pruning: false,
        started: k8s_openapi::jiff::Timestamp::now(),
        routed: HashMap::new(),
    }));
    let mut changes = store.changes();
    let engine = Arc::new(Notify::new());
    tokio::spawn(watch_engine(
        docker.clone(),
        settings.instance.clone(),
        engine.clone(),
        shutdown.clone(),
    ));
    let mut unsettled = UNSETTLED;
    loop {
        let next = match reconcile(&store, &docker, &table, &settings, &state, &engine).await {
            Ok(true) => {
                unsettled = UNSETTLED;
                settings.recheck
            }
            // Soon, then less and less often while it stays so (a missing image, say).
            Ok(false) => {
                let next = unsettled.min(settings.recheck);
                unsettled = unsettled.saturating_mul(2);
                next
            }
            Err(error) => {
                tracing::warn!(%error, "reconcile failed; retrying");
                settings.recheck
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            change = changes.recv() => {
                // A push waits for this one: its verification starts before the pass.
                let verifier = Verifier {
                    store: &store,
                    docker: &docker,
                    settings: &settings,
                    state: &state,
                    engine: &engine,
                };
                if let Ok(change) = change
                    && change.plural == "releases"
                    && let Err(error) = verify_at_once(&verifier, &change.name).await
                {
                    tracing::warn!(%error, "cannot read a staged release");
                }
            }
            () = engine.notified() => {}
            () = tokio::time::sleep(next) => continue,
        }
        // Coalesce a burst of changes into one pass (a put is a few events), briefly: a push
        // waits on every pass between its staging and its release serving.
        tokio::time::sleep(COALESCE).await;
        while changes.try_recv().is_ok() {}
    }
}

/// Pokes `engine` whenever one of this installation's containers starts or stops: a container
/// the engine restarted (its restart policy, after a crash) has a new address and network
/// namespace, and its route must follow at once, not at the next periodic pass.
async fn watch_engine(
    docker: Docker,
    instance: String,
    engine: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        (
            "label".to_owned(),
            vec![format!("{}={instance}", docker::LABEL_INSTANCE)],
        ),
        (
            "event".to_owned(),
            vec!["start".to_owned(), "die".to_owned()],
        ),
    ]);
    let mut pause = Duration::from_secs(1);
    loop {
        let mut events = docker.events(Some(bollard::query_parameters::EventsOptions {
            filters: Some(filters.clone()),
            ..Default::default()
        }));
        let mut worked = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => match event {
                    Some(Ok(_)) => {
                        worked = true;
                        engine.notify_one();
                    }
                    Some(Err(error)) => {
                        if worked || pause == Duration::from_secs(1) {
                            tracing::warn!(%error, "engine events stopped; periodic passes go on");
                        }
                        break;
                    }
                    None => break,
                },
            }
        }
        // Listen again shortly, and less often while the engine keeps refusing; a pass then
        // catches up with what happened meanwhile.
        pause = if worked {
            Duration::from_secs(1)
        } else {
            pause.saturating_mul(2).min(Duration::from_secs(60))
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {
                if worked {
                    engine.notify_one();
                }
            }
        }
    }
}

/// The routes a pass makes.
#[derive(Default)]
struct Routing {
    /// The table before the pass.
    previous: Arc<Routes>,
    /// Host → (webspace, release) of `previous`.
    previously: HashMap<String, (String, String)>,
    routes: Routes,
    /// Host → (webspace, release) of `routes`.
    routed: HashMap<String, (String, String)>,
    /// Releases whose containers this pass could not reach, or that serve a kept route: their
    /// containers are not removed (the engine may be restarting them).
    unreached: HashSet<String>,
}

impl Routing {
    /// Routes `deployment`'s hosts to `target`.
    fn route(&mut self, deployment: &Deployment, target: &Target) {
        let target = Target {
            max_body: deployment.max_body,
            ..target.clone()
        };
        for host in &deployment.hosts {
            self.routes.insert(host.clone(), target.clone());
            self.routed.insert(
                host.clone(),
                (deployment.webspace.clone(), deployment.release.clone()),
            );
        }
    }

    /// `deployment`'s container cannot be reached this pass (the engine is starting or
    /// stopping it, or refused): its hosts keep their routes, so they answer 502 rather than
    /// 404 ("nothing deployed"), and another pass follows soon. Only a route of the same
    /// webspace is kept (a domain may have moved to another one).
    fn keep(&mut self, deployment: &Deployment) {
        self.unreached.insert(deployment.release.clone());
        for host in &deployment.hosts {
            let (Some((webspace, release)), Some(target)) =
                (self.previously.get(host), self.previous.get(host))
            else {
                continue;
            };
            if *webspace == deployment.webspace {
                self.routes.insert(host.clone(), target.clone());
                self.routed
                    .insert(host.clone(), (webspace.clone(), release.clone()));
                self.unreached.insert(release.clone());
            }
        }
    }
}

/// Errors of one pass.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine failed.
    #[error("docker engine")]
    Docker(#[from] bollard::errors::Error),
}

async fn set_phase<S: Store>(
    store: &S,
    release: &Release,
    phase: &str,
    reason: Option<String>,
    url: Option<String>,
) -> Result<(), StoreError> {
    let mut updated = release.clone();
    updated.status = Some(ReleaseStatus {
        phase: Some(phase.to_owned()),
        reason,
        url,
        ..Default::default()
    });
    if updated.status != release.status {
        store.put(&updated).await?;
    }
    Ok(())
}

/// Releases (and their images) kept per webspace branch: enough to roll back a few pushes,
/// few enough that a busy branch does not fill the disk.
pub const KEEP_RELEASES: usize = 5;

/// Deletes all but the newest [`KEEP_RELEASES`] Releases of each webspace branch, with their
/// images, except what serves, what is staged, and images a kept release still uses (the same
/// tree on another branch).
async fn prune_old_releases<S: Store>(
    store: &S,
    docker: &Docker,
    releases: &[Release],
    serving: &HashSet<String>,
) -> Result<(), StoreError> {
    let doomed = crate::desired::prunable(releases, KEEP_RELEASES, serving);
    let image_of = |r: &Release| {
        r.spec
            .image
            .split('@')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let doomed_names: HashSet<&str> = doomed
        .iter()
        .filter_map(|r| r.metadata.name.as_deref())
        .collect();
    let kept_images: HashSet<String> = releases
        .iter()
        .filter(|r| !doomed_names.contains(r.metadata.name.as_deref().unwrap_or_default()))
        .map(image_of)
        .collect();
    for release in doomed {
        let image = image_of(release);
        if !kept_images.contains(&image)
            && let Err(error) = docker
                .remove_image(
                    &image,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await
        {
            tracing::debug!(%image, %error, "old image not removed");
        }
        store
            .delete::<Release>(release.metadata.name.as_deref().unwrap_or_default())
            .await?;
        tracing::info!(release = ?release.metadata.name, %image, "old release pruned");
    }
    Ok(())
}

/// The customers named by `webspaces` that do not exist. One that cannot be read (a file
/// edited by hand into invalid YAML, say) counts as existing: only a known absence stops apps.
async fn missing_customers<S: Store>(store: &S, webspaces: &[Webspace]) -> HashSet<String> {
    let named: BTreeSet<&str> = webspaces.iter().map(|w| w.spec.customer.as_str()).collect();
    let mut missing = HashSet::new();
    for customer in named {
        match store.get::<Customer>(customer).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                missing.insert(customer.to_owned());
            }
            Err(error) => {
                tracing::warn!(customer, %error, "cannot read a customer; its webspaces keep serving");
            }
        }
    }
    missing
}

/// Records on each Webspace what serves: a URL and release per branch, and a phase (`Ready`
/// when every wanted branch serves, `Pending` before, `Degraded` when some do not); an orphan
/// (see [`crate::desired::orphans`]) gets what the Kubernetes driver writes for it: its
/// releases, no branches, and why as its error.
async fn write_webspace_status<S: Store>(
    store: &S,
    webspaces: &[Webspace],
    releases: &[Release],
    wanted: &[Deployment],
    serving: &HashSet<String>,
    orphans: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<(), StoreError> {
    for webspace in webspaces {
        let name = webspace.metadata.name.as_deref().unwrap_or_default();
        let error = orphans.get(name).cloned();
        let mine: Vec<&Deployment> = wanted.iter().filter(|d| d.webspace == name).collect();
        let branches: Vec<BranchStatus> = mine
            .iter()
            .filter(|d| serving.contains(&d.release))
            .map(|d| BranchStatus {
                branch: d.branch.clone(),
                url: settings.url(d).unwrap_or_default(),
                release: d.release.clone(),
                image: d.image.clone(),
                ready_replicas: 1,
            })
            .collect();
        let releases: Vec<&Release> = releases
            .iter()
            .filter(|r| r.spec.webspace == name)
            .collect();
        let status = crate::status::webspace_status(crate::status::Observed {
            webspace,
            releases: &releases,
            wanted: &mine,
            branches,
            error,
            now: &crate::status::now(),
        });
        if webspace.status.as_ref() != Some(&status) {
            // Re-read right before writing, and change only the status, so a spec applied in
            // the meantime is not overwritten with the one this pass started from.
            if let Some(mut current) = store.get::<Webspace>(name).await? {
                current.status = Some(status);
                store.put(&current).await?;
            }
        }
    }
    Ok(())
}

async fn reconcile<S: Store>(
    store: &S,
    docker: &Docker,
    table: &RouteTable,
    settings: &Settings,
    state: &Arc<Mutex<State>>,
    engine: &Arc<Notify>,
) -> Result<bool, ReconcileError> {
    let webspaces = store.list::<Webspace>().await?;
    let releases = store.list::<Release>().await?;
    let runtimes = store.list::<Runtime>().await?;
    let missing = missing_customers(store, &webspaces).await;
    let orphans = crate::desired::orphans(&webspaces, |customer| !missing.contains(customer));
    let owned: Vec<Webspace> = webspaces
        .iter()
        .filter(|w| !orphans.contains_key(w.metadata.name.as_deref().unwrap_or_default()))
        .cloned()
        .collect();
    let wanted: Vec<Deployment> = desired(&owned, &releases, &runtimes, &settings.hosts);
    let wanted = gate_changed_settings(store, &releases, wanted).await?;
    let wanted: Vec<Deployment> = wanted
        .into_iter()
        .map(|d| with_config(settings, d))
        .collect();
    let by_name: HashMap<&str, &Release> = releases
        .iter()
        .filter_map(|r| r.metadata.name.as_deref().map(|n| (n, r)))
        .collect();
    let mut serving: HashSet<String> = HashSet::new();
    let mut live = Vec::new();
    let mut routing = Routing {
        previous: table.snapshot(),
        previously: std::mem::take(&mut state.lock().await.routed),
        ..Routing::default()
    };
    let containers = docker::list(docker, &settings.instance).await?;
    for deployment in &wanted {
        let container =
            match docker::ensure_among(docker, &settings.instance, deployment, &containers).await {
                Ok(container) => container,
                Err(error) => {
                    tracing::warn!(release = %deployment.release, %error, "cannot start container");
                    routing.keep(deployment);
                    continue;
                }
            };
        let known = state.lock().await.healthy.contains(&deployment.release);
        // Unreachable for now: keep its routes. Except a release never seen healthy whose
        // container the engine keeps restarting: its health check fails at once, so the
        // previous release serves again.
        if container.target.is_none() && (known || !container.restarting) {
            routing.keep(deployment);
            continue;
        }
        if !known {
            match docker::wait_ready(
                docker,
                &container,
                &settings.health_path,
                settings.health_timeout,
            )
            .await
            {
                Ok(_) => {
                    state
                        .lock()
                        .await
                        .healthy
                        .insert(deployment.release.clone());
                }
                Err(probe) => {
                    tracing::warn!(release = %deployment.release, %probe, "release is not healthy");
                    docker::remove(docker, &container.id).await;
                    if let Some(release) = by_name.get(deployment.release.as_str()) {
                        set_phase(
                            store,
                            release,
                            "Failed",
                            Some(format!("health check: {probe}")),
                            None,
                        )
                        .await?;
                    }
                    continue;
                }
            }
        }
        let Some(target) = &container.target else {
            routing.keep(deployment);
            continue;
        };
        routing.route(deployment, target);
        serving.insert(deployment.release.clone());
        if let Some(release) = by_name.get(deployment.release.as_str()) {
            live.push((*release, settings.url(deployment)));
        }
    }
    // Routed first: post-receive returns when it sees `Live`, and the app must answer then.
    let settled = routing.unreached.is_empty();
    table.replace(routing.routes);
    state.lock().await.routed = routing.routed;
    let unreached = routing.unreached;
    let served: HashSet<String> = routing
        .previously
        .values()
        .map(|(_, release)| release.clone())
        .chain(serving.iter().cloned())
        .collect();
    for (release, url) in live {
        set_phase(store, release, "Live", None, url).await?;
    }
    write_webspace_status(
        store, &webspaces, &releases, &wanted, &serving, &orphans, settings,
    )
    .await?;
    // Removing images takes a while; a pass must stay quick so a promoted release is routed
    // at once, so pruning runs beside the passes, one at a time.
    let start_pruning = {
        let mut guard = state.lock().await;
        !std::mem::replace(&mut guard.pruning, true)
    };
    if start_pruning {
        let (store, docker, state) = (store.clone(), docker.clone(), state.clone());
        let (releases, serving) = (releases.clone(), serving.clone());
        tokio::spawn(async move {
            if let Err(error) = prune_old_releases(&store, &docker, &releases, &serving).await {
                tracing::warn!(%error, "cannot prune old releases");
            }
            state.lock().await.pruning = false;
        });
    }
    // Releases of a branch that now serves something newer are superseded.
    for release in &releases {
        let phase = release.phase();
        let name = release.metadata.name.as_deref().unwrap_or_default();
        let replaced = wanted.iter().any(|d| {
            d.webspace == release.spec.webspace
                && d.branch == release.spec.branch
                && d.release != name
                && serving.contains(&d.release)
        });
        if replaced && matches!(phase, "Live" | "Promoted") {
            set_phase(
                store,
                release,
                "Superseded",
                Some("a newer release serves the branch".into()),
                None,
            )
            .await?;
        }
    }
    // Staged releases are verified beside the passes; those left by a push that died (its
    // client left, or the server stopped during it) fail, so their containers go below.
    let started = state.lock().await.started;
    let verifier = Verifier {
        store,
        docker,
        settings,
        state,
        engine,
    };
    for release in &releases {
        let name = release.metadata.name.as_deref().unwrap_or_default();
        if let Some(reason) = abandoned(settings, started, release) {
            // As it is now: a push of the same commit since may have staged it anew.
            let Some(current) = store.get::<Release>(name).await? else {
                continue;
            };
            if current.phase() == release.phase() && current.pushed_at() == release.pushed_at() {
                tracing::info!(release = name, reason, "abandoned release failed");
                set_phase(
                    store,
                    &current,
                    phase::FAILED,
                    Some(reason.to_owned()),
                    None,
                )
                .await?;
            }
            continue;
        }
        if release.phase() == phase::STAGED
            && let Some(why) = orphans.get(&release.spec.webspace)
        {
            let failed = ReleaseStatus {
                phase: Some(phase::FAILED.to_owned()),
                // Read by the pusher after the branch's name (see `verify::not_started`).
                reason: Some(format!("could not be started: {why}")),
                ..Default::default()
            };
            settle(store, release, failed).await?;
            continue;
        }
        if release.phase() == phase::STAGED {
            let webspace = webspaces
                .iter()
                .find(|w| w.metadata.name.as_deref() == Some(release.spec.webspace.as_str()))
                .cloned();
            verifier
                .start(release.clone(), webspace, runtimes.clone())
                .await;
        }
    }
    // Containers that serve nothing wanted stop after the drain delay (at once when they never
    // served). A release's container that is staged, verified or promoted but not routed yet
    // is left alone, unless its webspace's Customer does not exist. The Releases are read again
    // *after* listing the containers: a Release is recorded before its container starts, so
    // every container listed has its Release in this read, however long this pass took (the
    // list it started from may predate the push). The Customers too, after the Releases: one
    // created again during this pass may already have a push staged.
    let containers = docker::list(docker, &settings.instance).await?;
    let releases_now = store.list::<Release>().await?;
    let missing = missing_customers(store, &webspaces).await;
    let orphans = crate::desired::orphans(&webspaces, |customer| !missing.contains(customer));
    let pending: HashSet<String> = releases_now
        .into_iter()
        .filter(|r| matches!(r.phase(), phase::STAGED | phase::VERIFIED | phase::PROMOTED))
        .filter(|r| !orphans.contains_key(&r.spec.webspace))
        .filter_map(|r| r.metadata.name)
        .collect();
    for container in containers {
        if serving.contains(&container.release)
            || pending.contains(&container.release)
            || unreached.contains(&container.release)
        {
            continue;
        }
        let mut guard = state.lock().await;
        if !guard.removing.insert(container.id.clone()) {
            continue;
        }
        guard.healthy.remove(&container.release);
        drop(guard);
        let docker = docker.clone();
        let state = state.clone();
        let drain = if container.running && served.contains(&container.release) {
            settings.drain
        } else {
            Duration::ZERO
        };
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            docker::remove(&docker, &container.id).await;
            state.lock().await.removing.remove(&container.id);
            tracing::info!(release = %container.release, "old container removed");
        });
    }
    Ok(settled)
}

/// Whether the operator made `release` for changed settings (no push waits for it).
fn made_by_operator(release: &Release) -> bool {
    release
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MADE_FOR_ANNOTATION))
}

/// Keeps each serving release running as it was verified when its Webspace's `port` or `env`
/// changed since (routing it on the port it was verified on), and stages a new release of the
/// same image with the new settings, which the operator verifies and promotes itself; a failed
/// one is not tried again for the same settings (its `Failed` status says why). A release
/// verified before releases recorded their settings is pinned to the current ones.
async fn gate_changed_settings<S: Store>(
    store: &S,
    releases: &[Release],
    wanted: Vec<Deployment>,
) -> Result<Vec<Deployment>, StoreError> {
    let annotation = |release: &Release, key: &str| {
        release
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    let mut gated = Vec::with_capacity(wanted.len());
    for mut deployment in wanted {
        let current = crate::desired::runs_with(&deployment);
        let Some(release) = releases
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(deployment.release.as_str()))
            .filter(|r| r.phase() == phase::LIVE)
        else {
            gated.push(deployment);
            continue;
        };
        let Some(pinned) = annotation(release, RUNS_WITH_ANNOTATION) else {
            if let Some(mut fresh) = store.get::<Release>(&deployment.release).await? {
                let recorded = fresh
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default);
                recorded.insert(RUNS_WITH_ANNOTATION.to_owned(), current);
                recorded.insert(PORT_ANNOTATION.to_owned(), deployment.port.to_string());
                store.put(&fresh).await?;
            }
            gated.push(deployment);
            continue;
        };
        if pinned == current {
            gated.push(deployment);
            continue;
        }
        let verified_port = annotation(release, PORT_ANNOTATION).and_then(|p| p.parse().ok());
        let old_port = verified_port.unwrap_or(deployment.port);
        let mine: Vec<&Release> = releases
            .iter()
            .filter(|r| {
                r.spec.webspace == deployment.webspace && r.spec.branch == deployment.branch
            })
            .collect();
        let pending = mine.iter().any(|r| {
            r.order() > release.order()
                && matches!(r.phase(), phase::STAGED | phase::VERIFIED | phase::PROMOTED)
        });
        let tried = mine.iter().any(|r| {
            r.order() > release.order()
                && r.phase() == phase::FAILED
                && annotation(r, MADE_FOR_ANNOTATION).as_deref() == Some(current.as_str())
        });
        if !pending && !tried {
            let what = if old_port == deployment.port {
                "env".to_owned()
            } else {
                format!("port {old_port} → {}", deployment.port)
            };
            let version = slipway_api::releases::next_version(releases, &deployment.webspace);
            let cause = format!("webspace changed: {what}");
            let mut made = slipway_api::releases::derived(release, version, &cause, "operator");
            made.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(MADE_FOR_ANNOTATION.to_owned(), current);
            tracing::info!(release = ?made.metadata.name, %cause, "settings changed; verifying a new release");
            store.put(&made).await?;
        }
        // Until then, traffic goes where it was verified.
        deployment.port = old_port;
        gated.push(deployment);
    }
    Ok(gated)
}

/// `deployment` with its webspace's config ([`slipway_store::config`]) over `spec.env`; `PORT`
/// stays Slipway's. A container takes the config it finds when it is made: a change of config
/// makes a new release, so it reaches the app through the health gate.
fn with_config(settings: &Settings, mut deployment: Deployment) -> Deployment {
    let Some(data) = &settings.data else {
        return deployment;
    };
    match slipway_store::config::read(data, &deployment.webspace) {
        Ok(values) => {
            for (name, value) in values {
                if name != "PORT" {
                    deployment.env.insert(name, value);
                }
            }
        }
        Err(error) => {
            tracing::warn!(webspace = %deployment.webspace, %error, "cannot read the webspace's config; starting without it");
        }
    }
    deployment
}

/// How long a staged release may start before its status says what it waits for.
const QUIET_START: Duration = Duration::from_secs(1);

/// How long the operator waits after a change for more before its pass.
const COALESCE: Duration = Duration::from_millis(2);

/// What a verification needs of the loop.
struct Verifier<'a, S> {
    store: &'a S,
    docker: &'a Docker,
    settings: &'a Settings,
    state: &'a Arc<Mutex<State>>,
    engine: &'a Arc<Notify>,
}

impl<S: Store> Verifier<'_, S> {
    /// Starts verifying `release` beside the passes, unless that is under way or over: a pass
    /// may hold a list read before a verification of it ended (and starting it again would
    /// replace the container that verification started, which may serve by now).
    async fn start(&self, release: Release, webspace: Option<Webspace>, runtimes: Vec<Runtime>) {
        let name = release.metadata.name.clone().unwrap_or_default();
        if !self.state.lock().await.verifying.insert(name.clone()) {
            return;
        }
        // Holding the slot: whatever an earlier verification wrote is in the store now.
        let current = self.store.get::<Release>(&name).await;
        let still = matches!(&current, Ok(Some(current))
            if current.phase() == phase::STAGED && current.pushed_at() == release.pushed_at());
        if !still {
            self.state.lock().await.verifying.remove(&name);
            return;
        }
        tokio::spawn(verify(
            self.store.clone(),
            self.docker.clone(),
            self.settings.clone(),
            self.state.clone(),
            self.engine.clone(),
            release,
            webspace,
            runtimes,
        ));
    }
}

/// Why `release`, staged or verified, can no longer be promoted on this host, if it cannot: it
/// is too old or older than this operator ([`crate::verify::abandoned`]), or it is staged and
/// its push is gone (the push's marker is free; a release the operator made has no push).
fn abandoned(
    settings: &Settings,
    started: k8s_openapi::jiff::Timestamp,
    release: &Release,
) -> Option<String> {
    let name = release.metadata.name.as_deref().unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let gone = release.phase() == phase::STAGED
        && !made_by_operator(release)
        && settings
            .data
            .as_ref()
            .is_some_and(|data| !slipway_store::pushes::running(data, name));
    crate::verify::abandoned(
        release,
        Some(started),
        now,
        crate::verify::SINGLE_HOST_LIMITS,
    )
    .or_else(|| gone.then(|| crate::verify::PUSH_GONE.to_owned()))
}

/// Starts verifying Release `name` at once if it is a fresh staged release of a webspace whose
/// customer exists; anything else (an abandoned or orphaned release) waits for the pass, which
/// decides it as usual.
async fn verify_at_once<S: Store>(
    verifier: &Verifier<'_, S>,
    name: &str,
) -> Result<(), StoreError> {
    let store = verifier.store;
    let Some(release) = store.get::<Release>(name).await? else {
        return Ok(());
    };
    let started = verifier.state.lock().await.started;
    if release.phase() != phase::STAGED || abandoned(verifier.settings, started, &release).is_some()
    {
        return Ok(());
    }
    let Some(webspace) = store.get::<Webspace>(&release.spec.webspace).await? else {
        return Ok(());
    };
    if store
        .get::<Customer>(&webspace.spec.customer)
        .await?
        .is_none()
    {
        return Ok(());
    }
    let runtimes = store.list::<Runtime>().await?;
    verifier.start(release, Some(webspace), runtimes).await;
    Ok(())
}

/// Verifies the staged `release`: starts its container without traffic and waits for its
/// health check; records `Verified`, or `Failed` with the reason, a hint and its last log lines
/// (removing the container). Then pokes a pass: a push of the same commit may be waiting for
/// this one to end.
#[allow(clippy::too_many_arguments)]
async fn verify<S: Store>(
    store: S,
    docker: Docker,
    settings: Settings,
    state: Arc<Mutex<State>>,
    engine: Arc<Notify>,
    release: Release,
    webspace: Option<Webspace>,
    runtimes: Vec<Runtime>,
) {
    let name = release.metadata.name.clone().unwrap_or_default();
    if let Err(error) = verify_one(
        &store, &docker, &settings, &state, &release, webspace, &runtimes,
    )
    .await
    {
        tracing::warn!(release = %name, %error, "cannot record the verification");
    }
    state.lock().await.verifying.remove(&name);
    engine.notify_one();
}

async fn verify_one<S: Store>(
    store: &S,
    docker: &Docker,
    settings: &Settings,
    state: &Arc<Mutex<State>>,
    release: &Release,
    webspace: Option<Webspace>,
    runtimes: &[Runtime],
) -> Result<(), StoreError> {
    let name = release.metadata.name.clone().unwrap_or_default();
    let planned = webspace.as_ref().and_then(|webspace| {
        crate::verify::deployment(webspace, runtimes, release, &settings.hosts).map(
            |(deployment, from)| {
                let pin = crate::desired::runs_with(&deployment);
                (with_config(settings, deployment), from, pin)
            },
        )
    });
    let Some((deployment, from, pin)) = planned else {
        settle(
            store,
            release,
            crate::verify::not_started(&format!(
                "webspace `{}` no longer exists",
                release.spec.webspace
            )),
        )
        .await?;
        return Ok(());
    };
    let path = &settings.health_path;
    // Never one found running: it may be an earlier push's of the same commit, on its way out.
    let container = match docker::start(docker, &settings.instance, &deployment).await {
        Ok(container) => container,
        Err(error) => {
            tracing::warn!(release = %name, %error, "cannot start a staged release");
            let why = crate::chain(&error);
            settle(store, release, crate::verify::not_started(&why)).await?;
            return Ok(());
        }
    };
    tracing::info!(release = %name, "verifying a staged release");
    let waiting = docker::wait_ready(docker, &container, path, settings.health_timeout);
    tokio::pin!(waiting);
    // Most apps answer at once; one that does not gets a status saying what the push waits
    // for (its progress lines show it), one store write later than the quick ones pay.
    let probe = tokio::select! {
        probe = &mut waiting => probe,
        () = tokio::time::sleep(QUIET_START) => {
            let starting = crate::verify::starting(&deployment, &from, path);
            if !settle(store, release, starting).await? {
                // Withdrawn or failed meanwhile.
                docker::remove(docker, &container.id).await;
                return Ok(());
            }
            waiting.await
        }
    };
    match probe {
        Ok(status) => {
            state.lock().await.healthy.insert(name.clone());
            let mut verdict = crate::verify::verified(path, &format!("HTTP {status}"));
            // A release the operator made for new settings has no push to promote it.
            if made_by_operator(release) {
                verdict.phase = Some(phase::PROMOTED.to_owned());
            }
            let pinned = [
                (RUNS_WITH_ANNOTATION, pin),
                (PORT_ANNOTATION, deployment.port.to_string()),
            ];
            if !settle_with(store, release, verdict, &pinned).await? {
                // Withdrawn meanwhile: a pass removes its container.
                state.lock().await.healthy.remove(&name);
            }
        }
        Err(probe) => {
            tracing::info!(release = %name, %probe, "staged release is not healthy");
            let (_, logs) = docker::diagnose(docker, &container.id).await;
            docker::remove(docker, &container.id).await;
            let failed = crate::verify::unhealthy(
                &release.spec.webspace,
                &deployment,
                &from,
                path,
                &probe,
                logs,
            );
            settle(store, release, failed).await?;
        }
    }
    Ok(())
}

/// Writes `status` to `release` if it is still the same push's staged release (not withdrawn,
/// failed as abandoned, or staged anew by another push); returns whether it did.
async fn settle<S: Store>(
    store: &S,
    release: &Release,
    status: ReleaseStatus,
) -> Result<bool, StoreError> {
    settle_with(store, release, status, &[]).await
}

/// [`settle`], also recording `annotations` on the release.
async fn settle_with<S: Store>(
    store: &S,
    release: &Release,
    status: ReleaseStatus,
    annotations: &[(&str, String)],
) -> Result<bool, StoreError> {
    let name = release.metadata.name.as_deref().unwrap_or_default();
    let Some(mut current) = store.get::<Release>(name).await? else {
        return Ok(false);
    };
    if current.phase() != phase::STAGED || current.pushed_at() != release.pushed_at() {
        return Ok(false);
    }
    current.status = Some(status);
    let recorded = current
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    for (key, value) in annotations {
        recorded.insert((*key).to_owned(), value.clone());
    }
    store.put(&current).await?;
    Ok(true)
}
