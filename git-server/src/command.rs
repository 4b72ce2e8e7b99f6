//! The SSH `exec` command: which git service, on which webspace.
//!
//! git sends `git-receive-pack '/blog.git'` (the path single-quoted by `sq_quote`). Only the two
//! git services with exactly one repository argument are accepted; anything else is refused
//! before a process is spawned.

use slipway_api::names::{self, InvalidName};

/// Longest command accepted. git's own commands are short; a longer one is an attack.
pub const MAX_COMMAND_BYTES: usize = 1024;

/// A git service Slipway runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `git push`.
    ReceivePack,
    /// `git clone` / `git fetch`.
    UploadPack,
}

impl Service {
    /// The `git` subcommand that implements it.
    pub fn subcommand(self) -> &'static str {
        match self {
            Self::ReceivePack => "receive-pack",
            Self::UploadPack => "upload-pack",
        }
    }
}

/// A parsed, validated git command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCommand {
    /// Push or fetch.
    pub service: Service,
    /// The webspace named by the repository argument (a validated DNS label).
    pub webspace: String,
}

/// Why a command is refused. The messages are what the client reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not a git service (a shell command, `scp`, ...).
    #[error("only `git-receive-pack` and `git-upload-pack` are served here")]
    Unsupported,
    /// The arguments are not exactly one repository.
    #[error("expected exactly one repository argument, like `git-receive-pack '/blog.git'`")]
    Arguments,
    /// The repository argument is not a webspace name.
    #[error("repository {0}")]
    Repository(#[source] InvalidName),
}

/// Parses the bytes of an SSH `exec` request.
///
/// # Errors
/// [`CommandError`] for anything but a git service with one valid repository argument.
pub fn parse(command: &[u8]) -> Result<GitCommand, CommandError> {
    if command.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::Unsupported);
    }
    let command = std::str::from_utf8(command).map_err(|_| CommandError::Unsupported)?;
    let (service, rest) = if let Some(rest) = command.strip_prefix("git-receive-pack ") {
        (Service::ReceivePack, rest)
    } else if let Some(rest) = command.strip_prefix("git receive-pack ") {
        (Service::ReceivePack, rest)
    } else if let Some(rest) = command.strip_prefix("git-upload-pack ") {
        (Service::UploadPack, rest)
    } else if let Some(rest) = command.strip_prefix("git upload-pack ") {
        (Service::UploadPack, rest)
    } else if matches!(
        command,
        "git-receive-pack" | "git receive-pack" | "git-upload-pack" | "git upload-pack"
    ) {
        return Err(CommandError::Arguments);
    } else {
        return Err(CommandError::Unsupported);
    };
    let argument = unquote(rest.trim_matches(' ')).ok_or(CommandError::Arguments)?;
    let webspace = names::webspace_from_repository(argument).map_err(CommandError::Repository)?;
    Ok(GitCommand { service, webspace })
}

/// Accepts one word: either single-quoted with no quote inside, or bare with no whitespace,
/// quotes or backslashes. Repository names never need more than that.
fn unquote(argument: &str) -> Option<&str> {
    let inner = match argument.strip_prefix('\'') {
        Some(rest) => rest.strip_suffix('\'')?,
        None => argument,
    };
    let forbidden = |c: char| c.is_whitespace() || c.is_control() || "'\"\\`$;&|<>".contains(c);
    (!inner.is_empty() && !inner.contains(forbidden)).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(command: &str) -> GitCommand {
        parse(command.as_bytes()).expect("accepted")
    }

    #[test]
    fn git_commands_in_every_spelling() {
        let push = GitCommand {
            service: Service::ReceivePack,
            webspace: "blog".into(),
        };
        for c in [
            "git-receive-pack '/blog.git'",
            "git receive-pack '/blog.git'",
            "git-receive-pack 'blog'",
            "git-receive-pack blog.git",
            "git-receive-pack '~/blog.git'",
        ] {
            assert_eq!(ok(c), push, "{c}");
        }
        assert_eq!(
            ok("git-upload-pack '/blog.git'").service,
            Service::UploadPack
        );
        assert_eq!(
            ok("git upload-pack 'blog.git'").service,
            Service::UploadPack
        );
    }

    #[test]
    fn everything_else_is_refused() {
        let unsupported: &[&[u8]] = &[
            b"",
            b"ls",
            b"sh -c id",
            b"git-upload-archive '/blog.git'",
            b"git  receive-pack '/blog.git'",
            b"scp -t /tmp",
            b"rsync --server",
            b"\xff\xfe git-receive-pack",
        ];
        for c in unsupported {
            assert_eq!(parse(c), Err(CommandError::Unsupported), "{c:?}");
        }
        for c in [
            "git-receive-pack",
            "git-receive-pack 'a' 'b'",
            "git-receive-pack --upload-pack=touch /tmp/x",
            "git-receive-pack 'blog.git'; id",
            "git-receive-pack 'blog.git' && id",
            "git-receive-pack $(id)",
            "git-receive-pack `id`",
            "git-receive-pack 'a'\\''b'",
            "git-receive-pack \"blog.git\"",
            "git-receive-pack 'blog.git\n'",
        ] {
            assert_eq!(parse(c.as_bytes()), Err(CommandError::Arguments), "{c:?}");
        }
        for c in [
            "git-receive-pack '../blog.git'",
            "git-receive-pack '/etc/passwd'",
            "git-receive-pack '/srv/../../blog.git'",
            "git-receive-pack 'Blog.git'",
            "git-upload-pack '--help'",
        ] {
            assert!(
                matches!(parse(c.as_bytes()), Err(CommandError::Repository(_))),
                "{c:?}"
            );
        }
        let long = format!("git-receive-pack '{}'", "a".repeat(2000));
        assert_eq!(parse(long.as_bytes()), Err(CommandError::Unsupported));
    }
}
