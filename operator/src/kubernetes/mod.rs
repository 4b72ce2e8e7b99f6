//! The Kubernetes driver: a kube-rs `Controller` over Webspaces that applies what the shared
//! decisions want as Namespaces, Deployments, Services and Ingresses, behind a leader Lease.

pub mod customers;
pub mod lease;
pub mod objects;
pub mod reconcile;
#[cfg(test)]
pub(crate) mod scripted;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn the_watch_backoff_stays_within_two_seconds() {
        let delays: Vec<Duration> = WatchBackoff::new().take(8).collect();
        assert_eq!(delays[0], Duration::from_millis(250));
        assert_eq!(delays[3], Duration::from_secs(2));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(2)),
            "{delays:?}"
        );
    }
}

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment as KubeDeployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use slipway_api::{Customer, Release, Runtime, Webspace};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use objects::Settings;
pub use reconcile::{Context, Stores, error_policy, reconcile};

use crate::metrics::Metrics;

/// The controller's pause after a watch error: 250 ms doubling to 2 s, back to 250 ms after
/// 10 s without errors. kube-runtime's default grows to 30 s and pauses every watch of the
/// controller at once; after an API server restart its six watches' errors, one after the
/// other, kept the operator from reconciling for over three minutes (seen on a real cluster).
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
    last: Option<std::time::Instant>,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(2);
    const RESET_AFTER: Duration = Duration::from_secs(10);

    /// A backoff at its first step.
    pub fn new() -> Self {
        Self {
            next: Self::FIRST,
            last: None,
        }
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) > Self::RESET_AFTER)
        {
            self.next = Self::FIRST;
        }
        self.last = Some(now);
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A watch of every `K` that keeps `writer`'s cache and yields what changed; `changed` is
/// notified after each event reached the cache.
fn cached<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: Option<Arc<Notify>>,
) -> impl futures_util::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    reflector(writer, watcher(api, watcher::Config::default()))
        .inspect(move |_| {
            if let Some(changed) = &changed {
                changed.notify_one();
            }
        })
        .touched_objects()
}

/// Webspaces reconciled at the same time.
const RECONCILES_AT_ONCE: u16 = 16;

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
    // Customers, Releases and Runtimes: one watch each that both fills the cache a reconcile
    // reads and triggers it, so a reconcile never reads a cache older than its trigger.
    let (customers, customer_writer) = reflector::store::<Customer>();
    let (releases, release_writer) = reflector::store::<Release>();
    let (runtimes, runtime_writer) = reflector::store::<Runtime>();
    // Customers' KeysAvailable conditions (see customers.rs for why the operator writes them),
    // from the same cache, on each change of a Customer; like the rest, only while leading.
    let keys_changed = Arc::new(Notify::new());
    let keys_stop = stop.child_token();
    let key_statuses = tokio::spawn(self::customers::keep_key_statuses(
        client.clone(),
        customers.clone(),
        keys_changed.clone(),
        keys_stop.clone(),
    ));
    let context = Arc::new(
        Context::new(client.clone(), settings, metrics).with_stores(Stores {
            customers,
            releases,
            runtimes,
        }),
    );
    controller
        .owns(Api::<KubeDeployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<Ingress>::all(client.clone()), owned)
        .watches_stream(
            cached(Api::<Release>::all(client.clone()), release_writer, None),
            |release| Some(ObjectRef::new(&release.spec.webspace)),
        )
        .watches_stream(
            cached(
                Api::<Customer>::all(client.clone()),
                customer_writer,
                Some(keys_changed),
            ),
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
        // A Runtime's port or template matters at the next reconcile of each webspace; its
        // changes only fill the cache.
        .watches_stream(
            cached(Api::<Runtime>::all(client.clone()), runtime_writer, None),
            |_| None::<ObjectRef<Webspace>>,
        )
        .trigger_backoff(WatchBackoff::new())
        // Reconciles at once: enough to keep a 2-CPU API server busy; more only queue there
        // and hold their responses in memory.
        .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILES_AT_ONCE))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(webspace = %object.name, "reconciled"),
                // Failed reconciles are logged by the error policy; anything else is a watch
                // that broke (the API server away, a permission missing).
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => tracing::warn!(error = %crate::chain(&error), "controller watch failed; retrying"),
            }
        })
        .await;
    keys_stop.cancel();
    let _ = key_statuses.await;
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
    let mut observed = lease::Observed::default();
    // When this replica last renewed the Lease, by its own clock: while renewals fail it keeps
    // leading until the Lease would have expired for the others, retrying meanwhile.
    let mut renewed: Option<std::time::Instant> = None;
    loop {
        let now = k8s_openapi::jiff::Timestamp::now();
        let at = std::time::Instant::now();
        let result = lease::try_lead(&leases, &election, now, at, &mut observed).await;
        let failed = result.is_err();
        let lead = match result {
            Ok(lead) => {
                renewed = lead.then_some(at);
                lead
            }
            Err(error) => {
                // Others count the duration from when they saw the last renewal, which was
                // after it; 2 s of margin for the time this call took.
                let margin = election.duration.saturating_sub(Duration::from_secs(2));
                let valid = renewed.is_some_and(|r| at.duration_since(r) < margin);
                tracing::warn!(error = %crate::chain(&error), still_leading = valid, "cannot renew the leader Lease; retrying");
                valid
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
            () = tokio::time::sleep(if failed { Duration::from_secs(1) } else if lead { renew } else { renew.max(Duration::from_secs(2)) }) => {}
        }
    }
    if let Some((token, task)) = leading.take() {
        token.cancel();
        let _ = task.await;
        lease::step_down(&leases, &election).await;
    }
    metrics.set_leader(false);
}
