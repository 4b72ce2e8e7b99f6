//! Whether the push that staged a Release is still running, on one host: pre-receive holds a
//! lock on `DATA/pushes/<release>` from before it records the staged Release until it exits,
//! so the operator can tell a push that is waiting for its verdict from one that died (its
//! client left and git was killed, or the server stopped) and fail the latter at once instead
//! of keeping its container for the staging limit.
//!
//! The kernel drops the lock when the process ends, however it ends. On a cluster the operator
//! runs elsewhere and judges by time instead.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

fn path(data: &Path, release: &str) -> PathBuf {
    data.join("pushes").join(release)
}

/// Held by the running push; dropping it removes the marker and releases the lock.
#[derive(Debug)]
pub struct Pushing {
    path: PathBuf,
    _file: File,
}

impl Pushing {
    /// Marks `release` as being pushed, for as long as the returned value lives.
    ///
    /// # Errors
    /// When the marker cannot be made or locked (another process holds it: a push of the same
    /// release is running, which the git server's push lock rules out).
    pub fn hold(data: &Path, release: &str) -> std::io::Result<Self> {
        let path = path(data, release);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::Error(error) => error,
            std::fs::TryLockError::WouldBlock => std::io::Error::new(
                ErrorKind::WouldBlock,
                format!("{} is held by another push", path.display()),
            ),
        })?;
        Ok(Self { path, _file: file })
    }
}

impl Drop for Pushing {
    fn drop(&mut self) {
        // Removed while still locked: whoever opens it afterwards gets a fresh file or none.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a push of `release` is running (its pre-receive holds the marker). `false` when the
/// marker is missing or nobody holds it; an unreadable directory counts as running, so a
/// problem of the operator's own never fails somebody's push.
pub fn running(data: &Path, release: &str) -> bool {
    let file = match File::open(path(data, release)) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    match file.try_lock_shared() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_is_running_while_its_marker_is_held() {
        let data = tempfile::tempdir().expect("tempdir");
        assert!(!running(data.path(), "blog-1"), "never staged");
        let held = Pushing::hold(data.path(), "blog-1").expect("hold");
        assert!(running(data.path(), "blog-1"));
        assert!(!running(data.path(), "blog-2"), "another release");
        assert!(
            Pushing::hold(data.path(), "blog-1").is_err(),
            "one push per release"
        );
        drop(held);
        assert!(!running(data.path(), "blog-1"), "the push ended");
        assert!(
            !data.path().join("pushes/blog-1").exists(),
            "no marker left"
        );
    }

    #[test]
    fn a_killed_push_is_not_running() {
        // A child process takes the lock, then dies without cleaning up: the marker stays
        // behind, unlocked.
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(data.path().join("pushes")).expect("dir");
        std::fs::write(data.path().join("pushes/blog-1"), b"").expect("marker");
        let status = std::process::Command::new("flock")
            .arg(data.path().join("pushes/blog-1"))
            .args(["-c", "kill -9 $$"])
            .status()
            .expect("flock");
        assert!(!status.success(), "killed");
        assert!(!running(data.path(), "blog-1"));
    }
}
