//! The desired state: for each Webspace and branch, the newest promoted Release, with what it
//! needs to run (image, port, env, replicas) and the hosts it answers on.
//!
//! # Guarantees
//! Level-based and deterministic: the same resources give the same deployments in the same
//! order, whatever happened before. A release that failed (or is only staged, or superseded)
//! never becomes desired, so the previous promoted release keeps serving.

use std::collections::{BTreeMap, HashMap, HashSet};

use slipway_api::names::branch_label;
use slipway_api::{Release, Runtime, Webspace};

use crate::hosts::Hosts;

/// Port an app listens on when neither the Webspace nor its Runtime says.
pub const DEFAULT_PORT: u16 = 8080;

/// Release phases that may serve traffic.
const SERVABLE: &[&str] = &["Promoted", "Live"];

/// One branch of one webspace, as it should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// Webspace name.
    pub webspace: String,
    /// Branch as pushed.
    pub branch: String,
    /// The branch as a DNS label (container and object names).
    pub label: String,
    /// Name of the Release that should serve.
    pub release: String,
    /// Image reference (with digest when it was pushed).
    pub image: String,
    /// Port the app listens on; also passed as `PORT`.
    pub port: u16,
    /// Instances.
    pub replicas: i32,
    /// The app's environment: `spec.env` plus `PORT`.
    pub env: BTreeMap<String, String>,
    /// Hosts routed to it; empty for a preview when previews are off.
    pub hosts: Vec<String>,
    /// The largest request body it takes (`spec.maxRequestBody`); `None`: the router's default.
    pub max_body: Option<u64>,
    /// Names of config values its release runs with (see `ReleaseSpec::config_keys`).
    pub config_keys: Vec<String>,
}

/// Where a release's port comes from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortFrom {
    /// The Webspace's `spec.port`.
    Webspace,
    /// The Webspace's Runtime, by name.
    Runtime(String),
    /// The image's one exposed port (`EXPOSE`).
    Expose,
    /// Nothing named one: [`DEFAULT_PORT`].
    Default,
}

impl std::fmt::Display for PortFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortFrom::Webspace => write!(f, "the webspace's `spec.port`"),
            PortFrom::Runtime(name) => write!(f, "runtime `{name}`"),
            PortFrom::Expose => write!(f, "the image's EXPOSE"),
            PortFrom::Default => write!(f, "the default"),
        }
    }
}

/// The port `release` of `webspace` listens on (also its `PORT`): the Webspace's `spec.port`,
/// else its Runtime's port, else the image's one exposed port, else [`DEFAULT_PORT`].
pub fn port(webspace: &Webspace, runtimes: &[Runtime], release: &Release) -> (u16, PortFrom) {
    if let Some(port) = webspace.spec.port {
        return (port, PortFrom::Webspace);
    }
    let runtime = webspace.spec.runtime.as_deref().and_then(|r| {
        runtimes
            .iter()
            .find(|rt| rt.metadata.name.as_deref() == Some(r))
    });
    if let Some(runtime) = runtime {
        return (
            runtime.spec.port,
            PortFrom::Runtime(runtime.metadata.name.clone().unwrap_or_default()),
        );
    }
    match release.spec.port {
        Some(port) => (port, PortFrom::Expose),
        None => (DEFAULT_PORT, PortFrom::Default),
    }
}

/// The newest of `releases` per (webspace, branch), by [`Release::order`].
pub fn newest_per_branch<'a>(
    releases: impl IntoIterator<Item = &'a Release>,
) -> BTreeMap<(&'a str, &'a str), &'a Release> {
    let mut newest: BTreeMap<(&str, &str), &Release> = BTreeMap::new();
    for release in releases {
        let key = (release.spec.webspace.as_str(), release.spec.branch.as_str());
        match newest.get(&key) {
            Some(current) if current.order() >= release.order() => {}
            _ => {
                newest.insert(key, release);
            }
        }
    }
    newest
}

/// The Releases to delete so that each (webspace, branch) keeps its newest `keep`: never one
/// in `serving`, and never a staged or verified one (its push is still deciding).
pub fn prunable<'a>(
    releases: &'a [Release],
    keep: usize,
    serving: &HashSet<String>,
) -> Vec<&'a Release> {
    let mut by_branch: BTreeMap<(&str, &str), Vec<&Release>> = BTreeMap::new();
    for release in releases {
        by_branch
            .entry((release.spec.webspace.as_str(), release.spec.branch.as_str()))
            .or_default()
            .push(release);
    }
    let mut doomed = Vec::new();
    for mut list in by_branch.into_values() {
        if list.len() <= keep {
            continue;
        }
        list.sort_by_key(|r| std::cmp::Reverse(r.order()));
        doomed.extend(list.into_iter().skip(keep).filter(|r| {
            let name = r.metadata.name.as_deref().unwrap_or_default();
            !serving.contains(name) && !matches!(r.phase(), "Staged" | "Verified")
        }));
    }
    doomed
}

/// What a Webspace's status says when its Customer does not exist (the same on Kubernetes).
pub fn customer_missing(customer: &str) -> String {
    format!("customer `{customer}` does not exist")
}

/// The webspaces that may not serve, by name, each with what its status says: those whose
/// Customer does not exist (`exists` says no). A Customer owns its webspaces' apps (on
/// Kubernetes through its Namespace, deleted with it), so without it they stop; the Webspace,
/// its Releases and its repository stay, and once the Customer exists again its newest promoted
/// releases are desired again and start health-gated like any other.
pub fn orphans(webspaces: &[Webspace], exists: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    webspaces
        .iter()
        .filter(|w| !exists(&w.spec.customer))
        .filter_map(|w| {
            let name = w.metadata.name.clone()?;
            Some((name, customer_missing(&w.spec.customer)))
        })
        .collect()
}

/// A digest of what a release runs with beyond its image: its port and environment (the
/// Webspace's `spec.env` and `PORT`). A change of it is verified before it takes traffic.
pub fn runs_with(deployment: &Deployment) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(deployment.port.to_string());
    for (name, value) in &deployment.env {
        hasher.update([0]);
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Decides what should run. See the module's guarantees.
pub fn desired(
    webspaces: &[Webspace],
    releases: &[Release],
    runtimes: &[Runtime],
    hosts: &Hosts,
) -> Vec<Deployment> {
    let by_name: HashMap<&str, &Webspace> = webspaces
        .iter()
        .filter_map(|w| w.metadata.name.as_deref().map(|n| (n, w)))
        .collect();
    newest_per_branch(releases.iter().filter(|r| {
        SERVABLE.contains(&r.phase()) && by_name.contains_key(r.spec.webspace.as_str())
    }))
    .into_iter()
    .filter_map(|((name, branch), release)| {
        let webspace = by_name.get(name)?;
        let (port, _) = port(webspace, runtimes, release);
        let mut env = webspace.spec.env.clone();
        env.insert("PORT".to_owned(), port.to_string());
        Some(Deployment {
            webspace: name.to_owned(),
            branch: branch.to_owned(),
            label: branch_label(branch),
            release: release.metadata.name.clone().unwrap_or_default(),
            image: release.spec.image.clone(),
            port,
            replicas: webspace.spec.replicas,
            env,
            hosts: hosts.for_branch(webspace, branch),
            max_body: webspace.spec.max_request_body_bytes(),
            config_keys: release.spec.config_keys.clone(),
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::HostStyle;
    use slipway_api::resources::ReleaseStatus;
    use slipway_api::{ReleaseSpec, WebspaceSpec};

    fn webspace(name: &str) -> Webspace {
        let spec: WebspaceSpec = serde_json::from_value(
            serde_json::json!({"customer": "alice", "env": {"MODE": "prod"}}),
        )
        .expect("spec");
        Webspace::new(name, spec)
    }

    fn release(name: &str, webspace: &str, branch: &str, phase: &str, at: &str) -> Release {
        let mut release = Release::new(
            name,
            ReleaseSpec {
                webspace: webspace.into(),
                branch: branch.into(),
                commit: "c".into(),
                tree: "t".into(),
                image: format!("registry/{webspace}:{name}"),
                pusher: "SHA256:x".into(),
                port: None,
                version: None,
                cause: None,
                config_keys: Vec::new(),
            },
        );
        release.metadata.creation_timestamp =
            Some(serde_json::from_value(serde_json::json!(at)).expect("time"));
        release.status = Some(ReleaseStatus {
            phase: Some(phase.into()),
            reason: None,
            ..Default::default()
        });
        release
    }

    fn hosts() -> Hosts {
        Hosts {
            domain: "localhost".into(),
            style: HostStyle::Nested,
        }
    }

    #[test]
    fn newest_promoted_release_per_branch_serves() {
        let releases = [
            release("old", "blog", "main", "Superseded", "2026-01-01T00:00:00Z"),
            release("live", "blog", "main", "Live", "2026-01-02T00:00:00Z"),
            release("new", "blog", "main", "Promoted", "2026-01-03T00:00:00Z"),
            release("staged", "blog", "main", "Staged", "2026-01-04T00:00:00Z"),
            release("broken", "blog", "main", "Failed", "2026-01-05T00:00:00Z"),
            release(
                "feat",
                "blog",
                "feature-x",
                "Promoted",
                "2026-01-01T00:00:00Z",
            ),
            release("orphan", "gone", "main", "Promoted", "2026-01-01T00:00:00Z"),
        ];
        let out = desired(&[webspace("blog")], &releases, &[], &hosts());
        let summary: Vec<_> = out
            .iter()
            .map(|d| (d.branch.as_str(), d.release.as_str(), d.hosts.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "feature-x",
                    "feat",
                    vec!["feature-x.blog.localhost".to_owned()]
                ),
                ("main", "new", vec!["blog.localhost".to_owned()]),
            ]
        );
        assert_eq!(out[1].env.get("PORT").map(String::as_str), Some("8080"));
        assert_eq!(out[1].env.get("MODE").map(String::as_str), Some("prod"));
    }

    #[test]
    fn releases_in_the_same_second_are_ordered_by_their_push_time() {
        let stamp = |mut r: Release, at: &str| {
            r.metadata.annotations = Some(
                [(
                    slipway_api::resources::PUSHED_AT_ANNOTATION.to_owned(),
                    at.to_owned(),
                )]
                .into(),
            );
            r
        };
        // `zzz` sorts after `aaa` by name, but was pushed first.
        let releases = [
            stamp(
                release("zzz", "blog", "main", "Promoted", "2026-01-01T00:00:00Z"),
                "2026-01-01T00:00:00.100Z",
            ),
            stamp(
                release("aaa", "blog", "main", "Promoted", "2026-01-01T00:00:00Z"),
                "2026-01-01T00:00:00.900Z",
            ),
        ];
        let out = desired(&[webspace("blog")], &releases, &[], &hosts());
        assert_eq!(out[0].release, "aaa");
    }

    #[test]
    fn pruning_keeps_the_newest_per_branch_and_never_what_serves_or_is_staged() {
        let at = |n: u32| format!("2026-01-01T00:00:{n:02}Z");
        let mut releases: Vec<Release> = (1..=8)
            .map(|n| release(&format!("m{n}"), "blog", "main", "Superseded", &at(n)))
            .collect();
        releases[0]
            .status
            .get_or_insert_with(Default::default)
            .phase = Some("Staged".into());
        releases.push(release("f1", "blog", "feature", "Superseded", &at(1)));
        let serving = HashSet::from(["m2".to_owned()]);
        let doomed: Vec<&str> = prunable(&releases, 5, &serving)
            .iter()
            .filter_map(|r| r.metadata.name.as_deref())
            .collect();
        // m8..m4 are the newest five; of m3, m2, m1: m2 serves and m1 is staged.
        assert_eq!(doomed, ["m3"]);
    }

    #[test]
    fn a_webspace_whose_customer_does_not_exist_is_an_orphan_with_the_clusters_wording() {
        let mut shop = webspace("shop");
        shop.spec.customer = "bob".into();
        let webspaces = [webspace("blog"), shop];
        let orphans = orphans(&webspaces, |customer| customer == "alice");
        assert_eq!(
            orphans,
            BTreeMap::from([(
                "shop".to_owned(),
                "customer `bob` does not exist".to_owned()
            )])
        );
    }

    #[test]
    fn nothing_promoted_means_nothing_runs() {
        let releases = [release(
            "s",
            "blog",
            "main",
            "Staged",
            "2026-01-01T00:00:00Z",
        )];
        assert!(desired(&[webspace("blog")], &releases, &[], &hosts()).is_empty());
    }
}
