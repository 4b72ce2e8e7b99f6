//! A push across the server's own lifecycle: a stop signal that arrives after a push passed its
//! health check lets it go live and say so; a client that goes away mid-push leaves nothing of
//! the push in the repository; a starting server removes what pushes it never finished left.
//! Real git, OpenSSH, Docker engine and registry.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const APP: &str =
    "FROM slipway-test/busybox:latest\nCOPY . /www\nCMD exec httpd -f -p \"$PORT\" -h /www\n";

impl Host {
    /// A work tree `app` with `files` committed on `main`.
    fn app(&self, files: &[(&str, &str)]) -> PathBuf {
        let app = self.scratch.path("app");
        work_tree(&self.alice, &app, files);
        app
    }

    /// `git push URL main` in the background, in a process group of its own (git and its ssh),
    /// with what the pusher reads going to `push.err`.
    fn push_in_background(&self, app: &Path) -> (Child, PathBuf) {
        let log = self.scratch.path("push.err");
        let url = self.server().url(&format!("{}.git", self.name));
        let push = self
            .alice
            .git_command(app, &["push", &url, "main"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log"))
            .process_group(0)
            .spawn()
            .expect("git push");
        (push, log)
    }
}

/// The directories git keeps a push's objects in until pre-receive accepts them:
/// `objects/tmp_objdir-incoming-*`, or `objects/incoming-*` on older versions of git.
fn quarantine(repository: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(repository.join("objects")) else {
        return vec![];
    };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("tmp_objdir-incoming-") || name.starts_with("incoming-"))
        .collect()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Pushes a site to `slipway up`, sends the server SIGINT (Ctrl-C on its terminal) the moment
/// the push prints a line containing `moment`, and checks that the push still went live and
/// said so, and that the server then stopped having finished it.
fn interrupted_when_the_push_says(moment: &str) {
    let mut host = Host::up("sigint", &["--drain", "1", "--shutdown-grace", "30"]);
    let app = host.app(&[("Dockerfile", APP), ("index.html", "live through a stop\n")]);
    let url = host.server().url(&format!("{}.git", host.name));
    let mut push = host
        .alice
        .git_command(&app, &["push", &url, "main"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git push");
    let mut said = String::new();
    let mut lines = BufReader::new(push.stderr.take().expect("stderr"));
    while !said.contains(moment) {
        assert!(
            lines.read_line(&mut said).expect("push output") > 0,
            "the push ended before it said `{moment}`: {said}"
        );
    }

    let server = host.server.take().expect("server runs");
    let pid = Pid::from_raw(i32::try_from(server.child.id()).expect("pid"));
    kill(pid, Signal::SIGINT).expect("SIGINT");

    lines.read_to_string(&mut said).expect("push output");
    let pushed = push.wait().expect("git push");
    assert!(pushed.success(), "{said}\n{}", server.log());
    assert!(said.contains("remote: slipway: deployed `main`"), "{said}");
    let repository = host.repository();
    assert_eq!(
        rev_parse(&repository, "refs/heads/main"),
        rev_parse(&app, "HEAD")
    );
    let stopped = server.wait_stopped();
    let stdout = String::from_utf8_lossy(&stopped.stdout);
    assert!(stopped.status.success(), "{stdout}");
    assert!(stdout.contains("every running push finished"), "{stdout}");
    assert_fsck(&repository);
}

#[test]
fn sigint_after_the_health_check_lets_the_push_go_live_then_the_server_stops() {
    interrupted_when_the_push_says("started and answers");
}

#[test]
fn sigint_while_the_release_is_being_verified_lets_the_push_go_live_then_the_server_stops() {
    interrupted_when_the_push_says("staged release");
}

#[test]
fn a_client_that_goes_away_during_the_build_leaves_no_quarantined_objects() {
    let host = Host::up("gone", &["--drain", "1"]);
    // A tree of its own (no cached build) and a build step that outlasts the client.
    let app = host.app(&[
        (
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nCOPY . /www\nRUN sleep 30\nCMD exec httpd -f -p \"$PORT\" -h /www\n",
        ),
        ("index.html", &format!("{}\n", host.name)),
    ]);
    let (mut push, log) = host.push_in_background(&app);
    wait_for(
        "the build to run `RUN sleep 30`",
        Duration::from_secs(120),
        || read(&log).contains("RUN sleep 30"),
    );
    let repository = host.repository();
    assert!(
        !quarantine(&repository).is_empty(),
        "the pushed objects wait in quarantine while pre-receive builds"
    );

    // The laptop lid closes: git and its ssh die at once.
    kill_client(&mut push);

    wait_for(
        "the abandoned push's quarantine to be removed",
        Duration::from_secs(30),
        || quarantine(&repository).is_empty(),
    );
    assert_eq!(
        rev_parse(&repository, "refs/heads/main"),
        None,
        "no ref moved"
    );
    assert_fsck(&repository);
}

#[test]
fn a_starting_server_removes_quarantine_left_by_pushes_it_never_finished() {
    let World {
        scratch,
        server,
        alice,
    } = World::new();
    let app = scratch.path("app");
    work_tree(&alice, &app, &[("a", "1")]);
    assert_ok(&alice.git(&app, &["push", &server.url("blog.git"), "main"]));
    server.stop();

    // What a server killed mid-push leaves: git's quarantine, with objects and a partial pack.
    let repository = scratch.data().join("repos/blog.git");
    for stale in [
        "objects/tmp_objdir-incoming-Xq3v9A/pack/tmp_pack_k2L0aa",
        "objects/tmp_objdir-incoming-Xq3v9A/ab/cdef0123456789abcdef0123456789abcdef01",
        "objects/incoming-7Hd2kP/12/3456789abcdef0123456789abcdef0123456789a",
    ] {
        let path = repository.join(stale);
        fs::create_dir_all(path.parent().expect("parent")).expect("plant");
        fs::write(&path, "half a push").expect("plant");
    }
    assert_eq!(quarantine(&repository).len(), 2);

    let server = Server::start_with(&scratch.data(), &["--no-build"], &[]);
    wait_for(
        "the stale quarantine to be removed",
        Duration::from_secs(20),
        || quarantine(&repository).is_empty(),
    );
    assert!(repository.join("objects/pack").is_dir(), "git's own kept");
    assert_fsck(&repository);
    commit(&alice, &app, &[("a", "2")], "after the restart");
    assert_ok(&alice.git(&app, &["push", &server.url("blog.git"), "main"]));
    assert_eq!(
        rev_parse(&repository, "refs/heads/main"),
        rev_parse(&app, "HEAD")
    );
}
