//! A push the shutdown cuts short, as its pusher sees it: told truthfully how far it had come,
//! and nothing of it left in quarantine. Real `git` and OpenSSH `ssh` against the git server
//! run in-process, with a stand-in for `slipway hook` that stalls in one hook.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use slipway_git_server::{Config, Drain};
use slipway_store::DirectoryStore;
use tokio_util::sync::CancellationToken;

/// What became of a push whose hook stalled until the shutdown's grace period was over.
struct Stopped {
    scratch: tempfile::TempDir,
    drain: Drain,
    push: Output,
}

impl Stopped {
    fn said(&self) -> String {
        String::from_utf8_lossy(&self.push.stderr).into_owned()
    }

    fn repository(&self) -> PathBuf {
        self.scratch.path().join("data/repos/blog.git")
    }

    fn app(&self) -> PathBuf {
        self.scratch.path().join("app")
    }
}

/// Alice pushes `main` of a one-commit work tree to `blog`; the hook `hook` (`pre-receive` or
/// `post-receive`) stalls; the server is told to stop, with a grace period of one second.
async fn stall_in(hook: &str) -> Stopped {
    let scratch = tempfile::tempdir().expect("tempdir");
    let data = scratch.path().join("data");
    let key = scratch.path().join("alice");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f"])
            .arg(&key),
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let store = DirectoryStore::open(&data).expect("store");
    slipway_store::apply_documents(
        &store,
        &format!(
            "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata:\n  name: alice\nspec:\n  email: alice@example.com\n  sshKeys:\n    - \"{}\"\n---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: blog\nspec:\n  customer: alice\n",
            public.trim()
        ),
    )
    .await
    .expect("apply");

    // Stands in for `slipway hook NAME`: reads the ref lines, then stalls in `hook`.
    let stalled = scratch.path().join("stalled");
    let exe = scratch.path().join("hook");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/sh\ncat >/dev/null\nif [ \"$2\" = {hook} ]; then : > '{}'; exec sleep 600; fi\n",
            stalled.display()
        ),
    )
    .expect("hook");
    run_ok(Command::new("chmod").arg("755").arg(&exe));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let port = listener.local_addr().expect("address").port();
    let config = Config {
        data,
        exe,
        registry: None,
        build: false,
        rollout: false,
        environment: std::env::vars_os()
            .filter(|(name, _)| name == "PATH" || name == "HOME")
            .collect(),
        shutdown_grace: Duration::from_secs(1),
        push_wait: Duration::from_secs(10),
        admission: slipway_git_server::admission::Limits::default(),
        metrics: Default::default(),
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(slipway_git_server::run(
        listener,
        config,
        store,
        shutdown.clone(),
    ));

    let app = scratch.path().join("app");
    std::fs::create_dir_all(&app).expect("app");
    std::fs::write(app.join("index.html"), "hello\n").expect("file");
    run_ok(git(&app, &key).args(["init", "-q", "-b", "main"]));
    run_ok(git(&app, &key).args(["add", "-A"]));
    run_ok(git(&app, &key).args(["commit", "-q", "-m", "initial"]));
    let push = git(&app, &key)
        .args([
            "push",
            &format!("ssh://git@127.0.0.1:{port}/blog.git"),
            "main",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git push");

    let deadline = Instant::now() + Duration::from_secs(30);
    while !stalled.exists() {
        assert!(Instant::now() < deadline, "the {hook} hook never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let drain = server.await.expect("server task").expect("server");
    let push = tokio::task::spawn_blocking(move || push.wait_with_output())
        .await
        .expect("join")
        .expect("git push");
    Stopped {
        scratch,
        drain,
        push,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stopped_in_post_receive_is_told_its_refs_were_updated() {
    let stopped = stall_in("post-receive").await;
    let said = stopped.said();
    assert!(!stopped.drain.finished);
    assert!(!stopped.push.status.success(), "{said}");
    assert!(
        said.contains(
            "remote: error: the server is shutting down and stopped this push after its refs were updated"
        ) && said.contains("remote: hint: the pushed commits are stored"),
        "{said}"
    );
    assert!(!said.contains("before it finished"), "{said}");
    assert_eq!(
        rev_parse(&stopped.repository(), "refs/heads/main"),
        rev_parse(&stopped.app(), "HEAD"),
        "the refs did move"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stopped_in_pre_receive_is_told_it_did_not_finish_and_leaves_no_quarantine() {
    let stopped = stall_in("pre-receive").await;
    let said = stopped.said();
    assert!(!stopped.drain.finished);
    assert!(
        said.contains(
            "remote: error: the server is shutting down and stopped this push before it finished"
        ) && said.contains("remote: hint: push again when the server is back"),
        "{said}"
    );
    let repository = stopped.repository();
    assert_eq!(rev_parse(&repository, "refs/heads/main"), None);
    let left: Vec<_> = std::fs::read_dir(repository.join("objects"))
        .expect("objects")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| slipway_git_server::quarantine::is_quarantine(name))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    run_ok(
        Command::new("git")
            .args(["fsck", "--full", "--no-progress"])
            .current_dir(&repository),
    );
}

/// `git` in `dir`, reaching the server over OpenSSH with `key`.
fn git(dir: &Path, key: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .env(
            "GIT_SSH_COMMAND",
            format!(
                "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes",
                key.display()
            ),
        )
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com");
    command
}

fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("spawn");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The id `git rev-parse REV` gives in `dir`, if any.
fn rev_parse(dir: &Path, rev: &str) -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--verify", "--quiet", rev])
        .current_dir(dir)
        .output()
        .expect("git rev-parse");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
