//! The end-to-end harness: a real `slipway` server on 127.0.0.1:0, throwaway OpenSSH keys, and
//! the real `git` and `ssh` clients. Tests read like a terminal session.

#![allow(dead_code)]

pub mod cluster;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SLIPWAY: &str = env!("CARGO_BIN_EXE_slipway");

/// A scratch directory for one test: data directory, keys, work trees. Removed on drop.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn data(&self) -> PathBuf {
        self.path("data")
    }
}

/// An OpenSSH key pair made by `ssh-keygen`.
#[derive(Clone)]
pub struct Key {
    pub private: PathBuf,
    pub public_line: String,
}

pub fn keygen(scratch: &Scratch, name: &str) -> Key {
    let private = scratch.path(name);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&private),
    );
    let public_line = fs::read_to_string(private.with_extension("pub"))
        .expect("public key")
        .trim()
        .to_owned();
    Key {
        private,
        public_line,
    }
}

pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("spawn");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn customer_yaml(name: &str, keys: &[&Key]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("    - \"{}\"\n", k.public_line))
        .collect();
    let keys = if keys.is_empty() {
        "  sshKeys: []\n".to_owned()
    } else {
        format!("  sshKeys:\n{}", keys.concat())
    };
    format!(
        "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata:\n  name: {name}\nspec:\n  email: {name}@example.com\n{keys}---\n"
    )
}

pub fn webspace_yaml(name: &str, customer: &str) -> String {
    format!(
        "apiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: {name}\nspec:\n  customer: {customer}\n---\n"
    )
}

/// `slipway apply -f -` with `yaml` on stdin.
pub fn apply(data: &Path, yaml: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(SLIPWAY)
        .args(["apply", "-f", "-", "--data"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn slipway apply");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write yaml");
    child.wait_with_output().expect("slipway apply")
}

pub fn apply_ok(data: &Path, yaml: &str) {
    let output = apply(data, yaml);
    assert!(
        output.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A running `slipway git-server`, killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// The router's port, for `slipway up`.
    pub http_port: Option<u16>,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Server {
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, &[], &[])
    }

    /// Starts with extra `slipway git-server` arguments and environment variables.
    pub fn start_with(data: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn("git-server", data, args, envs)
    }

    /// `slipway up` with its router on 127.0.0.1:0.
    pub fn up(data: &Path, args: &[&str]) -> Self {
        let mut all = vec!["--http-listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::spawn("up", data, &all, &[])
    }

    fn spawn(subcommand: &str, data: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        fs::create_dir_all(data).expect("data dir");
        let log = data.join("server.log");
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        // A test may choose its own grace period.
        let grace: &[&str] = if args.contains(&"--shutdown-grace") {
            &[]
        } else {
            &["--shutdown-grace", "10"]
        };
        let mut child = Command::new(SLIPWAY)
            .args([subcommand, "--ssh-listen", "127.0.0.1:0"])
            .args(grace)
            .arg("--data")
            .arg(data)
            .args(args)
            .envs(envs.iter().copied())
            .env("SLIPWAY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn slipway git-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        reader
            .read_line(&mut first)
            .expect("server prints its address");
        let mut http_port = None;
        if subcommand == "up" {
            let mut second = String::new();
            reader.read_line(&mut second).expect("router address");
            http_port = second
                .split_whitespace()
                .find_map(|w| w.trim_end_matches(':').rsplit(':').next()?.parse().ok());
            assert!(http_port.is_some(), "no router port in {second:?}");
        }
        let stdout_copy = data.join("server.out");
        // Keep reading, like a terminal would, and keep what it says for the tests.
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
            // Written whole, then renamed, so a reader never sees half of it.
            let partial = stdout_copy.with_extension("partial");
            let _ = fs::write(&partial, rest);
            let _ = fs::rename(&partial, &stdout_copy);
        });
        let port = first
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no port in {first:?}; log: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Self {
            child,
            port,
            http_port,
            data: data.to_owned(),
            log,
        }
    }

    /// `ssh://git@127.0.0.1:PORT/REPOSITORY` (git then asks for `/REPOSITORY`).
    pub fn url(&self, repository: &str) -> String {
        format!(
            "ssh://git@127.0.0.1:{}/{}",
            self.port,
            repository.trim_start_matches('/')
        )
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(self) -> Output {
        self.terminate();
        self.wait_stopped()
    }

    /// Sends SIGTERM: the server stops accepting and drains.
    pub fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// Waits for the server to exit (after [`Server::terminate`]); its stdout and exit status.
    pub fn wait_stopped(mut self) -> Output {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait().expect("wait");
        // The reader thread writes what it read once the pipe closes.
        let path = self.data.join("server.out");
        let mut stdout = String::new();
        wait_for("the server's output", Duration::from_secs(5), || {
            stdout = fs::read_to_string(&path).unwrap_or_default();
            path.exists()
        });
        Output {
            status,
            stdout: stdout.into_bytes(),
            stderr: vec![],
        }
    }

    /// Number of git processes the server has finished running.
    pub fn git_runs(&self) -> usize {
        self.log().matches("git finished").count() + self.log().matches("git killed").count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A developer's machine: one key, and the `git` / `ssh` commands using it.
pub struct Client {
    pub key: Key,
    pub extra_identities: Vec<PathBuf>,
}

impl Client {
    pub fn new(key: &Key) -> Self {
        Self {
            key: key.clone(),
            extra_identities: vec![],
        }
    }

    fn ssh_options(&self) -> Vec<String> {
        let mut options = vec![];
        for identity in self.extra_identities.iter().chain([&self.key.private]) {
            options.push("-i".to_owned());
            options.push(identity.display().to_string());
        }
        for option in [
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
            "BatchMode=yes",
            "ControlMaster=no",
            "ControlPath=none",
        ] {
            options.push("-o".to_owned());
            options.push(option.to_owned());
        }
        options
    }

    pub fn ssh_command(&self) -> String {
        format!("ssh {}", self.ssh_options().join(" "))
    }

    /// `git ARGS` in `dir`, pushing and fetching over ssh with this client's key.
    pub fn git(&self, dir: &Path, args: &[&str]) -> Output {
        self.git_command(dir, args).output().expect("spawn git")
    }

    pub fn git_command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("git");
        command
            .args(args)
            .current_dir(dir)
            .env("GIT_SSH_COMMAND", self.ssh_command())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com");
        command
    }

    /// `git ARGS` in `dir` with `input` on stdin; asserts success and returns trimmed stdout.
    /// For plumbing that builds objects porcelain refuses to (`mktree`, `commit-tree`).
    pub fn git_plumbing(&self, dir: &Path, args: &[&str], input: &[u8]) -> String {
        use std::io::Write;
        let mut child = self
            .git_command(dir, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("git");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("stdin");
        drop(stdin);
        let output = child.wait_with_output().expect("git");
        assert_ok(&output);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `ssh -p PORT git@127.0.0.1 EXTRA... [COMMAND]`.
    pub fn ssh(&self, server: &Server, extra: &[&str], command: Option<&str>) -> Output {
        let mut ssh = Command::new("ssh");
        ssh.args(self.ssh_options())
            .args(["-p", &server.port.to_string()])
            .args(extra)
            .arg("git@127.0.0.1");
        if let Some(command) = command {
            ssh.arg(command);
        }
        ssh.stdin(Stdio::null()).output().expect("spawn ssh")
    }
}

/// A fresh work tree with `files` committed on `main`.
pub fn work_tree(client: &Client, dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir).expect("work tree");
    assert_ok(&client.git(dir, &["init", "-q", "-b", "main"]));
    commit(client, dir, files, "initial");
}

pub fn commit(client: &Client, dir: &Path, files: &[(&str, &str)], message: &str) {
    for (name, content) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("dirs");
        }
        fs::write(path, content).expect("write file");
    }
    assert_ok(&client.git(dir, &["add", "-A"]));
    assert_ok(&client.git(dir, &["commit", "-q", "-m", message]));
}

pub fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The id `git rev-parse REV` gives in `dir`, if any.
pub fn rev_parse(dir: &Path, rev: &str) -> Option<String> {
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

/// `git fsck --full` of a bare repository passes.
pub fn assert_fsck(repository: &Path) {
    let output = Command::new("git")
        .args(["fsck", "--full", "--no-progress"])
        .current_dir(repository)
        .output()
        .expect("git fsck");
    assert_ok(&output);
}

/// Polls `condition` every 20 ms until it holds, or panics after `limit` with `what`.
pub fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes working in `dir` (git runs in the repository it serves).
pub fn processes_in(dir: &Path) -> Vec<String> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut found = vec![];
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == dir) {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

/// The usual setup: a data directory with customer `alice` owning webspace `blog`, a running
/// server, and alice's client.
pub struct World {
    pub scratch: Scratch,
    pub server: Server,
    pub alice: Client,
}

impl World {
    /// A plain git host (`--no-build`): for tests of the transport, without Docker.
    pub fn new() -> Self {
        Self::with(&["--no-build"], &[])
    }

    /// A world whose server gets extra arguments and environment.
    pub fn with(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let scratch = Scratch::new();
        let key = keygen(&scratch, "alice");
        apply_ok(
            &scratch.data(),
            &(customer_yaml("alice", &[&key]) + &webspace_yaml("blog", "alice")),
        );
        let server = Server::start_with(&scratch.data(), args, envs);
        Self {
            server,
            alice: Client::new(&key),
            scratch,
        }
    }

    /// A work tree `app` with one commit, already pushed to `blog` as `main`.
    pub fn pushed_app(&self) -> PathBuf {
        let app = self.scratch.path("app");
        work_tree(&self.alice, &app, &[("a", "1")]);
        assert_ok(
            &self
                .alice
                .git(&app, &["push", &self.server.url("blog.git"), "main"]),
        );
        app
    }

    pub fn repository(&self, webspace: &str) -> PathBuf {
        self.scratch
            .data()
            .join("repos")
            .join(format!("{webspace}.git"))
    }
}

/// GET / through the router on `port` with `Host: HOST`: (status, body); (0, "") when nothing
/// listens.
pub fn http(port: u16, host: &str) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = std::io::Write::write_all(
        &mut stream,
        format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes(),
    );
    let mut response = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The ids of the containers (running or not) that match the `docker ps` filter `filter`.
pub fn containers(filter: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args(["ps", "-aq", "--filter", filter])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Removes the containers matching the `docker ps` filter `filter` (running or not) and the
/// images of repository `image`: what a test leaves behind on the engine.
pub fn remove_containers_and_images(filter: &str, image: &str) {
    let ids = containers(filter);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
    let Ok(listed) = Command::new("docker")
        .args(["image", "ls", "-q", image])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rmi", "-f"])
            .args(&ids)
            .output();
    }
}

/// `slipway up` with alice's webspace `<prefix>-<pid>` (one per test process under nextest);
/// removes the webspace's containers and images on drop.
pub struct Host {
    pub scratch: Scratch,
    pub server: Option<Server>,
    pub alice: Client,
    pub name: String,
}

impl Host {
    /// `slipway up ARGS` with alice's webspace `PREFIX-<pid>`.
    pub fn up(prefix: &str, args: &[&str]) -> Self {
        let scratch = Scratch::new();
        let key = keygen(&scratch, "alice");
        let name = format!("{prefix}-{}", std::process::id());
        apply_ok(
            &scratch.data(),
            &(customer_yaml("alice", &[&key]) + &webspace_yaml(&name, "alice")),
        );
        let server = Server::up(&scratch.data(), args);
        Self {
            scratch,
            server: Some(server),
            alice: Client::new(&key),
            name,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server runs")
    }

    /// The webspace's bare repository.
    pub fn repository(&self) -> PathBuf {
        self.scratch
            .data()
            .join("repos")
            .join(format!("{}.git", self.name))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        drop(self.server.take());
        remove_containers_and_images(
            &format!("label=dev.slipway.webspace={}", self.name),
            &format!("slipway/{}", self.name),
        );
    }
}

/// Kills `client` (spawned in a process group of its own: git and its ssh) with SIGKILL, as a
/// laptop lid closing would, and reaps it.
pub fn kill_client(client: &mut Child) {
    let group = nix::unistd::Pid::from_raw(i32::try_from(client.id()).expect("pid"));
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).expect("kill the client");
    let _ = client.wait();
}
