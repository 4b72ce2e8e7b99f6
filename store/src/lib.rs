//! Where resources live, behind one small trait: a data directory of YAML files on a single
//! host, the Kubernetes API on a cluster.

mod any;
pub mod changes;
pub mod config;
mod directory;
mod documents;
mod kube_api;
pub mod pushes;
mod table;

use std::future::Future;

use kube::Resource;
use serde::{Serialize, de::DeserializeOwned};
use slipway_api::resources::Validate;
use tokio::sync::broadcast;

pub use any::{AnyStore, Backend};
pub use directory::DirectoryStore;
pub use documents::{Applied, ApplyError, Outcome, TableKind, apply_documents, kind_of};
pub use kube_api::{
    CLI_FIELD_MANAGER, FIELD_MANAGER, GIT_SERVER_FIELD_MANAGER, KubeStore, OPERATOR_FIELD_MANAGER,
    WatchHealth,
};
pub use table::{Format, ShowError, show, show_of};

/// A resource kind the store can hold: one of Slipway's four CRD types.
pub trait Kind:
    Resource<DynamicType = ()>
    + Serialize
    + DeserializeOwned
    + Validate
    + Clone
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Kind for K where
    K: Resource<DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Validate
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// One resource was created, changed or deleted. Consumers are level-based: they re-read what
/// they need rather than trusting the event to carry the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Plural resource name, e.g. `customers`.
    pub plural: String,
    /// `metadata.name` of the resource; empty when any resource of the kind may have changed
    /// (a watch was re-established): re-list them all.
    pub name: String,
}

/// Failure to read or write resources.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing files could not be read or written.
    #[error("{operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored resource no longer parses.
    #[error("{path} does not parse")]
    Corrupt {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: serde_yaml::Error,
    },
    /// The resource was refused by validation.
    #[error("{kind} `{name}` is invalid")]
    Invalid {
        /// Kind of the resource.
        kind: String,
        /// Its name, escaped.
        name: String,
        /// What is wrong.
        #[source]
        source: slipway_api::resources::ValidationError,
    },
    /// Neither an in-cluster service account nor a kubeconfig file was found.
    #[error(
        "no Kubernetes configuration: not running in a cluster, and no kubeconfig at $KUBECONFIG or ~/.kube/config"
    )]
    NoCluster,
    /// The Kubernetes API refused or failed a call.
    #[error("cannot {operation} {what}")]
    Api {
        /// What was being done.
        operation: &'static str,
        /// To which resource.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The change notifier could not be started.
    #[error("cannot watch {path} for changes")]
    Watch {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: notify::Error,
    },
}

/// Read, write and watch resources.
///
/// # Guarantees
/// A `put` is atomic: readers see the old or the new resource, never a torn one, also after a
/// crash. Every change made through any store on the same backing (another process included)
/// is announced on [`Store::changes`] shortly after it happens, without polling.
pub trait Store: Clone + Send + Sync + 'static {
    /// The resource of kind `K` named `name`, if it exists.
    fn get<K: Kind>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<K>, StoreError>> + Send;
    /// Every resource of kind `K`, sorted by name.
    fn list<K: Kind>(&self) -> impl Future<Output = Result<Vec<K>, StoreError>> + Send;
    /// Creates or replaces the resource; returns whether it existed before.
    fn put<K: Kind>(&self, resource: &K) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes the resource; returns whether it existed.
    fn delete<K: Kind>(&self, name: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A stream of changes from now on. A lagging receiver should re-list everything.
    fn changes(&self) -> broadcast::Receiver<Change>;
}
