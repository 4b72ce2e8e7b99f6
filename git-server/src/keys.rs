//! The fingerprint index: which customer a verified key belongs to.
//!
//! Built from the Customers in the store and kept current from the store's change feed, so a
//! key added or removed with `slipway apply` counts on the next connection without a restart.
//! A login is one hash-map lookup, however many customers there are; a key the index does not
//! know makes it list the Customers again first (at most once a second), in case the change
//! feed is behind.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use slipway_api::Customer;
use slipway_api::keys::{Claim, listed_keys};
use slipway_store::{Store, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Least time between two listings caused by unknown keys. A key nobody lists is the common
/// case (an SSH agent offers every key it holds; scanners offer theirs), so misses must not
/// turn into one API call each; a customer created within the last second may be refused once.
pub const MISS_RELIST_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a login waits for that listing: during an API outage it fails fast, and the key is
/// answered from the index as it is.
pub const MISS_RELIST_TIMEOUT: Duration = Duration::from_secs(3);

/// Who a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The customer that holds the key: the only one that lists it, or the earliest of those
    /// that do ([`Claim`]'s order). Listing someone else's key in one's own Customer never
    /// takes it from its owner; it is refused where Customers are written (`slipway apply`)
    /// and ignored here, with a warning, where it got in anyway (`kubectl apply`, a
    /// hand-edited file).
    Customer(String),
    /// No customer lists it.
    Unknown,
}

#[derive(Debug, Default)]
struct Index {
    /// Claims of each key, earliest first.
    by_fingerprint: HashMap<String, Vec<Claim>>,
    by_customer: HashMap<String, Vec<String>>,
    /// Counts every update, so a listing can tell whether the change feed wrote in between.
    generation: u64,
}

impl Index {
    fn remove_customer(&mut self, customer: &str) {
        for fp in self.by_customer.remove(customer).unwrap_or_default() {
            if let Some(claims) = self.by_fingerprint.get_mut(&fp) {
                claims.retain(|c| c.customer() != customer);
                if claims.is_empty() {
                    self.by_fingerprint.remove(&fp);
                }
            }
        }
    }

    fn insert_customer(&mut self, customer: &Customer) {
        let Some(claim) = Claim::of(customer) else {
            return;
        };
        let name = claim.customer().to_owned();
        self.remove_customer(&name);
        let mut fingerprints = Vec::new();
        for (_, listed) in listed_keys(customer) {
            match listed {
                Ok(fingerprint) => fingerprints.push(fingerprint),
                Err(error) => tracing::warn!(customer = %name, %error, "ignoring ssh key"),
            }
        }
        fingerprints.sort();
        fingerprints.dedup();
        for fp in &fingerprints {
            let claims = self.by_fingerprint.entry(fp.clone()).or_default();
            claims.push(claim.clone());
            claims.sort();
            if let [holder, later @ ..] = claims.as_slice()
                && !later.is_empty()
            {
                tracing::warn!(
                    fingerprint = %fp,
                    holder = %holder.customer(),
                    ignored = ?later.iter().map(Claim::customer).collect::<Vec<_>>(),
                    "ssh key listed by several customers; it identifies the earliest only"
                );
            }
        }
        self.by_customer.insert(name, fingerprints);
    }
}

type Listing = Pin<Box<dyn Future<Output = Result<Vec<Customer>, StoreError>> + Send>>;

/// Lists the Customers again when a key is not in the index.
struct Relist {
    list: Box<dyn Fn() -> Listing + Send + Sync>,
    /// When the last listing ended. Held while listing, so concurrent misses share one.
    finished: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Relist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relist").finish_non_exhaustive()
    }
}

/// Shared, always-current map from key fingerprint to customer.
#[derive(Debug, Clone, Default)]
pub struct KeyIndex {
    inner: Arc<RwLock<Index>>,
    relist: Option<Arc<Relist>>,
}

impl KeyIndex {
    /// Builds the index from the store and keeps it current until `stop` is cancelled.
    ///
    /// # Errors
    /// When the Customers cannot be listed.
    pub async fn start<S: Store>(store: S, stop: CancellationToken) -> Result<Self, StoreError> {
        // Subscribe before the first listing so no change falls between the two.
        let mut changes = store.changes();
        let listing = store.clone();
        let index = Self {
            inner: Arc::default(),
            relist: Some(Arc::new(Relist {
                list: Box::new(move || {
                    let store = listing.clone();
                    Box::pin(async move { store.list::<Customer>().await })
                }),
                finished: tokio::sync::Mutex::default(),
            })),
        };
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
        self.replace(&customers, None);
        Ok(())
    }

    /// Replaces the index with one built from `customers`; with `if_generation`, only if
    /// nothing updated the index since it was at that generation (else returns `false`).
    fn replace(&self, customers: &[Customer], if_generation: Option<u64>) -> bool {
        let mut fresh = Index::default();
        for customer in customers {
            fresh.insert_customer(customer);
        }
        let keys = fresh.by_fingerprint.len();
        let mut index = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if if_generation.is_some_and(|generation| generation != index.generation) {
            return false;
        }
        fresh.generation = index.generation + 1;
        *index = fresh;
        drop(index);
        tracing::info!(customers = customers.len(), keys, "ssh key index built");
        true
    }

    async fn refresh<S: Store>(&self, store: &S, name: &str) -> Result<(), StoreError> {
        let customer = store.get::<Customer>(name).await?;
        let mut index = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match customer {
            Some(customer) => index.insert_customer(&customer),
            None => index.remove_customer(name),
        }
        index.generation += 1;
        tracing::debug!(customer = name, "ssh key index updated");
        Ok(())
    }

    /// The owner of the key with this `SHA256:` fingerprint, after listing the Customers again
    /// if the index does not know the key: the change feed may be behind (its watch was down
    /// when the Customer was created).
    ///
    /// # Guarantees
    /// One listing at a time, shared by every caller, and none within [`MISS_RELIST_INTERVAL`]
    /// of the end of the last: a miss during a listing waits for it and then reads the index,
    /// as does a miss within that interval. So no call waits much longer than
    /// [`MISS_RELIST_TIMEOUT`], even while the API server is down. A listing that raced with
    /// an update from the change feed is dropped rather than allowed to undo it (a key removed
    /// meanwhile stays removed).
    pub async fn lookup(&self, fingerprint: &str) -> Owner {
        let owner = self.owner(fingerprint);
        if owner != Owner::Unknown {
            return owner;
        }
        let Some(relist) = &self.relist else {
            return owner;
        };
        let mut finished = relist.finished.lock().await;
        if finished.is_some_and(|at| at.elapsed() < MISS_RELIST_INTERVAL) {
            drop(finished);
            return self.owner(fingerprint);
        }
        let generation = self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .generation;
        match tokio::time::timeout(MISS_RELIST_TIMEOUT, (relist.list)()).await {
            Ok(Ok(customers)) => {
                if !self.replace(&customers, Some(generation)) {
                    tracing::debug!("ssh key index changed while listing; keeping it");
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot list the customers for an unknown key");
            }
            Err(_) => tracing::warn!(
                timeout = ?MISS_RELIST_TIMEOUT,
                "listing the customers for an unknown key timed out"
            ),
        }
        *finished = Some(Instant::now());
        drop(finished);
        self.owner(fingerprint)
    }

    /// The owner of the key with this `SHA256:` fingerprint, as the index knows it now.
    pub fn owner(&self, fingerprint: &str) -> Owner {
        let index = self.inner.read().unwrap_or_else(|p| p.into_inner());
        match index
            .by_fingerprint
            .get(fingerprint)
            .and_then(|c| c.first())
        {
            Some(claim) => Owner::Customer(claim.customer().to_owned()),
            None => Owner::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use slipway_api::CustomerSpec;
    use slipway_api::keys::{fingerprint, parse_public_key};
    use slipway_store::Kind;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbfO2R8HNnKRTcsKxq2EnNjxUIU6+xPO5NZTxPa0Cb6 a";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbw7FysavQjQK45aXPIoWcokMUPd7XpO7cX9Clj01bj b";

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

    fn created(mut customer: Customer, at: &str) -> Customer {
        customer.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at.parse().expect("a time")),
        );
        customer
    }

    #[test]
    fn a_key_claimed_again_stays_with_its_earlier_owner() {
        let mut index = Index::default();
        index.insert_customer(&created(
            customer("alice", &[KEY_A]),
            "2026-01-02T00:00:00Z",
        ));
        let keys = KeyIndex {
            inner: Arc::new(RwLock::new(index)),
            relist: None,
        };
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Customer("alice".into()));
        // aaron's name sorts first, but his Customer is newer: alice keeps the key.
        keys.inner.write().expect("lock").insert_customer(&created(
            customer("aaron", &[KEY_A]),
            "2026-01-03T00:00:00Z",
        ));
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Customer("alice".into()));
        // No creation time (a hand-written file) counts as the newest.
        keys.inner
            .write()
            .expect("lock")
            .insert_customer(&customer("aardvark", &[KEY_A]));
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Customer("alice".into()));
        keys.inner.write().expect("lock").remove_customer("alice");
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Customer("aaron".into()));
        keys.inner.write().expect("lock").remove_customer("aaron");
        keys.inner
            .write()
            .expect("lock")
            .remove_customer("aardvark");
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Unknown);
    }

    #[test]
    fn equal_creation_times_fall_back_to_the_name() {
        let mut index = Index::default();
        let at = "2026-01-02T00:00:00Z";
        index.insert_customer(&created(customer("bob", &[KEY_A]), at));
        index.insert_customer(&created(customer("alice", &[KEY_A]), at));
        let keys = KeyIndex {
            inner: Arc::new(RwLock::new(index)),
            relist: None,
        };
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Customer("alice".into()));
    }

    #[test]
    fn replacing_a_customer_drops_its_old_keys() {
        let mut index = Index::default();
        index.insert_customer(&customer("alice", &[KEY_A]));
        index.insert_customer(&customer("alice", &[]));
        assert!(index.by_fingerprint.is_empty());
    }

    /// A data directory whose change feed says nothing, as when the store's watch is down:
    /// only listing again finds what changed. Counts listings, and can hang them.
    #[derive(Clone)]
    struct Quiet {
        inner: slipway_store::DirectoryStore,
        silent: tokio::sync::broadcast::Sender<slipway_store::Change>,
        listings: Arc<AtomicUsize>,
        hang: Arc<AtomicBool>,
    }

    impl Quiet {
        fn new(dir: &std::path::Path) -> Self {
            Self {
                inner: slipway_store::DirectoryStore::open(dir).expect("a store"),
                silent: tokio::sync::broadcast::channel(1).0,
                listings: Arc::default(),
                hang: Arc::default(),
            }
        }

        fn listings(&self) -> usize {
            self.listings.load(Ordering::SeqCst)
        }
    }

    impl Store for Quiet {
        async fn get<K: Kind>(&self, name: &str) -> Result<Option<K>, StoreError> {
            self.inner.get(name).await
        }

        async fn list<K: Kind>(&self) -> Result<Vec<K>, StoreError> {
            self.listings.fetch_add(1, Ordering::SeqCst);
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.inner.list().await
        }

        async fn put<K: Kind>(&self, resource: &K) -> Result<bool, StoreError> {
            self.inner.put(resource).await
        }

        async fn delete<K: Kind>(&self, name: &str) -> Result<bool, StoreError> {
            self.inner.delete::<K>(name).await
        }

        fn changes(&self) -> tokio::sync::broadcast::Receiver<slipway_store::Change> {
            self.silent.subscribe()
        }
    }

    async fn started() -> (tempfile::TempDir, Quiet, KeyIndex) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Quiet::new(dir.path());
        let keys = KeyIndex::start(store.clone(), CancellationToken::new())
            .await
            .expect("started");
        (dir, store, keys)
    }

    #[tokio::test(start_paused = true)]
    async fn a_customer_the_change_feed_missed_is_found_by_listing_again() {
        let (_dir, store, keys) = started().await;
        store.put(&customer("bob", &[KEY_A])).await.expect("put");
        // Nothing told the index.
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Unknown);
        assert_eq!(keys.lookup(&fp(KEY_A)).await, Owner::Customer("bob".into()));
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Customer("bob".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_keys_share_one_listing_per_second() {
        let (_dir, store, keys) = started().await;
        let before = store.listings();
        assert_eq!(keys.lookup(&fp(KEY_B)).await, Owner::Unknown);
        assert_eq!(store.listings(), before + 1);

        // Within the interval: answered from the index, however many ask.
        store.put(&customer("carol", &[KEY_B])).await.expect("put");
        assert_eq!(keys.lookup(&fp(KEY_B)).await, Owner::Unknown);
        assert_eq!(store.listings(), before + 1);

        // After it: many logins at once cost one listing, and all find carol.
        tokio::time::advance(MISS_RELIST_INTERVAL).await;
        let lookups: Vec<_> = (0..8)
            .map(|_| {
                let keys = keys.clone();
                tokio::spawn(async move { keys.lookup(&fp(KEY_B)).await })
            })
            .collect();
        for lookup in lookups {
            assert_eq!(
                lookup.await.expect("joined"),
                Owner::Customer("carol".into())
            );
        }
        assert_eq!(store.listings(), before + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_store_does_not_hold_up_logins() {
        let (_dir, store, keys) = started().await;
        store.hang.store(true, Ordering::SeqCst);
        let begun = Instant::now();
        let lookups: Vec<_> = (0..4)
            .map(|_| {
                let keys = keys.clone();
                tokio::spawn(async move { keys.lookup(&fp(KEY_A)).await })
            })
            .collect();
        for lookup in lookups {
            assert_eq!(lookup.await.expect("joined"), Owner::Unknown);
        }
        assert!(begun.elapsed() <= MISS_RELIST_TIMEOUT + Duration::from_millis(100));
        assert_eq!(store.listings(), 2, "the start and one shared listing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_never_undoes_a_change_that_arrived_during_it() {
        let index = Index::default();
        let keys = KeyIndex {
            inner: Arc::new(RwLock::new(index)),
            relist: None,
        };
        let generation = keys.inner.read().expect("lock").generation;
        keys.replace(&[customer("alice", &[KEY_A])], None);
        assert!(!keys.replace(&[], Some(generation)));
        assert_eq!(keys.owner(&fp(KEY_A)), Owner::Customer("alice".into()));
    }
}
