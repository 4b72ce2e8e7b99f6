//! Who may change what runs for a webspace, across processes on one host: a push (the git
//! server) and an administrator's `slipway rollback|restart|config:set|config:unset` both hold
//! an exclusive lock on `DATA/locks/<webspace>` while they do, so the two never interleave their
//! releases. (The git server also orders its own pushes in memory; this lock is what another
//! process sees.) The kernel drops the lock when its holder ends, however it ends.

use std::fs::File;
use std::path::Path;

/// Held while a webspace's running release may change; dropping it releases the lock.
#[derive(Debug)]
pub struct Changing {
    _file: File,
}

/// Takes the lock of `webspace`'s changes at once: `Ok(None)` when another process holds it.
///
/// # Errors
/// When the lock file cannot be made or opened.
pub fn try_hold(data: &Path, webspace: &str) -> std::io::Result<Option<Changing>> {
    let dir = data.join("locks");
    std::fs::create_dir_all(&dir)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(webspace))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Changing { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(error)) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_webspace_until_it_lets_go() {
        let data = tempfile::tempdir().expect("tempdir");
        let blog = try_hold(data.path(), "blog").expect("lock").expect("free");
        // A second open file, as another process would have: refused while the first holds it.
        assert!(try_hold(data.path(), "blog").expect("lock").is_none());
        assert!(try_hold(data.path(), "shop").expect("lock").is_some());
        drop(blog);
        assert!(try_hold(data.path(), "blog").expect("lock").is_some());
    }
}
