//! `GET /metrics` in the Prometheus text format: shadows by status, open incidents by
//! kind, rollout durations, drift-check latency, and seconds since each shadow was last
//! in sync.

use crate::{Db, Result};
use domain::drift::DriftKind;
use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

const STATUSES: [&str; 7] = ["in_sync", "drifted", "stale", "unreachable", "fenced", "pending", "rolling_out"];

/// A cumulative histogram kept in memory (lost at restart, as Prometheus expects).
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", count.load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Whether the replica that answers leads (`etc_shadow_leader{replica="…"} 1`, 0 when
/// it follows): summed over the replicas' scrapes, exactly one leads.
pub fn render_leadership(out: &mut String, replica: &str, leading: bool) {
    let _ = writeln!(
        out,
        "# HELP etc_shadow_leader Whether this replica leads the control plane (1) or follows (0).\n# TYPE etc_shadow_leader gauge\netc_shadow_leader{{replica=\"{}\"}} {}",
        label(replica),
        u8::from(leading)
    );
}

/// The whole exposition. `checks` is the drift monitor's check-latency histogram,
/// `prepares_from_stage` the coordinator's count of prepares answered from a tree staged
/// ahead.
pub async fn render(db: &Db, checks: &Histogram, prepares_from_stage: u64) -> Result<String> {
    let mut out = String::new();
    let by_status: Vec<(String, i64)> = sqlx::query_as("SELECT status, COUNT(*) FROM shadows GROUP BY status")
        .fetch_all(&db.read)
        .await?;
    out.push_str("# HELP etc_shadow_shadows Registered shadows by status.\n# TYPE etc_shadow_shadows gauge\n");
    for status in STATUSES {
        let n = by_status.iter().find(|(s, _)| s == status).map(|(_, n)| *n).unwrap_or(0);
        let _ = writeln!(out, "etc_shadow_shadows{{status=\"{status}\"}} {n}");
    }

    let open: Vec<(String, i64)> = sqlx::query_as("SELECT kind, COUNT(*) FROM incidents WHERE status != 'resolved' GROUP BY kind")
        .fetch_all(&db.read)
        .await?;
    out.push_str("# HELP etc_shadow_incidents_open Unresolved drift incidents by kind.\n# TYPE etc_shadow_incidents_open gauge\n");
    for kind in DriftKind::ALL {
        let n = open.iter().find(|(k, _)| k == kind.as_str()).map(|(_, n)| *n).unwrap_or(0);
        let _ = writeln!(out, "etc_shadow_incidents_open{{kind=\"{kind}\"}} {n}");
    }

    // Rollout durations, from the journal (so they survive restarts).
    let durations: Vec<(f64,)> = sqlx::query_as(&format!(
        "SELECT {} FROM rollouts WHERE finished_at IS NOT NULL",
        crate::dialect::seconds_between(db, "finished_at", "started_at")
    ))
    .fetch_all(&db.read)
    .await?;
    out.push_str(
        "# HELP etc_shadow_rollout_duration_seconds Time from a rollout's start to its outcome.\n# TYPE etc_shadow_rollout_duration_seconds histogram\n",
    );
    for bound in BUCKETS {
        let n = durations.iter().filter(|(d,)| *d <= bound).count();
        let _ = writeln!(out, "etc_shadow_rollout_duration_seconds_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "etc_shadow_rollout_duration_seconds_bucket{{le=\"+Inf\"}} {}", durations.len());
    let _ = writeln!(
        out,
        "etc_shadow_rollout_duration_seconds_sum {}",
        durations.iter().map(|(d,)| d.max(0.0)).sum::<f64>()
    );
    let _ = writeln!(out, "etc_shadow_rollout_duration_seconds_count {}", durations.len());

    let states: Vec<(String, i64)> = sqlx::query_as("SELECT state, COUNT(*) FROM rollouts GROUP BY state")
        .fetch_all(&db.read)
        .await?;
    out.push_str("# HELP etc_shadow_rollouts Rollouts by state.\n# TYPE etc_shadow_rollouts gauge\n");
    for (state, n) in states {
        let _ = writeln!(out, "etc_shadow_rollouts{{state=\"{}\"}} {n}", label(&state));
    }

    checks.render(
        &mut out,
        "etc_shadow_check_duration_seconds",
        "Latency of one drift check of one shadow.",
    );

    let _ = writeln!(
        out,
        "# HELP etc_shadow_agent_received_bytes_total Bytes of agent answers received (checks, rollouts, diffs).\n# TYPE etc_shadow_agent_received_bytes_total counter\netc_shadow_agent_received_bytes_total {}",
        crate::shadows::Driver::agent_bytes_received()
    );

    let _ = writeln!(
        out,
        "# HELP etc_shadow_prepares_from_stage_total Prepares a shadow answered from the change's tree staged ahead (sent no entries).\n# TYPE etc_shadow_prepares_from_stage_total counter\netc_shadow_prepares_from_stage_total {}",
        prepares_from_stage
    );

    let in_sync: Vec<(String, Option<f64>)> = sqlx::query_as(&format!(
        "SELECT name, {} FROM shadows ORDER BY name",
        crate::dialect::seconds_since(db, "last_in_sync_at")
    ))
    .fetch_all(&db.read)
    .await?;
    out.push_str(
        "# HELP etc_shadow_seconds_since_in_sync Seconds since each shadow was last seen in sync (absent: never).\n# TYPE etc_shadow_seconds_since_in_sync gauge\n",
    );
    for (name, seconds) in in_sync {
        if let Some(seconds) = seconds {
            let _ = writeln!(
                out,
                "etc_shadow_seconds_since_in_sync{{shadow=\"{}\"}} {:.3}",
                label(&name),
                seconds.max(0.0)
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(300));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2\nx_sum 0.303\nx_count 2\n"), "{out}");
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
