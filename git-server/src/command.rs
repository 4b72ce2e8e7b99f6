//! The SSH `exec` command: which git service, on which webspace, or which of the commands a
//! webspace's owner runs (`ssh git@HOST logs blog`).
//!
//! git sends `git-receive-pack '/blog.git'` (the path single-quoted by `sq_quote`). Only the two
//! git services with exactly one repository argument, and the [`Verb`]s with plain words as
//! arguments, are accepted; anything else is refused before a process is spawned.

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

/// A command for a webspace's owner, run as `slipway ops VERB ARGS...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// What there is.
    Help,
    /// The caller's webspaces.
    Apps,
    /// One webspace: branches, hosts, what serves, conditions.
    Info,
    /// A webspace's releases.
    Releases,
    /// An app's output.
    Logs,
    /// A new release from an earlier one's image.
    Rollback,
    /// A new release of what serves, started afresh.
    Restart,
    /// A webspace's config (masked).
    Config,
    /// Set config values: a new release with them.
    ConfigSet,
    /// Remove config values: a new release without them.
    ConfigUnset,
}

impl Verb {
    const ALL: [(&'static str, Verb); 10] = [
        ("help", Verb::Help),
        ("apps", Verb::Apps),
        ("info", Verb::Info),
        ("releases", Verb::Releases),
        ("logs", Verb::Logs),
        ("rollback", Verb::Rollback),
        ("restart", Verb::Restart),
        ("config", Verb::Config),
        ("config:set", Verb::ConfigSet),
        ("config:unset", Verb::ConfigUnset),
    ];

    /// The verb called `name` on the command line.
    pub fn named(name: &str) -> Option<Verb> {
        Self::ALL
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, verb)| *verb)
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, verb)| *verb == self)
            .map_or("help", |(name, _)| name)
    }

    /// Whether its first argument is a webspace (checked against the caller like a repository).
    pub fn takes_webspace(self) -> bool {
        !matches!(self, Verb::Help | Verb::Apps)
    }

    /// Whether it changes what runs: it then waits for the webspace's push lock, like a push.
    pub fn mutates(self) -> bool {
        matches!(
            self,
            Verb::Rollback | Verb::Restart | Verb::ConfigSet | Verb::ConfigUnset
        )
    }
}

/// A parsed, validated owner's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsCommand {
    /// What to do.
    pub verb: Verb,
    /// The webspace it is about (a validated DNS label), for verbs that take one.
    pub webspace: Option<String>,
    /// The words after the webspace (options, a branch), each plain: no spaces, quotes or shell
    /// characters. `slipway ops` parses them.
    pub args: Vec<String>,
}

/// What an SSH `exec` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A git service.
    Git(GitCommand),
    /// An owner's command.
    Ops(OpsCommand),
}

/// Most words an owner's command takes.
const MAX_WORDS: usize = 16;

/// Why a command is refused. The messages are what the client reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not a git service (a shell command, `scp`, ...).
    #[error("only git and the commands `ssh git@HOST help` lists are served here")]
    Unsupported,
    /// An owner's command without the webspace it needs.
    #[error("`{0}` needs a webspace: `{0} WEBSPACE`")]
    MissingWebspace(&'static str),
    /// An owner's command's words are not plain.
    #[error("arguments must be plain words (letters, digits and `.-_:/=@+,`), at most {MAX_WORDS}")]
    Words,
    /// The arguments are not exactly one repository.
    #[error("expected exactly one repository argument, like `git-receive-pack '/blog.git'`")]
    Arguments,
    /// The repository argument is not a webspace name.
    #[error("repository {0}")]
    Repository(#[source] InvalidName),
}

/// Parses the bytes of an SSH `exec` request: a git service or an owner's command.
///
/// # Errors
/// [`CommandError`] for anything else, or arguments that are not plain words.
pub fn parse_request(command: &[u8]) -> Result<Request, CommandError> {
    if command.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::Unsupported);
    }
    let text = std::str::from_utf8(command).map_err(|_| CommandError::Unsupported)?;
    let mut words = text.split(' ').filter(|w| !w.is_empty());
    let first = words.next().unwrap_or_default();
    let Some(verb) = Verb::ALL
        .iter()
        .find(|(name, _)| *name == first)
        .map(|(_, verb)| *verb)
    else {
        return parse(command).map(Request::Git);
    };
    // Config values may hold what URLs and tokens hold; never quotes, backslashes or spaces.
    // Nothing here reaches a shell either way: `slipway ops` gets an argument vector.
    let value_like = verb == Verb::ConfigSet;
    let plain = |w: &str| {
        !w.is_empty()
            && w.len() <= 256
            && w.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || ".-_:/=@+,".contains(c)
                    || (value_like && c.is_ascii_graphic() && !"'\"\\`".contains(c))
            })
    };
    let mut args: Vec<String> = Vec::new();
    for word in words {
        if !plain(word) || args.len() == MAX_WORDS {
            return Err(CommandError::Words);
        }
        args.push(word.to_owned());
    }
    if text.contains(|c: char| c.is_control()) {
        return Err(CommandError::Words);
    }
    let webspace = if verb.takes_webspace() {
        if args.is_empty() || args[0].starts_with('-') {
            return Err(CommandError::MissingWebspace(verb.name()));
        }
        let name = args.remove(0);
        names::validate_label(&name).map_err(CommandError::Repository)?;
        Some(name)
    } else {
        None
    };
    Ok(Request::Ops(OpsCommand {
        verb,
        webspace,
        args,
    }))
}

/// Parses the bytes of an SSH `exec` request for a git service.
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
    fn owners_commands_take_plain_words_and_name_a_webspace() {
        let ops = |c: &str| match parse_request(c.as_bytes()) {
            Ok(Request::Ops(ops)) => ops,
            other => panic!("{c:?}: {other:?}"),
        };
        assert_eq!(ops("help").verb, Verb::Help);
        assert_eq!(ops("apps --json").args, ["--json"]);
        let logs = ops("logs blog feature-x -n 100 -f");
        assert_eq!(
            (logs.verb, logs.webspace.as_deref()),
            (Verb::Logs, Some("blog"))
        );
        assert_eq!(logs.args, ["feature-x", "-n", "100", "-f"]);
        assert!(matches!(
            parse_request(b"git-receive-pack '/blog.git'"),
            Ok(Request::Git(_))
        ));
        assert_eq!(
            parse_request(b"logs"),
            Err(CommandError::MissingWebspace("logs"))
        );
        assert_eq!(
            parse_request(b"info --json"),
            Err(CommandError::MissingWebspace("info"))
        );
        for c in [
            "logs blog;id",
            "logs blog $(id)",
            "logs blog 'x'",
            "logs blog a\tb",
            "logs blog \\x",
            "apps `id`",
            "logs blog a|b",
            "logs blog a\nb",
        ] {
            let c = c.replace("\\t", "\t").replace("\\n", "\n");
            assert_eq!(
                parse_request(c.as_bytes()),
                Err(CommandError::Words),
                "{c:?}"
            );
        }
        assert!(matches!(
            parse_request(b"info ../blog"),
            Err(CommandError::Repository(_))
        ));
        assert!(matches!(
            parse_request(b"info Blog"),
            Err(CommandError::Repository(_))
        ));
        let many = format!("apps{}", " x".repeat(MAX_WORDS + 1));
        assert_eq!(parse_request(many.as_bytes()), Err(CommandError::Words));
        assert_eq!(parse_request(b"sh -c id"), Err(CommandError::Unsupported));
        assert_eq!(parse_request(b"helpme"), Err(CommandError::Unsupported));
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
