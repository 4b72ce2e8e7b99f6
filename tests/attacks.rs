//! Attacks on the SSH git host, one test per attack. Each checks the refusal the attacker
//! sees, the exit status, and that nothing was spawned or created.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

fn repos(world: &World) -> Vec<String> {
    fs::read_dir(world.scratch.data().join("repos"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn unknown_key_is_refused_and_creates_nothing() {
    let world = World::new();
    let stranger = Client::new(&keygen(&world.scratch, "stranger"));
    let app = world.scratch.path("app");
    work_tree(&stranger, &app, &[("a", "1")]);
    let push = stranger.git(&app, &["push", &world.server.url("blog.git"), "main"]);
    assert!(!push.status.success());
    assert!(
        stderr(&push).contains("Permission denied (publickey)"),
        "{}",
        stderr(&push)
    );
    assert!(repos(&world).is_empty());
    assert_eq!(world.server.git_runs(), 0);
}

#[test]
fn another_customers_webspace_looks_like_a_missing_one() {
    let world = World::new();
    let bob_key = keygen(&world.scratch, "bob");
    apply_ok(&world.scratch.data(), &customer_yaml("bob", &[&bob_key]));
    let bob = Client::new(&bob_key);
    let app = world.scratch.path("app");
    work_tree(&bob, &app, &[("a", "1")]);

    let theirs = bob.git(&app, &["push", &world.server.url("blog.git"), "main"]);
    let missing = bob.git(&app, &["push", &world.server.url("nothing.git"), "main"]);
    assert!(!theirs.status.success() && !missing.status.success());
    assert!(
        stderr(&theirs)
            .contains("remote: error: webspace `blog` does not exist or you have no access to it"),
        "{}",
        stderr(&theirs)
    );
    assert_eq!(
        stderr(&theirs).replace("`blog`", "`X`"),
        stderr(&missing).replace("`nothing`", "`X`"),
        "same answer for someone else's webspace and a missing one"
    );
    let clone = bob.git(
        world.scratch.dir.path(),
        &["clone", &world.server.url("blog.git"), "stolen"],
    );
    assert!(!clone.status.success());
    assert!(repos(&world).is_empty());
    assert_eq!(world.server.git_runs(), 0);
}

#[test]
fn offering_someone_elses_public_key_first_gives_only_your_own_identity() {
    let world = World::new();
    let bob_key = keygen(&world.scratch, "bob");
    apply_ok(
        &world.scratch.data(),
        &(customer_yaml("bob", &[&bob_key]) + &webspace_yaml("bobsite", "bob")),
    );
    // Bob holds alice's *public* key only (ssh offers it, cannot sign, moves on to his own).
    let alice_public = world.scratch.path("alice-public-only.pub");
    fs::write(&alice_public, format!("{}\n", world.alice.key.public_line)).expect("pub");
    let mut bob = Client::new(&bob_key);
    bob.extra_identities.push(alice_public);
    let app = world.scratch.path("app");
    work_tree(&bob, &app, &[("a", "1")]);

    let as_alice = bob.git(&app, &["push", &world.server.url("blog.git"), "main"]);
    assert!(
        !as_alice.status.success(),
        "bob must not get alice's webspace"
    );
    assert!(
        stderr(&as_alice).contains("does not exist or you have no access"),
        "{}",
        stderr(&as_alice)
    );
    assert_ok(&bob.git(&app, &["push", &world.server.url("bobsite.git"), "main"]));
    assert!(world.server.log().contains("customer=bob"));
    assert!(!world.server.log().contains("customer=alice"));
}

#[test]
fn keys_added_and_removed_while_running_count_on_the_next_connection() {
    let world = World::new();
    let new_key = keygen(&world.scratch, "alice-laptop");
    let laptop = Client::new(&new_key);
    let app = world.scratch.path("app");
    work_tree(&laptop, &app, &[("a", "1")]);
    let url = world.server.url("blog.git");

    assert!(
        !laptop.git(&app, &["push", &url, "main"]).status.success(),
        "not yet added"
    );
    apply_ok(
        &world.scratch.data(),
        &customer_yaml("alice", &[&world.alice.key, &new_key]),
    );
    assert_ok(&laptop.git(&app, &["push", &url, "main"]));

    apply_ok(
        &world.scratch.data(),
        &customer_yaml("alice", &[&world.alice.key]),
    );
    let refused = laptop.git(&app, &["push", &url, "HEAD:refs/heads/other"]);
    assert!(!refused.status.success(), "removed key still works");
    assert!(
        stderr(&refused).contains("Permission denied (publickey)"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn claiming_another_customers_key_is_refused_and_never_locks_its_owner_out() {
    let world = World::new();
    let claim = apply(
        &world.scratch.data(),
        &customer_yaml("mallory", &[&world.alice.key]),
    );
    assert!(!claim.status.success(), "the claim was accepted");
    assert!(
        stderr(&claim).starts_with(
            "error: document 1: Customer `mallory`: ssh key #1 is already held by customer `alice`\nhint: "
        ),
        "{}",
        stderr(&claim)
    );
    assert!(
        !world
            .scratch
            .data()
            .join("resources/customers/mallory.yaml")
            .exists()
    );

    // Written by hand into the data directory, past `slipway apply`: the key stays alice's.
    fs::write(
        world
            .scratch
            .data()
            .join("resources/customers/mallory.yaml"),
        customer_yaml("mallory", &[&world.alice.key]).trim_end_matches("---\n"),
    )
    .expect("hand-written customer");
    wait_for(
        "the server to see both claims",
        Duration::from_secs(10),
        || {
            world
                .server
                .log()
                .contains("ssh key listed by several customers")
        },
    );
    let app = world.scratch.path("app");
    work_tree(&world.alice, &app, &[("a", "1")]);
    assert_ok(
        &world
            .alice
            .git(&app, &["push", &world.server.url("blog.git"), "main"]),
    );
    assert!(world.server.log().contains("customer=alice"));
}

/// Every request that is not a git service gets a one-line reason, exit status 1, and no
/// process.
#[test]
fn shells_commands_and_subsystems_are_refused_with_a_reason() {
    let world = World::new();
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (&[], None, "shell access is not offered here"),
        (
            &[],
            Some("ls -la"),
            "only git and the commands `ssh git@HOST help` lists are served here",
        ),
        (
            &[],
            Some("sh -c 'id'"),
            "only git and the commands `ssh git@HOST help` lists are served here",
        ),
        (
            &[],
            Some("git-upload-archive blog.git"),
            "only git and the commands",
        ),
        (
            &[],
            Some("git-receive-pack"),
            "expected exactly one repository argument",
        ),
        (
            &[],
            Some("git-receive-pack 'blog.git' 'x'"),
            "expected exactly one repository argument",
        ),
        (
            &[],
            Some("git-receive-pack 'blog.git'; touch /tmp/pwned"),
            "expected exactly one repository argument",
        ),
        (
            &[],
            Some("git-upload-pack --upload-pack=id blog.git"),
            "expected exactly one repository argument",
        ),
        (
            &["-s"],
            Some("sftp"),
            "subsystems (sftp, ...) are not offered here",
        ),
    ];
    for (extra, command, reason) in cases {
        let output = world.alice.ssh(&world.server, extra, *command);
        let said = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{extra:?} {command:?}: {said}"
        );
        assert!(
            said.contains(&format!("remote: error: {reason}")),
            "{extra:?} {command:?}: {said}"
        );
    }
    // A forced terminal: the pty is declined, and OpenSSH gives up on a forced one itself.
    for command in [None, Some("git-upload-pack blog.git")] {
        let output = world.alice.ssh(&world.server, &["-tt"], command);
        assert_eq!(output.status.code(), Some(255), "{command:?}");
        assert!(
            stderr(&output).contains("PTY allocation request failed"),
            "{}",
            stderr(&output)
        );
    }
    assert!(repos(&world).is_empty());
    assert_eq!(world.server.git_runs(), 0);
}

#[test]
fn port_and_x11_forwarding_are_refused() {
    let world = World::new();
    // -W opens a direct-tcpip channel (local forwarding).
    let direct = world
        .alice
        .ssh(&world.server, &["-W", "127.0.0.1:22"], None);
    assert_ne!(direct.status.code(), Some(0));
    assert!(
        stderr(&direct).contains("stdio forwarding failed"),
        "{}",
        stderr(&direct)
    );
    // -R asks the server to listen (remote forwarding).
    let remote = world.alice.ssh(
        &world.server,
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "127.0.0.1:0:127.0.0.1:9",
        ],
        Some("git-upload-pack blog.git"),
    );
    assert_ne!(remote.status.code(), Some(0));
    assert!(
        stderr(&remote).contains("forwarding failed"),
        "{}",
        stderr(&remote)
    );
    // X11: the request is declined (OpenSSH says so); the git command itself still runs.
    let mut x11 = std::process::Command::new("ssh");
    x11.args(world.alice.ssh_command().split_whitespace().skip(1))
        .args([
            "-X",
            "-p",
            &world.server.port.to_string(),
            "git@127.0.0.1",
            "git-upload-pack blog.git",
        ])
        .env("DISPLAY", ":0")
        .stdin(std::process::Stdio::null());
    let x11 = x11.output().expect("ssh -X");
    assert!(
        stderr(&x11).contains("X11 forwarding request failed"),
        "{}",
        stderr(&x11)
    );
    assert!(world.server.git_runs() <= 1);
}

#[test]
fn client_environment_never_reaches_git() {
    let world = World::new();
    let app = world.scratch.path("app");
    work_tree(&world.alice, &app, &[("a", "1")]);
    let trace = world.scratch.path("trace");
    // If the server passed client variables through, git would write this trace file.
    let mut push = world
        .alice
        .git_command(&app, &["push", &world.server.url("blog.git"), "main"]);
    push.env(
        "GIT_SSH_COMMAND",
        format!(
            "{} -o SetEnv=GIT_TRACE={} -o SendEnv=LANG",
            world.alice.ssh_command(),
            trace.display()
        ),
    );
    assert_ok(&push.output().expect("push"));
    assert!(!trace.exists(), "GIT_TRACE from the client reached git");
}

#[test]
fn hostile_repository_names_are_refused_and_create_nothing_outside_the_data_directory() {
    let world = World::new();
    let names = [
        "'../blog.git'",
        "'/../../blog.git'",
        "'blog/../../x.git'",
        "'/etc/passwd'",
        "'//blog.git'",
        "'~root/blog.git'",
        "'blog.git\n'",
        "'bl\"og'",
        "'Blog.git'",
        "'-blog.git'",
        "'.git'",
        "'..'",
        "'blog\u{2215}x'",
        &format!("'{}'", "a".repeat(300)),
    ];
    let before: Vec<_> = fs::read_dir(world.scratch.dir.path())
        .expect("scratch")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    for name in names {
        let output = world.alice.ssh(
            &world.server,
            &[],
            Some(&format!("git-receive-pack {name}")),
        );
        assert_eq!(
            output.status.code(),
            Some(1),
            "{name:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).starts_with("remote: error: "),
            "{name:?}: {}",
            stderr(&output)
        );
    }
    // Non-UTF-8 bytes go through a shell-free path: `ssh` passes argv bytes verbatim.
    let mut raw = std::process::Command::new("ssh");
    raw.args(world.alice.ssh_command().split_whitespace().skip(1))
        .args(["-p", &world.server.port.to_string(), "git@127.0.0.1"])
        .arg(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                b"git-receive-pack '\xff\xfe.git'",
            ),
        );
    let output = raw.output().expect("ssh");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));

    assert!(repos(&world).is_empty());
    let after: Vec<_> = fs::read_dir(world.scratch.dir.path())
        .expect("scratch")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after, "nothing created beside the data directory");
    assert_eq!(world.server.git_runs(), 0);
}

#[test]
fn a_tree_with_a_dot_git_entry_is_refused() {
    let world = World::new();
    let app = world.pushed_app();
    let good = rev_parse(&world.repository("blog"), "refs/heads/main");

    // Build a tree holding `.git/hooks/post-checkout` by hand: git's porcelain refuses to.
    let git = |args: &[&str], input: Option<&str>| {
        world
            .alice
            .git_plumbing(&app, args, input.unwrap_or_default().as_bytes())
    };
    let blob = git(&["hash-object", "-w", "--stdin"], Some("#!/bin/sh\nid\n"));
    let hooks = git(
        &["mktree"],
        Some(&format!("100755 blob {blob}\tpost-checkout\n")),
    );
    let dot_git = git(&["mktree"], Some(&format!("040000 tree {hooks}\thooks\n")));
    let root = git(
        &["mktree"],
        Some(&format!(
            "040000 tree {dot_git}\t.git\n100644 blob {blob}\tREADME\n"
        )),
    );
    let head = git(&["rev-parse", "HEAD"], None);
    let commit = git(&["commit-tree", &root, "-p", &head, "-m", "evil"], None);

    let push = world.alice.git(
        &app,
        &[
            "push",
            &world.server.url("blog.git"),
            &format!("{commit}:refs/heads/main"),
        ],
    );
    assert!(!push.status.success());
    assert!(stderr(&push).contains("hasDotgit"), "{}", stderr(&push));
    assert_eq!(
        rev_parse(&world.repository("blog"), "refs/heads/main"),
        good
    );
    assert_fsck(&world.repository("blog"));
}

#[test]
fn unauthenticated_connections_do_not_get_a_shell_of_any_kind() {
    let world = World::new();
    // Password and keyboard-interactive are not offered at all.
    let output = std::process::Command::new("ssh")
        .args([
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-p",
            &world.server.port.to_string(),
            "git@127.0.0.1",
            "id",
        ])
        .output()
        .expect("ssh");
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains("Permission denied (publickey)"),
        "{}",
        stderr(&output)
    );
    let _ = Duration::ZERO;
}

#[test]
fn a_deleted_webspace_does_not_hand_its_code_to_the_next_owner_of_the_name() {
    let world = World::new();
    let app = world.scratch.path("app");
    work_tree(&world.alice, &app, &[("secret.txt", "alice's code\n")]);
    assert_ok(
        &world
            .alice
            .git(&app, &["push", &world.server.url("blog.git"), "main"]),
    );

    let delete = std::process::Command::new(SLIPWAY)
        .args(["delete", "webspace", "blog", "--data"])
        .arg(world.scratch.data())
        .output()
        .expect("slipway delete");
    assert_ok(&delete);
    wait_for(
        "the repository to be retired",
        Duration::from_secs(10),
        || !world.repository("blog").exists(),
    );
    let bob_key = keygen(&world.scratch, "bob");
    apply_ok(
        &world.scratch.data(),
        &(customer_yaml("bob", &[&bob_key]) + &webspace_yaml("blog", "bob")),
    );
    let bob = Client::new(&bob_key);
    let clone = world.scratch.path("bobs-clone");
    assert_ok(&bob.git(
        world.scratch.dir.path(),
        &[
            "clone",
            "-q",
            &world.server.url("blog.git"),
            clone.to_str().expect("utf-8"),
        ],
    ));
    assert!(
        rev_parse(&clone, "HEAD").is_none(),
        "bob got alice's history"
    );
    assert!(!clone.join("secret.txt").exists());
    assert!(
        world
            .scratch
            .data()
            .join("retired")
            .read_dir()
            .expect("retired")
            .count()
            == 1
    );
}

/// Every file under `dir` with its contents, for "nothing here changed".
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = vec![];
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).expect("read_dir").flatten() {
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                pending.push(path);
            } else {
                found.push((path.clone(), fs::read(&path).unwrap_or_default()));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn a_repository_symlinked_to_another_webspaces_is_refused_for_clone_and_push() {
    let world = World::new();
    let bob_key = keygen(&world.scratch, "bob");
    apply_ok(
        &world.scratch.data(),
        &(customer_yaml("bob", &[&bob_key]) + &webspace_yaml("bobsite", "bob")),
    );
    let bob = Client::new(&bob_key);
    let bobs_app = world.scratch.path("bobs-app");
    work_tree(&bob, &bobs_app, &[("secret.txt", "bob's code\n")]);
    assert_ok(&bob.git(
        &bobs_app,
        &["push", &world.server.url("bobsite.git"), "main"],
    ));
    let target = world.repository("bobsite");
    let before = snapshot(&target);
    std::os::unix::fs::symlink("bobsite.git", world.repository("blog")).expect("plant link");

    let clone = world.scratch.path("stolen");
    let cloned = world.alice.git(
        world.scratch.dir.path(),
        &[
            "clone",
            &world.server.url("blog.git"),
            clone.to_str().expect("utf-8"),
        ],
    );
    assert!(!cloned.status.success(), "clone through a link succeeded");
    assert!(
        stderr(&cloned).contains(
            "remote: error: the repository of `blog` is not a plain directory on the server"
        ),
        "{}",
        stderr(&cloned)
    );
    assert!(!clone.join("secret.txt").exists());

    let app = world.scratch.path("app");
    work_tree(&world.alice, &app, &[("a", "alice's push\n")]);
    let pushed = world
        .alice
        .git(&app, &["push", &world.server.url("blog.git"), "main"]);
    assert!(!pushed.status.success(), "push through a link succeeded");
    assert!(
        stderr(&pushed).contains(
            "remote: error: the repository of `blog` is not a plain directory on the server"
        ),
        "{}",
        stderr(&pushed)
    );
    assert_eq!(snapshot(&target), before, "bob's repository changed");
    assert_fsck(&target);
}

/// Connections opened at once by [`half_open`]. A burst of hundreds of SYNs makes the kernel
/// answer with SYN cookies, and a cookie connection whose last ACK is dropped exists only on
/// the client's side: it would wait for a server that never saw it.
const CONNECT_BATCH: usize = 50;

/// Opens `count` TCP connections to `port` from `source` that never say a word, and sorts them
/// by what the server did: sent its SSH version (held open, returned) or closed at once. The
/// held ones stay open while the next are opened.
fn half_open(source: &str, port: u16, count: usize) -> (Vec<tokio::net::TcpStream>, usize) {
    use tokio::io::AsyncReadExt;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let source: std::net::SocketAddr = format!("{source}:0").parse().expect("address");
    runtime.block_on(async move {
        let mut held = vec![];
        let mut closed = 0;
        for batch in (0..count).collect::<Vec<_>>().chunks(CONNECT_BATCH) {
            let mut connecting = tokio::task::JoinSet::new();
            for _ in batch {
                connecting.spawn(async move {
                    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                    socket.bind(source).expect("bind the source address");
                    let mut stream = socket
                        .connect(([127, 0, 0, 1], port).into())
                        .await
                        .expect("connect");
                    let mut banner = [0u8; 8];
                    // A guard against a hang, not a timing assertion.
                    let read = tokio::time::timeout(Duration::from_secs(60), async {
                        stream.read_exact(&mut banner).await
                    })
                    .await
                    .expect("the server answers or closes");
                    match read {
                        Ok(_) => {
                            assert_eq!(&banner, b"SSH-2.0-");
                            Some(stream)
                        }
                        Err(_) => None,
                    }
                });
            }
            while let Some(result) = connecting.join_next().await {
                match result.expect("joined") {
                    Some(stream) => held.push(stream),
                    None => closed += 1,
                }
            }
        }
        (held, closed)
    })
}

#[test]
fn half_open_connections_from_one_address_do_not_lock_out_another() {
    let world = World::new();
    let (held, closed) = half_open("127.0.0.2", world.server.port, 500);

    // While the flood's connections are held open, a client from another address pushes.
    let app = world.scratch.path("app");
    work_tree(&world.alice, &app, &[("a", "1")]);
    let push = world
        .alice
        .git_command(&app, &["push", &world.server.url("blog.git"), "main"])
        .env(
            "GIT_SSH_COMMAND",
            format!("{} -o BindAddress=127.0.0.3", world.alice.ssh_command()),
        )
        .output()
        .expect("git push");
    assert_ok(&push);
    assert!(
        world.server.log().contains("peer=127.0.0.3:"),
        "the push came from 127.0.0.3"
    );
    let cap = slipway_git_server::admission::MAX_UNAUTHENTICATED_PER_ADDRESS;
    assert_eq!(held.len(), cap, "the flooding address keeps only its share");
    assert_eq!(closed, 500 - cap);
    drop(held);
}
