//! What the git server counts for Prometheus' `/metrics`: git sessions per service, those
//! that failed, their time, refused logins, and connections closed by admission caps.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::command::Service;

#[derive(Debug, Default)]
struct PerService {
    sessions: AtomicU64,
    failures: AtomicU64,
    micros: AtomicU64,
}

/// Counters, shared by every connection.
#[derive(Debug, Default)]
pub struct Metrics {
    receive: PerService,
    upload: PerService,
    refused_logins: AtomicU64,
    refused_connections: AtomicU64,
}

impl Metrics {
    /// Records one finished git session; `ok` when git exited with 0.
    pub fn session(&self, service: Service, took: Duration, ok: bool) {
        let counters = match service {
            Service::ReceivePack => &self.receive,
            Service::UploadPack => &self.upload,
        };
        counters.sessions.fetch_add(1, Ordering::Relaxed);
        if !ok {
            counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        counters.micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Records a key that identified nobody.
    pub fn refused_login(&self) {
        self.refused_logins.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a connection closed at once by an admission cap.
    pub fn refused_connection(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let families = [
            (
                "slipway_git_sessions_total",
                "counter",
                "git sessions (receive-pack: pushes, upload-pack: clones and fetches).",
            ),
            (
                "slipway_git_session_failures_total",
                "counter",
                "git sessions whose git exited non-zero (rejected or broken pushes).",
            ),
            (
                "slipway_git_session_seconds_sum",
                "counter",
                "Seconds spent in git sessions.",
            ),
        ];
        for (index, (name, kind, help)) in families.into_iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (service, counters) in [
                ("receive-pack", &self.receive),
                ("upload-pack", &self.upload),
            ] {
                let value = match index {
                    0 => counters.sessions.load(Ordering::Relaxed).to_string(),
                    1 => counters.failures.load(Ordering::Relaxed).to_string(),
                    _ => format!(
                        "{:.6}",
                        counters.micros.load(Ordering::Relaxed) as f64 / 1e6
                    ),
                };
                let _ = writeln!(out, "{name}{{service=\"{service}\"}} {value}");
            }
        }
        let refused = self.refused_logins.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP slipway_ssh_refused_logins_total Public keys that identified no customer.\n# TYPE slipway_ssh_refused_logins_total counter\nslipway_ssh_refused_logins_total {refused}"
        );
        let refused = self.refused_connections.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP slipway_ssh_refused_connections_total Connections closed at once by a connection cap (global or per source address).\n# TYPE slipway_ssh_refused_connections_total counter\nslipway_ssh_refused_connections_total {refused}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_per_service() {
        let metrics = Metrics::default();
        metrics.session(Service::ReceivePack, Duration::from_secs(2), true);
        metrics.session(Service::ReceivePack, Duration::from_secs(1), false);
        metrics.session(Service::UploadPack, Duration::from_millis(250), true);
        metrics.refused_login();
        metrics.refused_connection();
        let text = metrics.render();
        assert!(
            text.contains("slipway_git_sessions_total{service=\"receive-pack\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("slipway_git_session_failures_total{service=\"receive-pack\"} 1\n"));
        assert!(
            text.contains("slipway_git_session_seconds_sum{service=\"upload-pack\"} 0.250000\n")
        );
        assert!(text.contains("slipway_ssh_refused_logins_total 1\n"));
        assert!(text.contains("slipway_ssh_refused_connections_total 1\n"));
    }
}
