//! One store chosen at start: `--store directory` (the default, a data directory) or
//! `--store kube` (the cluster the process runs in, or `KUBECONFIG`'s).

use std::path::Path;

use tokio::sync::broadcast;

use crate::{
    Change, DirectoryStore, GIT_SERVER_FIELD_MANAGER, Kind, KubeStore, Store, StoreError,
    WatchHealth,
};

/// Where resources live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// YAML files under `DATA/resources/`.
    #[default]
    Directory,
    /// The Kubernetes API.
    Kube,
}

impl Backend {
    /// The name used on the command line and in `SLIPWAY_STORE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Directory => "directory",
            Self::Kube => "kube",
        }
    }
}

/// Either store, dispatching every call.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// A data directory.
    Directory(DirectoryStore),
    /// A cluster.
    Kube(KubeStore),
}

impl AnyStore {
    /// Opens the store `backend` names; `data` is only used by the directory store, and
    /// `field_manager` (who is writing, for server-side apply) only by the Kubernetes one.
    ///
    /// # Errors
    /// The directory cannot be created, or no Kubernetes configuration is usable.
    pub async fn open_as(
        backend: Backend,
        data: &Path,
        field_manager: &str,
    ) -> Result<Self, StoreError> {
        Ok(match backend {
            Backend::Directory => Self::Directory(DirectoryStore::open(data)?),
            Backend::Kube => Self::Kube(KubeStore::connect_as(field_manager).await?),
        })
    }

    /// [`AnyStore::open_as`] for the git server's side: its hooks, which open the store
    /// without naming a field manager, write as [`GIT_SERVER_FIELD_MANAGER`].
    ///
    /// # Errors
    /// As [`AnyStore::open_as`].
    pub async fn open(backend: Backend, data: &Path) -> Result<Self, StoreError> {
        Self::open_as(backend, data, GIT_SERVER_FIELD_MANAGER).await
    }

    /// Whether the store's watches are current (always, for a data directory).
    pub fn watch_health(&self) -> WatchHealth {
        match self {
            Self::Directory(_) => WatchHealth::default(),
            Self::Kube(store) => store.watch_health(),
        }
    }
}

impl Store for AnyStore {
    async fn get<K: Kind>(&self, name: &str) -> Result<Option<K>, StoreError> {
        match self {
            Self::Directory(store) => store.get(name).await,
            Self::Kube(store) => store.get(name).await,
        }
    }

    async fn list<K: Kind>(&self) -> Result<Vec<K>, StoreError> {
        match self {
            Self::Directory(store) => store.list().await,
            Self::Kube(store) => store.list().await,
        }
    }

    async fn put<K: Kind>(&self, resource: &K) -> Result<bool, StoreError> {
        match self {
            Self::Directory(store) => store.put(resource).await,
            Self::Kube(store) => store.put(resource).await,
        }
    }

    async fn delete<K: Kind>(&self, name: &str) -> Result<bool, StoreError> {
        match self {
            Self::Directory(store) => store.delete::<K>(name).await,
            Self::Kube(store) => store.delete::<K>(name).await,
        }
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        match self {
            Self::Directory(store) => store.changes(),
            Self::Kube(store) => store.changes(),
        }
    }
}
