//! Slipway's SSH git host: public-key authentication against Customer keys, authorization
//! against `Webspace.spec.customer`, bare repositories, and `git receive-pack` /
//! `git upload-pack` piped over SSH channels.

pub mod admission;
pub mod command;
pub mod host_key;
pub mod keys;
pub mod lock;
pub mod metrics;
pub mod plumbing;
pub mod quarantine;
pub mod repository;
pub mod retire;
mod ssh;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub use ssh::{Drain, ServerError, run};

/// Everything the git server needs, parsed once by the binary.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory: `repos/`, the host key.
    pub data: PathBuf,
    /// The `slipway` executable the repositories' hooks run.
    pub exe: PathBuf,
    /// Registry the hook pushes images to, passed on as `SLIPWAY_REGISTRY`.
    pub registry: Option<String>,
    /// Whether the hooks build pushed branches (`false`: a plain git host).
    pub build: bool,
    /// Whether an operator on this host rolls releases out (`slipway up`).
    pub rollout: bool,
    /// Variables from the server's own environment given to git (see
    /// [`slipway_api::env::PASSED_FROM_SERVER`]).
    pub environment: Vec<(OsString, OsString)>,
    /// How long in-flight pushes may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long a push waits for an earlier push to the same webspace.
    pub push_wait: Duration,
    /// Connection caps, global and per source address.
    pub admission: admission::Limits,
    /// Counters for `/metrics`.
    pub metrics: std::sync::Arc<metrics::Metrics>,
}
