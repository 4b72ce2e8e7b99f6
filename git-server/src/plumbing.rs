//! Runs `git receive-pack` / `git upload-pack` for one SSH channel and pipes its standard
//! streams through the channel.
//!
//! # Guarantees
//! - git is spawned from an argument vector, with an environment built only from the server's
//!   allowlist and the SLIPWAY_* contract; nothing the client sent reaches a shell.
//! - The process runs in its own process group; when the client goes away or the server gives
//!   up on a drain, the whole group (git and its hooks) is killed and reaped: no orphans.
//! - Output is copied in large chunks and only as fast as the client reads (backpressure);
//!   exit status, EOF and close are sent once, in that order.
//! - A push the shutdown kills is told what became of it: stopped before it finished (no ref
//!   moved), or stopped after its refs were updated (its commits are stored; post-receive did
//!   not get to report the rollout). The refs are compared before and after to tell which.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use russh::Channel;
use russh::server::Msg;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::command::Service;
use crate::repository::Repository;

/// Chunk size for copying git's stdout to the client. 8 KiB reads made one SSH packet each and
/// made clones 1.3x slower than OpenSSH; 256 KiB lets russh fill its packets.
const COPY_BUFFER: usize = 256 * 1024;

/// SSH extended-data type for stderr (RFC 4254 §5.2).
const STDERR: u32 = 1;
/// How long telling a client that the shutdown stopped its command may take: a client that is
/// gone too must not hold the shutdown up.
const TELL_TIMEOUT: Duration = Duration::from_secs(2);

/// One git process to run.
#[derive(Debug)]
pub struct Invocation<'a> {
    /// Push or fetch.
    pub service: Service,
    /// The bare repository, held open (see [`crate::repository`]).
    pub repository: &'a Repository,
    /// The complete environment of the process.
    pub environment: Vec<(OsString, OsString)>,
}

/// How the git process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this status (128 + signal when killed by one).
    Exited(u32),
    /// The client went away or the server shut down; the process group was killed.
    Killed,
}

/// Spawns git and pipes it through `channel` until it exits, or until `kill` is cancelled.
/// When `kill` was cancelled by the server's shutdown (`stopping` is cancelled too), the
/// client is told so, and how far its command had come, before the channel closes, and the
/// command exits 1.
///
/// # Errors
/// When git cannot be spawned; the client is then told the push failed.
pub async fn run(
    invocation: Invocation<'_>,
    channel: Channel<Msg>,
    kill: CancellationToken,
    stopping: CancellationToken,
) -> std::io::Result<Ending> {
    let what = match invocation.service {
        Service::ReceivePack => "push",
        Service::UploadPack => "fetch",
    };
    // What a push may change, as it was before: a shutdown that kills the push compares.
    let refs_before = match invocation.service {
        Service::ReceivePack => refs(&invocation).await,
        Service::UploadPack => None,
    };
    // git starts in the opened directory and is told `.`: it never resolves the repository's
    // name, which could have become a link since it was checked. It runs under `setpriv
    // --pdeathsig KILL` (util-linux): a server killed outright (SIGKILL, nothing runs to clean
    // up) takes git with it, and git its hooks (`slipway hook` asks for the same), so no push
    // goes on unwatched and moves a ref after its server died.
    let mut command = in_repository("setpriv", &invocation);
    command
        .args(["--pdeathsig", "KILL", "--", "git"])
        .arg(invocation.service.subcommand())
        .arg(".");
    let child = spawn(command)?;
    let told = async || match invocation.service {
        Service::UploadPack => stopped(what, Stopped::Before),
        Service::ReceivePack => {
            let after = match refs_before {
                Some(_) => refs(&invocation).await,
                None => None,
            };
            let stage = match (refs_before, after) {
                (Some(before), Some(after)) if before == after => Stopped::Before,
                (Some(_), Some(_)) => Stopped::AfterRefsMoved,
                _ => Stopped::Unknown,
            };
            stopped(what, stage)
        }
    };
    Ok(pipe(child, channel, kill, stopping, told).await)
}

/// Runs `command` (an owner's command: `slipway ops ...`) on `channel` as [`run`] runs git:
/// its output to the client, killed with its whole process group when the client leaves or the
/// server's grace period ends, and dying with the server (`setpriv --pdeathsig KILL` is the
/// caller's to put in front).
///
/// # Errors
/// When it cannot be spawned.
pub async fn run_command(
    command: Command,
    channel: Channel<Msg>,
    kill: CancellationToken,
    stopping: CancellationToken,
) -> std::io::Result<Ending> {
    let child = spawn(command)?;
    let told = async || {
        "remote: error: the server is shutting down and stopped this command\nremote: hint: run it again when the server is back\n".to_owned()
    };
    Ok(pipe(child, channel, kill, stopping, told).await)
}

/// Spawns `command` with piped standard streams in a process group of its own, killed when
/// dropped.
fn spawn(mut command: Command) -> std::io::Result<tokio::process::Child> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
}

/// Pipes `child` through `channel` until it exits, the client leaves or `kill` is cancelled;
/// on a shutdown (`stopping`) the client reads what `told` says before the channel closes.
async fn pipe(
    mut child: tokio::process::Child,
    channel: Channel<Msg>,
    kill: CancellationToken,
    stopping: CancellationToken,
    told: impl AsyncFnOnce() -> String,
) -> Ending {
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let (mut from_client, to_client) = channel.split();
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let input = async move {
        if let Some(mut pipe) = stdin.take() {
            let _ = tokio::io::copy(&mut from_client.make_reader(), &mut pipe).await;
            // Dropping (not `shutdown`) closes the pipe: git sees EOF when the client sent it.
            // Protocol v2's upload-pack serves requests until that EOF.
            drop(pipe);
        }
        // The output side decides when the command is over.
        std::future::pending::<()>().await;
    };
    let mut data = to_client.make_writer();
    let mut errors = to_client.make_writer_ext(Some(STDERR));
    let output = async {
        let out = async {
            if let Some(stdout) = stdout {
                let mut reader = BufReader::with_capacity(COPY_BUFFER, stdout);
                tokio::io::copy_buf(&mut reader, &mut data).await?;
                data.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let err = async {
            if let Some(stderr) = stderr {
                let mut reader = BufReader::new(stderr);
                tokio::io::copy_buf(&mut reader, &mut errors).await?;
                errors.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let (out, err) = tokio::join!(out, err);
        out.and(err)
    };

    let finished = tokio::select! {
        () = input => None,
        () = kill.cancelled() => None,
        result = output => Some(result),
    };
    let ending = match finished {
        Some(Ok(())) => match child.wait().await {
            Ok(status) => Ending::Exited(exit_code(status)),
            Err(error) => {
                tracing::warn!(%error, "cannot wait for git");
                Ending::Exited(1)
            }
        },
        Some(Err(error)) => {
            // The client stopped reading: it is gone.
            tracing::info!(%error, "client went away during git");
            terminate(group, &mut child).await;
            Ending::Killed
        }
        None => {
            terminate(group, &mut child).await;
            if stopping.is_cancelled() {
                let text = told().await;
                let tell = async {
                    errors.write_all(text.as_bytes()).await?;
                    errors.flush().await
                };
                let _ = tokio::time::timeout(TELL_TIMEOUT, tell).await;
                let _ = to_client.exit_status(1).await;
            }
            Ending::Killed
        }
    };
    if let Ending::Exited(code) = ending {
        let _ = to_client.exit_status(code).await;
    }
    let _ = to_client.eof().await;
    let _ = to_client.close().await;
    ending
}

/// How far a command the shutdown killed had come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// Nothing it did is kept (a fetch, or a push whose refs did not move).
    Before,
    /// A push whose refs were updated: it was killed in post-receive (or right before).
    AfterRefsMoved,
    /// A push whose refs could not be compared.
    Unknown,
}

/// What the client of a command the shutdown killed is told.
fn stopped(what: &str, stage: Stopped) -> String {
    let (error, hint) = match stage {
        Stopped::Before => (
            format!("the server is shutting down and stopped this {what} before it finished"),
            format!("{what} again when the server is back"),
        ),
        Stopped::AfterRefsMoved => (
            format!(
                "the server is shutting down and stopped this {what} after its refs were updated, before it reported the rollout"
            ),
            "the pushed commits are stored and may still go live when the server is back; check then, and push a new commit if they did not".to_owned(),
        ),
        Stopped::Unknown => (
            format!(
                "the server is shutting down and stopped this {what}; its refs may have been updated"
            ),
            format!(
                "`git ls-remote` shows them when the server is back; {what} again if they did not move"
            ),
        ),
    };
    format!("remote: error: {error}\nremote: hint: {hint}\n")
}

/// `program`, to be run in the opened repository with the invocation's environment and
/// nothing else.
fn in_repository(program: &str, invocation: &Invocation<'_>) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(invocation.repository.working_directory())
        .env_clear()
        .envs(
            invocation
                .environment
                .iter()
                .map(|(name, value)| (name, value)),
        );
    command
}

/// The refs of the repository (`git for-each-ref`), or `None` when git cannot list them.
async fn refs(invocation: &Invocation<'_>) -> Option<Vec<u8>> {
    let output = in_repository("git", invocation)
        .args(["for-each-ref", "--format=%(objectname) %(refname)"])
        .env("GIT_DIR", ".")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match output {
        Ok(output) if output.status.success() => Some(output.stdout),
        Ok(output) => {
            tracing::warn!(
                stderr = %String::from_utf8_lossy(&output.stderr).trim(),
                "cannot list the refs of the repository"
            );
            None
        }
        Err(error) => {
            tracing::warn!(%error, "cannot list the refs of the repository");
            None
        }
    }
}

/// Kills the whole process group (git, index-pack, hooks and their children) and reaps git.
async fn terminate(group: Option<Pid>, child: &mut tokio::process::Child) {
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u32::try_from(code).unwrap_or(1),
        (None, Some(signal)) => 128 + u32::try_from(signal).unwrap_or(0),
        (None, None) => 1,
    }
}
