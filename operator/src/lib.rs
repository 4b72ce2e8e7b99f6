//! The operator's decisions, as pure functions shared by the Docker and Kubernetes drivers:
//! Webspaces and Releases in, the deployments that should exist (image, port, env, hosts) out.
//!
//! Two drivers apply what they decide: containers and a router on one host (`single_host`),
//! Deployments, Services and Ingresses on a cluster (`kubernetes`).

pub mod desired;
pub mod docker;
#[cfg(test)]
mod fixtures;
pub mod hosts;
pub mod kubernetes;
pub mod metrics;
pub mod netns;
pub mod router;
pub mod single_host;
pub mod status;
pub mod verify;

pub use desired::{Deployment, desired};
pub use hosts::{HostStyle, Hosts};

pub use slipway_api::error_chain as chain;
