//! Test resources shared by the unit tests of several modules.

use slipway_api::ReleaseSpec;

/// The spec of a release of branch `main` of webspace `blog`.
pub fn release_spec() -> ReleaseSpec {
    ReleaseSpec {
        webspace: "blog".into(),
        branch: "main".into(),
        commit: "c".into(),
        tree: "t".into(),
        image: "i".into(),
        pusher: "p".into(),
        port: None,
        version: None,
        cause: None,
        config_keys: Vec::new(),
    }
}
