//! The fingerprint index: which customer a verified key belongs to.
//!
//! Built from the Customers in the store and kept current from the store's change feed, so a
//! key added or removed with `slipway apply` counts on the next connection without a restart.
//! A login is one hash-map lookup, however many customers there are.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use slipway_api::Customer;
use slipway_api::keys::{fingerprint, parse_public_key};
use slipway_store::{Store, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Who a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Exactly one customer lists the key.
    Customer(String),
    /// No customer lists it.
    Unknown,
    /// More than one customer lists it: refused, since either could otherwise act as the
    /// other, and logged so an operator can fix the resources.
    Ambiguous,
}

#[derive(Debug, Default)]
struct Index {
    by_fingerprint: HashMap<String, Vec<String>>,
    by_customer: HashMap<String, Vec<String>>,
}

impl Index {
    fn remove_customer(&mut self, customer: &str) {
        for fp in self.by_customer.remove(customer).unwrap_or_default() {
            if let Some(owners) = self.by_fingerprint.get_mut(&fp) {
                owners.retain(|c| c != customer);
                if owners.is_empty() {
                    self.by_fingerprint.remove(&fp);
                }
            }
        }
    }

    fn insert_customer(&mut self, customer: &Customer) {
        let Some(name) = customer.metadata.name.clone() else {
            return;
        };
        self.remove_customer(&name);
        let mut fingerprints = Vec::new();
        for (index, line) in customer.spec.ssh_keys.iter().enumerate() {
            match parse_public_key(line, index + 1) {
                Ok(key) => fingerprints.push(fingerprint(&key)),
                Err(error) => tracing::warn!(customer = %name, %error, "ignoring ssh key"),
            }
        }
        fingerprints.sort();
        fingerprints.dedup();
        for fp in &fingerprints {
            let owners = self.by_fingerprint.entry(fp.clone()).or_default();
            owners.push(name.clone());
            if owners.len() > 1 {
                tracing::warn!(fingerprint = %fp, customers = ?owners, "ssh key listed by several customers; refusing it");
            }
        }
        self.by_customer.insert(name, fingerprints);
    }
}

/// Shared, always-current map from key fingerprint to customer.
#[derive(Debug, Clone, Default)]
pub struct KeyIndex {
    inner: Arc<RwLock<Index>>,
}

impl KeyIndex {
    /// Builds the index from the store and keeps it current until `stop` is cancelled.
    ///
    /// # Errors
    /// When the Customers cannot be listed.
    pub async fn start<S: Store>(store: S, stop: CancellationToken) -> Result<Self, StoreError> {
        // Subscribe before the first listing so no change falls between the two.
        let mut changes = store.changes();
        let index = Self::default();
        index.rebuild(&store).await?;
        let updating = index.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    () = stop.cancelled() => return,
                    change = changes.recv() => change,
                };
                let result = match change {
                    Ok(change) if change.plural == "customers" && change.name.is_empty() => {
                        updating.rebuild(&store).await
                    }
                    Ok(change) if change.plural == "customers" => {
                        updating.refresh(&store, &change.name).await
                    }
                    Ok(_) => Ok(()),
                    Err(RecvError::Lagged(_)) => updating.rebuild(&store).await,
                    Err(RecvError::Closed) => return,
                };
                if let Err(error) = result {
                    tracing::error!(error = %error, "cannot update the ssh key index");
                }
            }
        });
        Ok(index)
    }

    async fn rebuild<S: Store>(&self, store: &S) -> Result<(), StoreError> {
        let customers = store.list::<Customer>().await?;
        let mut fresh = Index::default();
        for customer in &customers {
            fresh.insert_customer(customer);
        }
        tracing::info!(
            customers = customers.len(),
            keys = fresh.by_fingerprint.len(),
            "ssh key index built"
        );
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    async fn refresh<S: Store>(&self, store: &S, name: &str) -> Result<(), StoreError> {
        let customer = store.get::<Customer>(name).await?;
        let mut index = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match customer {
            Some(customer) => index.insert_customer(&customer),
            None => index.remove_customer(name),
        }
        tracing::debug!(customer = name, "ssh key index updated");
        Ok(())
    }

    /// The owner of the key with this `SHA256:` fingerprint.
    pub fn owner(&self, fingerprint: &str) -> Owner {
        let index = self.inner.read().unwrap_or_else(|p| p.into_inner());
        match index.by_fingerprint.get(fingerprint).map(Vec::as_slice) {
            Some([one]) => Owner::Customer(one.clone()),
            Some([]) | None => Owner::Unknown,
            Some(_) => Owner::Ambiguous,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_api::CustomerSpec;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbfO2R8HNnKRTcsKxq2EnNjxUIU6+xPO5NZTxPa0Cb6 a";

    fn customer(name: &str, keys: &[&str]) -> Customer {
        Customer::new(
            name,
            CustomerSpec {
                email: format!("{name}@example.com"),
                display_name: None,
                ssh_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            },
        )
    }

    fn fp(line: &str) -> String {
        fingerprint(&parse_public_key(line, 1).expect("valid"))
    }

    #[test]
    fn a_key_claimed_twice_belongs_to_nobody() {
        let mut index = Index::default();
        index.insert_customer(&customer("alice", &[KEY_A]));
        let keys = KeyIndex {
            inner: Arc::new(RwLock::new(index)),
        };
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Customer("alice".into()));
        keys.inner
            .write()
            .expect("lock")
            .insert_customer(&customer("mallory", &[KEY_A]));
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Ambiguous);
        keys.inner.write().expect("lock").remove_customer("mallory");
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Customer("alice".into()));
        keys.inner.write().expect("lock").remove_customer("alice");
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Unknown);
    }

    #[test]
    fn replacing_a_customer_drops_its_old_keys() {
        let mut index = Index::default();
        index.insert_customer(&customer("alice", &[KEY_A]));
        index.insert_customer(&customer("alice", &[]));
        assert!(index.by_fingerprint.is_empty());
    }
}
