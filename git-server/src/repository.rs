//! Bare repositories under `DATA/repos/<webspace>.git`: created on first use, configured to
//! refuse hostile objects and to survive crashes, with hooks that run `slipway hook`.
//!
//! # Guarantees
//! A repository is only ever used as a real directory directly inside `DATA/repos`: a
//! symbolic link there (say `a.git -> b.git`, another webspace's repository) is refused, not
//! followed, for push and fetch alike. The check cannot be raced: the directory is opened
//! once, with `O_NOFOLLOW | O_DIRECTORY` relative to an open `DATA/repos`, and everything
//! after that (writing the hooks, running git) goes through that open descriptor, never
//! through the name again. Swapping the name for a link after the check changes nothing: the
//! kernel resolves `/proc/self/fd/N` to the directory that was opened, whatever its name
//! now points to.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

/// Largest pack a push may send. A push bigger than this is refused by git itself before it is
/// stored; 1 GiB is far above any web app's source and far below the disk of a small host.
pub const MAX_PACK_BYTES: u64 = 1 << 30;

/// The hooks every repository gets. They run `slipway hook <name>` with the SLIPWAY_*
/// environment the git server set, and refuse to run without it (a push that bypassed the
/// server, e.g. a local `git push` into the data directory, is not built).
const HOOKS: &[(&str, &str)] = &[
    ("pre-receive", "pre-receive"),
    ("post-receive", "post-receive"),
];

/// git configuration written into every repository, on top of `git init --bare`.
///
/// - `receive.fsckObjects` checks every pushed object; the `.git` and `..` path checks are
///   warnings by default and become errors, so a tree that would write into
///   `.git` on checkout (CVE-2014-9390 and relatives) never enters a repository.
/// - `core.fsync=committed` fsyncs objects and refs, so a crash never leaves a ref pointing at
///   a missing object.
/// - `receive.maxInputSize` caps the pack size.
/// - Force pushes and deletions are allowed, as on Heroku; the pre-receive hook decides.
fn config_block() -> String {
    format!(
        "[receive]\n\
         \tfsckObjects = true\n\
         \tmaxInputSize = {MAX_PACK_BYTES}\n\
         \tadvertisePushOptions = false\n\
         \tdenyDeleteCurrent = false\n\
         [receive \"fsck\"]\n\
         \thasDotgit = error\n\
         \thasDotdot = error\n\
         \tfullPathname = error\n\
         \tnulInHeader = error\n\
         [fetch]\n\
         \tfsckObjects = true\n\
         [fsck]\n\
         \thasDotgit = error\n\
         \thasDotdot = error\n\
         [core]\n\
         \tfsync = committed\n\
         \tfsyncMethod = fsync\n\
         [uploadpack]\n\
         \tallowAnySHA1InWant = false\n"
    )
}

/// A repository could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// Filesystem or `git init` failure.
    #[error("{operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The path involved.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `git init` exited non-zero.
    #[error("git init {path} failed: {stderr}")]
    Init {
        /// The repository.
        path: String,
        /// What git said.
        stderr: String,
    },
    /// The name in `DATA/repos` (or a directory git needs inside it) is a symbolic link or not
    /// a directory: refused rather than followed, since a link can lead to another webspace's
    /// repository.
    #[error("{path} is not a plain directory (a symbolic link, or not a directory); refusing it")]
    NotADirectory {
        /// The path refused.
        path: String,
    },
}

/// A repository directory held open: git runs in exactly the directory that was checked.
#[derive(Debug)]
pub struct Repository {
    directory: OwnedFd,
    /// `DATA/repos/<webspace>.git`, for messages only: never opened again.
    path: PathBuf,
}

impl Repository {
    /// A path that names the opened directory itself for as long as `self` lives, in this
    /// process and in children spawned meanwhile (they inherit the descriptor until `exec`,
    /// and a `chdir` to this path happens before `exec`).
    pub fn working_directory(&self) -> PathBuf {
        descriptor_path(&self.directory)
    }

    /// Where the repository lives, for messages and logs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the same opened directory (a duplicated descriptor).
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated (the process is out of descriptors).
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            directory: self.directory.try_clone()?,
            path: self.path.clone(),
        })
    }
}

fn descriptor_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens `name` inside the directory `parent` as a directory, refusing a symbolic link.
/// `Ok(None)` when it does not exist.
fn open_directory(
    parent: impl AsFd,
    name: &str,
    path: &Path,
) -> Result<Option<OwnedFd>, RepositoryError> {
    match openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        // O_NOFOLLOW on a link: ELOOP; a file or a device: ENOTDIR.
        Err(Errno::ELOOP | Errno::ENOTDIR) => Err(RepositoryError::NotADirectory {
            path: path.display().to_string(),
        }),
        Err(errno) => Err(io("open", path)(errno.into())),
    }
}

/// `DATA/repos`, created when missing and opened without following a link.
fn open_repos(data: &Path) -> Result<OwnedFd, RepositoryError> {
    let repos = data.join("repos");
    fs::create_dir_all(&repos).map_err(io("create", &repos))?;
    let data_fd = openat(
        nix::fcntl::AT_FDCWD,
        data,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| io("open", data)(errno.into()))?;
    open_directory(&data_fd, "repos", &repos)?
        .ok_or_else(|| io("open", &repos)(std::io::Error::from(std::io::ErrorKind::NotFound)))
}

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RepositoryError {
    let path = path.display().to_string();
    move |source| RepositoryError::Io {
        operation,
        path,
        source,
    }
}

/// Where a webspace's repository lives. `webspace` must be a validated DNS label.
pub fn path(data: &Path, webspace: &str) -> PathBuf {
    data.join("repos").join(format!("{webspace}.git"))
}

/// Opens the repository of `webspace` when it exists, without creating it or writing its
/// hooks; refused as [`open_or_create`] refuses.
///
/// # Errors
/// [`RepositoryError::NotADirectory`] as for [`open_or_create`]; when `DATA/repos` cannot be
/// opened.
pub fn open_existing(data: &Path, webspace: &str) -> Result<Option<Repository>, RepositoryError> {
    let target = path(data, webspace);
    let repos_fd = open_repos(data)?;
    Ok(
        open_directory(&repos_fd, &format!("{webspace}.git"), &target)?.map(|directory| {
            Repository {
                directory,
                path: target,
            }
        }),
    )
}

/// Opens the repository of `webspace`, creating it when it does not exist yet.
///
/// Creation happens in a temporary directory that is renamed into place, so a crash or a
/// concurrent first push never leaves a half-initialised repository behind. The hooks are
/// (re)written on every call so an upgraded server's hooks take effect at once.
///
/// # Errors
/// [`RepositoryError::NotADirectory`] when `DATA/repos/<webspace>.git` or its `hooks` is a
/// symbolic link or not a directory (see the module's guarantees); otherwise when `git init`
/// fails or files cannot be written.
pub async fn open_or_create(
    data: &Path,
    webspace: &str,
    environment: &[(OsString, OsString)],
) -> Result<Repository, RepositoryError> {
    let target = path(data, webspace);
    let repos = data.join("repos");
    let repos_fd = open_repos(data)?;
    let file = format!("{webspace}.git");
    if let Some(directory) = open_directory(&repos_fd, &file, &target)? {
        write_hooks(&directory, &target)?;
        return Ok(Repository {
            directory,
            path: target,
        });
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!(".init-{webspace}-"))
        .tempdir_in(&repos)
        .map_err(io("create temporary directory in", &repos))?;
    let output = tokio::process::Command::new("git")
        .args(["init", "--quiet", "--bare", "--initial-branch=main"])
        .arg(staging.path())
        .env_clear()
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .map_err(io("run git init for", &target))?;
    if !output.status.success() {
        return Err(RepositoryError::Init {
            path: target.display().to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let config = staging.path().join("config");
    fs::OpenOptions::new()
        .append(true)
        .open(&config)
        .and_then(|mut f| f.write_all(config_block().as_bytes()))
        .map_err(io("write", &config))?;
    for entry in fs::read_dir(staging.path().join("hooks"))
        .map_err(io("list hooks of", &target))?
        .flatten()
    {
        // The `*.sample` hooks are noise in a server-side repository.
        let _ = fs::remove_file(entry.path());
    }
    let staged = staging.keep();
    if let Err(error) = fs::rename(&staged, &target) {
        let _ = fs::remove_dir_all(&staged);
        // Another connection created it first: that one is as good as ours. Anything
        // else in the way (a link planted meanwhile) is refused by the open below.
        if fs::symlink_metadata(&target).is_err() {
            return Err(io("rename into place", &target)(error));
        }
    }
    let directory = open_directory(&repos_fd, &file, &target)?
        .ok_or_else(|| io("open", &target)(std::io::ErrorKind::NotFound.into()))?;
    write_hooks(&directory, &target)?;
    Ok(Repository {
        directory,
        path: target,
    })
}

/// Writes the hook scripts into the `hooks` directory of the opened repository, refusing a
/// `hooks` that is a link (it would lead the scripts into another repository).
fn write_hooks(repository: &OwnedFd, path: &Path) -> Result<(), RepositoryError> {
    let shown = path.join("hooks");
    let hooks_fd = match open_directory(repository, "hooks", &shown)? {
        Some(hooks_fd) => hooks_fd,
        None => {
            let inside = descriptor_path(repository).join("hooks");
            fs::create_dir(&inside).map_err(io("create", &shown))?;
            open_directory(repository, "hooks", &shown)?
                .ok_or_else(|| io("open", &shown)(std::io::ErrorKind::NotFound.into()))?
        }
    };
    let hooks = descriptor_path(&hooks_fd);
    for (file, subcommand) in HOOKS {
        let script = format!(
            "#!/bin/sh\n# Written by slipway; rewritten on every push.\n\
             : \"${{{exe}:?this repository only accepts pushes through the slipway git server}}\"\n\
             exec \"${exe}\" hook {subcommand}\n",
            exe = slipway_api::env::EXE
        );
        let path = hooks.join(file);
        if fs::read_to_string(&path).ok().as_deref() == Some(script.as_str()) {
            continue;
        }
        let temporary = hooks.join(format!(".{file}.tmp"));
        let shown = shown.join(file);
        fs::write(&temporary, &script).map_err(io("write", &shown))?;
        fs::set_permissions(&temporary, fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &shown))?;
        fs::rename(&temporary, &path).map_err(io("install", &shown))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_only() -> Vec<(OsString, OsString)> {
        std::env::vars_os().filter(|(k, _)| k == "PATH").collect()
    }

    #[tokio::test]
    async fn created_bare_with_hooks_and_hardened_config() {
        let data = tempfile::tempdir().expect("tempdir");
        let opened = open_or_create(data.path(), "blog", &path_only())
            .await
            .expect("created");
        assert_eq!(opened.path(), data.path().join("repos/blog.git"));
        let repo = opened.path();
        assert!(repo.join("HEAD").is_file());
        let config = fs::read_to_string(repo.join("config")).expect("config");
        assert!(config.contains("bare = true"), "{config}");
        assert!(config.contains("hasDotgit = error"), "{config}");
        let hook = repo.join("hooks/pre-receive");
        let mode = fs::metadata(&hook).expect("hook").permissions().mode();
        assert_eq!(mode & 0o111, 0o111);
        assert!(
            fs::read_to_string(&hook)
                .expect("hook")
                .contains("hook pre-receive")
        );
        // Opening again keeps the repository and leaves no staging directories behind.
        open_or_create(data.path(), "blog", &path_only())
            .await
            .expect("reopened");
        let entries: Vec<_> = fs::read_dir(data.path().join("repos"))
            .expect("repos")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(entries, ["blog.git"]);
    }

    /// A name in `DATA/repos` that is a link to another webspace's repository, and one whose
    /// `hooks` is such a link: both refused, and the other repository left as it was.
    #[tokio::test]
    async fn links_are_refused_not_followed() {
        let data = tempfile::tempdir().expect("tempdir");
        let theirs = open_or_create(data.path(), "theirs", &path_only())
            .await
            .expect("created");
        let before = fs::read_to_string(theirs.path().join("hooks/pre-receive")).expect("hook");
        fs::write(theirs.path().join("hooks/pre-receive"), "#!/bin/sh\n").expect("marker");
        let repos = data.path().join("repos");
        std::os::unix::fs::symlink("theirs.git", repos.join("mine.git")).expect("link");
        let refused = open_or_create(data.path(), "mine", &path_only()).await;
        assert!(
            matches!(refused, Err(RepositoryError::NotADirectory { .. })),
            "{refused:?}"
        );

        let hooks_link = open_or_create(data.path(), "other", &path_only())
            .await
            .expect("created");
        fs::remove_dir_all(hooks_link.path().join("hooks")).expect("hooks");
        std::os::unix::fs::symlink(theirs.path().join("hooks"), hooks_link.path().join("hooks"))
            .expect("link");
        let refused = open_or_create(data.path(), "other", &path_only()).await;
        assert!(
            matches!(refused, Err(RepositoryError::NotADirectory { .. })),
            "{refused:?}"
        );
        assert_eq!(
            fs::read_to_string(theirs.path().join("hooks/pre-receive")).expect("hook"),
            "#!/bin/sh\n",
            "nothing was written through a link"
        );
        assert_ne!(before, "#!/bin/sh\n");
    }

    /// The name is checked once; a link put in its place afterwards does not move the
    /// opened repository.
    #[tokio::test]
    async fn the_opened_directory_stays_the_one_that_was_checked() {
        let data = tempfile::tempdir().expect("tempdir");
        let theirs = open_or_create(data.path(), "theirs", &path_only())
            .await
            .expect("created");
        let mine = open_or_create(data.path(), "mine", &path_only())
            .await
            .expect("created");
        fs::write(mine.path().join("description"), "mine\n").expect("marker");
        let repos = data.path().join("repos");
        fs::rename(repos.join("mine.git"), repos.join("moved.git")).expect("move");
        std::os::unix::fs::symlink(theirs.path(), repos.join("mine.git")).expect("link");
        let seen =
            fs::read_to_string(mine.working_directory().join("description")).expect("description");
        assert_eq!(seen, "mine\n");
    }
}
