//! The Kubernetes driver: a kube-rs `Controller` over Webspaces that applies what the shared
//! decisions want as Namespaces, Deployments, Services and Ingresses, behind a leader Lease.

pub mod lease;
pub mod objects;
pub mod reconcile;
#[cfg(test)]
pub(crate) mod scripted;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment as KubeDeployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use slipway_api::{Customer, Release, Webspace};
use tokio_util::sync::CancellationToken;

pub use objects::Settings;
pub use reconcile::{Context, error_policy, reconcile};

use crate::metrics::Metrics;

/// Runs the controller until `stop`.
pub async fn control(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let webspaces: Api<Webspace> = Api::all(client.clone());
    let controller = Controller::new(webspaces, watcher::Config::default());
    let cache = controller.store();
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        objects::MANAGED_BY.0,
        objects::MANAGED_BY.1
    ));
    let context = Arc::new(Context::new(client.clone(), settings, metrics));
    controller
        .owns(Api::<KubeDeployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<Ingress>::all(client.clone()), owned)
        .watches(
            Api::<Release>::all(client.clone()),
            watcher::Config::default(),
            |release| Some(ObjectRef::new(&release.spec.webspace)),
        )
        .watches(
            Api::<Customer>::all(client),
            watcher::Config::default(),
            move |customer| {
                let name = customer.name_any();
                cache
                    .state()
                    .into_iter()
                    .filter(|w| w.spec.customer == name)
                    .map(|w| ObjectRef::from_obj(&*w))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(webspace = %object.name, "reconciled"),
                Err(error) => tracing::debug!(error = %crate::chain(&error), "reconcile error"),
            }
        })
        .await;
}

/// Leader election around [`control`]: only the Lease holder runs the controller; losing the
/// Lease stops it; `stop` gives the Lease up.
pub async fn run(
    client: Client,
    settings: Settings,
    election: lease::Election,
    lease_namespace: &str,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease_namespace);
    let renew = election.duration / 3;
    let mut leading: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    loop {
        let now = k8s_openapi::jiff::Timestamp::now();
        let lead = match lease::try_lead(&leases, &election, now).await {
            Ok(lead) => lead,
            Err(error) => {
                tracing::warn!(error = %crate::chain(&error), "cannot read the leader Lease");
                false
            }
        };
        metrics.set_leader(lead);
        match (lead, leading.is_some()) {
            (true, false) => {
                tracing::info!(holder = %election.holder, "leading: reconciling webspaces");
                let token = stop.child_token();
                let task = tokio::spawn(control(
                    client.clone(),
                    settings.clone(),
                    metrics.clone(),
                    token.clone(),
                ));
                leading = Some((token, task));
            }
            (false, true) => {
                tracing::warn!("lost the leader Lease; stopping reconciles");
                if let Some((token, task)) = leading.take() {
                    token.cancel();
                    let _ = task.await;
                }
            }
            _ => {}
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(if lead { renew } else { renew.max(Duration::from_secs(2)) }) => {}
        }
    }
    if let Some((token, task)) = leading.take() {
        token.cancel();
        let _ = task.await;
        lease::step_down(&leases, &election).await;
    }
    metrics.set_leader(false);
}
