//! The reconcile of one Webspace on a cluster, level-based: whatever happened before, one pass
//! makes the cluster match the resources (namespace, quota, policy, and per branch Deployment,
//! Service and Ingress by server-side apply), prunes what no branch wants, marks Releases Live,
//! Failed or Superseded, and writes the Webspace's status.
//!
//! A rollout that misses its progress deadline fails its Release; the shared decisions then
//! pick the previous release again and the next apply restores its image.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment as KubeDeployment, DeploymentCondition};
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, EventSource, Pod, ResourceQuota, Secret, Service,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use slipway_api::resources::{BranchStatus, phase};
use slipway_api::{Customer, Release, Runtime, Webspace};
use slipway_store::OPERATOR_FIELD_MANAGER as FIELD_MANAGER;

use super::objects::{
    self, BRANCH_LABEL, RELEASE_ANNOTATION, RELEASE_LABEL, Settings, WEBSPACE_LABEL,
};
use crate::Deployment;
use crate::metrics::Metrics;
use crate::status::{Observed, webspace_status};

/// A failed call to the API server.
#[derive(Debug, thiserror::Error)]
#[error("cannot {operation} {what}")]
pub struct Error {
    operation: &'static str,
    what: String,
    #[source]
    source: kube::Error,
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Driver settings.
    pub settings: Settings,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    failures: Mutex<HashMap<String, u32>>,
    /// This replica, in the Events it records.
    instance: String,
    /// Per customer, the version of the Customer whose namespace, quota and policy were last
    /// applied, and when: its webspaces skip those three calls until it changes or a minute
    /// passed (1,000 webspaces of one customer would otherwise make 3,000 identical applies).
    namespaces: Mutex<HashMap<String, (String, Instant)>>,
    /// Caches of Customers, Releases and Runtimes fed by the controller's own watches, so a
    /// reconcile reads them without a call; without them (tests of the exact calls), it asks
    /// the API server.
    stores: Option<Stores>,
}

/// The controller's caches (see [`Context::with_stores`]).
#[derive(Clone, Debug)]
pub struct Stores {
    /// Every Customer.
    pub customers: Store<Customer>,
    /// Every Release.
    pub releases: Store<Release>,
    /// Every Runtime.
    pub runtimes: Store<Runtime>,
}

/// Longest a reconcile waits for the caches' first listing.
const STORES_READY: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            settings,
            metrics,
            failures: Mutex::new(HashMap::new()),
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| FIELD_MANAGER.to_owned()),
            namespaces: Mutex::new(HashMap::new()),
            stores: None,
        }
    }

    /// This context, reading Customers, Releases and Runtimes from `stores`.
    pub fn with_stores(mut self, stores: Stores) -> Self {
        self.stores = Some(stores);
        self
    }

    /// The caches, once each has listed its kind: reading one before would see nothing and
    /// take every branch down.
    async fn ready_stores(&self) -> Result<Option<&Stores>, Error> {
        let Some(stores) = &self.stores else {
            return Ok(None);
        };
        let ready = async {
            stores.customers.wait_until_ready().await?;
            stores.releases.wait_until_ready().await?;
            stores.runtimes.wait_until_ready().await
        };
        match tokio::time::timeout(STORES_READY, ready).await {
            Ok(Ok(())) => Ok(Some(stores)),
            _ => Err(Error {
                operation: "read",
                what: "Customers, Releases and Runtimes (their watches have not listed them yet)"
                    .into(),
                source: kube::Error::Service(Box::new(std::io::Error::other("watch not ready"))),
            }),
        }
    }

    async fn customer(&self, name: &str) -> Result<Option<Customer>, Error> {
        if let Some(stores) = self.ready_stores().await? {
            return Ok(stores
                .customers
                .get(&ObjectRef::new(name))
                .map(|c| (*c).clone()));
        }
        Api::<Customer>::all(self.client.clone())
            .get_opt(name)
            .await
            .map_err(call("read", || format!("Customer {name}")))
    }

    async fn releases_of(&self, webspace: &str) -> Result<Vec<Release>, Error> {
        let mine = |r: &Release| r.spec.webspace == webspace;
        if let Some(stores) = self.ready_stores().await? {
            return Ok(stores
                .releases
                .state()
                .iter()
                .filter(|r| mine(r))
                .map(|r| (**r).clone())
                .collect());
        }
        Ok(Api::<Release>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(call("list", || "Releases".into()))?
            .items
            .into_iter()
            .filter(|r| mine(r))
            .collect())
    }

    async fn runtimes(&self) -> Result<Vec<Runtime>, Error> {
        if let Some(stores) = self.ready_stores().await? {
            return Ok(stores
                .runtimes
                .state()
                .iter()
                .map(|r| (**r).clone())
                .collect());
        }
        Ok(Api::<Runtime>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(call("list", || "Runtimes".into()))?
            .items)
    }

    /// Whether `customer`'s namespace, quota and policy were applied for this version of it
    /// within the last minute.
    fn namespace_current(&self, customer: &Customer) -> bool {
        let version = customer_version(customer);
        self.namespaces.lock().is_ok_and(|applied| {
            applied
                .get(&customer.name_any())
                .is_some_and(|(v, at)| *v == version && at.elapsed() < NAMESPACE_REAPPLY)
        })
    }

    fn namespace_applied(&self, customer: &Customer) {
        if let Ok(mut applied) = self.namespaces.lock() {
            applied.insert(
                customer.name_any(),
                (customer_version(customer), Instant::now()),
            );
        }
    }

    /// A Warning Event on `object` (`kubectl describe` shows it); best effort, since the
    /// status says the same.
    ///
    /// A core/v1 Event without `eventTime`, not kube-rs' events.k8s.io recorder: before 1.22
    /// the API server accepts a new-style event about a cluster-scoped object only in
    /// `kube-system` (seen on 1.20), and `kubectl describe` finds events of cluster-scoped
    /// objects by an empty `involvedObject.namespace`, so such events go to `default`.
    async fn warn<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let regarding = object.object_ref(&());
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = CoreEvent {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or("slipway"),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: regarding,
            type_: Some("Warning".into()),
            reason: Some(reason.into()),
            action: Some(action.into()),
            // Messages are cut to 1 kB as the Events API wants.
            message: Some(note.chars().take(1000).collect()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            source: Some(EventSource {
                component: Some(FIELD_MANAGER.into()),
                ..Default::default()
            }),
            reporting_component: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let events: Api<CoreEvent> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(error) = events.create(&PostParams::default(), &event).await {
            tracing::warn!(error = %crate::chain(&error), reason, "cannot record an event");
        }
    }
}

/// How long a customer's applied namespace, quota and policy count as current.
const NAMESPACE_REAPPLY: Duration = Duration::from_secs(60);

fn customer_version(customer: &Customer) -> String {
    format!(
        "{}/{}",
        customer.metadata.uid.as_deref().unwrap_or_default(),
        customer
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    )
}

/// How often a Webspace is checked again when all is well, and while a rollout is under way.
const RESYNC: Duration = Duration::from_secs(300);
const WATCH_ROLLOUT: Duration = Duration::from_secs(5);
const CUSTOMER_MISSING: Duration = Duration::from_secs(60);

fn call(
    operation: &'static str,
    what: impl FnOnce() -> String,
) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error {
        operation,
        what: what(),
        source,
    }
}

fn not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(call("apply", || format!("{} {name}", K::kind(&()))))?;
    Ok(())
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(error) if not_found(&error) => Ok(()),
        Err(source) => Err(Error {
            operation: "delete",
            what: format!("{} {name}", K::kind(&())),
            source,
        }),
    }
}

fn release_of(deployment: &KubeDeployment) -> Option<&str> {
    deployment
        .metadata
        .annotations
        .as_ref()?
        .get(RELEASE_ANNOTATION)
        .map(String::as_str)
}

fn branch_of(deployment: &KubeDeployment) -> Option<&str> {
    deployment
        .metadata
        .labels
        .as_ref()?
        .get(BRANCH_LABEL)
        .map(String::as_str)
}

/// The Deployment's condition of `kind` with status `status`, if it has one.
fn condition<'a>(
    deployment: &'a KubeDeployment,
    kind: &str,
    status: &str,
) -> Option<&'a DeploymentCondition> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
}

/// Why the Deployment's rollout failed, if it missed its progress deadline. Only a condition
/// about the current template counts: after the previous image is applied again, the missed
/// deadline of the failed rollout stays on the Deployment until its controller has seen the
/// change, and read then it would fail the release that was restored (seen on a real cluster).
fn deadline_missed(deployment: &KubeDeployment) -> Option<String> {
    let observed = deployment.status.as_ref()?.observed_generation;
    if observed < deployment.metadata.generation {
        return None;
    }
    condition(deployment, "Progressing", "False")
        .filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
        .map(|c| {
            format!(
                "the rollout missed its progress deadline ({})",
                c.message.as_deref().unwrap_or("no message")
            )
        })
}

/// Ready pods of the wanted release, and whether its rollout is complete (every replica
/// updated and available, no old pod left).
fn readiness(deployment: &KubeDeployment, wanted: &Deployment) -> (i32, bool) {
    if release_of(deployment) != Some(wanted.release.as_str()) {
        return (0, false);
    }
    let Some(status) = &deployment.status else {
        return (0, false);
    };
    let current = status.observed_generation >= deployment.metadata.generation;
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0).min(updated);
    let complete = current
        && updated >= wanted.replicas
        && status.replicas.unwrap_or(0) == updated
        && status.available_replicas.unwrap_or(0) >= wanted.replicas;
    (if current { ready } else { 0 }, complete)
}

async fn set_release_status(
    api: &Api<Release>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), Error> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map_err(call("update", || format!("the status of Release {name}")))?;
    Ok(())
}

/// Reconciles one Webspace; the controller calls it on every change of the Webspace, its
/// Releases, its Customer or the objects it owns.
///
/// # Errors
/// The first API call that failed; [`error_policy`] requeues with backoff.
pub async fn reconcile(webspace: Arc<Webspace>, context: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&webspace, &context).await;
    context
        .metrics
        .reconciled(started.elapsed(), result.is_ok());
    if result.is_ok()
        && let Ok(mut failures) = context.failures.lock()
    {
        failures.remove(&webspace.name_any());
    }
    result
}

/// Requeues a failed Webspace after 5 s, doubling per consecutive failure up to 5 min. Other
/// Webspaces are unaffected: the controller reconciles each on its own.
pub fn error_policy(webspace: Arc<Webspace>, error: &Error, context: Arc<Context>) -> Action {
    let name = webspace.name_any();
    let count = context
        .failures
        .lock()
        .map(|mut failures| {
            let count = failures.entry(name.clone()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        })
        .unwrap_or(1);
    let delay = Duration::from_secs(5)
        .saturating_mul(1 << count.saturating_sub(1).min(6))
        .min(Duration::from_secs(300));
    tracing::warn!(webspace = %name, error = %crate::chain(error), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// What went wrong in one pass, without stopping it: each branch and object is tried, and all
/// of it reaches the Webspace's status and Events.
#[derive(Default)]
struct Problems {
    /// Failed API calls; the first one is the pass's error (the controller retries on it).
    errors: Vec<Error>,
    /// What the cluster reports that a retry would not change (a quota refusing pods).
    reported: Vec<String>,
}

impl Problems {
    fn check<T>(&mut self, result: Result<T, Error>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(error);
                None
            }
        }
    }

    fn summary(&self) -> Option<String> {
        let all: Vec<String> = self
            .errors
            .iter()
            .map(|e| crate::chain(e))
            .chain(self.reported.iter().cloned())
            .collect();
        (!all.is_empty()).then(|| all.join("; "))
    }
}

async fn reconcile_inner(webspace: &Webspace, context: &Context) -> Result<Action, Error> {
    if webspace.metadata.deletion_timestamp.is_some() {
        // Owner references delete the branch objects; nothing outside the cluster to clean.
        return Ok(Action::await_change());
    }
    let client = &context.client;
    let settings = &context.settings;
    let name = webspace.name_any();
    let customer_name = &webspace.spec.customer;
    let Some(customer) = context.customer(customer_name).await? else {
        let why = format!("customer `{customer_name}` does not exist");
        // Its releases still say what was built ("nothing was pushed yet" would be wrong).
        let releases = context.releases_of(&name).await?;
        let releases: Vec<&Release> = releases.iter().collect();
        let status = webspace_status(Observed {
            webspace,
            releases: &releases,
            wanted: &[],
            branches: Vec::new(),
            error: Some(why.clone()),
            now: &crate::status::now(),
        });
        if webspace.status.as_ref().and_then(|s| s.last_error.as_ref()) != Some(&why) {
            context
                .warn(webspace, "CustomerMissing", "Reconcile", &why)
                .await;
        }
        write_status(client, webspace, status).await?;
        return Ok(Action::requeue(CUSTOMER_MISSING));
    };
    let mut problems = Problems::default();
    let namespace = objects::namespace_name(customer_name);
    let namespaced = if context.namespace_current(&customer) {
        true
    } else {
        let applied = async {
            apply(&Api::all(client.clone()), &objects::namespace(&customer)).await?;
            apply(
                &Api::<ResourceQuota>::namespaced(client.clone(), &namespace),
                &objects::quota(&namespace, settings),
            )
            .await?;
            apply(
                &Api::<NetworkPolicy>::namespaced(client.clone(), &namespace),
                &objects::network_policy(&namespace, settings),
            )
            .await?;
            apply(
                &Api::<RoleBinding>::namespaced(client.clone(), &namespace),
                &objects::logs_binding(&namespace, settings),
            )
            .await?;
            if let Some(config) = &settings.image_pull_config {
                apply(
                    &Api::<Secret>::namespaced(client.clone(), &namespace),
                    &objects::image_pull_secret(&namespace, config),
                )
                .await?;
            }
            Ok::<(), Error>(())
        };
        let done = problems.check(applied.await).is_some();
        if done {
            context.namespace_applied(&customer);
        }
        done
    };

    let release_api: Api<Release> = Api::all(client.clone());
    let mut releases = context.releases_of(&name).await?;
    let runtimes = context.runtimes().await?;
    let mine = ListParams::default().labels(&format!("{WEBSPACE_LABEL}={name}"));
    // Across namespaces: a Webspace moved to another customer leaves objects in the old one.
    let (current, elsewhere): (Vec<KubeDeployment>, Vec<KubeDeployment>) =
        Api::<KubeDeployment>::all(client.clone())
            .list(&mine)
            .await
            .map_err(call("list", || {
                format!("the Deployments of Webspace {name}")
            }))?
            .items
            .into_iter()
            .filter(|d| owned_by(d, webspace))
            .partition(|d| d.metadata.namespace.as_deref() == Some(namespace.as_str()));
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let services_now: Vec<Service> = if namespaced {
        services
            .list(&mine)
            .await
            .map_err(call("list", || format!("the Services of Webspace {name}")))?
            .items
    } else {
        Vec::new()
    };
    // The Deployment of a release (named after it).
    let deployed = |release: &str| {
        current.iter().find(|d| {
            d.metadata.name.as_deref() == Some(objects::object_name(release).as_str())
                && release_of(d) == Some(release)
        })
    };
    // The release a branch's Service selects now.
    let selected = |label: &str| {
        services_now
            .iter()
            .filter(|s| s.labels().get(BRANCH_LABEL).map(String::as_str) == Some(label))
            .find_map(|s| {
                s.spec
                    .as_ref()?
                    .selector
                    .as_ref()?
                    .get(RELEASE_LABEL)
                    .cloned()
            })
    };
    let staged: Vec<Release> = releases
        .iter()
        .filter(|r| r.phase() == phase::STAGED)
        .cloned()
        .collect();

    // A rollout that cannot finish fails its Release; deciding again brings the previous one.
    let decide = |releases: &[Release]| {
        crate::desired(
            std::slice::from_ref(webspace),
            releases,
            &runtimes,
            &settings.hosts,
        )
    };
    let mut wanted = decide(&releases);
    // Pods are read only while a release starts (to fail it early when it cannot); a settled
    // webspace costs no pod listing.
    let starting = wanted
        .iter()
        .any(|w| deployed(&w.release).is_some_and(|d| !readiness(d, w).1))
        || staged.iter().any(|r| {
            deployed(&r.name_any()).is_some_and(|d| {
                d.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
                    < 1
            })
        });
    let pods: Vec<Pod> = if namespaced && starting {
        Api::<Pod>::namespaced(client.clone(), &namespace)
            .list(&mine)
            .await
            .map_err(call("list", || format!("the pods of Webspace {name}")))?
            .items
    } else {
        Vec::new()
    };
    // Why a started release cannot become ready, with the app's last log lines.
    let stuck_because =
        async |release: &str, running: &KubeDeployment| match pods_failure(&pods, release) {
            Some((pod, why)) => Some((why, last_log_lines(client, &namespace, &pod).await)),
            None => deadline_missed(running).map(|why| (why, Vec::new())),
        };

    // Staged releases: one pod each, without traffic, until it is ready (Verified) or cannot
    // be (Failed, and its Deployment removed). Pre-receive waits for the verdict.
    let deployments: Api<KubeDeployment> = Api::namespaced(client.clone(), &namespace);
    let mut verifying: Vec<Deployment> = Vec::new();
    let now = k8s_openapi::jiff::Timestamp::now();
    for release in &staged {
        let release_name = release.name_any();
        let abandoned = crate::verify::abandoned(release, None, now, crate::verify::CLUSTER_LIMITS);
        let verdict = if let Some(why) = abandoned {
            Some(failed(&why))
        } else if let Some((mut plan, from)) =
            crate::verify::deployment(webspace, &runtimes, release, &settings.hosts)
        {
            // One ready pod proves it starts; promotion scales it to the webspace's replicas.
            plan.replicas = 1;
            let path = &settings.health_path;
            match deployed(&release_name) {
                Some(running) if readiness(running, &plan).1 => {
                    Some(crate::verify::verified(path, "its readiness probe passed"))
                }
                Some(running) => match stuck_because(&release_name, running).await {
                    Some((why, logs)) => {
                        problems.check(delete_if_present(&deployments, &running.name_any()).await);
                        Some(crate::verify::unhealthy(
                            &name, &plan, &from, path, &why, logs,
                        ))
                    }
                    None => {
                        verifying.push(plan);
                        None
                    }
                },
                None => {
                    let starting = crate::verify::starting(&plan, &from, path);
                    if release.status.as_ref().and_then(|s| s.reason.as_ref())
                        != starting.reason.as_ref()
                    {
                        problems.check(
                            set_release_status(&release_api, &release_name, json_of(&starting))
                                .await,
                        );
                    }
                    verifying.push(plan);
                    None
                }
            }
        } else {
            None
        };
        let Some(verdict) = verdict else { continue };
        if verdict.phase.as_deref() == Some(phase::FAILED) {
            let why = verdict.reason.clone().unwrap_or_default();
            let note = format!(
                "release {release_name} of `{}` failed: {why}",
                release.spec.branch
            );
            context
                .warn(webspace, "ReleaseFailed", "Verify", &note)
                .await;
            context.warn(release, "Failed", "Verify", &why).await;
        }
        problems.check(set_release_status(&release_api, &release_name, json_of(&verdict)).await);
        if let Some(release) = releases.iter_mut().find(|r| r.name_any() == release_name) {
            release.status = Some(verdict);
        }
    }

    let mut stuck: Vec<(String, String, String)> = Vec::new();
    for branch in &wanted {
        let Some(running) = deployed(&branch.release) else {
            continue;
        };
        // Only a release that never went live is failed here: failing a live one would bring
        // back an older one still, for what may be the cluster's trouble rather than the app's.
        let live = releases.iter().any(|r| {
            r.metadata.name.as_deref() == Some(branch.release.as_str()) && r.phase() == phase::LIVE
        });
        if live || readiness(running, branch).1 {
            continue;
        }
        if let Some((why, logs)) = stuck_because(&branch.release, running).await {
            let why = if logs.is_empty() {
                why
            } else {
                format!("{why}; last log lines: {}", logs.join(" | "))
            };
            stuck.push((branch.release.clone(), branch.branch.clone(), why));
        }
    }
    if !stuck.is_empty() {
        for (failed, branch, why) in stuck {
            set_release_status(
                &release_api,
                &failed,
                serde_json::json!({"phase": phase::FAILED, "reason": why, "url": null}),
            )
            .await?;
            let note = format!("release {failed} of `{branch}` failed: {why}");
            context
                .warn(webspace, "ReleaseFailed", "Rollout", &note)
                .await;
            if let Some(release) = releases
                .iter_mut()
                .find(|r| r.metadata.name.as_deref() == Some(failed.as_str()))
            {
                context.warn(release, "Failed", "Rollout", &why).await;
                let status = release.status.get_or_insert_with(Default::default);
                status.phase = Some(phase::FAILED.into());
                status.reason = Some(why);
            }
        }
        wanted = decide(&releases);
    }

    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &namespace);
    // Branches whose objects all applied, and the release each branch's Service selects.
    let mut routed: HashMap<String, String> = HashMap::new();
    if namespaced {
        for plan in &verifying {
            problems.check(
                apply(
                    &deployments,
                    &objects::deployment(webspace, &namespace, plan, settings),
                )
                .await,
            );
        }
        for branch in &wanted {
            // The Service moves to the wanted release once all its pods are ready; until then
            // it keeps selecting the release it had (blue/green: one selector change).
            let ready = deployed(&branch.release).is_some_and(|d| readiness(d, branch).1);
            let serving = match selected(&branch.label) {
                Some(previous) if !ready && deployed(&previous).is_some() => previous,
                _ => branch.release.clone(),
            };
            let applied = async {
                apply(
                    &deployments,
                    &objects::deployment(webspace, &namespace, branch, settings),
                )
                .await?;
                apply(
                    &services,
                    &objects::service(webspace, &namespace, branch, &serving),
                )
                .await?;
                match objects::ingress(webspace, &namespace, branch, settings) {
                    Some(ingress) => apply(&ingresses, &ingress).await,
                    None => {
                        delete_if_present(&ingresses, &objects::branch_object_name(branch)).await
                    }
                }
            };
            if problems.check(applied.await).is_some() {
                routed.insert(branch.label.clone(), serving);
            }
        }
    }

    // What stays: the wanted releases, what the Services select, what is being verified or
    // waits for its promotion, and for a grace period the release a branch just left.
    let waiting: HashSet<String> = releases
        .iter()
        .filter(|r| r.phase() == phase::VERIFIED)
        .map(|r| r.name_any())
        .chain(verifying.iter().map(|v| v.release.clone()))
        .chain(wanted.iter().map(|w| w.release.clone()))
        .chain(routed.values().cloned())
        .collect();
    let mut next_check: Option<Duration> = None;
    for running in &current {
        let Some(release) = release_of(running) else {
            problems.check(delete_if_present(&deployments, &running.name_any()).await);
            continue;
        };
        let own_name =
            running.metadata.name.as_deref() == Some(objects::object_name(release).as_str());
        if own_name && waiting.contains(release) {
            continue;
        }
        let branch_wanted = wanted
            .iter()
            .any(|w| Some(w.label.as_str()) == branch_of(running));
        let exists = releases
            .iter()
            .any(|r| r.name_any() == release && r.phase() != phase::FAILED);
        if own_name && branch_wanted && exists {
            match left_for(running, now) {
                None => {
                    problems.check(mark_unrouted(&deployments, running, now).await);
                    next_check = Some(DRAIN_GRACE);
                    continue;
                }
                Some(left) if left < DRAIN_GRACE => {
                    let rest = DRAIN_GRACE.saturating_sub(left);
                    next_check = Some(next_check.map_or(rest, |n| n.min(rest)));
                    continue;
                }
                Some(_) => {}
            }
        }
        problems.check(delete_if_present(&deployments, &running.name_any()).await);
    }
    // The Service and Ingress of a branch no longer wanted (deleted, or its last release
    // failed before it ever served).
    for service in &services_now {
        let label = service.labels().get(BRANCH_LABEL).map(String::as_str);
        if wanted.iter().any(|w| Some(w.label.as_str()) == label) {
            continue;
        }
        let object = service.name_any();
        let removed = async {
            delete_if_present(&ingresses, &object).await?;
            delete_if_present(&services, &object).await
        };
        problems.check(removed.await);
    }
    if !elsewhere.is_empty() {
        let left: Vec<Service> = Api::<Service>::all(client.clone())
            .list(&mine)
            .await
            .map_err(call("list", || format!("the Services of Webspace {name}")))?
            .items
            .into_iter()
            .filter(|s| s.metadata.namespace.as_deref() != Some(namespace.as_str()))
            .collect();
        for service in left {
            let object = service.name_any();
            let other = service.namespace().unwrap_or_default();
            let removed = async {
                delete_if_present(&Api::<Ingress>::namespaced(client.clone(), &other), &object)
                    .await?;
                delete_if_present(&Api::<Service>::namespaced(client.clone(), &other), &object)
                    .await
            };
            problems.check(removed.await);
        }
        for stale in &elsewhere {
            let other = stale.namespace().unwrap_or_default();
            problems.check(
                delete_if_present(
                    &Api::<KubeDeployment>::namespaced(client.clone(), &other),
                    &stale.name_any(),
                )
                .await,
            );
        }
    }

    let mut branches = Vec::new();
    let mut settled = verifying.is_empty();
    for branch in &wanted {
        let running = deployed(&branch.release);
        let (ready, complete) = running.map(|d| readiness(d, branch)).unwrap_or((0, false));
        // Only while it keeps the branch short of its replicas: the Deployment keeps the
        // condition for a while after it no longer matters.
        if let Some(why) = running.filter(|_| !complete).and_then(cannot_create_pods) {
            problems.reported.push(format!(
                "branch `{}` cannot create its pods: {why}",
                branch.branch
            ));
        }
        let url = settings.url(branch).unwrap_or_default();
        let switched = routed.get(&branch.label) == Some(&branch.release);
        settled &= complete && switched;
        if complete && switched {
            problems.check(mark_live(&release_api, &releases, branch, &url).await);
        }
        branches.push(BranchStatus {
            branch: branch.branch.clone(),
            url,
            release: branch.release.clone(),
            image: branch.image.clone(),
            ready_replicas: ready,
        });
    }
    let serving: HashSet<String> = wanted.iter().map(|w| w.release.clone()).collect();
    for old in crate::desired::prunable(&releases, crate::single_host::KEEP_RELEASES, &serving) {
        problems.check(delete_if_present(&release_api, &old.name_any()).await);
    }
    let mine: Vec<&Release> = releases.iter().collect();
    let wanted_refs: Vec<&Deployment> = wanted.iter().collect();
    let error = problems.summary();
    let status = webspace_status(Observed {
        webspace,
        releases: &mine,
        wanted: &wanted_refs,
        branches,
        error: error.clone(),
        now: &crate::status::now(),
    });
    if let Some(error) = &error
        && webspace.status.as_ref().and_then(|s| s.last_error.as_ref()) != Some(error)
    {
        context
            .warn(webspace, "ReconcileError", "Reconcile", error)
            .await;
    }
    write_status(client, webspace, status).await?;
    if let Some(first) = problems.errors.into_iter().next() {
        return Err(first);
    }
    let next = if settled { RESYNC } else { WATCH_ROLLOUT };
    Ok(Action::requeue(next_check.map_or(next, |n| n.min(next))))
}

/// How long the Deployment of a branch's previous release keeps running after the branch's
/// Service moved to a new one: connections to it drain, and going back is one more switch.
pub const DRAIN_GRACE: Duration = Duration::from_secs(60);

/// Annotation on a release's Deployment: when its branch's Service stopped selecting it.
const UNROUTED_ANNOTATION: &str = "slipway.dev/unrouted-at";

/// How long ago the branch's Service left `deployment`, if it was marked.
fn left_for(deployment: &KubeDeployment, now: k8s_openapi::jiff::Timestamp) -> Option<Duration> {
    let at: k8s_openapi::jiff::Timestamp = deployment
        .annotations()
        .get(UNROUTED_ANNOTATION)?
        .parse()
        .ok()?;
    Some(Duration::try_from(now.duration_since(at)).unwrap_or_default())
}

async fn mark_unrouted(
    api: &Api<KubeDeployment>,
    deployment: &KubeDeployment,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<(), Error> {
    let name = deployment.name_any();
    let patch =
        serde_json::json!({"metadata": {"annotations": {UNROUTED_ANNOTATION: now.to_string()}}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if not_found(&error) => Ok(()),
        Err(source) => Err(Error {
            operation: "update",
            what: format!("Deployment {name}"),
            source,
        }),
    }
}

/// A staged release's status when it was given up on.
fn failed(why: &str) -> slipway_api::resources::ReleaseStatus {
    slipway_api::resources::ReleaseStatus {
        phase: Some(phase::FAILED.to_owned()),
        reason: Some(why.to_owned()),
        ..Default::default()
    }
}

fn json_of(status: &slipway_api::resources::ReleaseStatus) -> serde_json::Value {
    serde_json::to_value(status).unwrap_or_default()
}

/// Whether `deployment` is this Webspace's (and not a namesake's from before it was recreated).
fn owned_by(deployment: &KubeDeployment, webspace: &Webspace) -> bool {
    let uid = webspace.metadata.uid.as_deref();
    deployment
        .metadata
        .owner_references
        .as_ref()
        .is_none_or(|owners| {
            owners
                .iter()
                .any(|o| Some(o.uid.as_str()) == uid || uid.is_none())
        })
}

/// Why the Deployment cannot create its pods (a quota, an admission refusal), from its
/// `ReplicaFailure` condition.
fn cannot_create_pods(deployment: &KubeDeployment) -> Option<String> {
    condition(deployment, "ReplicaFailure", "True")
        .map(|c| c.message.clone().unwrap_or_else(|| "no message".into()))
}

/// Container states that do not get better by waiting.
const HOPELESS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// A pod of `release` that cannot start, and why: the app keeps crashing, or its image cannot
/// be pulled or run.
fn pods_failure(pods: &[Pod], release: &str) -> Option<(String, String)> {
    pods.iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(RELEASE_LABEL))
                .map(String::as_str)
                == Some(release)
        })
        .find_map(|pod| {
            let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
            statuses.iter().find_map(|c| {
                let waiting = c.state.as_ref()?.waiting.as_ref()?;
                let reason = waiting.reason.as_deref()?;
                if !HOPELESS.contains(&reason) {
                    return None;
                }
                let exit = c
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| format!(", exit code {}", t.exit_code))
                    .unwrap_or_default();
                let detail = match reason {
                    "CrashLoopBackOff" => format!(
                        "the app keeps exiting ({reason}, {} restarts{exit})",
                        c.restart_count
                    ),
                    _ => format!(
                        "the container cannot start ({reason}: {})",
                        waiting.message.as_deref().unwrap_or("no message")
                    ),
                };
                Some((pod.name_any(), detail))
            })
        })
}

/// The app's last log lines (of its previous run when it crashed), for the failure reason.
async fn last_log_lines(client: &Client, namespace: &str, pod: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for previous in [true, false] {
        let params = LogParams {
            container: Some("app".into()),
            previous,
            tail_lines: Some(5),
            limit_bytes: Some(2048),
            ..Default::default()
        };
        if let Ok(text) = pods.logs(pod, &params).await
            && !text.trim().is_empty()
        {
            return text
                .lines()
                .map(|l| l.chars().filter(|c| !c.is_control()).collect())
                .collect();
        }
    }
    Vec::new()
}

/// Marks the branch's release Live (with its URL) and older serving ones Superseded.
async fn mark_live(
    api: &Api<Release>,
    releases: &[Release],
    branch: &Deployment,
    url: &str,
) -> Result<(), Error> {
    for release in releases.iter().filter(|r| r.spec.branch == branch.branch) {
        let name = release.name_any();
        if name == branch.release {
            if release.phase() != "Live" {
                set_release_status(
                    api,
                    &name,
                    serde_json::json!({"phase": "Live", "url": url, "reason": null}),
                )
                .await?;
            }
        } else if matches!(release.phase(), "Live" | "Promoted") {
            set_release_status(
                api,
                &name,
                serde_json::json!({"phase": "Superseded", "url": null, "reason": null}),
            )
            .await?;
        }
    }
    Ok(())
}

/// Writes the Webspace's status by server-side apply with the operator's field manager: a
/// field this pass left out (a cleared `lastError`, a removed branch) is removed, which a merge
/// patch would keep. Nothing is written when nothing changed.
async fn write_status(
    client: &Client,
    webspace: &Webspace,
    status: slipway_api::WebspaceStatus,
) -> Result<(), Error> {
    if webspace.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let name = webspace.name_any();
    let body = serde_json::json!({
        "apiVersion": Webspace::api_version(&()),
        "kind": Webspace::kind(&()),
        "status": status,
    });
    Api::<Webspace>::all(client.clone())
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(call("update", || format!("the status of Webspace {name}")))?;
    Ok(())
}
