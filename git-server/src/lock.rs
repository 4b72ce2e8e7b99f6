//! Push serialization: one push per webspace at a time, any number of webspaces at once.
//!
//! A push that lost the race waits for the one before it instead of building from a stale
//! base, so the order of releases is the order in which pushes got the lock. With a data
//! directory the lock is also held on `DATA/locks/<webspace>` ([`slipway_store::changes`]), so an
//! administrator's `slipway rollback` (another process) waits for the push, and the push for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The push locks of all webspaces.
#[derive(Debug, Clone, Default)]
pub struct PushLocks {
    locks: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
    /// The data directory whose `locks/` other processes see.
    data: Option<PathBuf>,
}

/// Held for the whole duration of a push.
#[derive(Debug)]
pub struct PushGuard {
    _in_process: OwnedMutexGuard<()>,
    _across_processes: Option<slipway_store::changes::Changing>,
}

/// How often a push waiting for another process's hold of the lock looks again.
const FILE_POLL: Duration = Duration::from_millis(50);

impl PushLocks {
    /// Locks that other processes on this host see too, under `data`.
    pub fn across_processes(data: PathBuf) -> Self {
        Self {
            data: Some(data),
            ..Self::default()
        }
    }

    fn lock_of(&self, webspace: &str) -> Arc<AsyncMutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(webspace.to_owned()).or_default().clone()
    }

    /// The file lock: `Err(())` when another process holds it. A lock file that cannot be made
    /// counts as free (logged): a problem of the server's own never blocks a push.
    fn try_file(&self, webspace: &str) -> Result<Option<slipway_store::changes::Changing>, ()> {
        let Some(data) = &self.data else {
            return Ok(None);
        };
        match slipway_store::changes::try_hold(data, webspace) {
            Ok(Some(held)) => Ok(Some(held)),
            Ok(None) => Err(()),
            Err(error) => {
                tracing::warn!(%error, webspace, "cannot take the webspace's lock file; going on without it");
                Ok(None)
            }
        }
    }

    /// Takes the lock at once, or returns `None` when another push (or process) holds it.
    pub fn try_acquire(&self, webspace: &str) -> Option<PushGuard> {
        let in_process = self.lock_of(webspace).try_lock_owned().ok()?;
        let across = self.try_file(webspace).ok()?;
        Some(PushGuard {
            _in_process: in_process,
            _across_processes: across,
        })
    }

    /// Waits for the lock.
    pub async fn acquire(&self, webspace: &str) -> PushGuard {
        let in_process = self.lock_of(webspace).lock_owned().await;
        loop {
            if let Ok(across) = self.try_file(webspace) {
                return PushGuard {
                    _in_process: in_process,
                    _across_processes: across,
                };
            }
            tokio::time::sleep(FILE_POLL).await;
        }
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

    #[tokio::test]
    async fn another_process_holding_the_file_lock_makes_a_push_wait() {
        let data = tempfile::tempdir().expect("tempdir");
        let locks = PushLocks::across_processes(data.path().to_owned());
        // An administrator's command (another process: another open file) holds blog.
        let admin = slipway_store::changes::try_hold(data.path(), "blog")
            .expect("lock")
            .expect("free");
        assert!(
            locks.try_acquire("blog").is_none(),
            "the push sees the hold"
        );
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move { locks.acquire("blog").await }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiting.is_finished(), "the push waits for the command");
        drop(admin);
        let guard = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the push goes on once the command ends")
            .expect("task");
        // And now the command would wait for the push.
        assert!(
            slipway_store::changes::try_hold(data.path(), "blog")
                .expect("lock")
                .is_none()
        );
        drop(guard);
    }
}
