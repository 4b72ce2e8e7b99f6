//! The reconcile of one Webspace on a cluster, level-based: whatever happened before, one pass
//! makes the cluster match the resources (namespace, quota, policy, and per branch Deployment,
//! Service and Ingress by server-side apply), prunes what no branch wants, marks Releases Live,
//! Failed or Superseded, and writes the Webspace's status.
//!
//! A rollout that misses its progress deadline fails its Release; the shared decisions then
//! pick the previous release again and the next apply restores its image.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment as KubeDeployment;
use k8s_openapi::api::core::v1::{ResourceQuota, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use slipway_api::resources::BranchStatus;
use slipway_api::{Customer, Release, Runtime, Webspace};
use slipway_store::FIELD_MANAGER;

use super::objects::{self, BRANCH_LABEL, RELEASE_ANNOTATION, Settings, WEBSPACE_LABEL};
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
}

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
        }
    }
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

/// Why the Deployment's rollout failed, if it missed its progress deadline.
fn deadline_missed(deployment: &KubeDeployment) -> Option<String> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
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

async fn reconcile_inner(webspace: &Webspace, context: &Context) -> Result<Action, Error> {
    if webspace.metadata.deletion_timestamp.is_some() {
        // Owner references delete the branch objects; nothing outside the cluster to clean.
        return Ok(Action::await_change());
    }
    let client = &context.client;
    let settings = &context.settings;
    let name = webspace.name_any();
    let customer_name = &webspace.spec.customer;
    let customers: Api<Customer> = Api::all(client.clone());
    let Some(customer) = customers
        .get_opt(customer_name)
        .await
        .map_err(call("read", || format!("Customer {customer_name}")))?
    else {
        let status = webspace_status(Observed {
            webspace,
            releases: &[],
            wanted: &[],
            branches: Vec::new(),
            error: Some(format!("customer `{customer_name}` does not exist")),
            now: &crate::status::now(),
        });
        write_status(client, webspace, status).await?;
        return Ok(Action::requeue(CUSTOMER_MISSING));
    };
    let namespace = objects::namespace_name(customer_name);
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

    let release_api: Api<Release> = Api::all(client.clone());
    let mut releases: Vec<Release> = release_api
        .list(&ListParams::default())
        .await
        .map_err(call("list", || "Releases".into()))?
        .items
        .into_iter()
        .filter(|r| r.spec.webspace == name)
        .collect();
    let runtimes = Api::<Runtime>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(call("list", || "Runtimes".into()))?
        .items;
    let deployments: Api<KubeDeployment> = Api::namespaced(client.clone(), &namespace);
    let current = deployments
        .list(&ListParams::default().labels(&format!("{WEBSPACE_LABEL}={name}")))
        .await
        .map_err(call("list", || format!("Deployments in {namespace}")))?
        .items;
    let deployed = |label: &str| current.iter().find(|d| branch_of(d) == Some(label));

    // A rollout past its deadline fails its Release; deciding again brings the previous one.
    let decide = |releases: &[Release]| {
        crate::desired(
            std::slice::from_ref(webspace),
            releases,
            &runtimes,
            &settings.hosts,
        )
    };
    let mut wanted = decide(&releases);
    let stuck: Vec<(String, String)> = wanted
        .iter()
        .filter_map(|w| {
            let running = deployed(&w.label)?;
            if release_of(running) != Some(w.release.as_str()) {
                return None;
            }
            deadline_missed(running).map(|why| (w.release.clone(), why))
        })
        .collect();
    if !stuck.is_empty() {
        for (failed, why) in stuck {
            set_release_status(
                &release_api,
                &failed,
                serde_json::json!({"phase": "Failed", "reason": why}),
            )
            .await?;
            if let Some(release) = releases
                .iter_mut()
                .find(|r| r.metadata.name.as_deref() == Some(failed.as_str()))
            {
                let status = release.status.get_or_insert_with(Default::default);
                status.phase = Some("Failed".into());
                status.reason = Some(why);
            }
        }
        wanted = decide(&releases);
    }

    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &namespace);
    for branch in &wanted {
        apply(
            &deployments,
            &objects::deployment(webspace, &namespace, branch, settings),
        )
        .await?;
        apply(&services, &objects::service(webspace, &namespace, branch)).await?;
        match objects::ingress(webspace, &namespace, branch, settings) {
            Some(ingress) => apply(&ingresses, &ingress).await?,
            None => delete_if_present(&ingresses, &objects::branch_object_name(branch)).await?,
        }
    }
    for stale in current.iter().filter(|d| {
        !wanted
            .iter()
            .any(|w| Some(w.label.as_str()) == branch_of(d))
    }) {
        let object = stale.name_any();
        delete_if_present(&ingresses, &object).await?;
        delete_if_present(&services, &object).await?;
        delete_if_present(&deployments, &object).await?;
    }

    let mut branches = Vec::new();
    let mut settled = true;
    for branch in &wanted {
        let (ready, complete) = deployed(&branch.label)
            .map(|d| readiness(d, branch))
            .unwrap_or((0, false));
        let url = settings.url(branch).unwrap_or_default();
        settled &= complete;
        if complete {
            mark_live(&release_api, &releases, branch, &url).await?;
        }
        branches.push(BranchStatus {
            branch: branch.branch.clone(),
            url,
            release: branch.release.clone(),
            image: branch.image.clone(),
            ready_replicas: ready,
        });
    }
    let mine: Vec<&Release> = releases.iter().collect();
    let wanted_refs: Vec<&Deployment> = wanted.iter().collect();
    let status = webspace_status(Observed {
        webspace,
        releases: &mine,
        wanted: &wanted_refs,
        branches,
        error: None,
        now: &crate::status::now(),
    });
    write_status(client, webspace, status).await?;
    Ok(Action::requeue(if settled {
        RESYNC
    } else {
        WATCH_ROLLOUT
    }))
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
                set_release_status(api, &name, serde_json::json!({"phase": "Live", "url": url}))
                    .await?;
            }
        } else if matches!(release.phase(), "Live" | "Promoted") {
            set_release_status(api, &name, serde_json::json!({"phase": "Superseded"})).await?;
        }
    }
    Ok(())
}

async fn write_status(
    client: &Client,
    webspace: &Webspace,
    status: slipway_api::WebspaceStatus,
) -> Result<(), Error> {
    if webspace.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let name = webspace.name_any();
    Api::<Webspace>::all(client.clone())
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .map_err(call("update", || format!("the status of Webspace {name}")))?;
    Ok(())
}
