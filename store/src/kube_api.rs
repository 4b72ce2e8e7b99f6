//! The Kubernetes API as a store: the same four kinds, read and written through the API server
//! (in-cluster config or `KUBECONFIG`), changes announced from watches.
//!
//! Writes are server-side applies with field manager `slipway`, so `put` replaces what Slipway
//! set and leaves other managers' fields alone; a resource's status goes through the status
//! subresource, as the CRDs declare it.

use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use slipway_api::{Customer, Release, Runtime, Webspace};
use tokio::sync::broadcast;

use crate::{Change, Kind, Store, StoreError};

/// Field manager of every write Slipway makes.
pub const FIELD_MANAGER: &str = "slipway";

/// Resources in a Kubernetes cluster.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    changes: broadcast::Sender<Change>,
    watching: Arc<OnceLock<()>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore").finish_non_exhaustive()
    }
}

impl KubeStore {
    /// Connects with the in-cluster service account, else `KUBECONFIG` / `~/.kube/config`.
    ///
    /// # Errors
    /// No usable configuration.
    pub async fn connect() -> Result<Self, StoreError> {
        let client = Client::try_default().await.map_err(|source| match source {
            // Its message repeats every cause; one line says it all.
            kube::Error::InferConfig(_) => StoreError::NoCluster,
            source => StoreError::Api {
                operation: "connect to",
                what: "the Kubernetes API".into(),
                source,
            },
        })?;
        Ok(Self::new(client))
    }

    /// A store over `client`. Watches start on the first [`Store::changes`] call, so a
    /// short-lived process (a hook) never opens them.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            changes: broadcast::channel(1024).0,
            watching: Arc::new(OnceLock::new()),
        }
    }

    /// The client, for callers that need more than the store (the operator).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api<K: Kind>(&self) -> Api<K> {
        Api::all(self.client.clone())
    }

    fn watch_all(&self) {
        self.watching.get_or_init(|| {
            spawn_watch::<Customer>(self.api(), self.changes.clone());
            spawn_watch::<Webspace>(self.api(), self.changes.clone());
            spawn_watch::<Runtime>(self.api(), self.changes.clone());
            spawn_watch::<Release>(self.api(), self.changes.clone());
        });
    }
}

fn described<K: Kind>(name: &str) -> String {
    format!("{} `{}`", K::kind(&()), name.escape_default())
}

fn spawn_watch<K: Kind>(api: Api<K>, changes: broadcast::Sender<Change>) {
    tokio::spawn(async move {
        let plural = K::plural(&()).into_owned();
        let mut events = std::pin::pin!(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed()
        );
        while let Some(event) = events.next().await {
            // A (re)listing is announced once, when complete, as a change of the whole kind:
            // deletions during a watch gap are not reported one by one, and ten thousand
            // objects listed at start should not cost ten thousand reads downstream.
            let name = match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => {
                    object.meta().name.clone().unwrap_or_default()
                }
                Ok(watcher::Event::InitDone) => String::new(),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Err(error) => {
                    tracing::warn!(%error, kind = %plural, "watch interrupted; retrying");
                    continue;
                }
            };
            let _ = changes.send(Change {
                plural: plural.clone(),
                name,
            });
        }
    });
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
        let params = PatchParams::apply(FIELD_MANAGER).force();
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
        (KubeStore::new(Client::new(service, "default")), handle)
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
    async fn put_applies_spec_then_status_with_the_slipway_field_manager() {
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
}
