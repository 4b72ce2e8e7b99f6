//! What a push that did not finish leaves in its repository: git's quarantine.
//!
//! git receives a push's objects into a directory of their own in `objects/`
//! (`tmp_objdir-incoming-XXXXXX`; `incoming-XXXXXX` in older versions of git) and moves them
//! into the repository only once pre-receive accepted the push. git removes that directory
//! itself however the push ends, except when it is killed with SIGKILL: the way the server
//! ends a push whose client went away or that outlived the shutdown grace, and the way a
//! crashed server's pushes end.
//!
//! # Guarantees
//! - After a push ends, however it ended, no quarantine directory is left in its repository:
//!   the server removes them while it still holds the webspace's push lock.
//! - A starting server removes the quarantine directories of every repository, each while
//!   holding that webspace's push lock (or leaves them to the push that holds it).
//! - Only directories directly in `objects/` and named as git names its quarantine are
//!   removed; symbolic links are neither followed nor removed.
//!
//! Why a quarantine found under the push lock belongs to no running push: every push to a
//! repository goes through this server, which runs one push per webspace at a time
//! ([`crate::lock`]), and one server serves a data directory (`slipway up` holds
//! `DATA/up.lock`; the cluster's git server is a single replica).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lock::PushLocks;
use crate::repository::{self, Repository};

/// How git names a push's quarantine directory in `objects/`: today's name, then the one
/// older versions of git used.
const PREFIXES: &[&str] = &["tmp_objdir-incoming-", "incoming-"];

/// Tries at removing one directory. Right after SIGKILL a process of the killed push may
/// still finish a system call that creates a file in it, and the first try then finds the
/// directory not empty.
const ATTEMPTS: u32 = 3;

/// Pause between two tries: ample for a killed process to be gone.
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// A quarantine directory could not be listed or removed.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// `objects/` could not be opened or listed, or a directory in it not removed.
    #[error("cannot {operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The path involved (in the repository as the server names it).
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The repository could not be opened for the sweep at start.
    #[error(transparent)]
    Repository(#[from] repository::RepositoryError),
    /// The blocking task doing the removal did not finish.
    #[error("the removal of quarantined objects did not finish")]
    Task(#[source] tokio::task::JoinError),
}

/// Whether `name` (an entry of `objects/`) is how git names a push's quarantine.
pub fn is_quarantine(name: &str) -> bool {
    PREFIXES
        .iter()
        .any(|prefix| name.len() > prefix.len() && name.starts_with(prefix))
}

/// Removes the quarantine directories of `repository`; returns their names.
///
/// The caller holds the webspace's push lock (see the module's reasons): any quarantine
/// there then belongs to a push that is over.
///
/// # Errors
/// When `objects/` cannot be listed or a quarantine directory cannot be removed; the ones
/// before it are removed.
pub async fn remove(repository: &Repository) -> Result<Vec<String>, QuarantineError> {
    let mut removed = vec![];
    for attempt in 1..=ATTEMPTS {
        // On a blocking thread, with a descriptor of its own: it stays the opened repository
        // even if this future were dropped meanwhile.
        let directory = repository
            .try_clone()
            .map_err(io("duplicate the descriptor of", repository.path()))?;
        let pass = tokio::task::spawn_blocking(move || remove_now(&directory))
            .await
            .map_err(QuarantineError::Task)?;
        match pass {
            Ok(names) => {
                removed.extend(names);
                break;
            }
            Err((names, error)) => {
                removed.extend(names);
                if attempt == ATTEMPTS {
                    return Err(error);
                }
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
    Ok(removed)
}

/// One pass of [`remove`]: the names removed, and on an error also those removed before it.
fn remove_now(repository: &Repository) -> Result<Vec<String>, (Vec<String>, QuarantineError)> {
    let shown = repository.path().join("objects");
    let objects = repository.working_directory().join("objects");
    let mut removed = vec![];
    let entries = match fs::read_dir(&objects) {
        Ok(entries) => entries,
        // A repository without objects has no quarantine either.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(error) => return Err((removed, io("list", &shown)(error))),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => return Err((removed, io("list", &shown)(error))),
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        // `file_type` does not follow a link: a link named like a quarantine is left alone.
        if !is_quarantine(&name) || !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        match fs::remove_dir_all(objects.join(&name)) {
            Ok(()) => removed.push(name),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err((removed, io("remove", &shown.join(&name))(error))),
        }
    }
    Ok(removed)
}

/// Removes the quarantine left in every repository under `DATA/repos` (by pushes a stopped
/// or crashed server did not finish), each while holding its webspace's push lock; skips a
/// repository whose push lock is taken, since that push's own removal covers it. Logs what it
/// removed and what it could not.
pub async fn sweep(data: PathBuf, locks: PushLocks) {
    let repos = data.join("repos");
    let mut entries = match tokio::fs::read_dir(&repos).await {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
        Err(error) => {
            tracing::warn!(path = %repos.display(), %error, "cannot list the repositories to remove stale quarantine");
            return;
        }
    };
    loop {
        let entry = match entries.next_entry().await {
            Ok(Some(entry)) => entry,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(path = %repos.display(), %error, "cannot list the repositories to remove stale quarantine");
                return;
            }
        };
        let file = entry.file_name().to_string_lossy().into_owned();
        // `.init-*` are repositories being created; retired ones live elsewhere.
        let Some(webspace) = file.strip_suffix(".git") else {
            continue;
        };
        if webspace.is_empty() || file.starts_with('.') {
            continue;
        }
        // A repository a push holds now is left to it: when it ends, that push removes every
        // quarantine there.
        let Some(_guard) = locks.try_acquire(webspace) else {
            continue;
        };
        let swept = match repository::open_existing(&data, webspace) {
            Ok(Some(repository)) => remove(&repository).await,
            Ok(None) => continue,
            Err(error) => Err(error.into()),
        };
        match swept {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => tracing::info!(
                webspace,
                ?removed,
                "removed the quarantined objects of pushes that did not finish"
            ),
            Err(error) => tracing::warn!(
                webspace,
                error = %chain(&error),
                "cannot remove the quarantined objects of pushes that did not finish"
            ),
        }
    }
}

pub use slipway_api::error_chain as chain;

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> QuarantineError {
    let path = path.display().to_string();
    move |source| QuarantineError::Io {
        operation,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_only() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        std::env::vars_os().filter(|(k, _)| k == "PATH").collect()
    }

    #[test]
    fn names_git_gives_its_quarantine() {
        assert!(is_quarantine("tmp_objdir-incoming-Xq3v9A"));
        assert!(is_quarantine("incoming-7Hd2kP"));
        for other in [
            "pack",
            "info",
            "ab",
            "incoming-",
            "tmp_objdir-bulk-fsync-a1",
            "x-incoming-1",
        ] {
            assert!(!is_quarantine(other), "{other}");
        }
    }

    #[tokio::test]
    async fn removes_quarantine_only() {
        let data = tempfile::tempdir().expect("tempdir");
        let repository = repository::open_or_create(data.path(), "blog", &path_only())
            .await
            .expect("created");
        let objects = repository.path().join("objects");
        for planted in [
            "tmp_objdir-incoming-Xq3v9A/pack/tmp_pack_k2L0aa",
            "tmp_objdir-incoming-Xq3v9A/ab/cdef",
            "incoming-7Hd2kP/12/3456",
            "ab/cdef",
        ] {
            let path = objects.join(planted);
            fs::create_dir_all(path.parent().expect("parent")).expect("plant");
            fs::write(path, "x").expect("plant");
        }
        // A link named like a quarantine, to a directory that must survive.
        let elsewhere = data.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("elsewhere");
        fs::write(elsewhere.join("keep"), "x").expect("keep");
        std::os::unix::fs::symlink(&elsewhere, objects.join("tmp_objdir-incoming-link01"))
            .expect("link");

        let mut removed = remove(&repository).await.expect("removed");
        removed.sort();
        assert_eq!(removed, ["incoming-7Hd2kP", "tmp_objdir-incoming-Xq3v9A"]);
        assert!(objects.join("ab/cdef").is_file(), "objects kept");
        assert!(objects.join("pack").is_dir() && objects.join("info").is_dir());
        assert!(elsewhere.join("keep").is_file(), "a link is not followed");
        assert!(remove(&repository).await.expect("again").is_empty());
    }

    #[tokio::test]
    async fn the_sweep_at_start_covers_every_repository() {
        let data = tempfile::tempdir().expect("tempdir");
        let mut stale = vec![];
        for webspace in ["blog", "shop"] {
            let repository = repository::open_or_create(data.path(), webspace, &path_only())
                .await
                .expect("created");
            let dir = repository.path().join("objects/tmp_objdir-incoming-a1b2c3");
            fs::create_dir_all(dir.join("pack")).expect("plant");
            stale.push(dir);
        }
        fs::create_dir_all(
            data.path()
                .join("repos/.init-new-x1y2z3/objects/incoming-a1b2c3"),
        )
        .expect("a repository being created");
        sweep(data.path().to_owned(), PushLocks::default()).await;
        for dir in stale {
            assert!(!dir.exists(), "{}", dir.display());
        }
        assert!(
            data.path()
                .join("repos/.init-new-x1y2z3/objects/incoming-a1b2c3")
                .exists(),
            "left to whoever creates it"
        );
    }
}
