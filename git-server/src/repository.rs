//! Bare repositories under `DATA/repos/<webspace>.git`: created on first use, configured to
//! refuse hostile objects and to survive crashes, with hooks that run `slipway hook`.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

/// Returns the repository of `webspace`, creating it when it does not exist yet.
///
/// Creation happens in a temporary directory that is renamed into place, so a crash or a
/// concurrent first push never leaves a half-initialised repository behind. The hooks are
/// (re)written on every call so an upgraded server's hooks take effect at once.
///
/// # Errors
/// When `git init` fails or files cannot be written.
pub async fn open_or_create(
    data: &Path,
    webspace: &str,
    environment: &[(OsString, OsString)],
) -> Result<PathBuf, RepositoryError> {
    let target = path(data, webspace);
    let repos = data.join("repos");
    if !target.exists() {
        fs::create_dir_all(&repos).map_err(io("create", &repos))?;
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
        write_hooks(staging.path())?;
        let staged = staging.keep();
        if let Err(error) = fs::rename(&staged, &target) {
            let _ = fs::remove_dir_all(&staged);
            // Another connection created it first: that one is as good as ours.
            if !target.exists() {
                return Err(io("rename into place", &target)(error));
            }
        }
    } else {
        write_hooks(&target)?;
    }
    Ok(target)
}

fn write_hooks(repository: &Path) -> Result<(), RepositoryError> {
    let hooks = repository.join("hooks");
    fs::create_dir_all(&hooks).map_err(io("create", &hooks))?;
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
        fs::write(&temporary, &script).map_err(io("write", &temporary))?;
        fs::set_permissions(&temporary, fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &temporary))?;
        fs::rename(&temporary, &path).map_err(io("install", &path))?;
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
        let repo = open_or_create(data.path(), "blog", &path_only())
            .await
            .expect("created");
        assert_eq!(repo, data.path().join("repos/blog.git"));
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
}
