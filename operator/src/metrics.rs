//! Counters for Prometheus' `/metrics`, in its text format, without a metrics library: a few
//! atomics are all the operator counts.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// What the operator counts.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: AtomicU64,
    micros: AtomicU64,
    leader: AtomicBool,
}

impl Metrics {
    /// Records one reconcile.
    pub fn reconciled(&self, took: Duration, ok: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Records whether this replica holds the leader Lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Whether this replica holds the leader Lease.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let count = self.reconciles.load(Ordering::Relaxed);
        let seconds = self.micros.load(Ordering::Relaxed) as f64 / 1e6;
        for (name, kind, help, value) in [
            (
                "slipway_operator_reconciles_total",
                "counter",
                "Webspace reconciles run.",
                count.to_string(),
            ),
            (
                "slipway_operator_reconcile_failures_total",
                "counter",
                "Webspace reconciles that failed.",
                self.failures.load(Ordering::Relaxed).to_string(),
            ),
            (
                "slipway_operator_reconcile_duration_seconds_sum",
                "counter",
                "Seconds spent reconciling.",
                format!("{seconds:.6}"),
            ),
            (
                "slipway_operator_reconcile_duration_seconds_count",
                "counter",
                "Reconciles timed.",
                count.to_string(),
            ),
            (
                "slipway_operator_leader",
                "gauge",
                "1 when this replica holds the leader Lease.",
                u8::from(self.is_leader()).to_string(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_exposition() {
        let metrics = Metrics::default();
        metrics.reconciled(Duration::from_millis(1500), true);
        metrics.reconciled(Duration::from_millis(500), false);
        metrics.set_leader(true);
        let text = metrics.render();
        assert!(
            text.contains("slipway_operator_reconciles_total 2\n"),
            "{text}"
        );
        assert!(text.contains("slipway_operator_reconcile_failures_total 1\n"));
        assert!(text.contains("slipway_operator_reconcile_duration_seconds_sum 2.000000\n"));
        assert!(text.contains("slipway_operator_leader 1\n"));
    }
}
