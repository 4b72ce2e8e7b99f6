//! Verifying staged releases: what both drivers decide alike. A push's pre-receive records its
//! Release as `Staged` and waits; the driver starts it without traffic and moves it to
//! `Verified` once it answers its health check, or to `Failed` with a reason, a hint and the
//! app's last log lines. What the pusher reads comes from here, so both modes say the same.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use slipway_api::resources::{ReleaseStatus, phase};
use slipway_api::{Release, Runtime, Webspace};

use crate::desired::{Deployment, PortFrom};
use crate::hosts::Hosts;

/// How long a Release may stay `Staged` or `Verified`, counted from its staging, before the
/// operator fails it as abandoned: a push that waits longer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// For a `Staged` release: its push waits that long for the verdict at most.
    pub staged: std::time::Duration,
    /// For a `Verified` one: its push promotes it right after the verdict, or (on one host,
    /// where the image goes to the registry during the verification) once the image is there.
    pub verified: std::time::Duration,
}

/// On one host, where a running push's marker ([`slipway_store::pushes`]) tells a live push
/// from a dead one at once, and an image upload may keep a verified release waiting.
pub const SINGLE_HOST_LIMITS: Limits = Limits {
    staged: std::time::Duration::from_secs(3600),
    verified: std::time::Duration::from_secs(3600),
};

/// On a cluster, where pre-receive pushes the image before it stages the release and waits 3
/// minutes at most for the verdict.
pub const CLUSTER_LIMITS: Limits = Limits {
    staged: std::time::Duration::from_secs(300),
    verified: std::time::Duration::from_secs(600),
};

/// What `release` runs as once promoted, and where its port comes from; `None` when its
/// webspace is not among `webspaces`.
pub fn deployment(
    webspace: &Webspace,
    runtimes: &[Runtime],
    release: &Release,
    hosts: &Hosts,
) -> Option<(Deployment, PortFrom)> {
    let mut promoted = release.clone();
    promoted.status = Some(ReleaseStatus {
        phase: Some(phase::PROMOTED.to_owned()),
        ..Default::default()
    });
    let deployment = crate::desired(std::slice::from_ref(webspace), &[promoted], runtimes, hosts)
        .into_iter()
        .next()?;
    let (_, from) = crate::desired::port(webspace, runtimes, release);
    Some((deployment, from))
}

/// A staged release's status while it starts: what it waits for.
pub fn starting(deployment: &Deployment, from: &PortFrom, health_path: &str) -> ReleaseStatus {
    ReleaseStatus {
        phase: Some(phase::STAGED.to_owned()),
        reason: Some(format!(
            "no answer yet on port {} ({from}) at `{health_path}`",
            deployment.port
        )),
        ..Default::default()
    }
}

/// A release that answered (`how`: `HTTP 200`, or its readiness probe passed): `Verified`.
pub fn verified(health_path: &str, how: &str) -> ReleaseStatus {
    ReleaseStatus {
        phase: Some(phase::VERIFIED.to_owned()),
        reason: Some(format!("answers `{health_path}` ({how})")),
        ..Default::default()
    }
}

/// A release that did not answer in time (or whose pods cannot start): `Failed`, with what to
/// check and the app's last log lines.
pub fn unhealthy(
    webspace: &str,
    deployment: &Deployment,
    from: &PortFrom,
    health_path: &str,
    why: &str,
    logs: Vec<String>,
) -> ReleaseStatus {
    ReleaseStatus {
        phase: Some(phase::FAILED.to_owned()),
        reason: Some(format!("did not become healthy on `{health_path}` ({why})")),
        hint: Some(format!(
            "the app must listen on $PORT, here {} (from {from}), and answer `{health_path}` with HTTP 200-399; if it listens on another port, set `spec.port` of webspace `{webspace}` to it (or EXPOSE that one port in the Dockerfile)",
            deployment.port
        )),
        logs,
        ..Default::default()
    }
}

/// A release that could not be started at all (the engine or the cluster refused it).
pub fn not_started(why: &str) -> ReleaseStatus {
    ReleaseStatus {
        phase: Some(phase::FAILED.to_owned()),
        reason: Some(format!("could not be started: {why}")),
        hint: Some("this is the server's trouble, not the app's; try again later".to_owned()),
        ..Default::default()
    }
}

/// Why a `Staged` or `Verified` Release can no longer be promoted, if it cannot: it was
/// staged before this operator started (`started`, on one host where the operator and the
/// pushes share a process), or longer ago than its phase's limit.
pub fn abandoned(
    release: &Release,
    started: Option<Timestamp>,
    now: Timestamp,
    limits: Limits,
) -> Option<String> {
    let limit = match release.phase() {
        phase::STAGED => limits.staged,
        phase::VERIFIED => limits.verified,
        _ => return None,
    };
    let pushed = release.pushed_at()?;
    if started.is_some_and(|started| pushed < started) {
        return Some("its push did not finish: the server stopped during it".to_owned());
    }
    let signed = SignedDuration::try_from(limit).ok()?;
    (now.duration_since(pushed) > signed).then(|| {
        format!(
            "its push did not finish within {} minutes of staging it",
            limit.as_secs() / 60
        )
    })
}

/// The reason of a staged release whose push is gone (its client left, or git was killed).
pub const PUSH_GONE: &str = "its push did not finish: the client left or git was stopped";

#[cfg(test)]
mod tests {
    use super::*;

    fn staged_at(at: &str, phase: &str) -> Release {
        let mut release = Release::new("r", crate::fixtures::release_spec());
        release.metadata.annotations = Some(
            [(
                slipway_api::resources::PUSHED_AT_ANNOTATION.to_owned(),
                at.to_owned(),
            )]
            .into(),
        );
        release.status = Some(ReleaseStatus {
            phase: Some(phase.to_owned()),
            ..Default::default()
        });
        release
    }

    #[test]
    fn a_waiting_release_is_abandoned_when_older_than_the_server_or_the_limit() {
        let at = |t: &str| t.parse::<Timestamp>().expect("time");
        let started = Some(at("2026-12-01T10:00:00Z"));
        let now = at("2026-12-01T10:30:00Z");
        let one_host =
            |release: &Release, started, now| abandoned(release, started, now, SINGLE_HOST_LIMITS);
        for waiting in [phase::STAGED, phase::VERIFIED] {
            let fresh = staged_at("2026-12-01T10:00:01Z", waiting);
            let older = staged_at("2026-12-01T09:59:59Z", waiting);
            assert_eq!(
                one_host(&fresh, started, now),
                None,
                "a push of this server, still within the limit"
            );
            assert!(
                one_host(&older, started, now)
                    .is_some_and(|r| r.contains("the server stopped during it"))
            );
            let later = at("2026-12-01T11:00:02Z");
            assert!(
                one_host(&fresh, started, later).is_some_and(|r| r.contains("within 60 minutes"))
            );
            // On a cluster the operator's start says nothing about pushes.
            assert_eq!(one_host(&older, None, now), None);
        }
        // A cluster's pushes give up sooner: a staged release after 5 minutes, a verified one
        // after 10.
        let staged = staged_at("2026-12-01T10:00:01Z", phase::STAGED);
        let verified = staged_at("2026-12-01T10:00:01Z", phase::VERIFIED);
        let six = at("2026-12-01T10:06:02Z");
        assert!(
            abandoned(&staged, None, six, CLUSTER_LIMITS).is_some_and(|r| r.contains("5 minutes"))
        );
        assert_eq!(abandoned(&verified, None, six, CLUSTER_LIMITS), None);
        let eleven = at("2026-12-01T10:11:02Z");
        assert!(abandoned(&verified, None, eleven, CLUSTER_LIMITS).is_some());
        let later = at("2026-12-01T11:00:02Z");
        let promoted = staged_at("2026-12-01T09:00:00Z", phase::PROMOTED);
        assert_eq!(
            one_host(&promoted, started, later),
            None,
            "a promoted release is the rollout's business"
        );
        // Without any time it is left alone.
        let undated = Release::new("u", crate::fixtures::release_spec());
        assert_eq!(one_host(&undated, started, later), None);
    }
}
