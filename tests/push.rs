//! Pushing and cloning through the SSH git server, as a customer does it.

mod common;

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn owner_pushes_clones_back_and_pushes_again() {
    let world = World::new();
    let app = world.scratch.path("app");
    work_tree(
        &world.alice,
        &app,
        &[
            ("index.html", "<h1>hello</h1>\n"),
            ("bin/run", "#!/bin/sh\n"),
        ],
    );

    let push = world
        .alice
        .git(&app, &["push", &world.server.url("blog.git"), "main"]);
    assert_ok(&push);
    // The repository's hook ran with the SLIPWAY_* contract of this push.
    let said = stderr(&push);
    assert!(said.contains("remote: slipway: `main` ("), "{said}");
    assert!(said.contains("of `blog` accepted from `alice`"), "{said}");
    assert!(
        said.contains("remote: slipway: `main` of `blog` is now at"),
        "{said}"
    );
    assert!(
        !said.contains("warning:"),
        "git warns about the repository config: {said}"
    );

    let clone = world.scratch.path("clone");
    assert_ok(&world.alice.git(
        world.scratch.dir.path(),
        &[
            "clone",
            "-q",
            &world.server.url("blog.git"),
            clone.to_str().expect("utf-8"),
        ],
    ));
    assert_eq!(
        fs::read_to_string(clone.join("index.html")).expect("cloned file"),
        "<h1>hello</h1>\n"
    );
    assert_eq!(rev_parse(&clone, "HEAD"), rev_parse(&app, "HEAD"));

    commit(
        &world.alice,
        &app,
        &[("index.html", "<h1>hello again</h1>\n")],
        "second",
    );
    assert_ok(
        &world
            .alice
            .git(&app, &["push", &world.server.url("/blog.git"), "main"]),
    );
    assert_eq!(
        rev_parse(&world.repository("blog"), "refs/heads/main"),
        rev_parse(&app, "HEAD")
    );
    assert_fsck(&world.repository("blog"));
}

#[test]
fn every_spelling_of_the_repository_reaches_the_same_webspace() {
    let world = World::new();
    let app = world.scratch.path("app");
    work_tree(&world.alice, &app, &[("a", "1")]);
    let port = world.server.port;
    // git asks for `/blog.git`, `~/blog.git`, `blog.git` and `blog` respectively.
    let urls = [
        format!("ssh://git@127.0.0.1:{port}/blog.git"),
        format!("ssh://git@127.0.0.1:{port}/~/blog.git"),
        "git@127.0.0.1:blog.git".to_owned(),
        "git@127.0.0.1:blog".to_owned(),
    ];
    for (n, url) in urls.iter().enumerate() {
        let branch = format!("HEAD:refs/heads/b{n}");
        let mut push = world.alice.git_command(&app, &["push", url, &branch]);
        push.env(
            "GIT_SSH_COMMAND",
            format!("{} -p {port}", world.alice.ssh_command()),
        );
        assert_ok(&push.output().expect("push"));
    }
    let repos: Vec<_> = fs::read_dir(world.scratch.data().join("repos"))
        .expect("repos")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(repos, ["blog.git"]);
    for n in 0..4 {
        assert!(rev_parse(&world.repository("blog"), &format!("refs/heads/b{n}")).is_some());
    }
}

#[test]
fn host_key_survives_a_restart() {
    let world = World::new();
    let key_file = world.scratch.data().join("ssh_host_ed25519_key");
    let before = fs::read(&key_file).expect("host key written at start");
    let output = world.server.stop();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("every running push finished"),
        "clean shutdown"
    );
    let server = Server::start(&world.scratch.data());
    assert_eq!(fs::read(&key_file).expect("host key"), before);
    // Same key on the wire: a client that pinned it in known_hosts still connects.
    let known_hosts = world.scratch.path("known_hosts");
    let scan = run_ok(std::process::Command::new("ssh-keyscan").args([
        "-t",
        "ed25519",
        "-p",
        &server.port.to_string(),
        "127.0.0.1",
    ]));
    fs::write(&known_hosts, &scan.stdout).expect("known_hosts");
    let pinned = fs::read_to_string(&known_hosts).expect("known_hosts");
    let public = String::from_utf8_lossy(
        &run_ok(
            std::process::Command::new("ssh-keygen")
                .arg("-y")
                .arg("-f")
                .arg(&key_file),
        )
        .stdout,
    )
    .into_owned();
    let key_body = public.split_whitespace().nth(1).expect("key body");
    assert!(pinned.contains(key_body), "{pinned} vs {public}");
}

/// A GIT_SSH_COMMAND that holds the client's side of the push until `release` exists, so the
/// server holds the push lock for as long as the test wants.
fn held_ssh(client: &Client, scratch: &Scratch, release: &std::path::Path) -> String {
    let script = scratch.path(&format!(
        "held-{}.sh",
        release.file_name().expect("name").to_string_lossy()
    ));
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n{{ while [ ! -e '{}' ]; do sleep 0.05; done; exec cat; }} | {} \"$@\"\n",
            release.display(),
            client.ssh_command()
        ),
    )
    .expect("script");
    format!("sh {}", script.display())
}

#[test]
fn pushes_to_one_webspace_wait_for_each_other() {
    let world = World::new();
    let app = world.scratch.path("app");
    work_tree(&world.alice, &app, &[("a", "1")]);
    let release = world.scratch.path("release");
    let log = world.scratch.path("first.err");
    let mut first = world
        .alice
        .git_command(
            &app,
            &["push", &world.server.url("blog.git"), "HEAD:refs/heads/one"],
        )
        .env(
            "GIT_SSH_COMMAND",
            held_ssh(&world.alice, &world.scratch, &release),
        )
        .env("GIT_SSH_VARIANT", "ssh")
        .stderr(fs::File::create(&log).expect("log"))
        .spawn()
        .expect("first push");
    wait_for(
        "the first push to hold the lock",
        Duration::from_secs(20),
        || world.server.log().contains("push lock acquired"),
    );

    let second_log = world.scratch.path("second.err");
    let mut second = world
        .alice
        .git_command(
            &app,
            &["push", &world.server.url("blog.git"), "HEAD:refs/heads/two"],
        )
        .stderr(fs::File::create(&second_log).expect("log"))
        .stdout(Stdio::null())
        .spawn()
        .expect("second push");
    wait_for(
        "the second push to be told it waits",
        Duration::from_secs(20),
        || {
            fs::read_to_string(&second_log)
                .unwrap_or_default()
                .contains("waiting for another push to `blog` to finish")
        },
    );
    assert!(
        second.try_wait().expect("poll").is_none(),
        "second push must wait"
    );

    fs::write(&release, "").expect("release");
    assert!(
        first.wait().expect("first").success(),
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        second.wait().expect("second").success(),
        "{}",
        fs::read_to_string(&second_log).unwrap_or_default()
    );
    let repository = world.repository("blog");
    assert!(rev_parse(&repository, "refs/heads/one").is_some());
    assert!(rev_parse(&repository, "refs/heads/two").is_some());
    assert_fsck(&repository);
}

#[test]
fn pushes_to_different_webspaces_overlap() {
    let world = World::new();
    let key = world.alice.key.clone();
    apply_ok(
        &world.scratch.data(),
        &(customer_yaml("alice", &[&key]) + &webspace_yaml("shop", "alice")),
    );
    let app = world.scratch.path("app");
    work_tree(&world.alice, &app, &[("a", "1")]);
    let release = world.scratch.path("release");
    let mut held = world
        .alice
        .git_command(&app, &["push", &world.server.url("blog.git"), "main"])
        .env(
            "GIT_SSH_COMMAND",
            held_ssh(&world.alice, &world.scratch, &release),
        )
        .env("GIT_SSH_VARIANT", "ssh")
        .stderr(Stdio::null())
        .spawn()
        .expect("held push");
    wait_for(
        "the blog push to hold its lock",
        Duration::from_secs(20),
        || world.server.log().contains("push lock acquired"),
    );
    // While blog's push is held open, a push to shop goes through.
    assert_ok(
        &world
            .alice
            .git(&app, &["push", &world.server.url("shop.git"), "main"]),
    );
    assert!(
        held.try_wait().expect("poll").is_none(),
        "blog push still running"
    );
    fs::write(&release, "").expect("release");
    assert!(held.wait().expect("held push").success());
    assert_fsck(&world.repository("blog"));
    assert_fsck(&world.repository("shop"));
}

#[test]
fn killing_the_client_mid_push_leaves_no_process_and_a_sound_repository() {
    let world = World::new();
    let app = world.pushed_app();
    let before = rev_parse(&world.repository("blog"), "refs/heads/main");

    // 8 MB of incompressible data, and an ssh that stalls after the first 256 KiB of the pack.
    let noise =
        run_ok(std::process::Command::new("head").args(["-c", "8000000", "/dev/urandom"])).stdout;
    fs::write(app.join("noise.bin"), noise).expect("noise");
    commit(&world.alice, &app, &[], "big");
    let script = world.scratch.path("stall.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n{{ head -c 262144; sleep 60; }} | {} \"$@\"\n",
            world.alice.ssh_command()
        ),
    )
    .expect("script");
    let mut push = world
        .alice
        .git_command(&app, &["push", &world.server.url("blog.git"), "main"])
        .env("GIT_SSH_COMMAND", format!("sh {}", script.display()))
        .env("GIT_SSH_VARIANT", "ssh")
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("push");
    let repository = world.repository("blog");
    wait_for(
        "receive-pack to be receiving",
        Duration::from_secs(20),
        || !processes_in(&repository).is_empty(),
    );
    kill_client(&mut push);

    wait_for(
        "no git process left for the repository",
        Duration::from_secs(20),
        || processes_in(&repository).is_empty(),
    );
    assert_eq!(
        rev_parse(&repository, "refs/heads/main"),
        before,
        "ref did not move"
    );
    assert_fsck(&repository);
}

trait ProcessGroup {
    fn process_group(&mut self, group: i32) -> &mut Self;
}

impl ProcessGroup for std::process::Command {
    fn process_group(&mut self, group: i32) -> &mut Self {
        std::os::unix::process::CommandExt::process_group(self, group)
    }
}

#[test]
fn sigterm_lets_a_running_push_finish_and_takes_no_new_work() {
    let World {
        scratch,
        server,
        alice,
    } = World::new();
    let app = scratch.path("app");
    work_tree(&alice, &app, &[("a", "1")]);
    let release = scratch.path("release");
    let url = server.url("blog.git");
    let mut held = alice
        .git_command(&app, &["push", &url, "main"])
        .env("GIT_SSH_COMMAND", held_ssh(&alice, &scratch, &release))
        .env("GIT_SSH_VARIANT", "ssh")
        .stderr(fs::File::create(scratch.path("held.err")).expect("log"))
        .spawn()
        .expect("held push");
    wait_for("the push to be running", Duration::from_secs(20), || {
        server.log().contains("push lock acquired")
    });

    server.terminate();
    wait_for(
        "the server to begin its drain",
        Duration::from_secs(20),
        || server.log().contains("shutting down"),
    );
    let refused = alice.git(&app, &["ls-remote", &url]);
    assert!(
        !refused.status.success(),
        "new connections are refused while draining"
    );
    assert!(
        held.try_wait().expect("poll").is_none(),
        "the running push is not cut"
    );

    fs::write(&release, "").expect("release");
    assert!(
        held.wait().expect("held push").success(),
        "the running push finished: {}\n{}",
        fs::read_to_string(scratch.path("held.err")).unwrap_or_default(),
        server.log()
    );
    let output = server.wait_stopped();
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("every running push finished"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let repository = scratch.data().join("repos/blog.git");
    assert_eq!(
        rev_parse(&repository, "refs/heads/main"),
        rev_parse(&app, "HEAD")
    );
    assert_fsck(&repository);
}

#[test]
fn a_push_still_running_when_the_grace_period_ends_is_told_why_it_stopped() {
    let World {
        scratch,
        server,
        alice,
    } = World::with(&["--no-build", "--shutdown-grace", "1"], &[]);
    let app = scratch.path("app");
    work_tree(&alice, &app, &[("a", "1")]);
    // Never released: the push is still sending its pack when the grace period ends.
    let release = scratch.path("release");
    let url = server.url("blog.git");
    let held = alice
        .git_command(&app, &["push", &url, "main"])
        .env("GIT_SSH_COMMAND", held_ssh(&alice, &scratch, &release))
        .env("GIT_SSH_VARIANT", "ssh")
        .stderr(Stdio::piped())
        .spawn()
        .expect("held push");
    wait_for("the push to be running", Duration::from_secs(20), || {
        server.log().contains("push lock acquired")
    });
    server.terminate();
    let output = server.wait_stopped();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("still running after the grace period"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    fs::write(&release, "").expect("release the client's ssh");
    let pushed = held.wait_with_output().expect("held push");
    let said = String::from_utf8_lossy(&pushed.stderr);
    assert!(!pushed.status.success(), "{said}");
    assert!(
        said.contains(
            "remote: error: the server is shutting down and stopped this push before it finished"
        ) && said.contains("remote: hint: push again when the server is back"),
        "{said}"
    );
    let repository = scratch.data().join("repos/blog.git");
    assert_eq!(
        rev_parse(&repository, "refs/heads/main"),
        None,
        "no ref moved"
    );
    assert_fsck(&repository);
}
