//! A global cap on concurrent builds across hook processes: one lock file per slot, held with
//! `flock` for the duration of a build and released by the kernel if the hook dies.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// A held build slot; released on drop.
#[derive(Debug)]
pub struct Slot {
    _lock: Flock<File>,
}

/// Tries every slot once.
fn try_take(dir: &Path, slots: usize) -> std::io::Result<Option<Slot>> {
    std::fs::create_dir_all(dir)?;
    for index in 0..slots.max(1) {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("build-{index}.lock")))?;
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            return Ok(Some(Slot { _lock: lock }));
        }
    }
    Ok(None)
}

/// Takes a free slot, calling `waiting` once if all are taken, then polling every 250 ms.
///
/// # Errors
/// When the lock files cannot be created.
pub async fn take(dir: &Path, slots: usize, waiting: impl FnOnce()) -> std::io::Result<Slot> {
    if let Some(slot) = try_take(dir, slots)? {
        return Ok(slot);
    }
    waiting();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(slot) = try_take(dir, slots)? {
            return Ok(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_exclusive_until_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = try_take(dir.path(), 1).expect("io").expect("free");
        assert!(try_take(dir.path(), 1).expect("io").is_none());
        drop(first);
        assert!(try_take(dir.path(), 1).expect("io").is_some());
    }
}
