//! The operator's decisions, as pure functions shared by the Docker and Kubernetes drivers:
//! Webspaces and Releases in, the deployments that should exist (image, port, env, hosts) out.
//!
//! The drivers (containers and a router on one host; Deployments, Services and Ingresses on a
//! cluster) are the next step; they apply what these functions decide.

pub mod desired;
pub mod docker;
pub mod hosts;
pub mod router;
pub mod single_host;

pub use desired::{Deployment, desired};
pub use hosts::{HostStyle, Hosts};
