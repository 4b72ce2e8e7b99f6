//! Release records as data: names, versions, the staged Release a push or an owner's command
//! records, and phase changes. Pure functions; the hook, the operator and the owner's commands
//! share them.

use sha2::{Digest, Sha256};

use crate::names::MAX_LABEL;
use crate::resources::ReleaseStatus;
use crate::{Release, ReleaseSpec};

pub use crate::resources::phase::{PROMOTED, STAGED, SUPERSEDED, VERIFIED};

/// First 12 hex digits of SHA-256, for names and tags.
pub fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `<webspace>-<commit:10>-<hash of branch:8>`: unique per (webspace, branch, commit), a DNS
/// label, and readable in `slipway get releases`.
pub fn name(webspace: &str, branch: &str, commit: &str) -> String {
    let branch_hash = short_hash(branch.as_bytes());
    let commit = commit.get(..10).unwrap_or(commit);
    let room = MAX_LABEL - commit.len() - 8 - 2;
    let prefix = webspace
        .get(..room.min(webspace.len()))
        .unwrap_or(webspace)
        .trim_end_matches('-');
    format!(
        "{prefix}-{commit}-{}",
        branch_hash.get(..8).unwrap_or(&branch_hash)
    )
}

/// A new staged Release.
pub fn staged(
    webspace: &str,
    branch: &str,
    commit: &str,
    tree: &str,
    image: &str,
    pusher: &str,
) -> Release {
    let mut release = Release::new(
        &name(webspace, branch, commit),
        ReleaseSpec {
            webspace: webspace.to_owned(),
            branch: branch.to_owned(),
            commit: commit.to_owned(),
            tree: tree.to_owned(),
            image: image.to_owned(),
            pusher: pusher.to_owned(),
            port: None,
            version: None,
            cause: None,
            config_keys: Vec::new(),
        },
    );
    release.metadata.annotations = Some(std::collections::BTreeMap::from([(
        crate::resources::PUSHED_AT_ANNOTATION.to_owned(),
        k8s_openapi::jiff::Timestamp::now().to_string(),
    )]));
    release.status = Some(ReleaseStatus {
        phase: Some(STAGED.to_owned()),
        reason: None,
        ..Default::default()
    });
    release
}

/// `status.phase`, if it has one.
pub fn phase(release: &Release) -> Option<&str> {
    release.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// `release` with a fresh status of `phase` (and `reason`).
pub fn with_phase(release: &Release, phase: &str, reason: Option<&str>) -> Release {
    let mut release = release.clone();
    release.status = Some(ReleaseStatus {
        phase: Some(phase.to_owned()),
        reason: reason.map(str::to_owned),
        ..Default::default()
    });
    release
}

/// A new staged Release of `base`'s build (same commit, image and port) as version `version`,
/// made for `cause` (a rollback, a restart, a config change) rather than a push: named
/// `<webspace>-v<version>-<hash of branch>`, which no push's name (a commit's hex digits) can be.
pub fn derived(base: &Release, version: u32, cause: &str, pusher: &str) -> Release {
    let webspace = &base.spec.webspace;
    let branch = &base.spec.branch;
    let branch_hash = short_hash(branch.as_bytes());
    let tag = format!("v{version}");
    let room = MAX_LABEL - tag.len() - 8 - 2;
    let prefix = webspace
        .get(..room.min(webspace.len()))
        .unwrap_or(webspace)
        .trim_end_matches('-');
    let name = format!(
        "{prefix}-{tag}-{}",
        branch_hash.get(..8).unwrap_or(&branch_hash)
    );
    let mut release = staged(
        webspace,
        branch,
        &base.spec.commit,
        &base.spec.tree,
        &base.spec.image,
        pusher,
    );
    release.metadata.name = Some(name);
    release.spec.port = base.spec.port;
    release.spec.version = Some(version);
    release.spec.cause = Some(cause.to_owned());
    release
}

/// Marks `release` promoted: what post-receive does once the ref moved, and an owner's
/// command once its release was verified.
pub fn promoted(release: &Release) -> Release {
    with_phase(release, PROMOTED, None)
}

/// The version the next Release of `webspace` gets: one more than the highest of its releases
/// (pruned ones took theirs along, but the newest are always kept), `1` for the first.
pub fn next_version(releases: &[Release], webspace: &str) -> u32 {
    releases
        .iter()
        .filter(|r| r.spec.webspace == webspace)
        .filter_map(|r| r.spec.version)
        .max()
        .unwrap_or(0)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_labels_and_distinct_per_branch() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let a = name("blog", "main", commit);
        let b = name("blog", "feature", commit);
        assert_eq!(a.len(), "blog".len() + 1 + 10 + 1 + 8);
        assert_ne!(a, b);
        let long = name(&"w".repeat(63), "main", commit);
        assert!(crate::names::validate_label(&long).is_ok(), "{long}");
    }

    #[test]
    fn a_derived_release_is_named_apart_from_pushes() {
        let base = staged("blog", "main", "0123456789abcdef", "t", "img@sha256:1", "k");
        let derived = derived(&base, 12, "rollback to v3", "SHA256:me");
        let name = derived.metadata.name.clone().expect("name");
        assert!(name.starts_with("blog-v12-"), "{name}");
        assert_ne!(Some(name.clone()), base.metadata.name);
        assert!(crate::names::validate_label(&name).is_ok());
        assert_eq!(derived.spec.image, "img@sha256:1");
        assert_eq!(derived.spec.cause.as_deref(), Some("rollback to v3"));
        assert_eq!(phase(&derived), Some(STAGED));
        let long = staged(&"w".repeat(63), "main", "c", "t", "i", "k");
        let name = derived_name(&long);
        assert!(crate::names::validate_label(&name).is_ok(), "{name}");
    }

    fn derived_name(base: &Release) -> String {
        derived(base, 1_000_000, "restart", "k")
            .metadata
            .name
            .expect("name")
    }

    #[test]
    fn versions_count_up_per_webspace() {
        let versioned = |webspace: &str, version: Option<u32>| {
            let mut release = staged(webspace, "main", "c", "t", "img", "k");
            release.spec.version = version;
            release
        };
        assert_eq!(next_version(&[], "blog"), 1);
        let releases = [
            versioned("blog", Some(3)),
            versioned("blog", None),
            versioned("blog", Some(7)),
            versioned("shop", Some(40)),
        ];
        assert_eq!(
            next_version(&releases, "blog"),
            8,
            "after the highest, gaps kept"
        );
        assert_eq!(next_version(&releases, "shop"), 41);
        assert_eq!(next_version(&releases, "new"), 1);
    }
}
