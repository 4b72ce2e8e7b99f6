//! Build on push, with the real Docker engine and registry that `scripts/services` starts.
//! Each test has its own webspace (and so its own image repository), and removes its images.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const REGISTRY: &str = "127.0.0.1:5000";
const BASE_IMAGE: &str = "slipway-test/busybox:latest";

/// A customer `alice` with a webspace of its own on a server that builds and pushes.
struct Site {
    world: World,
    name: String,
    /// The server's `--registry`, if any.
    registry: Option<String>,
}

impl Site {
    fn new(runtime: Option<&str>) -> Self {
        Self::with_server(runtime, &["--registry", REGISTRY], &[])
    }

    fn with_server(runtime: Option<&str>, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let world = World::with(args, envs);
        let name = format!("site-{}", std::process::id());
        let registry = args
            .windows(2)
            .find(|pair| pair[0] == "--registry")
            .map(|pair| pair[1].to_owned());
        let runtime = runtime
            .map(|r| format!("  runtime: {r}\n"))
            .unwrap_or_default();
        apply_ok(
            &world.scratch.data(),
            &format!(
                "apiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: {name}\nspec:\n  customer: alice\n{runtime}"
            ),
        );
        Self {
            world,
            name,
            registry,
        }
    }

    /// Ids of the local images of this webspace, under the server's registry or `slipway/`.
    fn images(&self) -> Vec<String> {
        let mut repositories = vec![format!("slipway/{}", self.name)];
        repositories.extend(self.registry.iter().map(|r| format!("{r}/{}", self.name)));
        let mut ids = Vec::new();
        for repository in repositories {
            if let Ok(output) = Command::new("docker")
                .args(["image", "ls", "-q", &repository])
                .output()
            {
                ids.extend(
                    String::from_utf8_lossy(&output.stdout)
                        .split_whitespace()
                        .map(str::to_owned),
                );
            }
        }
        ids
    }

    fn url(&self) -> String {
        self.world.server.url(&format!("{}.git", self.name))
    }

    fn app(&self, files: &[(&str, &str)]) -> std::path::PathBuf {
        let app = self.world.scratch.path("app");
        // A nonce keeps this test's trees (and so image tags) apart from every other test's.
        let nonce = format!("{} {:?}", self.name, Instant::now());
        let mut all = files.to_vec();
        all.push(("nonce.txt", &nonce));
        work_tree(&self.world.alice, &app, &all);
        app
    }

    fn push(&self, app: &std::path::Path, refspecs: &[&str]) -> std::process::Output {
        let url = self.url();
        let mut args = vec!["push", url.as_str()];
        args.extend_from_slice(refspecs);
        self.world.alice.git(app, &args)
    }

    fn repository(&self) -> std::path::PathBuf {
        self.world.repository(&self.name)
    }

    fn releases(&self) -> Vec<serde_json::Value> {
        let output = Command::new(SLIPWAY)
            .args(["get", "releases", "-o", "json", "--data"])
            .arg(self.world.scratch.data())
            .output()
            .expect("slipway get");
        let list: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["spec"]["webspace"] == self.name.as_str())
            .collect()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let ids = self.images();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rmi", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// A GET over plain TCP; returns (status, headers, body).
fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker")
}

const DOCKERFILE: &str =
    "FROM slipway-test/busybox:latest\nCOPY . /app\nCMD [\"cat\", \"/app/index.html\"]\n";

#[test]
fn a_dockerfile_repo_becomes_an_image_in_the_registry_and_a_promoted_release() {
    let site = Site::new(None);
    let app = site.app(&[("Dockerfile", DOCKERFILE), ("index.html", "hello\n")]);
    let push = site.push(&app, &["main"]);
    assert_ok(&push);
    let said = stderr(&push);
    assert!(said.contains("remote: slipway: building `main`"), "{said}");
    assert!(
        said.contains("remote: Step 1/2 : FROM slipway-test/busybox:latest"),
        "{said}"
    );

    let releases = site.releases();
    assert_eq!(releases.len(), 1, "{releases:?}");
    let release = &releases[0];
    assert_eq!(release["status"]["phase"], "Promoted");
    assert_eq!(release["spec"]["branch"], "main");
    assert_eq!(
        Some(
            release["spec"]["commit"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        ),
        rev_parse(&app, "HEAD")
    );
    let tree = rev_parse(&app, "HEAD^{tree}").expect("tree");
    assert_eq!(release["spec"]["tree"], tree.as_str());
    let image = release["spec"]["image"].as_str().expect("image");
    let (reference, digest) = image.split_once('@').expect("image has a digest");
    assert_eq!(reference, format!("{REGISTRY}/{}:{tree}", site.name));

    // The registry has the tag, and its manifest digest is the Release's.
    let (status, head, _) = http_get(
        5000,
        &format!("/v2/{}/manifests/{tree}", site.name),
        &[(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("docker-content-digest: {digest}")),
        "{head} vs {digest}"
    );
}

#[test]
fn the_classic_builder_stays_available_for_its_step_limits() {
    let site = Site::with_server(None, &[], &[("SLIPWAY_BUILDER", "classic")]);
    let app = site.app(&[
        (
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nRUN echo limited && false\n",
        ),
        ("index.html", "x\n"),
    ]);
    let push = site.push(&app, &["main"]);
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    // Only the classic builder numbers steps this way and runs them in `Running in` containers.
    assert!(said.contains("remote:  ---> Running in "), "{said}");
    assert!(
        said.contains(
            "remote: error: building `main` failed at `Step 2/2 : RUN echo limited && false`"
        ),
        "{said}"
    );
}

#[test]
fn a_repo_without_dockerfile_is_built_from_the_static_runtime_and_serves_its_files() {
    let site = Site::new(Some("static"));
    static_runtime_from_local_image(&site);
    let app = site.app(&[
        ("index.html", "<h1>static works</h1>\n"),
        ("css/site.css", "body{}\n"),
    ]);
    let push = site.push(&app, &["main"]);
    assert_ok(&push);
    assert!(
        stderr(&push).contains("from runtime `static`"),
        "{}",
        stderr(&push)
    );

    let image = site.releases()[0]["spec"]["image"]
        .as_str()
        .expect("image")
        .to_owned();
    let name = format!("{}-run", site.name);
    let run = docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        &name,
        "-e",
        "PORT=8080",
        "-p",
        "127.0.0.1::8080",
        &image,
    ]);
    assert_ok(&run);
    let port = String::from_utf8_lossy(&docker(&["port", &name, "8080"]).stdout)
        .lines()
        .next()
        .and_then(|l| {
            l.rsplit(':')
                .next()
                .and_then(|p| p.trim().parse::<u16>().ok())
        })
        .expect("published port");
    let mut body = String::new();
    wait_for("the app to serve", Duration::from_secs(20), || {
        body = http_get(port, "/", &[]).2;
        body.contains("static works")
    });
    assert!(http_get(port, "/css/site.css", &[]).2.contains("body{}"));
    assert_ok(&docker(&["rm", "-f", &name]));
}

#[test]
fn a_failing_build_rejects_the_push_and_changes_nothing() {
    let site = Site::new(None);
    let app = site.app(&[("Dockerfile", DOCKERFILE), ("index.html", "v1\n")]);
    assert_ok(&site.push(&app, &["main"]));
    let before = rev_parse(&site.repository(), "refs/heads/main");
    let objects_before = fs::read_dir(site.repository().join("objects"))
        .expect("objects")
        .count();

    for (dockerfile, step) in [
        (
            "FROM slipway-test/busybox:latest\nRUN echo compiling && false\n",
            "Step 2/2 : RUN echo compiling && false",
        ),
        (
            "FROM slipway-test/busybox:latest\nCOPY missing.txt /app/\n",
            "Step 2/2 : COPY missing.txt /app/",
        ),
    ] {
        commit(
            &site.world.alice,
            &app,
            &[("Dockerfile", dockerfile)],
            "break it",
        );
        let push = site.push(&app, &["main"]);
        let said = stderr(&push);
        assert!(!push.status.success(), "{said}");
        assert!(
            said.contains(&format!(
                "remote: error: building `main` failed at `{step}`"
            )),
            "{said}"
        );
        assert!(said.contains("remote: hint:"), "{said}");
        assert_eq!(
            rev_parse(&site.repository(), "refs/heads/main"),
            before,
            "ref unchanged"
        );
        assert_ok(
            &site
                .world
                .alice
                .git(&app, &["reset", "-q", "--hard", "HEAD~1"]),
        );
    }
    assert_eq!(site.releases().len(), 1, "no release for the failed builds");
    assert_eq!(
        fs::read_dir(site.repository().join("objects"))
            .expect("objects")
            .count(),
        objects_before,
        "quarantined objects were dropped"
    );
    assert_fsck(&site.repository());
}

#[test]
fn the_same_tree_on_another_branch_reuses_the_image() {
    let site = Site::new(None);
    let app = site.app(&[("Dockerfile", DOCKERFILE), ("index.html", "same\n")]);
    assert_ok(&site.push(&app, &["main"]));
    let again = site.push(&app, &["main:refs/heads/feature-x"]);
    assert_ok(&again);
    let said = stderr(&again);
    assert!(said.contains("was built before; reusing"), "{said}");
    assert!(!said.contains("Step 1/"), "no build: {said}");
    let releases = site.releases();
    assert_eq!(releases.len(), 2);
    assert_eq!(releases[0]["spec"]["image"], releases[1]["spec"]["image"]);
}

#[test]
fn two_branches_in_one_push_build_both_and_one_failure_moves_neither() {
    let site = Site::new(None);
    let app = site.app(&[("Dockerfile", DOCKERFILE), ("index.html", "one\n")]);
    assert_ok(&site.world.alice.git(&app, &["branch", "two"]));
    assert_ok(&site.world.alice.git(&app, &["checkout", "-q", "two"]));
    commit(&site.world.alice, &app, &[("index.html", "two\n")], "two");
    let push = site.push(&app, &["main", "two"]);
    assert_ok(&push);
    assert_eq!(
        stderr(&push).matches("remote: slipway: building").count(),
        2,
        "{}",
        stderr(&push)
    );
    assert_eq!(site.releases().len(), 2);

    commit(
        &site.world.alice,
        &app,
        &[("index.html", "two, again\n")],
        "fine",
    );
    assert_ok(&site.world.alice.git(&app, &["checkout", "-q", "main"]));
    commit(
        &site.world.alice,
        &app,
        &[(
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nRUN false\n",
        )],
        "broken",
    );
    let before = (
        rev_parse(&site.repository(), "refs/heads/main"),
        rev_parse(&site.repository(), "refs/heads/two"),
    );
    let push = site.push(&app, &["main", "two"]);
    assert!(!push.status.success(), "{}", stderr(&push));
    assert_eq!(
        (
            rev_parse(&site.repository(), "refs/heads/main"),
            rev_parse(&site.repository(), "refs/heads/two")
        ),
        before
    );
    assert_eq!(site.releases().len(), 2);
}

#[test]
fn symlinks_to_host_files_stay_links_and_bring_no_host_content() {
    let site = Site::new(None);
    let secret = site.world.scratch.path("secret.txt");
    fs::write(&secret, "HOST-SECRET-CONTENT\n").expect("secret");
    let app = site.app(&[(
        "Dockerfile",
        "FROM slipway-test/busybox:latest\nCOPY . /app\nRUN cat /app/absolute /app/relative /app/shadow > /copied 2>/dev/null; true\n",
    )]);
    std::os::unix::fs::symlink(&secret, app.join("absolute")).expect("symlink");
    std::os::unix::fs::symlink("../secret.txt", app.join("relative")).expect("symlink");
    std::os::unix::fs::symlink("/etc/shadow", app.join("shadow")).expect("symlink");
    commit(&site.world.alice, &app, &[], "links");
    assert_ok(&site.push(&app, &["main"]));
    let image = site.releases()[0]["spec"]["image"]
        .as_str()
        .expect("image")
        .to_owned();
    let inside = docker(&[
        "run",
        "--rm",
        &image,
        "sh",
        "-c",
        "for f in absolute relative shadow; do readlink /app/$f; done; cat /copied",
    ]);
    assert_ok(&inside);
    let inside = String::from_utf8_lossy(&inside.stdout).into_owned();
    let mut lines = inside.lines();
    assert_eq!(
        lines.next(),
        Some(secret.to_str().expect("utf-8")),
        "{inside}"
    );
    assert_eq!(lines.next(), Some("../secret.txt"), "{inside}");
    assert_eq!(lines.next(), Some("/etc/shadow"), "{inside}");
    assert!(
        !inside.contains("HOST-SECRET-CONTENT"),
        "host file leaked: {inside}"
    );
    assert!(!inside.contains("root:"), "host shadow leaked: {inside}");
}

#[test]
fn a_git_bomb_and_a_huge_blob_are_rejected_quickly() {
    let site = Site::new(None);
    let app = site.app(&[("Dockerfile", DOCKERFILE)]);
    let git = |args: &[&str], input: &[u8]| site.world.alice.git_plumbing(&app, args, input);
    // A tree of 16 copies of a tree of 16 copies of ... 8 levels: 16^8 entries, a few KB packed.
    let blob = git(&["hash-object", "-w", "--stdin"], b"x");
    let mut tree = git(&["mktree"], format!("100644 blob {blob}\tf\n").as_bytes());
    for _ in 0..8 {
        let listing: String = (0..16)
            .map(|i| format!("040000 tree {tree}\td{i:02}\n"))
            .collect();
        tree = git(&["mktree"], listing.as_bytes());
    }
    let head = git(&["rev-parse", "HEAD"], b"");
    let bomb = git(&["commit-tree", &tree, "-p", &head, "-m", "bomb"], b"");
    let started = Instant::now();
    let push = site.push(&app, &[&format!("{bomb}:refs/heads/main")]);
    assert!(!push.status.success());
    assert!(
        stderr(&push).contains("more than 100000 files and directories"),
        "{}",
        stderr(&push)
    );
    let bomb_time = started.elapsed();

    // 200 MB of zeros: a few hundred KB in a pack, far over the 100 MiB file limit.
    let zeros = vec![0u8; 200 << 20];
    let huge = git(&["hash-object", "-w", "--stdin"], &zeros);
    drop(zeros);
    let root = git(
        &["mktree"],
        format!("100644 blob {huge}\tdisk.img\n").as_bytes(),
    );
    let commit = git(&["commit-tree", &root, "-p", &head, "-m", "huge"], b"");
    let push = site.push(&app, &[&format!("{commit}:refs/heads/main")]);
    assert!(!push.status.success());
    assert!(
        stderr(&push).contains("`disk.img` is 209715200 bytes, more than the 104857600 bytes"),
        "{}",
        stderr(&push)
    );
    assert!(site.releases().is_empty());
    // Reported, not asserted: timings are noisy on shared machines.
    eprintln!("git bomb rejected in {bomb_time:?}");
}

#[test]
fn hostile_branch_names_never_reach_a_shell_and_get_distinct_labels() {
    let site = Site::new(None);
    let app = site.app(&[("Dockerfile", DOCKERFILE), ("index.html", "x\n")]);
    let long = "x".repeat(200);
    let branches = [
        "$(touch${IFS}PWNED)".to_owned(),
        "a;b|c&d`id`".to_owned(),
        "m\u{0430}in".to_owned(),
        "Feature".to_owned(),
        "feature".to_owned(),
        long.clone(),
        format!("{long}y"),
    ];
    let refspecs: Vec<String> = branches
        .iter()
        .map(|b| format!("HEAD:refs/heads/{b}"))
        .collect();
    let refspecs: Vec<&str> = refspecs.iter().map(String::as_str).collect();
    let push = site.push(&app, &refspecs);
    assert_ok(&push);
    for dir in [site.repository(), site.world.scratch.data(), app.clone()] {
        assert!(!dir.join("PWNED").exists(), "a branch name reached a shell");
    }
    let releases = site.releases();
    let mut recorded: Vec<String> = releases
        .iter()
        .map(|r| r["spec"]["branch"].as_str().unwrap_or_default().to_owned())
        .collect();
    recorded.sort();
    let mut expected = branches.to_vec();
    expected.sort();
    assert_eq!(recorded, expected);
    let mut labels: Vec<String> = branches
        .iter()
        .map(|b| slipway_api::names::branch_label(b))
        .collect();
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), branches.len());
}

#[test]
fn docker_or_registry_unreachable_gets_a_short_line_and_the_server_keeps_running() {
    let no_registry = Site::with_server(None, &["--registry", "127.0.0.1:9"], &[]);
    let app = no_registry.app(&[("Dockerfile", DOCKERFILE)]);
    let push = no_registry.push(&app, &["main"]);
    assert!(!push.status.success());
    assert!(
        stderr(&push).contains("remote: error: the image registry is unavailable; try again later"),
        "{}",
        stderr(&push)
    );
    assert!(rev_parse(&no_registry.repository(), "refs/heads/main").is_none());
    assert_eq!(
        no_registry.images(),
        Vec::<String>::new(),
        "the image built for the refused push is removed"
    );

    let no_docker = Site::with_server(
        None,
        &["--registry", REGISTRY],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    let app = no_docker.app(&[("Dockerfile", DOCKERFILE)]);
    let push = no_docker.push(&app, &["main"]);
    assert!(!push.status.success());
    assert!(
        stderr(&push).contains("remote: error: the build service is unavailable; try again later"),
        "{}",
        stderr(&push)
    );
    // The detail is in the server's hook log, not on the pusher's terminal.
    let log = fs::read_to_string(no_docker.world.scratch.data().join("logs/hooks.log"))
        .expect("hook log");
    assert!(log.contains("nonexistent"), "{log}");
    // Still serving.
    assert_ok(
        &no_docker
            .world
            .alice
            .git(&app, &["ls-remote", &no_docker.url()]),
    );
}

#[test]
fn deleting_a_branch_is_recorded_and_the_production_branch_cannot_be_deleted() {
    let site = Site::new(None);
    let app = site.app(&[("Dockerfile", DOCKERFILE), ("index.html", "d\n")]);
    assert_ok(&site.push(&app, &["main", "main:refs/heads/feature-x"]));
    let delete = site.push(&app, &[":feature-x"]);
    assert_ok(&delete);
    assert!(
        stderr(&delete).contains("branch `feature-x` deleted"),
        "{}",
        stderr(&delete)
    );
    let feature = site
        .releases()
        .into_iter()
        .find(|r| r["spec"]["branch"] == "feature-x")
        .expect("release");
    assert_eq!(feature["status"]["phase"], "Superseded");

    let refuse = site.push(&app, &[":main"]);
    assert!(!refuse.status.success());
    assert!(
        stderr(&refuse).contains("remote: error: the production branch `main` cannot be deleted"),
        "{}",
        stderr(&refuse)
    );
    assert!(rev_parse(&site.repository(), "refs/heads/main").is_some());
}

#[test]
fn tags_are_stored_not_deployed_and_other_refs_are_all_named() {
    let site = Site::new(None);
    let app = site.app(&[("Dockerfile", DOCKERFILE), ("index.html", "v1\n")]);
    assert_ok(&site.world.alice.git(&app, &["tag", "v1"]));
    assert_ok(
        &site
            .world
            .alice
            .git(&app, &["tag", "-a", "v1.1", "-m", "annotated"]),
    );
    // `git push --follow-tags` (or push.followTags) sends the branch with its tags.
    let push = site.push(&app, &["--follow-tags", "main"]);
    assert_ok(&push);
    let said = stderr(&push);
    assert!(
        said.contains("remote: slipway: tag `v1.1` stored, not deployed"),
        "{said}"
    );
    assert!(rev_parse(&site.repository(), "refs/heads/main").is_some());
    assert!(rev_parse(&site.repository(), "refs/tags/v1.1").is_some());
    assert_eq!(site.releases().len(), 1, "the branch only was built");
    // A tag alone: stored, nothing built.
    let push = site.push(&app, &["v1"]);
    assert_ok(&push);
    assert!(rev_parse(&site.repository(), "refs/tags/v1").is_some());
    assert_eq!(site.releases().len(), 1);
    // Deleted.
    assert_ok(&site.push(&app, &[":refs/tags/v1"]));
    assert!(rev_parse(&site.repository(), "refs/tags/v1").is_none());
    // Other refs are refused, every one named, and nothing of the push moves.
    commit(&site.world.alice, &app, &[("index.html", "v2\n")], "v2");
    let before = rev_parse(&site.repository(), "refs/heads/main");
    let push = site.push(
        &app,
        &["main", "HEAD:refs/notes/x", "HEAD:refs/pull/1/head"],
    );
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    assert!(
        said.contains(
            "only branches and tags can be pushed here, not `refs/notes/x`, `refs/pull/1/head`"
        ),
        "{said}"
    );
    assert_eq!(rev_parse(&site.repository(), "refs/heads/main"), before);
}

#[test]
fn a_submodule_is_refused_with_a_hint() {
    let site = Site::new(None);
    let app = site.app(&[("Dockerfile", DOCKERFILE)]);
    let head = site
        .world
        .alice
        .git_plumbing(&app, &["rev-parse", "HEAD"], b"");
    let tree = site
        .world
        .alice
        .git_plumbing(&app, &["rev-parse", "HEAD^{tree}"], b"");
    let listing = site
        .world
        .alice
        .git_plumbing(&app, &["ls-tree", &tree], b"");
    let with_module = format!("{listing}\n160000 commit {head}\tvendor\n");
    let root = site
        .world
        .alice
        .git_plumbing(&app, &["mktree"], with_module.as_bytes());
    let commit =
        site.world
            .alice
            .git_plumbing(&app, &["commit-tree", &root, "-m", "submodule"], b"");
    let push = site.push(&app, &[&format!("{commit}:refs/heads/main")]);
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    assert!(
        said.contains("remote: error: `main`: `vendor` is a submodule, which cannot be built"),
        "{said}"
    );
    assert!(
        said.contains("remote: hint: vendor the submodule"),
        "{said}"
    );
    assert!(rev_parse(&site.repository(), "refs/heads/main").is_none());
}

#[test]
fn builds_beyond_the_global_cap_are_queued() {
    let site = Site::with_server(
        None,
        &["--registry", REGISTRY],
        &[("SLIPWAY_MAX_BUILDS", "1")],
    );
    let second = format!("{}-b", site.name);
    apply_ok(&site.world.scratch.data(), &webspace_yaml(&second, "alice"));
    let slow = "FROM slipway-test/busybox:latest\nCOPY . /app\nRUN sleep 2\n";
    let app = site.app(&[("Dockerfile", slow)]);
    let spawn = |webspace: &str, log: &str| {
        let log = site.world.scratch.path(log);
        let child = site
            .world
            .alice
            .git_command(
                &app,
                &[
                    "push",
                    &site.world.server.url(&format!("{webspace}.git")),
                    "main",
                ],
            )
            .stderr(fs::File::create(&log).expect("log"))
            .spawn()
            .expect("push");
        (child, log)
    };
    let (mut one, one_log) = spawn(&site.name, "one.err");
    let (mut two, two_log) = spawn(&second, "two.err");
    assert!(
        one.wait().expect("push").success(),
        "{}",
        fs::read_to_string(&one_log).unwrap_or_default()
    );
    assert!(
        two.wait().expect("push").success(),
        "{}",
        fs::read_to_string(&two_log).unwrap_or_default()
    );
    let logs = fs::read_to_string(&one_log).unwrap_or_default()
        + &fs::read_to_string(&two_log).unwrap_or_default();
    assert_eq!(
        logs.matches("remote: slipway: queued: other builds are running")
            .count(),
        1,
        "{logs}"
    );
    let ids = docker(&["image", "ls", "-q", &format!("{REGISTRY}/{second}")]);
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        let _ = docker(
            &[
                &["rmi", "-f"][..],
                &ids.iter().map(String::as_str).collect::<Vec<_>>(),
            ]
            .concat(),
        );
    }
}

#[test]
fn a_dockerfile_cannot_reach_the_build_host_or_another_webspaces_images() {
    // Something only the build host can read: a loopback listener that records every request.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetched.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut stream = stream;
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nsecret\n");
        }
    });
    let site = Site::new(None);
    let app = site.app(&[("Dockerfile", DOCKERFILE), ("index.html", "v1\n")]);
    assert_ok(&site.push(&app, &["main"]));
    let before = rev_parse(&site.repository(), "refs/heads/main");

    // Another webspace's image on this engine and in the registry.
    let other = format!("{REGISTRY}/other-{}:v1", std::process::id());
    assert!(docker(&["tag", BASE_IMAGE, &other]).status.success());
    // A base image whose ONBUILD trigger would fetch from the build host.
    let triggered = format!("slipway-test/onbuild-{}:v1", std::process::id());
    let onbuild_dir = site.world.scratch.path("onbuild");
    fs::create_dir_all(&onbuild_dir).expect("dir");
    fs::write(
        onbuild_dir.join("Dockerfile"),
        format!("FROM {BASE_IMAGE}\nONBUILD ADD http://127.0.0.1:{port}/secret /secret\n"),
    )
    .expect("write");
    let built = Command::new("docker")
        .args(["build", "-q", "-t", &triggered])
        .arg(&onbuild_dir)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let cases = [
        (
            format!("FROM {BASE_IMAGE}\nADD http://127.0.0.1:{port}/secret /secret\n"),
            "ADD from a URL",
        ),
        (
            format!(
                "FROM {BASE_IMAGE}\nARG SOURCE=http://127.0.0.1:{port}/secret\nADD $SOURCE /secret\n"
            ),
            "ADD from a URL",
        ),
        (
            format!("FROM {BASE_IMAGE}\nRUN --mount=type=cache,target=/cache ls /cache\n"),
            "RUN --mount of type cache",
        ),
        (
            format!("# syntax=docker/dockerfile:1\nFROM {BASE_IMAGE}\n"),
            "directive is not allowed",
        ),
        (format!("FROM {other}\n"), "not webspace"),
        (
            format!("FROM {BASE_IMAGE}\nCOPY --from={other} /bin/busybox /b\n"),
            "not webspace",
        ),
        (
            format!("FROM localhost:5000/other-{}:v1\n", std::process::id()),
            "not webspace",
        ),
        (format!("FROM {triggered}\n"), "ONBUILD triggers"),
    ];
    for (dockerfile, why) in &cases {
        commit(
            &site.world.alice,
            &app,
            &[("Dockerfile", dockerfile.as_str())],
            "reach out",
        );
        let push = site.push(&app, &["main"]);
        let said = stderr(&push);
        assert!(!push.status.success(), "{dockerfile}: {said}");
        assert!(
            said.contains("remote: error: `main`: the Dockerfile's line") && said.contains(why),
            "{dockerfile}: {said}"
        );
        assert!(said.contains("remote: hint:"), "{said}");
        assert_eq!(rev_parse(&site.repository(), "refs/heads/main"), before);
        assert_ok(
            &site
                .world
                .alice
                .git(&app, &["reset", "-q", "--hard", "HEAD~1"]),
        );
    }
    assert_eq!(
        fetched.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing was fetched from the build host"
    );
    // The webspace's own image stays usable as a base.
    let own = format!("{REGISTRY}/{}", site.name);
    let tags = docker(&["image", "ls", "--format", "{{.Tag}}", &own]);
    let tag = String::from_utf8_lossy(&tags.stdout)
        .lines()
        .next()
        .expect("an image of this webspace")
        .to_owned();
    commit(
        &site.world.alice,
        &app,
        &[(
            "Dockerfile",
            &format!("FROM {own}:{tag}\nRUN echo built on my own image\n"),
        )],
        "build on my own image",
    );
    assert_ok(&site.push(&app, &["main"]));
    let _ = docker(&["rmi", "-f", &other, &triggered]);
}

#[test]
fn a_runtime_whose_base_image_cannot_be_pulled_says_so_not_fix_the_dockerfile() {
    // The shipped `node` runtime builds FROM a public image; this machine (like CI) has no way
    // to the public registry, so the pull fails: the message must say that, not "fix the
    // Dockerfile" of a repository that has none.
    let site = Site::new(Some("node"));
    let app = site.app(&[(
        "package.json",
        "{\"name\":\"x\",\"version\":\"1.0.0\",\"scripts\":{\"start\":\"node -e 1\"}}\n",
    )]);
    let push = site.push(&app, &["main"]);
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    assert!(said.contains("from runtime `node`"), "{said}");
    assert!(
        said.contains("remote: hint: a base image could not be pulled"),
        "{said}"
    );
    assert!(!said.contains("fix the Dockerfile"), "{said}");
}

/// Applies the shipped `static` runtime with its base image pointed at the test's own image:
/// no image can be pulled here.
fn static_runtime_from_local_image(site: &Site) {
    let shipped = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/runtimes/defaults/static.yaml"
    ))
    .expect("static runtime");
    apply_ok(
        &site.world.scratch.data(),
        &shipped.replace(
            "baseImage: busybox:stable",
            &format!("baseImage: {BASE_IMAGE}"),
        ),
    );
}

#[test]
fn without_dockerfile_or_runtime_an_index_html_is_detected_as_static_and_deployed() {
    let site = Site::new(None);
    static_runtime_from_local_image(&site);
    let app = site.app(&[("index.html", "<h1>detected</h1>\n")]);
    let push = site.push(&app, &["main"]);
    let said = stderr(&push);
    assert_ok(&push);
    assert!(
        said.contains("remote: slipway: `main` has no Dockerfile; detected runtime `static` (from index.html); set `spec.runtime` to choose another"),
        "{said}"
    );
    assert!(said.contains("from runtime `static`"), "{said}");
    let releases = site.releases();
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(releases[0]["spec"]["branch"], "main");
    assert_eq!(
        releases[0]["spec"]["commit"].as_str(),
        rev_parse(&site.repository(), "refs/heads/main").as_deref()
    );
}

#[test]
fn without_dockerfile_or_runtime_a_package_json_is_detected_as_node() {
    // The detected `node` runtime builds FROM a public image, which cannot be pulled here: the
    // push names the detected runtime, then fails saying the base image could not be pulled.
    let site = Site::new(None);
    let app = site.app(&[
        (
            "package.json",
            "{\"name\":\"x\",\"version\":\"1.0.0\",\"scripts\":{\"start\":\"node -e 1\"}}\n",
        ),
        ("index.html", "<h1>a node app's page</h1>\n"),
    ]);
    let push = site.push(&app, &["main"]);
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    assert!(
        said.contains(
            "remote: slipway: `main` has no Dockerfile; detected runtime `node` (from package.json)"
        ),
        "{said}"
    );
    assert!(said.contains("from runtime `node`"), "{said}");
    assert!(
        said.contains("remote: hint: a base image could not be pulled"),
        "{said}"
    );
    assert_eq!(rev_parse(&site.repository(), "refs/heads/main"), None);
}

#[test]
fn without_dockerfile_runtime_or_marker_the_push_is_refused_with_what_is_detected() {
    let site = Site::new(None);
    let app = site.app(&[
        ("README.md", "nothing to run\n"),
        ("docs/index.html", "x\n"),
    ]);
    let push = site.push(&app, &["main"]);
    let said = stderr(&push);
    assert!(!push.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "remote: error: `main` has no `Dockerfile` and webspace `{}` has no runtime",
            site.name
        )),
        "{said}"
    );
    assert!(
        said.contains("remote: hint: add a Dockerfile at the repository root, or a root file to detect a runtime from (go.mod, composer.json, index.php, requirements.txt, pyproject.toml, package.json, index.html), or set `spec.runtime`"),
        "{said}"
    );
    assert!(!said.contains("detected runtime"), "{said}");
    assert_eq!(rev_parse(&site.repository(), "refs/heads/main"), None);
    assert!(site.releases().is_empty());
}

#[test]
fn spec_runtime_wins_over_detection() {
    let site = Site::new(Some("static"));
    static_runtime_from_local_image(&site);
    let app = site.app(&[
        ("package.json", "{\"name\":\"x\",\"version\":\"1.0.0\"}\n"),
        ("index.html", "<h1>static on purpose</h1>\n"),
    ]);
    let push = site.push(&app, &["main"]);
    let said = stderr(&push);
    assert_ok(&push);
    assert!(said.contains("from runtime `static`"), "{said}");
    assert!(!said.contains("detected runtime"), "{said}");
    assert_eq!(site.releases().len(), 1);
}
