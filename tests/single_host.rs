//! `slipway up` end to end: push, and the app answers through the router before `git push`
//! returns; previews per branch; broken releases never take traffic. Real Docker engine.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const APP: &str =
    "FROM slipway-test/busybox:latest\nCOPY . /www\nCMD exec httpd -f -p \"$PORT\" -h /www\n";

/// The single-host tests' ways with a [`Host`]: webspaces `web-<pid>`.
impl Host {
    fn new() -> Self {
        Self::with(&["--drain", "1"])
    }

    /// With `slipway up ARGS` as its server.
    fn with(args: &[&str]) -> Self {
        Self::up("web", args)
    }

    fn push(&self, app: &std::path::Path, refspecs: &[&str]) -> std::process::Output {
        let url = self.server().url(&format!("{}.git", self.name));
        let mut args = vec!["push", "-f", url.as_str()];
        args.extend_from_slice(refspecs);
        self.alice.git(app, &args)
    }

    /// GET / with `Host: HOST.localhost` through the router: (status, body).
    fn get(&self, host: &str) -> (u16, String) {
        http(
            self.server().http_port.expect("router"),
            &format!("{host}.localhost"),
        )
    }

    /// Local images of this webspace (`slipway/<name>`).
    fn images(&self) -> usize {
        let output = Command::new("docker")
            .args(["image", "ls", "-q", &format!("slipway/{}", self.name)])
            .output()
            .expect("docker image ls");
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .count()
    }

    fn containers(&self) -> Vec<String> {
        containers(&format!("label=dev.slipway.webspace={}", self.name))
    }
}

fn site(host: &Host, text: &str) -> std::path::PathBuf {
    let app = host.scratch.path("app");
    work_tree(
        &host.alice,
        &app,
        &[("Dockerfile", APP), ("index.html", text)],
    );
    app
}

#[test]
fn a_push_is_served_before_git_push_returns_and_branches_get_previews() {
    let host = Host::new();
    let app = site(&host, &format!("v1 of {}\n", host.name));
    let push = host.push(&app, &["main"]);
    assert_ok(&push);
    let said = stderr(&push);
    assert!(
        said.contains("remote: slipway: staged release v1 (`")
            && said.contains(&format!(
                "remote: slipway: deployed `main` v1 → http://{}.localhost:",
                host.name
            )),
        "{said}"
    );
    // No waiting: the push returned, so the app answers now.
    assert_eq!(
        host.get(&host.name),
        (200, format!("v1 of {}\n", host.name))
    );

    commit(&host.alice, &app, &[("index.html", "preview\n")], "preview");
    let preview = host.push(&app, &["HEAD:refs/heads/feature-x"]);
    assert_ok(&preview);
    assert!(
        stderr(&preview).contains("deployed `feature-x` v2 →"),
        "versions count per webspace, across branches: {}",
        stderr(&preview)
    );
    assert_eq!(
        host.get(&format!("feature-x.{}", host.name)),
        (200, "preview\n".to_owned())
    );
    assert_eq!(
        host.get(&host.name).1,
        format!("v1 of {}\n", host.name),
        "production unchanged"
    );
    assert_eq!(host.containers().len(), 2);

    assert_ok(&host.push(&app, &[":feature-x"]));
    assert_eq!(
        host.get(&format!("feature-x.{}", host.name)).0,
        404,
        "the preview is gone when the push returns"
    );
    wait_for(
        "the preview's container to go",
        Duration::from_secs(20),
        || host.containers().len() == 1,
    );
    assert_eq!(host.get("nobody").0, 404, "unknown host");

    // A body limit of the webspace's own: the router answers 413, the app never sees it.
    let limited = webspace_yaml(&host.name, "alice").replace(
        "  customer: alice\n",
        "  customer: alice\n  maxRequestBody: \"8\"\n",
    );
    apply_ok(&host.scratch.data(), &limited);
    let port = host.server().http_port.expect("router");
    let post = |body: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("router");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {}.localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            host.name,
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("request");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    };
    wait_for("the webspace's body limit", Duration::from_secs(20), || {
        post("123456789").starts_with("HTTP/1.1 413 ")
    });
    assert!(
        post("123456789").contains("larger than this app accepts (8 bytes)"),
        "the 413 says why"
    );
    assert!(
        !post("12345678").starts_with("HTTP/1.1 413 "),
        "a body at the limit passes"
    );
    let table = Command::new(SLIPWAY)
        .args(["get", "ws", &host.name, "--data"])
        .arg(host.scratch.data())
        .output()
        .expect("slipway get ws");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains(&format!("http://{}.localhost:", host.name)) && table.contains("Ready"),
        "{table}"
    );
}

#[test]
fn a_release_that_does_not_start_is_rejected_and_the_old_one_keeps_serving() {
    let host = Host::new();
    let app = site(&host, "good\n");
    assert_ok(&host.push(&app, &["main"]));
    commit(
        &host.alice,
        &app,
        &[(
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nCMD echo starting; echo cannot bind >&2; exit 3\n",
        )],
        "broken",
    );
    let push = host.push(&app, &["main"]);
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    assert!(
        said.contains("remote: error: `main` did not become healthy on `/`"),
        "{said}"
    );
    assert!(said.contains("exited with code 3"), "{said}");
    assert!(said.contains("remote:   | cannot bind"), "{said}");
    assert_eq!(host.get(&host.name), (200, "good\n".to_owned()));
    assert_eq!(host.containers().len(), 1, "no stray container");
    assert_eq!(host.images(), 1, "the refused release's image is removed");
}

/// Commits a Dockerfile whose app exits at start: a push of it is refused.
fn commit_crashing_app(host: &Host, app: &Path) {
    commit(
        &host.alice,
        app,
        &[(
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nCMD exit 3\n",
        )],
        "broken",
    );
}

#[test]
fn a_push_refused_by_one_branch_leaves_nothing_of_the_others() {
    let host = Host::new();
    let app = site(&host, "good\n");
    assert_ok(&host.push(&app, &["main"]));
    commit(&host.alice, &app, &[("index.html", "a\n")], "a");
    assert_ok(&host.alice.git(&app, &["branch", "a-good"]));
    commit_crashing_app(&host, &app);
    let push = host.push(&app, &["a-good", "HEAD:refs/heads/b-broken"]);
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    assert!(
        said.contains("remote: slipway: `a-good` started and answers")
            && said.contains("remote: error: `b-broken` did not become healthy"),
        "a-good is staged and started before b-broken fails: {said}"
    );
    assert!(
        said.contains("; nothing was deployed"),
        "b-broken never served: {said}"
    );
    assert_eq!(host.containers().len(), 1, "only main's container is left");
    assert_eq!(host.images(), 1, "only main's image is left");
    let releases: Vec<String> = std::fs::read_dir(host.scratch.data().join("resources/releases"))
        .expect("releases")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        releases.len(),
        1,
        "only main's release is left: {releases:?}"
    );
    assert_eq!(host.get(&format!("a-good.{}", host.name)).0, 404);
    assert_eq!(host.get(&host.name), (200, "good\n".to_owned()));
}

#[test]
fn a_refused_push_keeps_the_images_it_found_built() {
    let host = Host::new();
    let app = site(&host, "kept\n");
    assert_ok(&host.push(&app, &["main"]));
    let main = host.alice.git(&app, &["rev-parse", "HEAD"]);
    let main = String::from_utf8_lossy(&main.stdout).trim().to_owned();
    commit_crashing_app(&host, &app);
    // `copy` has main's tree, built before: it is reused, and stays after the refusal.
    let push = host.push(
        &app,
        &[&format!("{main}:refs/heads/copy"), "HEAD:refs/heads/broken"],
    );
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    assert!(said.contains("was built before; reusing"), "{said}");
    assert_eq!(host.images(), 1, "main's image is still there");
    assert_eq!(host.get(&host.name), (200, "kept\n".to_owned()));
    // And a later push of that tree still finds it built.
    let again = host.push(&app, &[&format!("{main}:refs/heads/copy")]);
    assert_ok(&again);
    assert!(stderr(&again).contains("was built before; reusing"));
}

#[test]
fn pushing_master_to_a_main_webspace_serves_a_preview_and_says_how_to_reach_production() {
    let host = Host::new();
    let app = site(&host, "m\n");
    let push = host.push(&app, &["main:master"]);
    assert_ok(&push);
    let said = stderr(&push);
    assert!(
        said.contains(
            "remote: hint: `master` is a preview here: the production branch is `main`; push `master:main`"
        ),
        "{said}"
    );
    assert_eq!(
        host.get(&format!("master.{}", host.name)),
        (200, "m\n".to_owned())
    );
    assert_eq!(host.get(&host.name).0, 404, "production has nothing yet");
}

#[test]
fn a_redeploy_under_load_drops_no_request() {
    let host = Host::new();
    let app = site(&host, "one\n");
    assert_ok(&host.push(&app, &["main"]));
    let port = host.server().http_port.expect("router");
    let target = format!("{}.localhost", host.name);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut bodies) =
                (0, Vec::new(), std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = http(port, &target);
                if status == 200 {
                    ok += 1;
                    bodies.insert(body);
                } else {
                    failed.push(status);
                }
            }
            (ok, failed, bodies)
        })
    };
    commit(&host.alice, &app, &[("index.html", "two\n")], "two");
    assert_ok(&host.push(&app, &["main"]));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, bodies) = load.join().expect("load");
    assert!(
        failed.is_empty(),
        "{} failed requests: {failed:?} ({ok} ok)",
        failed.len()
    );
    assert!(
        bodies.contains("one\n") && bodies.contains("two\n"),
        "{bodies:?}"
    );
    assert_eq!(host.get(&host.name).1, "two\n");
}

#[test]
fn restarting_up_keeps_apps_serving_without_duplicates_even_after_the_customer_lost_its_keys() {
    let mut host = Host::new();
    let app = site(&host, "steady\n");
    assert_ok(&host.push(&app, &["main"]));
    let before = host.containers();
    let server = host.server.take().expect("server");
    server.stop();
    // The customer loses every key while the server is down: the app keeps serving.
    apply_ok(&host.scratch.data(), &customer_yaml("alice", &[]));
    host.server = Some(Server::up(&host.scratch.data(), &["--drain", "1"]));
    wait_for(
        "the app to be routed again",
        Duration::from_secs(20),
        || host.get(&host.name) == (200, "steady\n".to_owned()),
    );
    assert_eq!(host.containers(), before, "adopted, not restarted");
}

#[test]
fn a_push_whose_server_was_killed_during_its_build_goes_live_when_pushed_again() {
    // A service manager's stop: TERM, then KILL 5 s later, while the push builds (the server's
    // own grace is longer, so it dies with the push in flight).
    let mut host = Host::with(&["--drain", "1", "--shutdown-grace", "60"]);
    let app = host.scratch.path("app");
    // Never in the build cache: the build is still running when the server dies.
    let dockerfile = format!(
        "FROM slipway-test/busybox:latest\nCOPY . /www\nRUN echo {:?} && sleep 8\nCMD exec httpd -f -p \"$PORT\" -h /www\n",
        std::time::SystemTime::now()
    );
    work_tree(
        &host.alice,
        &app,
        &[
            ("Dockerfile", &dockerfile),
            ("index.html", "after the kill\n"),
        ],
    );
    let url = host.server().url(&format!("{}.git", host.name));
    let mut push = host
        .alice
        .git_command(&app, &["push", &url, "main"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("push");
    let repository = host.scratch.data().join(format!("repos/{}.git", host.name));
    wait_for("the build to run", Duration::from_secs(60), || {
        processes_in(&repository)
            .iter()
            .any(|p| p.contains("hook pre-receive"))
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut server = host.server.take().expect("server");
    server.terminate();
    std::thread::sleep(Duration::from_secs(5));
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("wait");
    drop(server);
    let _ = push.kill();
    let _ = push.wait();
    // What the killed server started dies with it: nothing of the push runs on.
    wait_for(
        "the push's git and hook processes to go",
        Duration::from_secs(20),
        || processes_in(&repository).is_empty(),
    );

    host.server = Some(Server::up(&host.scratch.data(), &["--drain", "1"]));
    let again = host.push(&app, &["main"]);
    assert_ok(&again);
    assert!(
        stderr(&again).contains("deployed `main`"),
        "{}",
        stderr(&again)
    );
    assert_eq!(host.get(&host.name), (200, "after the kill\n".to_owned()));
    assert_eq!(host.containers().len(), 1, "one container serves");
    assert_fsck(&repository);
}

#[test]
fn a_release_left_staged_by_a_push_the_server_stopped_is_failed_and_removed_after_a_restart() {
    let mut host = Host::with(&["--drain", "1", "--shutdown-grace", "1"]);
    let app = host.scratch.path("app");
    // Starts, never answers: pre-receive waits for it while its Release is `Staged`.
    work_tree(
        &host.alice,
        &app,
        &[(
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nCMD exec sleep 600\n",
        )],
    );
    let url = host.server().url(&format!("{}.git", host.name));
    let push = host
        .alice
        .git_command(&app, &["push", &url, "main"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("push");
    wait_for(
        "the release to start unrouted",
        Duration::from_secs(60),
        || host.containers().len() == 1,
    );
    let server = host.server.take().expect("server");
    server.terminate();
    server.wait_stopped();
    let pushed = push.wait_with_output().expect("push");
    assert!(!pushed.status.success());
    assert_eq!(host.containers().len(), 1, "left behind by the killed push");

    host.server = Some(Server::up(&host.scratch.data(), &["--drain", "1"]));
    wait_for(
        "the abandoned release's container to go",
        Duration::from_secs(30),
        || host.containers().is_empty(),
    );
    let releases = host.scratch.data().join("resources/releases");
    let entries: Vec<_> = std::fs::read_dir(&releases)
        .expect("releases")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].contains("phase: Failed")
            && entries[0].contains("its push did not finish: the server stopped during it"),
        "{}",
        entries[0]
    );
    assert_eq!(host.get(&host.name).0, 404, "nothing was ever deployed");
}

#[test]
fn a_container_the_engine_restarts_is_routed_again_without_waiting_for_a_periodic_pass() {
    // No periodic pass during the test: only the engine's events can bring the route back.
    let host = Host::with(&["--drain", "1", "--recheck", "3600"]);
    let app = site(&host, "again\n");
    assert_ok(&host.push(&app, &["main"]));
    let before = host.containers();
    assert_eq!(before.len(), 1);
    // The app crashes (the init process passes SIGTERM on; httpd exits): the engine restarts
    // the container under its restart policy, with a new network namespace and published
    // port, so the old route leads nowhere.
    assert_ok(
        &Command::new("docker")
            .args(["exec", &before[0], "kill", "-TERM", "1"])
            .output()
            .expect("docker exec"),
    );
    wait_for(
        "the restarted container to be routed",
        Duration::from_secs(30),
        || host.get(&host.name) == (200, "again\n".to_owned()),
    );
    assert_eq!(
        host.containers(),
        before,
        "the engine's restart is kept, not replaced"
    );
    let restarts = Command::new("docker")
        .args(["inspect", "-f", "{{.RestartCount}}", &before[0]])
        .output()
        .expect("docker inspect");
    assert_eq!(String::from_utf8_lossy(&restarts.stdout).trim(), "1");
}

#[test]
fn a_stopped_backend_gives_502_until_the_operator_restarts_it() {
    let host = Host::new();
    let app = site(&host, "back\n");
    assert_ok(&host.push(&app, &["main"]));
    // The operator may bring the container back between the stop and the request (a pass
    // after the push's own status writes, or the periodic one): then it is stopped again, so
    // the 502 window is caught without timing anything.
    let mut answers = Vec::new();
    for _ in 0..5 {
        let ids = host.containers();
        assert_eq!(ids.len(), 1, "one container, not a duplicate");
        assert_ok(
            &Command::new("docker")
                .args(["stop", "-t", "1", &ids[0]])
                .output()
                .expect("docker stop"),
        );
        let (status, body) = host.get(&host.name);
        answers.push(status);
        wait_for(
            "the operator to bring it back",
            Duration::from_secs(30),
            || host.get(&host.name) == (200, "back\n".to_owned()),
        );
        if status == 502 {
            break;
        }
        assert_eq!(
            (status, body.as_str()),
            (200, "back\n"),
            "restarted already"
        );
    }
    assert_eq!(
        answers.last(),
        Some(&502),
        "answers right after each stop: {answers:?}"
    );
}

#[test]
fn old_releases_and_their_images_are_pruned() {
    let host = Host::new();
    let app = site(&host, "start\n");
    for n in 0..7 {
        commit(
            &host.alice,
            &app,
            &[("index.html", &format!("{n}\n"))],
            "next",
        );
        assert_ok(&host.push(&app, &["main"]));
    }
    assert_eq!(host.get(&host.name).1, "6\n");
    let releases = || {
        std::fs::read_dir(host.scratch.data().join("resources/releases"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    wait_for(
        "pruning to keep 5 releases and images",
        Duration::from_secs(30),
        || releases() == 5 && host.images() == 5,
    );
    wait_for("one container", Duration::from_secs(20), || {
        host.containers().len() == 1
    });
}

#[test]
fn fifty_pushes_leave_no_growth_in_containers_images_or_file_descriptors() {
    let host = Host::new();
    let app = site(&host, "start\n");
    let pid = host.server().child.id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let mut baseline = 0;
    for n in 0..50 {
        commit(
            &host.alice,
            &app,
            &[("index.html", &format!("push {n}\n"))],
            "next",
        );
        assert_ok(&host.push(&app, &["main"]));
        if n == 9 {
            // After warm-up: connection pools and caches have their steady size.
            wait_for(
                "the first pushes to settle",
                Duration::from_secs(30),
                || host.containers().len() == 1,
            );
            baseline = fds();
        }
    }
    assert_eq!(host.get(&host.name).1, "push 49\n");
    wait_for("old containers to go", Duration::from_secs(30), || {
        host.containers().len() == 1
    });
    wait_for("old images to go", Duration::from_secs(30), || {
        host.images() <= 5
    });
    let after = fds();
    assert!(
        after <= baseline + 8,
        "server file descriptors grew from {baseline} to {after}"
    );
}

/// A private network beside the host, as a cloud VPC or a metadata service would be: a network
/// namespace behind a veth pair, with a TCP listener that counts connections. Removed on drop.
struct PrivateNetwork {
    name: String,
    host_side: String,
    address: String,
    listener: std::process::Child,
    count_file: std::path::PathBuf,
    _scratch: Scratch,
}

impl PrivateNetwork {
    fn new() -> Self {
        let scratch = Scratch::new();
        let id = std::process::id() % 200 + 20;
        let name = format!("slipway-egress-{}", std::process::id());
        let host_side = format!("sweg{}", std::process::id() % 100_000);
        let peer = format!("{host_side}p");
        let ip = |args: &[&str]| {
            let output = Command::new("ip").args(args).output().expect("ip");
            assert!(
                output.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_side, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("10.213.{id}.1/30"),
            "dev",
            &host_side,
        ]);
        ip(&["link", "set", &host_side, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("10.213.{id}.2/30"),
            "dev",
            &peer,
        ]);
        ip(&["-n", &name, "link", "set", &peer, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "route",
            "add",
            "default",
            "via",
            &format!("10.213.{id}.1"),
        ]);
        let count_file = scratch.path("private-connections");
        let listener = Command::new("ip")
            .args(["netns", "exec", &name, "python3", "-c"])
            .arg(format!(
                "import socket\ns=socket.socket()\ns.bind(('0.0.0.0',9999))\ns.listen()\nn=0\nwhile True:\n  c,_=s.accept()\n  n+=1\n  open('{}','w').write(str(n))\n  c.close()\n",
                count_file.display()
            ))
            .spawn()
            .expect("listener");
        Self {
            name,
            host_side,
            address: format!("10.213.{id}.2"),
            listener,
            count_file,
            _scratch: scratch,
        }
    }

    fn connections(&self) -> usize {
        fs::read_to_string(&self.count_file)
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PrivateNetwork {
    fn drop(&mut self) {
        // The allowed-range rule the test's `slipway up` added stays after it stopped (rules
        // outlive the server on purpose); this network's address goes with it.
        if let Ok(listed) = Command::new("iptables")
            .args(["-w", "-S", "SLIPWAY-BUILD-EGRESS"])
            .output()
        {
            for line in String::from_utf8_lossy(&listed.stdout).lines() {
                if line.starts_with("-A ") && line.contains(&format!("-d {}/32 ", self.address)) {
                    let words: Vec<&str> = line
                        .split_whitespace()
                        .skip(1)
                        .map(|w| w.trim_matches('"'))
                        .collect();
                    let _ = Command::new("iptables")
                        .args(["-w", "-D"])
                        .args(&words)
                        .output();
                }
            }
        }
        let _ = self.listener.kill();
        let _ = self.listener.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_side])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `/egress.txt` of the host's app: what its build saw.
fn egress_page(host: &Host) -> String {
    let port = host.server().http_port.expect("router");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("router");
    let request = format!(
        "GET /egress.txt HTTP/1.0\r\nHost: {}.localhost\r\n\r\n",
        host.name
    );
    stream.write_all(request.as_bytes()).expect("request");
    let mut page = String::new();
    let _ = stream.read_to_string(&mut page);
    page
}

/// `docker run --rm slipway-test/busybox ARGS` on the engine's default bridge, where builds'
/// RUN steps run, with Docker's default capabilities (NET_RAW included, as steps have).
fn on_build_bridge(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(["run", "--rm", "--label", "slipway-test=bridge"])
        .arg("slipway-test/busybox:latest")
        .args(args)
        .output()
        .expect("docker run")
}

#[test]
fn steps_on_the_build_bridge_cannot_reach_each_other_even_by_arp() {
    let _host = Host::new();
    // A neighbour on the bridge, as another tenant's concurrent build step would be.
    let neighbour = Command::new("docker")
        .args(["run", "-d", "--label", "slipway-test=bridge"])
        .args(["slipway-test/busybox:latest", "sleep", "60"])
        .output()
        .expect("docker run");
    assert_ok(&neighbour);
    let id = String::from_utf8_lossy(&neighbour.stdout).trim().to_owned();
    let inspect = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.Gateway}}",
            &id,
        ])
        .output()
        .expect("docker inspect");
    let addresses = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    let (address, gateway) = addresses.split_once(' ').expect("address and gateway");
    // The port's isolation is set within 20 ms of its creation.
    std::thread::sleep(Duration::from_millis(200));
    // The gateway (the bridge itself) answers ARP: the step keeps its way out.
    let to_gateway = on_build_bridge(&["arping", "-c", "1", "-w", "3", "-I", "eth0", gateway]);
    // The neighbour does not: neither ARP nor anything else crosses between two ports, so a
    // step cannot answer for the gateway to another build, nor reach it.
    let to_neighbour = on_build_bridge(&["arping", "-c", "2", "-w", "3", "-I", "eth0", address]);
    let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    assert_ok(&to_gateway);
    assert!(
        !to_neighbour.status.success(),
        "a step reached its neighbour on the build bridge: {}",
        String::from_utf8_lossy(&to_neighbour.stdout)
    );
}

#[test]
fn a_builds_run_steps_reach_neither_this_host_nor_private_networks() {
    let host = Host::new();
    let private = PrivateNetwork::new();
    // A service on every address of the build host.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let gateway = Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .output()
        .expect("docker network inspect");
    let gateway = String::from_utf8_lossy(&gateway.stdout).trim().to_owned();
    // Each attempt's outcome goes into the page the app serves, so the test reads what the
    // build saw; the listeners count what arrived.
    let probe = |target: &str, label: &str| {
        format!(
            "(nc -w 3 {target} </dev/null >/dev/null 2>&1 && echo {label}=reached || echo {label}=refused) >> /www/egress.txt"
        )
    };
    let dockerfile = format!(
        "FROM slipway-test/busybox:latest\nCOPY . /www\nRUN {}; {}\nCMD exec httpd -f -p \"$PORT\" -h /www\n",
        probe(&format!("{gateway} {port}"), "host"),
        probe(&format!("{} 9999", private.address), "private"),
    );
    let app = host.scratch.path("app");
    work_tree(
        &host.alice,
        &app,
        // A nonce: BuildKit's cache must not answer for the RUN step.
        &[
            ("Dockerfile", dockerfile.as_str()),
            ("index.html", "hi\n"),
            ("nonce", &format!("{:?}", std::time::SystemTime::now())),
        ],
    );
    assert_ok(&host.push(&app, &["main"]));
    let page = egress_page(&host);
    assert!(
        page.ends_with("host=refused\nprivate=refused\n"),
        "what the build saw: {page}"
    );
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(private.connections(), 0);

    // A step that needs the refused connection fails the push, and the hint names the setting.
    commit(
        &host.alice,
        &app,
        &[(
            "Dockerfile",
            &format!(
                "FROM slipway-test/busybox:latest\nRUN nc -w 3 {} 9999 </dev/null\n",
                private.address
            ),
        )],
        "needs the mirror",
    );
    let push = host.push(&app, &["main"]);
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    assert!(said.contains("--build-allow-range"), "{said}");
    drop(host);

    // An operator allows the private range (an internal mirror, say): that range only.
    let host = Host::with(&[
        "--drain",
        "1",
        "--build-allow-range",
        &format!("{}/32", private.address),
    ]);
    let app = host.scratch.path("app");
    work_tree(
        &host.alice,
        &app,
        // Other content: the build cache must not skip the RUN step.
        &[
            ("Dockerfile", dockerfile.as_str()),
            ("index.html", "hi again\n"),
            ("nonce", &format!("{:?}", std::time::SystemTime::now())),
        ],
    );
    assert_ok(&host.push(&app, &["main"]));
    let seen = egress_page(&host);
    assert_eq!(
        private.connections(),
        1,
        "the allowed range is reached: {seen}"
    );
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn a_build_step_over_its_memory_or_process_limit_is_killed_and_the_next_build_works() {
    let host = Host::with(&[
        "--drain",
        "1",
        "--build-step-memory",
        "64m",
        "--build-step-pids",
        "64",
    ]);
    let app = site(&host, "before\n");
    assert_ok(&host.push(&app, &["main"]));
    // A nonce in each step: BuildKit's cache must not skip it.
    let nonce = format!("{:?}", std::time::SystemTime::now());
    for (step, what) in [
        // 200 MB in one buffer, against 64 MiB.
        ("dd if=/dev/zero of=/dev/null bs=200M count=1", "memory"),
        // Processes without end, against 64: killed at the limit, not at the build timeout.
        ("while true; do sleep 6173 & done", "processes"),
    ] {
        let dockerfile =
            format!("FROM slipway-test/busybox:latest\nRUN echo '{nonce}' && {step}\n");
        commit(
            &host.alice,
            &app,
            &[("Dockerfile", dockerfile.as_str())],
            what,
        );
        let push = host.push(&app, &["main"]);
        let said = stderr(&push);
        assert!(!push.status.success(), "{what}: {said}");
        assert!(
            said.contains("remote: error: building `main` failed")
                && said.contains("--build-step-memory"),
            "{what}: {said}"
        );
        assert_ok(&host.alice.git(&app, &["reset", "-q", "--hard", "HEAD~1"]));
    }
    // Nothing of them is left running, and the next build works.
    let left = Command::new("pgrep")
        .args(["-f", "sleep 6173"])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "the fork bomb's processes are gone: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    commit(&host.alice, &app, &[("index.html", "after\n")], "fine");
    assert_ok(&host.push(&app, &["main"]));
    assert_eq!(host.get(&host.name), (200, "after\n".to_owned()));
}

#[test]
fn an_app_that_only_exposes_its_port_is_served_and_a_wrong_port_says_how_to_fix_it() {
    let host = Host::with(&["--drain", "1", "--health-timeout", "7"]);
    let app = host.scratch.path("app");
    work_tree(
        &host.alice,
        &app,
        &[
            (
                "Dockerfile",
                "FROM slipway-test/busybox:latest\nCOPY . /www\nEXPOSE 3000\nCMD exec httpd -f -p 3000 -h /www\n",
            ),
            ("index.html", "on 3000\n"),
        ],
    );
    assert_ok(&host.push(&app, &["main"]));
    assert_eq!(host.get(&host.name), (200, "on 3000\n".to_owned()));

    // It listens elsewhere than it says: the push waits with progress lines, then names the
    // port it tried, where that came from and what to change.
    commit(
        &host.alice,
        &app,
        &[(
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nCOPY . /www\nEXPOSE 3000\nCMD exec httpd -f -p 3001 -h /www\n",
        )],
        "wrong port",
    );
    let push = host.push(&app, &["main"]);
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    assert!(
        said.contains("no answer yet on port 3000 (the image's EXPOSE)"),
        "{said}"
    );
    assert!(
        said.contains("here 3000 (from the image's EXPOSE)")
            && said.contains(&format!("set `spec.port` of webspace `{}`", host.name)),
        "{said}"
    );
    assert_eq!(
        host.get(&host.name),
        (200, "on 3000\n".to_owned()),
        "the previous release keeps serving"
    );
}

/// `busybox:stable`, the base image of the shipped `static` runtime and of
/// `examples/dockerfile`: a test machine cannot pull it, so the tests' own BusyBox image stands
/// in (the same httpd). Left in place: tests running beside this one use it too.
fn busybox_stable() {
    let present = Command::new("docker")
        .args(["image", "inspect", "busybox:stable"])
        .output()
        .expect("docker");
    if !present.status.success() {
        let tagged = Command::new("docker")
            .args(["tag", "slipway-test/busybox:latest", "busybox:stable"])
            .output()
            .expect("docker tag");
        assert_ok(&tagged);
    }
}

/// The files of `examples/NAME`, as a work tree's files.
fn example(name: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let mut files = Vec::new();
    for entry in fs::read_dir(&dir).expect("example") {
        let path = entry.expect("entry").path();
        let text = fs::read_to_string(&path).expect("example file");
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        files.push((name, text));
    }
    files
}

/// The README's walkthrough, step by step: a Webspace with only its customer, the static-site
/// example pushed as is (no Dockerfile: its runtime is detected), served on its host; then the
/// Dockerfile example on a preview branch, and the preview removed.
#[test]
fn the_readme_walkthrough_deploys_the_examples_as_they_are() {
    busybox_stable();
    let host = Host::new();
    let site = example("static-site");
    let files: Vec<(&str, &str)> = site.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let app = host.scratch.path("site");
    work_tree(&host.alice, &app, &files);
    let push = host.push(&app, &["main"]);
    assert_ok(&push);
    let said = stderr(&push);
    assert!(said.contains("runtime `static`"), "{said}");
    let page = &site
        .iter()
        .find(|(n, _)| n == "index.html")
        .expect("page")
        .1;
    assert_eq!(host.get(&host.name), (200, page.clone()));

    let dockerfile = example("dockerfile");
    let files: Vec<(&str, &str)> = dockerfile
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let preview = host.scratch.path("dockerfile");
    work_tree(&host.alice, &preview, &files);
    assert_ok(&host.push(&preview, &["main:feature-x"]));
    let page = &dockerfile
        .iter()
        .find(|(n, _)| n == "index.html")
        .expect("page")
        .1;
    assert_eq!(
        host.get(&format!("feature-x.{}", host.name)),
        (200, page.clone())
    );
    assert_ok(&host.push(&preview, &[":feature-x"]));
    assert_eq!(host.get(&format!("feature-x.{}", host.name)).0, 404);
}

/// The runtime examples are read as the runtime they are for. Their base images come from
/// Docker Hub, which no test machine reaches: each push goes as far as pulling it, and says so.
#[test]
fn each_runtime_example_is_detected_as_its_runtime() {
    let host = Host::new();
    for (name, runtime) in [
        ("node", "node"),
        ("python", "python"),
        ("go", "go"),
        ("php", "php"),
    ] {
        let files = example(name);
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let app = host.scratch.path(name);
        work_tree(&host.alice, &app, &files);
        let push = host.push(&app, &["main"]);
        let said = stderr(&push);
        assert!(
            said.contains(&format!("runtime `{runtime}`")),
            "{name}: {said}"
        );
        if !push.status.success() {
            assert!(
                said.contains("a base image could not be pulled"),
                "{name}: only the pull may fail here: {said}"
            );
        }
    }
}

/// `slipway get ws NAME -o json`'s `status`.
fn webspace_status(host: &Host) -> serde_json::Value {
    let shown = run_ok(
        Command::new(SLIPWAY)
            .args(["get", "ws", &host.name, "-o", "json", "--data"])
            .arg(host.scratch.data()),
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    shown["status"].clone()
}

/// Deleting a Customer does what it does on Kubernetes, where its Namespace and every app in it
/// go: the app stops, the Webspace stays and says why, and once the Customer exists again the
/// app comes back through a new, health-checked container.
#[test]
fn deleting_the_customer_stops_its_apps_until_it_exists_again() {
    let host = Host::new();
    let app = site(&host, "owned\n");
    assert_ok(&host.push(&app, &["main"]));
    assert_eq!(host.get(&host.name), (200, "owned\n".to_owned()));
    let before = host.containers();
    assert_eq!(before.len(), 1);

    let deleted = run_ok(
        Command::new(SLIPWAY)
            .args(["delete", "customer", "alice", "--data"])
            .arg(host.scratch.data()),
    );
    assert_eq!(
        String::from_utf8_lossy(&deleted.stdout),
        format!(
            "customer.slipway.dev/alice deleted; its webspace `{}` stops serving until the customer exists again\n",
            host.name
        )
    );
    wait_for(
        "the app and its container to go",
        Duration::from_secs(20),
        || host.get(&host.name).0 == 404 && host.containers().is_empty(),
    );
    wait_for("the webspace to say why", Duration::from_secs(10), || {
        webspace_status(&host)["lastError"] == "customer `alice` does not exist"
    });
    let status = webspace_status(&host);
    assert_eq!(status["phase"], "Pending", "{status}");
    assert!(
        host.scratch
            .data()
            .join(format!("repos/{}.git", host.name))
            .is_dir()
            && fs::read_dir(host.scratch.data().join("resources/releases"))
                .expect("releases")
                .count()
                == 1,
        "the repository and the release stay"
    );

    apply_ok(
        &host.scratch.data(),
        &customer_yaml("alice", &[&host.alice.key]),
    );
    wait_for("the app to serve again", Duration::from_secs(30), || {
        host.get(&host.name) == (200, "owned\n".to_owned())
    });
    let after = host.containers();
    assert!(
        after.len() == 1 && after != before,
        "a new container: {after:?}"
    );
    wait_for("the webspace to be ready", Duration::from_secs(10), || {
        let status = webspace_status(&host);
        status["phase"] == "Ready" && status.get("lastError").is_none_or(|e| e.is_null())
    });
}

/// An app that says which version it is at start, then serves and logs each request.
fn talking_app(host: &Host, app: &std::path::Path, version: &str) {
    let dockerfile = format!(
        "FROM slipway-test/busybox:latest\nCOPY . /www\nCMD echo \"hello from {version}\"; exec httpd -f -v -p \"$PORT\" -h /www\n"
    );
    if app.exists() {
        commit(
            &host.alice,
            app,
            &[("Dockerfile", &dockerfile), ("index.html", version)],
            version,
        );
    } else {
        work_tree(
            &host.alice,
            app,
            &[("Dockerfile", &dockerfile), ("index.html", version)],
        );
    }
}

#[test]
fn owners_commands_over_ssh_show_apps_releases_info_and_logs_and_only_their_own() {
    let host = Host::new();
    let app = host.scratch.path("app");
    talking_app(&host, &app, "v1");
    assert_ok(&host.push(&app, &["main"]));
    let ssh = |command: &str| host.alice.ssh(host.server(), &[], Some(command));
    let out = |output: &std::process::Output| String::from_utf8_lossy(&output.stdout).into_owned();

    let help = ssh("help");
    assert_ok(&help);
    assert!(
        out(&help).contains("logs WEBSPACE [BRANCH] [-n N] [-f]"),
        "{}",
        out(&help)
    );

    let apps = ssh("apps");
    assert_ok(&apps);
    assert!(
        out(&apps).contains(&host.name) && out(&apps).contains("Ready"),
        "{}",
        out(&apps)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&ssh("apps --json").stdout).expect("apps --json");
    assert_eq!(json[0]["name"], host.name.as_str());
    assert_eq!(json[0]["phase"], "Ready");

    talking_app(&host, &app, "v2");
    assert_ok(&host.push(&app, &["main"]));
    let releases = ssh(&format!("releases {}", host.name));
    assert_ok(&releases);
    let listed = out(&releases);
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[0].starts_with("VERSION"), "{listed}");
    assert!(
        lines[1].starts_with("v2") && lines[1].contains("Live"),
        "newest first: {listed}"
    );
    assert!(
        lines[2].starts_with("v1") && lines[2].contains("Superseded"),
        "{listed}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&ssh(&format!("releases {} main --json", host.name)).stdout)
            .expect("releases --json");
    assert_eq!(json[0]["version"], 2);

    let info = ssh(&format!("info {}", host.name));
    assert_ok(&info);
    assert!(
        out(&info).contains(&format!("http://{}.localhost:", host.name))
            && out(&info).contains("BRANCH"),
        "{}",
        out(&info)
    );

    let logs = ssh(&format!("logs {} -n 50", host.name));
    assert_ok(&logs);
    assert!(out(&logs).contains("hello from v2"), "{}", out(&logs));
    assert!(
        !out(&logs).contains("hello from v1"),
        "the serving release's: {}",
        out(&logs)
    );

    // Another customer's webspace answers like a missing one; plain words only.
    let bob = keygen(&host.scratch, "bob");
    apply_ok(&host.scratch.data(), &customer_yaml("bob", &[&bob]));
    let bob = Client::new(&bob);
    let theirs = bob.ssh(host.server(), &[], Some(&format!("logs {}", host.name)));
    let missing = bob.ssh(host.server(), &[], Some("logs nosuchapp"));
    assert!(!theirs.status.success() && !missing.status.success());
    assert_eq!(
        stderr(&theirs).replace(&host.name, "NAME"),
        stderr(&missing).replace("nosuchapp", "NAME"),
        "names do not leak"
    );
    assert!(stderr(&theirs).contains("does not exist or you have no access"));
    assert!(
        !String::from_utf8_lossy(&bob.ssh(host.server(), &[], Some("apps")).stdout)
            .contains(&host.name)
    );
    let sneaky = ssh(&format!("logs {} $(id)", host.name));
    assert!(!sneaky.status.success());
    assert!(
        stderr(&sneaky).contains("plain words"),
        "{}",
        stderr(&sneaky)
    );
    let unknown = ssh(&format!("logs {} --bogus", host.name));
    assert!(!unknown.status.success(), "{}", stderr(&unknown));
}

#[test]
fn logs_follow_continues_across_a_redeploy_and_stops_when_the_client_leaves() {
    let host = Host::new();
    let app = host.scratch.path("app");
    talking_app(&host, &app, "v1");
    assert_ok(&host.push(&app, &["main"]));
    let output = host.scratch.path("followed.log");
    let mut follow = follow_logs(
        &host,
        std::fs::File::create(&output).expect("log file").into(),
    );
    let followed = || std::fs::read_to_string(&output).unwrap_or_default();
    wait_for("v1's output", Duration::from_secs(20), || {
        followed().contains("hello from v1")
    });
    talking_app(&host, &app, "v2");
    assert_ok(&host.push(&app, &["main"]));
    wait_for(
        "v2's output on the same session",
        Duration::from_secs(30),
        || followed().contains("hello from v2"),
    );
    let _ = follow.kill();
    let _ = follow.wait();
    wait_for(
        "the command to end with its client",
        Duration::from_secs(20),
        || log_followers(&host) == 0,
    );
}

/// `ssh git@… logs WEBSPACE -f` as alice, its output to `stdout`.
fn follow_logs(host: &Host, stdout: std::process::Stdio) -> std::process::Child {
    std::process::Command::new("ssh")
        .args(host.alice.ssh_command().split(' ').skip(1))
        .args(["-p", &host.server().port.to_string(), "git@127.0.0.1"])
        .arg(format!("logs {} -f", host.name))
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ssh")
}

/// The `slipway ops logs WEBSPACE` processes running on the server.
fn log_followers(host: &Host) -> usize {
    let ours = format!("ops logs {}", host.name);
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                c.contains(&ours) && !c.starts_with("setpriv")
            })
        })
        .count()
}

#[test]
fn a_flood_of_log_followers_is_capped_per_customer() {
    let host = Host::new();
    let app = host.scratch.path("app");
    talking_app(&host, &app, "v1");
    assert_ok(&host.push(&app, &["main"]));
    let running = || log_followers(&host);
    let mut followers: Vec<_> = (0..8)
        .map(|_| follow_logs(&host, std::process::Stdio::null()))
        .collect();
    wait_for("eight followers", Duration::from_secs(30), || {
        running() == 8
    });
    let ninth = host
        .alice
        .ssh(host.server(), &[], Some(&format!("logs {} -f", host.name)));
    assert!(!ninth.status.success());
    assert!(
        stderr(&ninth).contains("8 of your commands are running already"),
        "{}",
        stderr(&ninth)
    );
    // Another customer is not held up by it.
    let bob = keygen(&host.scratch, "bob");
    apply_ok(&host.scratch.data(), &customer_yaml("bob", &[&bob]));
    assert_ok(&Client::new(&bob).ssh(host.server(), &[], Some("apps")));
    for follower in &mut followers {
        let _ = follower.kill();
        let _ = follower.wait();
    }
    wait_for("the followers to end", Duration::from_secs(20), || {
        running() == 0
    });
    assert_ok(&host.alice.ssh(host.server(), &[], Some("apps")));
}

/// An app whose page says its `GREETING` (from config) and its version, and that exits at
/// start when `CRASH` is set.
fn configurable_app(host: &Host, app: &std::path::Path, version: &str) {
    let dockerfile = "FROM slipway-test/busybox:latest\nCOPY . /www\nCMD if [ -n \"$CRASH\" ]; then echo crashing on purpose; exit 3; fi; echo \"${GREETING:-plain} $(cat /www/version)\" > /www/index.html; exec httpd -f -p \"$PORT\" -h /www\n";
    let files = [("Dockerfile", dockerfile), ("version", version)];
    if app.exists() {
        commit(&host.alice, app, &files, version);
    } else {
        work_tree(&host.alice, app, &files);
    }
}

#[test]
fn rollback_makes_a_new_release_of_an_earlier_image_and_the_next_push_builds_as_usual() {
    let host = Host::new();
    let app = host.scratch.path("app");
    let ssh = |command: &str| host.alice.ssh(host.server(), &[], Some(command));
    configurable_app(&host, &app, "one");
    assert_ok(&host.push(&app, &["main"]));
    configurable_app(&host, &app, "two");
    assert_ok(&host.push(&app, &["main"]));
    assert_eq!(host.get(&host.name), (200, "plain two\n".to_owned()));
    let pushed = rev_parse(&app, "HEAD").expect("head");

    let back = ssh(&format!("rollback {}", host.name));
    assert_ok(&back);
    let said = stderr(&back);
    assert!(
        said.contains("staged release v3") && said.contains("rollback to v1"),
        "{said}"
    );
    assert!(said.contains("deployed `main` v3"), "{said}");
    assert_eq!(host.get(&host.name), (200, "plain one\n".to_owned()));
    let listed =
        String::from_utf8_lossy(&ssh(&format!("releases {}", host.name)).stdout).into_owned();
    let newest = listed.lines().nth(1).unwrap_or_default();
    assert!(
        newest.starts_with("v3") && newest.contains("Live") && newest.contains("rollback to v1"),
        "{listed}"
    );
    // The branch's ref is left alone.
    let remote = host.alice.git(
        &app,
        &[
            "ls-remote",
            &host.server().url(&format!("{}.git", host.name)),
            "refs/heads/main",
        ],
    );
    assert!(String::from_utf8_lossy(&remote.stdout).starts_with(&pushed));

    // Back to a named version; a missing one is refused and nothing changes.
    assert_ok(&ssh(&format!("rollback {} main v2", host.name)));
    assert_eq!(host.get(&host.name), (200, "plain two\n".to_owned()));
    let missing = ssh(&format!("rollback {} v99", host.name));
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("has no release v99"),
        "{}",
        stderr(&missing)
    );

    configurable_app(&host, &app, "three");
    let next = host.push(&app, &["main"]);
    assert_ok(&next);
    assert!(
        stderr(&next).contains("deployed `main` v5"),
        "{}",
        stderr(&next)
    );
    assert_eq!(host.get(&host.name), (200, "plain three\n".to_owned()));

    // A restart is a new release of what serves, in a new container.
    let before = host.containers();
    let restart = ssh(&format!("restart {}", host.name));
    assert_ok(&restart);
    assert!(
        stderr(&restart).contains("deployed `main` v6"),
        "{}",
        stderr(&restart)
    );
    assert_eq!(host.get(&host.name), (200, "plain three\n".to_owned()));
    wait_for("the old container to go", Duration::from_secs(20), || {
        host.containers().len() == 1
    });
    assert_ne!(host.containers(), before);
}

#[test]
fn config_values_reach_the_app_through_the_health_gate_and_stay_secret() {
    let host = Host::new();
    let app = host.scratch.path("app");
    let ssh = |command: &str| host.alice.ssh(host.server(), &[], Some(command));
    configurable_app(&host, &app, "one");
    assert_ok(&host.push(&app, &["main"]));

    let set = ssh(&format!(
        "config:set {} GREETING=hello TOKEN=s3cr3t-value",
        host.name
    ));
    assert_ok(&set);
    assert!(
        stderr(&set).contains("config: set GREETING, TOKEN")
            && stderr(&set).contains("deployed `main` v2"),
        "{}",
        stderr(&set)
    );
    assert_eq!(host.get(&host.name), (200, "hello one\n".to_owned()));
    let shown = String::from_utf8_lossy(&ssh(&format!("config {}", host.name)).stdout).into_owned();
    assert!(
        shown.contains("TOKEN=********") && !shown.contains("s3cr3t"),
        "{shown}"
    );
    let revealed = String::from_utf8_lossy(&ssh(&format!("config {} --reveal", host.name)).stdout)
        .into_owned();
    assert!(revealed.contains("TOKEN=s3cr3t-value"), "{revealed}");

    // A value that keeps the app from starting is refused; the config and what serves stay.
    let crash = ssh(&format!("config:set {} CRASH=1", host.name));
    assert!(!crash.status.success());
    assert!(
        stderr(&crash).contains("did not become healthy")
            && stderr(&crash).contains("crashing on purpose")
            && stderr(&crash).contains("the config was put back"),
        "{}",
        stderr(&crash)
    );
    assert_eq!(host.get(&host.name), (200, "hello one\n".to_owned()));
    let after = String::from_utf8_lossy(&ssh(&format!("config {} --reveal", host.name)).stdout)
        .into_owned();
    assert!(!after.contains("CRASH"), "{after}");

    // Names are checked; PORT is Slipway's.
    let bad = ssh(&format!("config:set {} 1X=a", host.name));
    assert!(!bad.status.success() && stderr(&bad).contains("not a variable name"));
    let port = ssh(&format!("config:set {} PORT=1", host.name));
    assert!(!port.status.success() && stderr(&port).contains("`PORT` is set by Slipway"));

    assert_ok(&ssh(&format!("config:unset {} GREETING", host.name)));
    assert_eq!(host.get(&host.name), (200, "plain one\n".to_owned()));

    // The secret is nowhere but its file: not in the resources (as `slipway get` shows them or
    // on disk), not in the server's or the hooks' logs.
    let data = host.scratch.data();
    for kind in ["releases", "webspaces"] {
        let yaml = Command::new(common::SLIPWAY)
            .args(["get", kind, "-o", "yaml", "--data"])
            .arg(&data)
            .output()
            .expect("slipway get");
        assert!(
            !String::from_utf8_lossy(&yaml.stdout).contains("s3cr3t"),
            "{kind}"
        );
    }
    let mut files = vec![data.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            if path.ends_with("repos") {
                continue;
            }
            files.extend(
                fs::read_dir(&path)
                    .expect("dir")
                    .flatten()
                    .map(|e| e.path()),
            );
        } else if path != data.join(format!("secrets/{}.json", host.name)) {
            let bytes = fs::read(&path).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("s3cr3t"),
                "the secret is in {}",
                path.display()
            );
        }
    }
    let ps = Command::new("ps")
        .args(["axww", "-o", "args"])
        .output()
        .expect("ps");
    assert!(!String::from_utf8_lossy(&ps.stdout).contains("s3cr3t"));
}

#[test]
fn a_config_change_one_branch_refuses_leaves_every_branch_on_the_old_values() {
    let host = Host::new();
    let app = host.scratch.path("app");
    let ssh = |command: &str| host.alice.ssh(host.server(), &[], Some(command));
    // Only the `feature` branch's code refuses to start with CRASH set.
    let dockerfile = "FROM slipway-test/busybox:latest\nCOPY . /www\nCMD if [ -n \"$CRASH\" ] && [ \"$(cat /www/version)\" = feature ]; then echo no; exit 3; fi; echo \"${CRASH:-calm} $(cat /www/version)\" > /www/index.html; exec httpd -f -p \"$PORT\" -h /www\n";
    work_tree(
        &host.alice,
        &app,
        &[("Dockerfile", dockerfile), ("version", "feature")],
    );
    assert_ok(&host.push(&app, &["HEAD:feature"]));
    // main pushed last: its release is the newest, so it takes the new values first.
    commit(&host.alice, &app, &[("version", "main")], "main");
    assert_ok(&host.push(&app, &["main"]));
    let preview = format!("feature.{}", host.name);
    assert_eq!(host.get(&host.name), (200, "calm main\n".to_owned()));
    assert_eq!(host.get(&preview), (200, "calm feature\n".to_owned()));

    let set = ssh(&format!("config:set {} CRASH=1", host.name));
    assert!(!set.status.success(), "{}", stderr(&set));
    let said = stderr(&set);
    assert!(said.contains("the config was put back as it was"), "{said}");
    assert!(said.contains("`main` runs with it again"), "{said}");
    // Neither branch is left on values the config no longer holds.
    assert_eq!(host.get(&host.name), (200, "calm main\n".to_owned()));
    assert_eq!(host.get(&preview), (200, "calm feature\n".to_owned()));
    let shown = String::from_utf8_lossy(&ssh(&format!("config {}", host.name)).stdout).into_owned();
    assert!(!shown.contains("CRASH"), "{shown}");
}

#[test]
fn administrators_have_the_same_commands_on_the_data_directory() {
    let host = Host::new();
    let app = host.scratch.path("app");
    configurable_app(&host, &app, "one");
    assert_ok(&host.push(&app, &["main"]));
    let slipway = |args: &[&str]| {
        Command::new(common::SLIPWAY)
            .args(&args[..1])
            .arg("--data")
            .arg(host.scratch.data())
            .args(&args[1..])
            .output()
            .expect("slipway")
    };
    let releases = slipway(&["releases", &host.name]);
    assert_ok(&releases);
    assert!(String::from_utf8_lossy(&releases.stdout).contains("v1"));
    let set = slipway(&["config:set", &host.name, "GREETING=admin"]);
    assert_ok(&set);
    assert!(
        stderr(&set).contains("deployed `main` v2"),
        "{}",
        stderr(&set)
    );
    assert_eq!(host.get(&host.name), (200, "admin one\n".to_owned()));
    assert_ok(&slipway(&["logs", &host.name, "-n", "5"]));
    let missing = slipway(&["logs", "nosuchapp"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("webspace `nosuchapp` does not exist"));
    // `get releases` lists one webspace's when asked.
    let mine = slipway(&["get", "releases", "--webspace", &host.name]);
    assert_ok(&mine);
    assert_eq!(
        String::from_utf8_lossy(&mine.stdout)
            .lines()
            .filter(|l| l.contains(&host.name))
            .count(),
        2
    );
    let other = slipway(&["get", "releases", "--webspace", "other"]);
    assert!(!String::from_utf8_lossy(&other.stdout).contains(&host.name));

    // While a push to the webspace runs (it holds the webspace's lock on this host, as the git
    // server does for each push), an administrator's change waits for it instead of racing it.
    let push = slipway_store::changes::try_hold(&host.scratch.data(), &host.name)
        .expect("lock")
        .expect("no push is running");
    let mut waiting = Command::new(common::SLIPWAY)
        .arg("config:set")
        .arg("--data")
        .arg(host.scratch.data())
        .args([host.name.as_str(), "GREETING=after"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("slipway");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        waiting.try_wait().expect("wait").is_none(),
        "config:set went ahead during a push"
    );
    assert_eq!(host.get(&host.name), (200, "admin one\n".to_owned()));
    drop(push);
    let done = waiting.wait_with_output().expect("config:set");
    assert_ok(&done);
    assert!(
        stderr(&done).contains("waiting for a push to"),
        "{}",
        stderr(&done)
    );
    assert_eq!(host.get(&host.name), (200, "after one\n".to_owned()));
}

#[test]
fn a_changed_port_or_env_goes_through_the_health_gate_and_a_failing_one_leaves_the_old_release_serving()
 {
    let host = Host::new();
    let app = host.scratch.path("app");
    configurable_app(&host, &app, "one");
    assert_ok(&host.push(&app, &["main"]));
    let releases = || -> Vec<serde_json::Value> {
        let listed = host.alice.ssh(
            host.server(),
            &[],
            Some(&format!("releases {} --json", host.name)),
        );
        serde_json::from_slice::<Vec<serde_json::Value>>(&listed.stdout).unwrap_or_default()
    };
    let with = |cause: &str, phase: &str| {
        releases()
            .iter()
            .filter(|r| r["cause"] == cause && r["status"]["phase"] == phase)
            .count()
    };
    let webspace = |extra: &str| {
        format!(
            "apiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: {}\nspec:\n  customer: alice\n{extra}",
            host.name
        )
    };

    // A new port: the app follows $PORT; requests never fail while the new release is checked.
    apply_ok(&host.scratch.data(), &webspace("  port: 3000\n"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while with("webspace changed: port 8080 → 3000", "Live") == 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", releases());
        assert_eq!(host.get(&host.name), (200, "plain one\n".to_owned()));
    }
    assert_eq!(host.get(&host.name), (200, "plain one\n".to_owned()));

    // An env that keeps the app from starting: failed, the old release serves, and it is not
    // tried again and again.
    apply_ok(
        &host.scratch.data(),
        &webspace("  port: 3000\n  env:\n    CRASH: \"1\"\n"),
    );
    wait_for("the new settings to fail", Duration::from_secs(40), || {
        with("webspace changed: env", "Failed") == 1
    });
    assert_eq!(host.get(&host.name), (200, "plain one\n".to_owned()));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        with("webspace changed: env", "Failed"),
        1,
        "{:?}",
        releases()
    );
    assert_eq!(host.get(&host.name), (200, "plain one\n".to_owned()));

    // Settings that work again take over.
    apply_ok(
        &host.scratch.data(),
        &webspace("  port: 3000\n  env:\n    GREETING: hi\n"),
    );
    wait_for(
        "the fixed settings to serve",
        Duration::from_secs(40),
        || host.get(&host.name) == (200, "hi one\n".to_owned()),
    );
}
