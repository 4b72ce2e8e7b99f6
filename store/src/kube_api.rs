//! The Kubernetes API as a store: the same four kinds, read and written through the API server
//! (in-cluster config or `KUBECONFIG`), changes announced from watches.
//!
//! Writes are server-side applies with the field manager the store was created with (one per
//! component: [`GIT_SERVER_FIELD_MANAGER`], [`CLI_FIELD_MANAGER`], [`OPERATOR_FIELD_MANAGER`]),
//! so `put` replaces what that component set and leaves other managers' fields alone; a
//! resource's status goes through the status subresource, as the CRDs declare it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use slipway_api::{Customer, Release, Runtime, Webspace};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::{Change, Kind, Store, StoreError};

/// Field manager of the writes made before each component had its own. The operator's writes
/// still use it until they move to [`OPERATOR_FIELD_MANAGER`].
pub const FIELD_MANAGER: &str = "slipway";
/// Field manager of the operator's writes.
pub const OPERATOR_FIELD_MANAGER: &str = "slipway-operator";
/// Field manager of the git server and of the hooks it runs (Releases, their status).
pub const GIT_SERVER_FIELD_MANAGER: &str = "slipway-git-server";
/// Field manager of `slipway` commands that people run.
pub const CLI_FIELD_MANAGER: &str = "slipway-cli";

/// First wait before a failed watch lists again.
const WATCH_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait before a failed watch lists again. After an API server restart or a
/// `410 Expired` the store must be current within seconds: a Customer created meanwhile
/// cannot push until its watch has caught up. One list per kind every 2 s is nothing to an
/// API server; kube's default backoff grows to 30 s, which is what users waited for.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a watch must have stayed current for its next failure to count as a new outage
/// (retries start again at [`WATCH_RETRY_FIRST`]) rather than the same one flapping, as when
/// the list works but the watch is refused.
const WATCH_STABLE: Duration = Duration::from_secs(10);
/// Changes buffered per subscriber before it is told it lagged (and re-lists).
const CHANGE_BUFFER: usize = 1024;

/// Resources in a Kubernetes cluster.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    field_manager: Arc<str>,
    changes: broadcast::Sender<Change>,
    watching: Arc<OnceLock<()>>,
    health: WatchHealth,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("field_manager", &self.field_manager)
            .finish_non_exhaustive()
    }
}

impl KubeStore {
    /// Connects with the in-cluster service account, else `KUBECONFIG` / `~/.kube/config`;
    /// every write is applied as `field_manager`.
    ///
    /// # Errors
    /// No usable configuration.
    pub async fn connect_as(field_manager: &str) -> Result<Self, StoreError> {
        let client = Client::try_default().await.map_err(|source| match source {
            // Its message repeats every cause; one line says it all.
            kube::Error::InferConfig(_) => StoreError::NoCluster,
            source => StoreError::Api {
                operation: "connect to",
                what: "the Kubernetes API".into(),
                source,
            },
        })?;
        Ok(Self::new(client, field_manager))
    }

    /// A store over `client` whose writes are applied as `field_manager`. Watches start on
    /// the first [`Store::changes`] call, so a short-lived process (a hook) never opens them.
    pub fn new(client: Client, field_manager: &str) -> Self {
        let health = WatchHealth::default();
        for plural in [
            Customer::plural(&()),
            Webspace::plural(&()),
            Runtime::plural(&()),
            Release::plural(&()),
        ] {
            health.set(&plural, WatchState::NotStarted);
        }
        Self {
            client,
            field_manager: field_manager.into(),
            changes: broadcast::channel(CHANGE_BUFFER).0,
            watching: Arc::new(OnceLock::new()),
            health,
        }
    }

    /// The client, for callers that need more than the store (the operator).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The field manager of this store's writes.
    pub fn field_manager(&self) -> &str {
        &self.field_manager
    }

    /// Whether the watches behind [`Store::changes`] are current, for a readiness probe.
    pub fn watch_health(&self) -> WatchHealth {
        self.health.clone()
    }

    fn api<K: Kind>(&self) -> Api<K> {
        Api::all(self.client.clone())
    }

    fn watch_all(&self) {
        self.watching.get_or_init(|| {
            self.spawn_watch::<Customer>();
            self.spawn_watch::<Webspace>();
            self.spawn_watch::<Runtime>();
            self.spawn_watch::<Release>();
        });
    }

    fn spawn_watch<K: Kind>(&self) {
        tokio::spawn(watch(
            self.api::<K>(),
            self.changes.clone(),
            self.health.clone(),
        ));
    }
}

/// Where one kind's watch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WatchState {
    /// Nothing asked for changes yet.
    NotStarted,
    /// The first listing is under way.
    Listing,
    /// A listing completed after the last error; events arrive as they happen.
    Current,
    /// The last attempt failed (the error, on one line); a new listing follows shortly.
    Failed(String),
}

/// Whether a store's watches are current: each has completed a listing since its last error.
/// Cheap to clone; every clone sees the same watches. A store without watches that can fail
/// (a data directory) has an empty one, which is always current.
#[derive(Debug, Clone, Default)]
pub struct WatchHealth {
    kinds: Arc<Mutex<BTreeMap<String, WatchState>>>,
}

impl WatchHealth {
    fn set(&self, plural: &str, state: WatchState) -> WatchState {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        kinds
            .insert(plural.to_owned(), state)
            .unwrap_or(WatchState::NotStarted)
    }

    /// `Ok` when every watch is current.
    ///
    /// # Errors
    /// One line naming each watch that is not, and why: while it is stale, what the store
    /// announces may lag behind the cluster.
    pub fn check(&self) -> Result<(), String> {
        let kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<String> = kinds
            .iter()
            .filter_map(|(plural, state)| match state {
                WatchState::Current => None,
                WatchState::NotStarted => Some(format!("{plural} (not started)")),
                WatchState::Listing => Some(format!("{plural} (listing)")),
                WatchState::Failed(error) => Some(format!("{plural} ({error})")),
            })
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(format!("watches not current: {}", stale.join("; ")))
        }
    }
}

/// Delays between attempts of a failing watch: doubling from [`WATCH_RETRY_FIRST`] up to
/// [`WATCH_RETRY_MAX`].
#[derive(Debug)]
struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: WATCH_RETRY_FIRST,
        }
    }
}

impl WatchBackoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(WATCH_RETRY_MAX);
        delay
    }
}

fn described<K: Kind>(name: &str) -> String {
    format!("{} `{}`", K::kind(&()), name.escape_default())
}

/// Follows every `K` in the cluster, announcing changes on `changes` and its state in `health`;
/// never returns.
///
/// # Guarantees
/// A (re)listing is announced once, when complete, as a change of the whole kind: deletions
/// during a gap are not reported one by one, and ten thousand objects listed at start should
/// not cost ten thousand reads downstream. After any error (the API server unreachable, a
/// `410 Expired`, a refused watch) the watch starts over with a fresh listing within
/// [`WATCH_RETRY_MAX`], so `health` is current exactly when a listing completed after the last
/// error. (kube's watcher would resume a failed watch from its last resourceVersion without
/// listing, and a resumed watch on a quiet kind looks the same as a broken one.)
async fn watch<K: Kind>(api: Api<K>, changes: broadcast::Sender<Change>, health: WatchHealth) {
    let plural = K::plural(&()).into_owned();
    let mut backoff = WatchBackoff::default();
    health.set(&plural, WatchState::Listing);
    loop {
        let mut current_since = None;
        let mut events = std::pin::pin!(watcher(api.clone(), watcher::Config::default()));
        let error = loop {
            let name = match events.next().await {
                Some(Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object))) => {
                    object.meta().name.clone().unwrap_or_default()
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if matches!(
                        health.set(&plural, WatchState::Current),
                        WatchState::Failed(_)
                    ) {
                        tracing::info!(kind = %plural, "watch current again");
                    }
                    current_since = Some(Instant::now());
                    String::new()
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                Some(Err(error)) => break error.to_string(),
                None => break "the watch ended".to_owned(),
            };
            let _ = changes.send(Change {
                plural: plural.clone(),
                name,
            });
        };
        if current_since.is_some_and(|since| since.elapsed() >= WATCH_STABLE) {
            backoff = WatchBackoff::default();
        }
        let delay = backoff.next_delay();
        let error = error.replace(['\r', '\n'], " ");
        let previous = health.set(&plural, WatchState::Failed(error.clone()));
        // Once per outage, not every 2 s while it lasts.
        if previous != WatchState::Failed(error.clone()) {
            tracing::warn!(%error, kind = %plural, retry_in = ?delay, "watch interrupted; listing again");
        }
        tokio::time::sleep(delay).await;
    }
}

fn not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

impl Store for KubeStore {
    async fn get<K: Kind>(&self, name: &str) -> Result<Option<K>, StoreError> {
        self.api::<K>()
            .get_opt(name)
            .await
            .map_err(|source| StoreError::Api {
                operation: "read",
                what: described::<K>(name),
                source,
            })
    }

    async fn list<K: Kind>(&self) -> Result<Vec<K>, StoreError> {
        let mut items = self
            .api::<K>()
            .list(&ListParams::default())
            .await
            .map_err(|source| StoreError::Api {
                operation: "list",
                what: K::plural(&()).into_owned(),
                source,
            })?
            .items;
        items.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        Ok(items)
    }

    async fn put<K: Kind>(&self, resource: &K) -> Result<bool, StoreError> {
        use kube::ResourceExt;
        resource.validate().map_err(|source| StoreError::Invalid {
            kind: K::kind(&()).into_owned(),
            name: resource.name_any().escape_default().to_string(),
            source,
        })?;
        let name = resource.name_any();
        let api = self.api::<K>();
        let fail = |operation| {
            let what = described::<K>(&name);
            move |source| StoreError::Api {
                operation,
                what,
                source,
            }
        };
        let existed = api.get_opt(&name).await.map_err(fail("read"))?.is_some();
        let (body, status) = apply_body::<K>(resource);
        let params = PatchParams::apply(&self.field_manager).force();
        api.patch(&name, &params, &Patch::Apply(&body))
            .await
            .map_err(fail("write"))?;
        if let Some(status) = status {
            let body = serde_json::json!({
                "apiVersion": K::api_version(&()),
                "kind": K::kind(&()),
                "status": status,
            });
            api.patch_status(&name, &params, &Patch::Apply(&body))
                .await
                .map_err(fail("write the status of"))?;
        }
        Ok(existed)
    }

    async fn delete<K: Kind>(&self, name: &str) -> Result<bool, StoreError> {
        match self.api::<K>().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(error) if not_found(&error) => Ok(false),
            Err(source) => Err(StoreError::Api {
                operation: "delete",
                what: described::<K>(name),
                source,
            }),
        }
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        let receiver = self.changes.subscribe();
        self.watch_all();
        receiver
    }
}

/// The apply body for `resource` without the fields the server owns (status goes separately),
/// and its status, if it has one.
fn apply_body<K: Kind>(resource: &K) -> (serde_json::Value, Option<serde_json::Value>) {
    let mut body = serde_json::to_value(resource).unwrap_or_default();
    let status = body
        .as_object_mut()
        .and_then(|o| o.remove("status"))
        .filter(|s| !s.is_null());
    if let Some(metadata) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for owned in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
        ] {
            metadata.remove(owned);
        }
    }
    (body, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use slipway_api::{ReleaseSpec, ReleaseStatus};

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn store() -> (KubeStore, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (
            KubeStore::new(Client::new(service, "default"), GIT_SERVER_FIELD_MANAGER),
            handle,
        )
    }

    async fn expect(
        handle: &mut Handle,
        method: Method,
        path: &str,
        status: u16,
        answer: serde_json::Value,
    ) -> serde_json::Value {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), method, "{}", request.uri());
        assert_eq!(request.uri().path(), path);
        if method == Method::PATCH {
            let query = request.uri().query().unwrap_or_default();
            assert!(query.contains("fieldManager=slipway-git-server"), "{query}");
        }
        let body = request.into_body().collect_bytes().await.expect("body");
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                .expect("response"),
        );
        serde_json::from_slice(&body).unwrap_or_default()
    }

    fn release() -> Release {
        let mut release = Release::new(
            "blog-0123456789-abcdef01",
            ReleaseSpec {
                webspace: "blog".into(),
                branch: "main".into(),
                commit: "0123456789".into(),
                tree: "t".into(),
                image: "registry/blog@sha256:00".into(),
                pusher: "SHA256:x".into(),
                port: None,
                version: None,
                cause: None,
                config_keys: Vec::new(),
            },
        );
        release.status = Some(ReleaseStatus {
            phase: Some("Staged".into()),
            ..Default::default()
        });
        release
    }

    fn missing() -> serde_json::Value {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": 404, "reason": "NotFound", "message": "not found"})
    }

    const PATH: &str = "/apis/slipway.dev/v1alpha1/releases/blog-0123456789-abcdef01";

    #[tokio::test]
    async fn put_applies_spec_then_status_with_the_stores_field_manager() {
        let (store, mut handle) = store();
        let server = tokio::spawn(async move {
            expect(&mut handle, Method::GET, PATH, 404, missing()).await;
            let answer = serde_json::to_value(release()).expect("json");
            let spec = expect(&mut handle, Method::PATCH, PATH, 200, answer.clone()).await;
            assert_eq!(spec["spec"]["webspace"], "blog");
            assert!(spec.get("status").is_none(), "status goes to /status");
            let status = expect(
                &mut handle,
                Method::PATCH,
                &format!("{PATH}/status"),
                200,
                answer,
            )
            .await;
            assert_eq!(status["status"]["phase"], "Staged");
            assert_eq!(status["kind"], "Release");
        });
        assert!(!store.put(&release()).await.expect("put"));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn get_and_delete_of_a_missing_resource_are_not_errors() {
        let (store, mut handle) = store();
        let server = tokio::spawn(async move {
            expect(&mut handle, Method::GET, PATH, 404, missing()).await;
            expect(&mut handle, Method::DELETE, PATH, 404, missing()).await;
        });
        assert!(
            store
                .get::<Release>("blog-0123456789-abcdef01")
                .await
                .expect("get")
                .is_none()
        );
        assert!(
            !store
                .delete::<Release>("blog-0123456789-abcdef01")
                .await
                .expect("delete")
        );
        server.await.expect("server");
    }

    #[tokio::test]
    async fn an_api_error_names_what_was_being_done() {
        let (store, mut handle) = store();
        let server = tokio::spawn(async move {
            let forbidden = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "code": 403, "reason": "Forbidden", "message": "no"});
            expect(
                &mut handle,
                Method::GET,
                "/apis/slipway.dev/v1alpha1/webspaces",
                403,
                forbidden,
            )
            .await;
        });
        let error = store.list::<Webspace>().await.expect_err("forbidden");
        assert_eq!(error.to_string(), "cannot list webspaces");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn an_invalid_resource_is_refused_before_any_call() {
        let (store, _handle) = store();
        let mut bad = release();
        bad.metadata.name = Some("Bad Name".into());
        assert!(matches!(
            store.put(&bad).await,
            Err(StoreError::Invalid { .. })
        ));
    }

    fn unavailable() -> Response<Body> {
        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "code": 503, "reason": "ServiceUnavailable",
            "message": "the server is restarting"});
        Response::builder()
            .status(503)
            .body(Body::from(serde_json::to_vec(&status).expect("json")))
            .expect("response")
    }

    fn customer_list(resource_version: &str) -> Response<Body> {
        let customer = Customer::new(
            "alice",
            slipway_api::CustomerSpec {
                email: "a@example.com".into(),
                display_name: None,
                ssh_keys: Vec::new(),
            },
        );
        let list = serde_json::json!({"apiVersion": "slipway.dev/v1alpha1", "kind": "CustomerList",
            "metadata": {"resourceVersion": resource_version}, "items": [customer]});
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&list).expect("json")))
            .expect("response")
    }

    /// Answers a listing of Customers at `resource_version`, then expects the watch that follows:
    /// the watch is current and the whole kind is announced. Returns the watch's responder.
    async fn listed_then_watching(
        handle: &mut Handle,
        health: &WatchHealth,
        announced: &mut broadcast::Receiver<Change>,
        resource_version: &str,
    ) -> tower_test::mock::SendResponse<Response<Body>> {
        let (request, send) = handle.next_request().await.expect("a listing");
        assert!(!is_watch(&request), "{}", request.uri());
        send.send_response(customer_list(resource_version));
        let (request, watching) = handle.next_request().await.expect("a watch");
        assert!(is_watch(&request), "{}", request.uri());
        assert_eq!(health.check(), Ok(()));
        let change = announced.try_recv().expect("announced");
        assert_eq!(
            (change.plural.as_str(), change.name.as_str()),
            ("customers", "")
        );
        watching
    }

    fn is_watch(request: &Request<Body>) -> bool {
        request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_watch_lists_again_within_two_seconds_and_is_stale_until_it_has() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = Api::<Customer>::all(Client::new(service, "default"));
        let health = WatchHealth::default();
        let (changes, mut announced) = broadcast::channel(16);
        tokio::spawn(watch(api, changes, health.clone()));

        // Listed and watching: current, and the whole kind is announced.
        let watching = listed_then_watching(&mut handle, &health, &mut announced, "5").await;

        // The API server goes away for a while: every call fails, the watch is stale, and the
        // next attempt still comes at most 2 s after the last (kube's default backoff grows
        // to 30 s while a watch cannot be re-established).
        watching.send_response(unavailable());
        let mut last = Instant::now();
        for attempt in 0..10 {
            let (request, send) = handle.next_request().await.expect("an attempt");
            let waited = last.elapsed();
            assert!(
                waited <= WATCH_RETRY_MAX,
                "attempt {attempt} after {waited:?}"
            );
            last = Instant::now();
            let stale = health.check().expect_err("stale while failing");
            assert!(
                stale.starts_with("watches not current: customers ("),
                "{stale}"
            );
            assert!(!stale.contains('\n'), "{stale}");
            drop(request);
            send.send_response(unavailable());
        }

        // It is back: what changed meanwhile comes from a fresh listing (not a resumed watch),
        // announced as a change of the whole kind, and the watch is current again.
        assert!(health.check().is_err());
        let _watching = listed_then_watching(&mut handle, &health, &mut announced, "9").await;
    }

    #[tokio::test]
    async fn watch_health_names_every_watch_not_yet_current() {
        let (store, _handle) = store();
        let health = store.watch_health();
        assert_eq!(
            health.check(),
            Err("watches not current: customers (not started); releases (not started); runtimes (not started); webspaces (not started)".into())
        );
        for plural in ["customers", "releases", "runtimes", "webspaces"] {
            health.set(plural, WatchState::Current);
        }
        assert_eq!(health.check(), Ok(()));
        assert_eq!(WatchHealth::default().check(), Ok(()));
    }

    #[test]
    fn retries_double_up_to_two_seconds() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], WATCH_RETRY_FIRST);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays.iter().max(), Some(&WATCH_RETRY_MAX));
    }
}
