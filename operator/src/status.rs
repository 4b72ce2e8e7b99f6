//! What a Webspace's status says, for both drivers: a phase, the production URL, one entry per
//! branch, and the `Built`, `Released` and `Ready` conditions (`kubectl wait
//! --for=condition=Ready webspace/blog`).

use slipway_api::resources::BranchStatus;
use slipway_api::{Condition, Release, Webspace, WebspaceStatus};

use crate::Deployment;

/// What a driver observed for one webspace.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The webspace, with its current status (to keep transition times).
    pub webspace: &'a Webspace,
    /// Every Release of this webspace.
    pub releases: &'a [&'a Release],
    /// What should run for it.
    pub wanted: &'a [&'a Deployment],
    /// What runs, one entry per wanted branch that has instances (ready or not).
    pub branches: Vec<BranchStatus>,
    /// The error of this pass, if any.
    pub error: Option<String>,
    /// Now, RFC 3339, for transition times.
    pub now: &'a str,
}

/// The newest Release per branch that failed and was not followed by a newer one.
fn failures<'a>(releases: &[&'a Release]) -> Vec<&'a Release> {
    crate::desired::newest_per_branch(releases.iter().copied())
        .into_values()
        .filter(|r| r.phase() == "Failed")
        .collect()
}

/// The status `observed` amounts to.
pub fn webspace_status(observed: Observed<'_>) -> WebspaceStatus {
    let Observed {
        webspace,
        releases,
        wanted,
        branches,
        error,
        now,
    } = observed;
    let ready = |b: &BranchStatus| {
        wanted
            .iter()
            .find(|d| d.branch == b.branch)
            .is_some_and(|d| b.ready_replicas >= d.replicas && b.release == d.release)
    };
    let serving = branches.iter().filter(|b| ready(b)).count();
    // A wanted branch with no instances at all failed to start; one with instances that are
    // not all ready yet is still rolling out.
    let missing = wanted
        .iter()
        .any(|d| !branches.iter().any(|b| b.branch == d.branch));
    let phase = match (wanted.len(), serving, missing) {
        (0, _, _) => "Pending",
        (wanted, ready, _) if wanted == ready => "Ready",
        (_, _, false) => "Progressing",
        (_, 0, true) => "Failed",
        _ => "Degraded",
    };
    let url = branches
        .iter()
        .find(|b| b.branch == webspace.spec.production_branch)
        .map(|b| b.url.clone());
    let failed = failures(releases);
    let built = match releases.iter().max_by_key(|r| r.order()) {
        Some(release) => (
            "True",
            "ImageBuilt",
            format!(
                "release {} built",
                release.metadata.name.as_deref().unwrap_or_default()
            ),
        ),
        None => (
            "False",
            "NotPushed",
            "nothing was pushed yet; git push a branch to build it".to_owned(),
        ),
    };
    let released = match (failed.first(), wanted.is_empty()) {
        (Some(release), _) => (
            "False",
            "RolloutFailed",
            format!(
                "release {} of `{}` failed: {}",
                release.metadata.name.as_deref().unwrap_or_default(),
                release.spec.branch,
                release
                    .status
                    .as_ref()
                    .and_then(|s| s.reason.as_deref())
                    .unwrap_or("no reason recorded")
            ),
        ),
        (None, true) => ("False", "NoRelease", "no promoted release yet".to_owned()),
        (None, false) => (
            "True",
            "Released",
            format!("{} branch(es) released", wanted.len()),
        ),
    };
    let readiness = match (phase, &error) {
        ("Ready", None) => ("True", "Serving", format!("{serving} branch(es) serving")),
        (_, Some(error)) => ("False", "ReconcileError", error.clone()),
        (phase, None) => (
            "False",
            phase,
            format!("{serving} of {} branch(es) serving", wanted.len()),
        ),
    };
    let previous = webspace
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = webspace.metadata.generation;
    let conditions = [
        ("Built", built),
        ("Released", released),
        ("Ready", readiness),
    ]
    .into_iter()
    .map(|(kind, (status, reason, message))| {
        let since = previous
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_owned());
        Condition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: Some(since),
            observed_generation: generation,
        }
    })
    .collect();
    WebspaceStatus {
        phase: Some(phase.to_owned()),
        url,
        branches,
        last_error: error,
        conditions,
    }
}

/// Now, as RFC 3339 to the second.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_api::WebspaceSpec;
    use slipway_api::resources::ReleaseStatus;

    fn webspace() -> Webspace {
        let spec: WebspaceSpec =
            serde_json::from_value(serde_json::json!({"customer": "alice"})).expect("spec");
        Webspace::new("blog", spec)
    }

    fn release(name: &str, phase: &str) -> Release {
        let mut release = Release::new(name, crate::fixtures::release_spec());
        release.status = Some(ReleaseStatus {
            phase: Some(phase.into()),
            reason: Some("crashed".into()),
            url: None,
            ..Default::default()
        });
        release
    }

    fn deployment(release: &str) -> Deployment {
        Deployment {
            webspace: "blog".into(),
            branch: "main".into(),
            label: "main".into(),
            release: release.into(),
            image: "i".into(),
            port: 8080,
            replicas: 1,
            env: Default::default(),
            hosts: vec!["blog.localhost".into()],
            max_body: None,
            config_keys: Vec::new(),
        }
    }

    fn branch(release: &str, ready: i32) -> BranchStatus {
        BranchStatus {
            branch: "main".into(),
            url: "http://blog.localhost".into(),
            release: release.into(),
            image: "i".into(),
            ready_replicas: ready,
        }
    }

    fn condition<'a>(status: &'a WebspaceStatus, kind: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .expect("condition")
    }

    #[test]
    fn nothing_pushed_is_pending_and_not_built() {
        let ws = webspace();
        let status = webspace_status(Observed {
            webspace: &ws,
            releases: &[],
            wanted: &[],
            branches: vec![],
            error: None,
            now: "2026-01-01T00:00:00Z",
        });
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(condition(&status, "Built").status, "False");
        assert_eq!(condition(&status, "Ready").reason, "Pending");
    }

    #[test]
    fn ready_only_when_the_wanted_release_has_its_replicas() {
        let ws = webspace();
        let live = release("r1", "Live");
        let releases = [&live];
        let wanted = deployment("r1");
        let wanted = [&wanted];
        let status = |ready| {
            webspace_status(Observed {
                webspace: &ws,
                releases: &releases,
                wanted: &wanted,
                branches: vec![branch("r1", ready)],
                error: None,
                now: "2026-01-01T00:00:00Z",
            })
        };
        let rolling = status(0);
        assert_eq!(condition(&rolling, "Ready").status, "False");
        assert_eq!(rolling.phase.as_deref(), Some("Progressing"));
        let ready = status(1);
        assert_eq!(condition(&ready, "Ready").status, "True");
        assert_eq!(condition(&ready, "Released").status, "True");
        assert_eq!(ready.url.as_deref(), Some("http://blog.localhost"));
    }

    #[test]
    fn a_failed_newest_release_shows_and_transition_times_stay() {
        let mut ws = webspace();
        let mut old = release("r1", "Live");
        old.metadata.creation_timestamp =
            Some(serde_json::from_value(serde_json::json!("2026-01-01T00:00:00Z")).expect("t"));
        let mut new = release("r2", "Failed");
        new.metadata.creation_timestamp =
            Some(serde_json::from_value(serde_json::json!("2026-01-02T00:00:00Z")).expect("t"));
        let releases = [&old, &new];
        let wanted = deployment("r1");
        let wanted = [&wanted];
        let first = webspace_status(Observed {
            webspace: &ws,
            releases: &releases,
            wanted: &wanted,
            branches: vec![branch("r1", 1)],
            error: None,
            now: "2026-01-03T00:00:00Z",
        });
        let released = condition(&first, "Released");
        assert_eq!(released.reason, "RolloutFailed");
        assert!(released.message.contains("crashed"), "{}", released.message);
        assert_eq!(condition(&first, "Ready").status, "True");
        ws.status = Some(first);
        let again = webspace_status(Observed {
            webspace: &ws,
            releases: &releases,
            wanted: &wanted,
            branches: vec![branch("r1", 1)],
            error: None,
            now: "2026-01-04T00:00:00Z",
        });
        assert_eq!(
            condition(&again, "Ready").last_transition_time.as_deref(),
            Some("2026-01-03T00:00:00Z")
        );
    }
}
