//! Leader election through a coordination.k8s.io Lease, so two operator replicas never both
//! act: the holder renews it; another replica takes it over only after it expired. Updates
//! carry the Lease's resourceVersion, so of two replicas racing for it exactly one wins.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

/// Who competes for which Lease.
#[derive(Debug, Clone)]
pub struct Election {
    /// Lease name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub holder: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
}

fn conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn spec(
    holder: &str,
    duration: Duration,
    now: Timestamp,
    acquired: Option<MicroTime>,
    transitions: i32,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.to_owned()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// What this replica last saw of another's Lease, and when by its own clock: a Lease counts as
/// expired when it has not changed for its duration as measured here, so a holder whose clock
/// runs ahead (renew times in the future) cannot keep it forever, and one whose clock runs
/// behind does not lose it early.
#[derive(Debug, Default)]
pub struct Observed {
    seen: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

impl Observed {
    /// Whether the Lease with this holder and renew time has gone `duration` unchanged.
    fn expired(
        &mut self,
        holder: Option<&str>,
        renewed: Option<&MicroTime>,
        duration: Duration,
        at: Instant,
    ) -> bool {
        match &self.seen {
            Some((h, r, since)) if h.as_deref() == holder && r.as_ref() == renewed => {
                at.saturating_duration_since(*since) >= duration
            }
            _ => {
                self.seen = Some((holder.map(str::to_owned), renewed.cloned(), at));
                false
            }
        }
    }
}

/// Takes or renews the Lease; `true` when this replica holds it afterwards. `now` is written
/// into the Lease; `at` (this replica's monotonic clock) and `observed` judge another holder's
/// expiry.
///
/// # Errors
/// The API failed otherwise than by losing a race.
pub async fn try_lead(
    api: &Api<Lease>,
    election: &Election,
    now: Timestamp,
    at: Instant,
    observed: &mut Observed,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&election.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(election.name.clone()),
                ..Default::default()
            },
            spec: Some(spec(&election.holder, election.duration, now, None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(error) if conflict(&error) => Ok(false),
            Err(error) => Err(error),
        };
    };
    let current = lease.spec.clone().unwrap_or_default();
    let mine = current.holder_identity.as_deref() == Some(election.holder.as_str());
    let held = current
        .holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty());
    let duration = Duration::from_secs(
        u64::try_from(current.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
    );
    if !mine
        && held
        && !observed.expired(
            current.holder_identity.as_deref(),
            current.renew_time.as_ref(),
            duration,
            at,
        )
    {
        return Ok(false);
    }
    let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!mine);
    let acquired = if mine { current.acquire_time } else { None };
    lease.spec = Some(spec(
        &election.holder,
        election.duration,
        now,
        acquired,
        transitions,
    ));
    match api
        .replace(&election.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(error) if conflict(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Gives the Lease up (on shutdown), so another replica takes over at once.
pub async fn step_down(api: &Api<Lease>, election: &Election) {
    if let Ok(Some(mut lease)) = api.get_opt(&election.name).await
        && let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(election.holder.as_str())
    {
        spec.holder_identity = None;
        let _ = api
            .replace(&election.name, &PostParams::default(), &lease)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::scripted::{Answer, Server};
    use http::Method;

    const PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/slipway-system/leases/slipway-operator";
    const LIST: &str = "/apis/coordination.k8s.io/v1/namespaces/slipway-system/leases";

    fn election(holder: &str) -> Election {
        Election {
            name: "slipway-operator".into(),
            holder: holder.into(),
            duration: Duration::from_secs(15),
        }
    }

    fn held_by(holder: &str, renewed: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "slipway-operator", "namespace": "slipway-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": renewed, "acquireTime": renewed, "leaseTransitions": 3}
        })
    }

    fn now() -> Timestamp {
        "2026-01-01T00:01:00Z".parse().expect("time")
    }

    #[tokio::test]
    async fn a_free_lease_is_created_and_held() {
        let (client, server) = Server::start(vec![
            (Method::GET, PATH, Answer::NotFound),
            (Method::POST, LIST, Answer::Echo),
        ]);
        let api = Api::namespaced(client, "slipway-system");
        let mut observed = Observed::default();
        let at = Instant::now();
        assert!(
            try_lead(&api, &election("a"), now(), at, &mut observed)
                .await
                .expect("lead")
        );
        let bodies = server.finish().await;
        assert_eq!(bodies[1]["spec"]["holderIdentity"], "a");
    }

    #[tokio::test]
    async fn a_fresh_lease_of_another_replica_is_left_alone() {
        let (client, server) = Server::start(vec![(
            Method::GET,
            PATH,
            Answer::Json(held_by("b", "2026-01-01T00:00:50Z")),
        )]);
        let api = Api::namespaced(client, "slipway-system");
        let mut observed = Observed::default();
        assert!(
            !try_lead(&api, &election("a"), now(), Instant::now(), &mut observed)
                .await
                .expect("lead")
        );
        server.finish().await;
    }

    /// The holder's renew time is in the distant past by this replica's clock (their clocks
    /// differ): that alone expires nothing; 15 s without change seen here does.
    #[tokio::test]
    async fn expiry_is_judged_by_this_replicas_clock_and_the_lease_is_taken_with_its_version() {
        let stale = || Answer::Json(held_by("b", "2026-01-01T00:00:30Z"));
        let (client, server) = Server::start(vec![
            (Method::GET, PATH, stale()),
            (Method::GET, PATH, stale()),
            (Method::GET, PATH, stale()),
            (Method::PUT, PATH, Answer::Echo),
        ]);
        let api = Api::namespaced(client, "slipway-system");
        let mut observed = Observed::default();
        let start = Instant::now();
        let mut lead_at = async |secs| {
            try_lead(
                &api,
                &election("a"),
                now(),
                start + Duration::from_secs(secs),
                &mut observed,
            )
            .await
            .expect("lead")
        };
        assert!(
            !lead_at(0).await,
            "first sight: not expired whatever its time"
        );
        assert!(!lead_at(14).await, "unchanged for 14 s of 15");
        assert!(lead_at(15).await, "unchanged for 15 s");
        let bodies = server.finish().await;
        assert_eq!(bodies[3]["metadata"]["resourceVersion"], "7");
        assert_eq!(bodies[3]["spec"]["holderIdentity"], "a");
        assert_eq!(bodies[3]["spec"]["leaseTransitions"], 4);
    }

    #[tokio::test]
    async fn losing_the_race_for_it_is_not_an_error() {
        let (client, server) = Server::start(vec![
            (Method::GET, PATH, Answer::NotFound),
            (Method::POST, LIST, Answer::Status(409)),
        ]);
        let api = Api::namespaced(client, "slipway-system");
        let mut observed = Observed::default();
        assert!(
            !try_lead(&api, &election("a"), now(), Instant::now(), &mut observed)
                .await
                .expect("lead")
        );
        server.finish().await;
    }
}
