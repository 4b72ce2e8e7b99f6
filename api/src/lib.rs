//! Slipway's shared vocabulary: resource types, names, and the environment contract.
//!
//! This crate does no I/O and nothing async: the git server, the hook, the store and the
//! operator all agree on these definitions, and the CRDs under `deploy/crds/` are generated from
//! them (`slipway crds`).

pub mod crds;
pub mod env;
pub mod keys;
pub mod names;
pub mod releases;
pub mod resources;

pub use resources::{
    Condition, Customer, CustomerSpec, Release, ReleaseSpec, ReleaseStatus, Runtime, RuntimeSpec,
    Webspace, WebspaceSpec, WebspaceStatus,
};

/// The API group of every Slipway resource.
pub const GROUP: &str = "slipway.dev";
/// The API version of every Slipway resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in YAML.
pub const API_VERSION: &str = "slipway.dev/v1alpha1";

/// An error with all its causes, `outer: cause: root cause`, for one log line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
