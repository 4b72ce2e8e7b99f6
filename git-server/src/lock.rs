//! Push serialization: one push per webspace at a time, any number of webspaces at once.
//!
//! A push that lost the race waits for the one before it instead of building from a stale
//! base, so the order of releases is the order in which pushes got the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The push locks of all webspaces.
#[derive(Debug, Clone, Default)]
pub struct PushLocks {
    locks: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

/// Held for the whole duration of a push.
pub type PushGuard = OwnedMutexGuard<()>;

impl PushLocks {
    fn lock_of(&self, webspace: &str) -> Arc<AsyncMutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(webspace.to_owned()).or_default().clone()
    }

    /// Takes the lock at once, or returns `None` when another push holds it.
    pub fn try_acquire(&self, webspace: &str) -> Option<PushGuard> {
        self.lock_of(webspace).try_lock_owned().ok()
    }

    /// Waits for the lock.
    pub async fn acquire(&self, webspace: &str) -> PushGuard {
        self.lock_of(webspace).lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_push_per_webspace() {
        let locks = PushLocks::default();
        let blog = locks.try_acquire("blog").expect("free");
        assert!(locks.try_acquire("blog").is_none(), "held");
        assert!(
            locks.try_acquire("shop").is_some(),
            "other webspaces are free"
        );
        drop(blog);
        assert!(locks.try_acquire("blog").is_some(), "released");
    }
}
