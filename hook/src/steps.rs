//! Limits on each BuildKit build step, on a single host.
//!
//! The engine applies a build's `memory` and CPU options only to the classic builder; BuildKit
//! runs each `RUN` step in a cgroup of its own under `docker/buildkit/` (dockerd with the
//! `cgroupfs` driver), without limits. `slipway up` watches that directory and gives every new
//! step cgroup a memory limit (swap included), a process limit and a CPU quota within
//! [`POLL`] of its creation. A step that hits its process limit is a fork bomb or close to one:
//! all its processes are killed, so the build fails at once instead of at its timeout while
//! holding the host's process table. A step over its memory limit is killed by the kernel.
//!
//! Both cgroup layouts are handled: v1 (one hierarchy per controller) and v2 (unified).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the step cgroups are looked at: a step runs unlimited at most this long.
pub const POLL: Duration = Duration::from_millis(20);

/// What each build step may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLimits {
    /// Bytes of memory, swap included.
    pub memory: u64,
    /// Processes and threads.
    pub pids: u64,
    /// CPUs (a quota per 100 ms period).
    pub cpus: u32,
}

impl Default for StepLimits {
    /// 1 GiB and 2 CPUs, as the classic builder's steps get ([`crate::build::Limits`]); 1024
    /// processes is more than any package manager starts.
    fn default() -> Self {
        Self {
            memory: 1 << 30,
            pids: 1024,
            cpus: 2,
        }
    }
}

/// Where the step cgroups are.
#[derive(Debug, Clone)]
enum Layout {
    /// cgroup v1: `memory`, `pids`, `cpu` hierarchies, each with `docker/buildkit`.
    V1 { root: PathBuf },
    /// cgroup v2: one hierarchy.
    V2 { root: PathBuf },
}

impl Layout {
    fn detect(root: &Path) -> Self {
        if root.join("cgroup.controllers").exists() {
            Layout::V2 {
                root: root.to_owned(),
            }
        } else {
            Layout::V1 {
                root: root.to_owned(),
            }
        }
    }

    /// The step cgroups now (their names under `docker/buildkit`).
    fn steps(&self) -> Vec<String> {
        let dir = match self {
            Layout::V1 { root } => root.join("pids/docker/buildkit"),
            Layout::V2 { root } => root.join("docker/buildkit"),
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    fn path(&self, controller: &str, step: &str, file: &str) -> PathBuf {
        match self {
            Layout::V1 { root } => root
                .join(controller)
                .join("docker/buildkit")
                .join(step)
                .join(file),
            Layout::V2 { root } => root.join("docker/buildkit").join(step).join(file),
        }
    }

    /// Applies `limits` to `step`, each only where it is stricter than what is set: when two
    /// installations share an engine, both watch its steps (which cannot be told apart), and the
    /// stricter limits hold. Returns whether the process limit is in place (the step may have
    /// ended meanwhile; then it is tried again, and dropped once it is gone).
    fn limit(&self, step: &str, limits: StepLimits) -> bool {
        let write = |controller: &str, file: &str, value: String| {
            let path = self.path(controller, step, file);
            let current = fs::read_to_string(&path).unwrap_or_default();
            // The first number of the file ("max" and -1 mean none; cpu.max is "QUOTA PERIOD").
            let set = current
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|n| *n >= 0);
            let wanted = value
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<i64>().ok());
            if set.is_none() || wanted.is_some_and(|w| set.is_some_and(|s| w < s)) {
                let _ = fs::write(path, value);
            }
        };
        match self {
            Layout::V1 { .. } => {
                write("memory", "memory.limit_in_bytes", limits.memory.to_string());
                write(
                    "memory",
                    "memory.memsw.limit_in_bytes",
                    limits.memory.to_string(),
                );
                write("pids", "pids.max", limits.pids.to_string());
                write("cpu", "cpu.cfs_period_us", "100000".to_owned());
                write(
                    "cpu",
                    "cpu.cfs_quota_us",
                    (u64::from(limits.cpus) * 100_000).to_string(),
                );
            }
            Layout::V2 { .. } => {
                write("", "memory.max", limits.memory.to_string());
                write("", "memory.swap.max", "0".to_owned());
                write("", "pids.max", limits.pids.to_string());
                write(
                    "",
                    "cpu.max",
                    format!("{} 100000", u64::from(limits.cpus) * 100_000),
                );
            }
        }
        fs::read_to_string(self.path("pids", step, "pids.max"))
            .ok()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n <= limits.pids)
    }

    /// Whether `step` was refused a new process by its limit.
    fn hit_pids_limit(&self, step: &str) -> bool {
        fs::read_to_string(self.path("pids", step, "pids.events"))
            .ok()
            .and_then(|events| {
                events
                    .lines()
                    .find_map(|l| l.strip_prefix("max ").map(|n| n.trim().to_owned()))
            })
            .is_some_and(|n| n != "0")
    }

    /// Kills every process of `step`.
    fn kill(&self, step: &str) {
        // Several rounds: a fork bomb's processes may fork between the read and the kill.
        for _ in 0..20 {
            let Ok(procs) = fs::read_to_string(self.path("pids", step, "cgroup.procs")) else {
                return;
            };
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Whether a failed build looks killed by its limits: exit code 137 (SIGKILL), the kernel's OOM
/// kill, or a fork refused.
pub fn killed_in(message: &str, tail: &[String]) -> bool {
    std::iter::once(message)
        .chain(tail.iter().map(String::as_str))
        .any(|line| {
            let line = line.to_ascii_lowercase();
            line.contains("exit code: 137")
                || line.contains("signal: killed")
                || line.contains("can't fork")
                || line.contains("resource temporarily unavailable")
        })
}

/// Watches BuildKit's step cgroups under `root` (`/sys/fs/cgroup`) until `shutdown`, limiting
/// each new one and killing a step that hits its process limit.
pub async fn enforce(
    root: PathBuf,
    limits: StepLimits,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let layout = Layout::detect(&root);
    let parent = match &layout {
        Layout::V1 { root } => root.join("pids/docker"),
        Layout::V2 { root } => root.join("docker"),
    };
    if !parent.is_dir() {
        // dockerd with the systemd cgroup driver puts steps elsewhere: say so, do not pretend.
        tracing::warn!(
            path = %parent.display(),
            "the engine's cgroups are not where BuildKit steps are looked for: build steps run without per-step limits"
        );
    }
    let mut limited = std::collections::HashSet::new();
    let mut interval = tokio::time::interval(POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let steps = layout.steps();
        for step in &steps {
            if !limited.contains(step) && layout.limit(step, limits) {
                limited.insert(step.clone());
            }
            if layout.hit_pids_limit(step) {
                tracing::info!(step, "a build step hit its process limit: killed");
                layout.kill(step);
            }
        }
        limited.retain(|s| steps.contains(s));
    }
}
