//! Each Customer's `KeysAvailable` condition: whether every key it lists identifies it, and
//! if not, which key is held by which earlier Customer.
//!
//! A key listed by two Customers identifies the earlier one only ([`Claim`]'s order, the rule
//! the git server's key index follows). `slipway apply` refuses the later claim, but
//! `kubectl apply` cannot: there the later Customer's owner would see only refused pushes.
//! This condition tells them why, and clears when the conflict goes.
//!
//! Written by the operator rather than the git server: the operator is the one writer of
//! status (leader-elected, so replicas never race over it), already keeps a cache of every
//! Customer, and the git server stays read-only on Customers (its RBAC has no write on them,
//! and a compromised git server cannot rewrite them). Both decide with
//! `slipway_api::keys::Claim`, so the condition names the customer the git server
//! authenticates.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use slipway_api::keys::{Claim, holders, listed_keys};
use slipway_api::resources::CustomerStatus;
use slipway_api::{Condition, Customer};
use slipway_store::OPERATOR_FIELD_MANAGER as FIELD_MANAGER;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The condition's type.
pub const KEYS_AVAILABLE: &str = "KeysAvailable";

/// Pause before trying again after a status write failed.
const RETRY: Duration = Duration::from_secs(2);

/// The status `customer` should have, given who holds each key (see
/// [`slipway_api::keys::holders`]); `now` (RFC 3339) is the transition time of a condition
/// whose status changes.
pub fn key_status(
    customer: &Customer,
    holders: &HashMap<String, Claim>,
    now: &str,
) -> CustomerStatus {
    let name = customer.name_any();
    let mut usable = HashSet::new();
    let mut held = Vec::new();
    let mut invalid = Vec::new();
    for (index, listed) in listed_keys(customer) {
        match listed {
            Ok(fingerprint) => match holders.get(&fingerprint) {
                Some(holder) if holder.customer() != name => held.push(format!(
                    "ssh key #{index} ({fingerprint}) is held by the earlier customer `{}`",
                    holder.customer()
                )),
                _ => {
                    usable.insert(fingerprint);
                }
            },
            Err(error) => invalid.push(error.to_string()),
        }
    }
    let (status, reason, message) = if !held.is_empty() {
        (
            "False",
            "KeyHeldByAnotherCustomer",
            format!(
                "{}; a key identifies one customer, so it does not identify this one (remove it here, or from the holder first)",
                held.join("; ")
            ),
        )
    } else if !invalid.is_empty() {
        ("False", "KeyInvalid", invalid.join("; "))
    } else if usable.is_empty() {
        (
            "False",
            "NoKeys",
            "no ssh keys listed: add one to spec.sshKeys to push".to_owned(),
        )
    } else {
        (
            "True",
            "KeysHeld",
            format!("{} ssh key(s) identify this customer", usable.len()),
        )
    };
    let since = customer
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == KEYS_AVAILABLE))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_owned());
    CustomerStatus {
        keys: Some(u32::try_from(usable.len()).unwrap_or(u32::MAX)),
        conditions: vec![Condition {
            type_: KEYS_AVAILABLE.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: Some(since),
            observed_generation: customer.metadata.generation,
        }],
    }
}

/// Writes the status of every Customer in `customers` whose status is not what
/// [`key_status`] says it should be, by server-side apply as the operator. Returns whether
/// every write succeeded (a Customer deleted meanwhile counts as success).
pub async fn write_key_statuses(client: &Client, customers: &[Arc<Customer>]) -> bool {
    let holders = holders(customers.iter().map(|c| &**c));
    let now = crate::status::now();
    let api = Api::<Customer>::all(client.clone());
    let mut all = true;
    for customer in customers {
        let status = key_status(customer, &holders, &now);
        if customer.status.as_ref() == Some(&status) {
            continue;
        }
        let name = customer.name_any();
        let body = serde_json::json!({
            "apiVersion": Customer::api_version(&()),
            "kind": Customer::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
            Ok(_) => tracing::info!(
                customer = %name,
                reason = %status.conditions[0].reason,
                "customer key status written"
            ),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                all = false;
                tracing::warn!(customer = %name, error = %crate::chain(&error), "cannot write the customer's key status; retrying");
            }
        }
    }
    all
}

/// Keeps every Customer's `KeysAvailable` condition current until `stop`: after the cache's
/// first listing, and again each time `changed` is notified (once per batch of Customer
/// events, after the cache took them in). Level-based: each pass compares every Customer with
/// what it should be, so a missed event or a failed write is made good by the next pass; a
/// failed write is retried after [`RETRY`].
pub async fn keep_key_statuses(
    client: Client,
    customers: Store<Customer>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    tokio::select! {
        () = stop.cancelled() => return,
        ready = customers.wait_until_ready() => if ready.is_err() { return },
    }
    loop {
        let written = write_key_statuses(&client, &customers.state()).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = changed.notified(), if written => {}
            () = tokio::time::sleep(RETRY), if !written => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::scripted::{Answer, Server};
    use http::Method;
    use slipway_api::CustomerSpec;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbfO2R8HNnKRTcsKxq2EnNjxUIU6+xPO5NZTxPa0Cb6 a";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbw7FysavQjQK45aXPIoWcokMUPd7XpO7cX9Clj01bj b";
    const NOW: &str = "2026-03-01T00:00:00Z";

    fn customer(name: &str, created: &str, keys: &[&str]) -> Customer {
        let mut customer = Customer::new(
            name,
            CustomerSpec {
                email: format!("{name}@example.com"),
                display_name: None,
                ssh_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            },
        );
        customer.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created.parse().expect("time")),
        );
        customer.metadata.generation = Some(3);
        customer
    }

    fn status_of(customers: &[Customer], which: usize) -> CustomerStatus {
        key_status(&customers[which], &holders(customers), NOW)
    }

    #[test]
    fn a_later_customer_listing_a_held_key_is_told_who_holds_it() {
        // aaron's name sorts first, but alice's Customer is older.
        let customers = [
            customer("alice", "2026-01-01T00:00:00Z", &[KEY_A]),
            customer("aaron", "2026-01-02T00:00:00Z", &[KEY_B, KEY_A]),
        ];
        let alice = status_of(&customers, 0);
        assert_eq!(alice.keys, Some(1));
        assert_eq!(alice.conditions[0].status, "True");
        assert_eq!(alice.conditions[0].reason, "KeysHeld");
        let aaron = status_of(&customers, 1);
        assert_eq!(aaron.keys, Some(1), "KEY_B is still his");
        let condition = &aaron.conditions[0];
        assert_eq!(condition.type_, KEYS_AVAILABLE);
        assert_eq!(condition.status, "False");
        assert_eq!(condition.reason, "KeyHeldByAnotherCustomer");
        let fp = slipway_api::keys::fingerprint(
            &slipway_api::keys::parse_public_key(KEY_A, 1).expect("key"),
        );
        assert!(
            condition.message.starts_with(&format!(
                "ssh key #2 ({fp}) is held by the earlier customer `alice`"
            )),
            "{}",
            condition.message
        );
        assert_eq!(condition.observed_generation, Some(3));
        assert_eq!(condition.last_transition_time.as_deref(), Some(NOW));
    }

    #[test]
    fn the_condition_clears_with_the_conflict_and_keeps_its_time_otherwise() {
        let mut customers = [
            customer("alice", "2026-01-01T00:00:00Z", &[KEY_A]),
            customer("bob", "2026-01-02T00:00:00Z", &[KEY_A]),
        ];
        customers[1].status = Some(status_of(&customers, 1));
        // Nothing changed: the same status, transition time kept.
        let later = key_status(&customers[1], &holders(&customers), "2026-04-01T00:00:00Z");
        assert_eq!(Some(&later), customers[1].status.as_ref());
        // alice gives the key up: bob holds it now.
        customers[0].spec.ssh_keys.clear();
        let cleared = key_status(&customers[1], &holders(&customers), "2026-04-01T00:00:00Z");
        assert_eq!(cleared.conditions[0].status, "True");
        assert_eq!(
            cleared.conditions[0].last_transition_time.as_deref(),
            Some("2026-04-01T00:00:00Z")
        );
        assert_eq!(status_of(&customers, 0).conditions[0].reason, "NoKeys");
        customers[0].spec.ssh_keys = vec!["ssh-ed25519 AAAA".into()];
        assert_eq!(status_of(&customers, 0).conditions[0].reason, "KeyInvalid");
    }

    #[tokio::test]
    async fn only_statuses_that_differ_are_written_by_server_side_apply() {
        let mut alice = customer("alice", "2026-01-01T00:00:00Z", &[KEY_A]);
        let bob = customer("bob", "2026-01-02T00:00:00Z", &[KEY_A]);
        alice.status = Some(status_of(&[alice.clone(), bob.clone()], 0));
        let (client, server) = Server::start(vec![(
            Method::PATCH,
            "/apis/slipway.dev/v1alpha1/customers/bob/status",
            Answer::Json(serde_json::to_value(&bob).expect("json")),
        )]);
        assert!(write_key_statuses(&client, &[Arc::new(alice), Arc::new(bob)]).await);
        let bodies = server.finish().await;
        let condition = &bodies[0]["status"]["conditions"][0];
        assert_eq!(condition["type"], "KeysAvailable");
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], "KeyHeldByAnotherCustomer");
        assert_eq!(bodies[0]["kind"], "Customer");
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_for_a_retry_and_a_deleted_customer_is_not() {
        let customers = [
            Arc::new(customer("alice", "2026-01-01T00:00:00Z", &[KEY_A])),
            Arc::new(customer("bob", "2026-01-02T00:00:00Z", &[KEY_A])),
        ];
        let path = |name: &str| format!("/apis/slipway.dev/v1alpha1/customers/{name}/status");
        let (alice, bob) = (path("alice"), path("bob"));
        let written = || Answer::Json(serde_json::to_value(&*customers[1]).expect("json"));
        let (client, server) = Server::start(vec![
            (Method::PATCH, &alice, Answer::NotFound),
            (Method::PATCH, &bob, written()),
        ]);
        assert!(write_key_statuses(&client, &customers).await);
        server.finish().await;
        let (client, server) = Server::start(vec![
            (Method::PATCH, &alice, Answer::Status(500)),
            (Method::PATCH, &bob, written()),
        ]);
        assert!(!write_key_statuses(&client, &customers).await);
        server.finish().await;
    }
}
