//! Default Runtimes (Dockerfile templates per stack) and their rendering.
//!
//! A Runtime tells the pre-receive hook how to build a repository that has no `Dockerfile` of
//! its own: a handlebars template of the Dockerfile plus the base image and port it uses.
//! [`defaults()`] are the Runtimes Slipway ships (`static`, `node`, `python`, `php`, `go`), read
//! from the YAML files under `runtimes/defaults/`, which have the same shape as a Runtime a user
//! applies. [`render()`] turns any Runtime, shipped or user-written, into a Dockerfile for one
//! branch of one webspace.
//!
//! No I/O and nothing async: both are pure functions.

pub mod defaults;
pub mod render;

pub use defaults::defaults;
pub use render::{
    InvalidContext, MAX_BASE_IMAGE_BYTES, MAX_TEMPLATE_BYTES, RenderContext, RenderError, render,
};
