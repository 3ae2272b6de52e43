//! The daemon's status board: what its status pages and `/api/` show, kept
//! in memory from the same pass results the metrics are set from.
//!
//! Owns: per sweep the latest counts (updated by the same rule as the
//! gauges: not when the pass was skipped for another instance's lock or
//! could not count), the last and recent passes, a chart's worth of stuck
//! counts, and the plan rows of the latest pass that walked the sweep
//! (at most `metrics.status_rows`); per source whether it was read. Does not
//! own: rendering (`web`), or any query — it is fed, never asks.

use crate::core::model::{Action, Stage, Timestamp};
use crate::core::report::{PassError, RowReport, SweepReport};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Passes kept in "recent passes".
pub const RECENT_PASSES: usize = 20;
/// How far back the stuck-count chart reaches.
pub const HISTORY: Duration = Duration::from_secs(6 * 3600);
/// Samples kept per sweep at most (one per pass).
const HISTORY_SAMPLES: usize = 2000;

/// One pass of one sweep, summarized.
#[derive(Clone, Debug, Serialize)]
pub struct PassSummary {
    pub at: Timestamp,
    pub duration_seconds: f64,
    /// `ok`, `failed` or `skipped` (another instance holds the sweep).
    pub outcome: &'static str,
    pub skipped: Option<String>,
    pub errors: Vec<PassError>,
    /// Applied actions (requeue, mark_sent, mark_error).
    pub applied: BTreeMap<Action, u64>,
    pub already_moved: u64,
    pub failed: u64,
    pub examined: u64,
}

/// Stuck rows at one moment.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    pub at: Timestamp,
    pub pending: u64,
    pub sending: u64,
}

/// Everything the pages know of one sweep.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepStatus {
    pub name: String,
    /// The latest counts, as the gauges hold them (report schema; its
    /// `rows` are left empty here: see `plan`).
    pub counts: Option<SweepReport>,
    pub last: Option<PassSummary>,
    pub recent: VecDeque<PassSummary>,
    pub history: VecDeque<Sample>,
    /// The decision per stuck row from the latest pass that walked the
    /// sweep, as the report lists rows.
    pub plan: Vec<RowReport>,
    /// Stuck rows the plan does not list (beyond `status_rows`).
    pub plan_omitted: u64,
    pub plan_at: Option<Timestamp>,
}

/// What the board holds, as a copy to render from.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub started_at: Option<Timestamp>,
    pub sweeps: Vec<SweepStatus>,
    /// Per evidence source: `None` when the latest pass read it, else why
    /// not.
    pub sources: BTreeMap<String, Option<String>>,
}

#[derive(Default)]
pub struct StatusBoard {
    inner: Mutex<Snapshot>,
}

/// Whether a sweep's counts from this pass are the ones the gauges take.
fn counts_taken(s: &SweepReport) -> bool {
    s.skipped.is_none()
        && !s
            .errors
            .iter()
            .any(|e| e.stage == Stage::Fetch || e.stage == Stage::Lock)
}

fn summary(s: &SweepReport, at: Timestamp) -> PassSummary {
    let (applied, already_moved, failed) = match &s.outcomes {
        Some(o) => (o.applied.clone(), o.already_moved, o.failed),
        None => (BTreeMap::new(), 0, 0),
    };
    PassSummary {
        at,
        duration_seconds: s.duration_seconds,
        outcome: if s.skipped.is_some() {
            "skipped"
        } else if s.failed() {
            "failed"
        } else {
            "ok"
        },
        skipped: s.skipped.clone(),
        errors: s.errors.clone(),
        applied,
        already_moved,
        failed,
        examined: s.examined,
    }
}

impl StatusBoard {
    pub fn new(started_at: Timestamp) -> StatusBoard {
        StatusBoard {
            inner: Mutex::new(Snapshot {
                started_at: Some(started_at),
                ..Snapshot::default()
            }),
        }
    }

    /// Keep exactly the configured sweeps, in config order.
    pub fn configure(&self, sweeps: &[String]) {
        let mut b = self.inner.lock().expect("status board lock");
        let mut old: BTreeMap<String, SweepStatus> =
            b.sweeps.drain(..).map(|s| (s.name.clone(), s)).collect();
        b.sweeps = sweeps
            .iter()
            .map(|n| {
                old.remove(n).unwrap_or_else(|| SweepStatus {
                    name: n.clone(),
                    ..SweepStatus::default()
                })
            })
            .collect();
    }

    /// Record a finished pass.
    pub fn observe(
        &self,
        sweeps: &[SweepReport],
        sources: &BTreeMap<String, Option<String>>,
        at: Timestamp,
    ) {
        let mut b = self.inner.lock().expect("status board lock");
        for (k, v) in sources {
            b.sources.insert(k.clone(), v.clone());
        }
        for s in sweeps {
            let Some(st) = b.sweeps.iter_mut().find(|x| x.name == s.name) else {
                continue;
            };
            let sum = summary(s, at);
            st.recent.push_front(sum.clone());
            st.recent.truncate(RECENT_PASSES);
            st.last = Some(sum);
            if !counts_taken(s) {
                continue;
            }
            let mut counts = s.clone();
            counts.rows = Vec::new();
            st.counts = Some(counts);
            st.history.push_back(Sample {
                at,
                pending: s.stuck.pending,
                sending: s.stuck.sending,
            });
            let horizon = at - chrono::TimeDelta::from_std(HISTORY).unwrap_or_default();
            while st
                .history
                .front()
                .is_some_and(|x| x.at < horizon || st.history.len() > HISTORY_SAMPLES)
            {
                st.history.pop_front();
            }
            // A sweep at rest is not walked again: its plan stands.
            let walked = s.examined > 0 || s.stuck.pending + s.stuck.sending == 0;
            if walked {
                st.plan = s.rows.clone();
                st.plan_omitted = s.rows_omitted;
                st.plan_at = Some(at);
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().expect("status board lock").clone()
    }

    /// One sweep's status (a copy), if configured.
    pub fn sweep(&self, name: &str) -> Option<(SweepStatus, BTreeMap<String, Option<String>>)> {
        let b = self.inner.lock().expect("status board lock");
        let s = b.sweeps.iter().find(|s| s.name == name)?.clone();
        Some((s, b.sources.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Reason, RowState};
    use crate::core::report::{Outcomes, PassError};

    fn report(pending: u64, examined: u64, rows: usize) -> SweepReport {
        let mut r = SweepReport::empty("s", "t");
        r.stuck.pending = pending;
        r.examined = examined;
        r.outcomes = Some(Outcomes::default());
        r.rows = (0..rows)
            .map(|i| RowReport {
                key: i.to_string(),
                state: RowState::Pending,
                age_seconds: 60,
                decision: Action::Requeue,
                reason: Reason::StalePending,
                attempt: Some(1),
                evidence: vec![],
                evidence_expires_at: None,
                outcome: crate::core::model::Outcome::Applied,
            })
            .collect();
        r
    }

    fn at(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_pass_that_could_not_count_keeps_the_last_counts_but_is_listed() {
        let b = StatusBoard::new(at(0));
        b.configure(&["s".to_string()]);
        b.observe(&[report(3, 3, 3)], &BTreeMap::new(), at(1));
        let mut broken = report(0, 0, 0);
        broken.errors.push(PassError {
            stage: Stage::Fetch,
            message: "database down".into(),
        });
        b.observe(&[broken], &BTreeMap::new(), at(2));
        let s = b.sweep("s").unwrap().0;
        assert_eq!(s.counts.unwrap().stuck.pending, 3);
        assert_eq!(s.last.unwrap().outcome, "failed");
        assert_eq!(s.recent.len(), 2);
        assert_eq!(s.history.len(), 1);
        assert_eq!(s.plan.len(), 3);
    }

    #[test]
    fn a_sweep_at_rest_keeps_its_plan_and_old_samples_age_out() {
        let b = StatusBoard::new(at(0));
        b.configure(&["s".to_string()]);
        b.observe(&[report(2, 2, 2)], &BTreeMap::new(), at(1));
        // At rest: counted, not walked.
        b.observe(&[report(2, 0, 0)], &BTreeMap::new(), at(2));
        let s = b.sweep("s").unwrap().0;
        assert_eq!(s.plan.len(), 2);
        assert_eq!(s.plan_at, Some(at(1)));
        let later =
            at(1) + chrono::TimeDelta::from_std(HISTORY).unwrap() + chrono::TimeDelta::seconds(5);
        b.observe(&[report(0, 0, 0)], &BTreeMap::new(), later);
        let s = b.sweep("s").unwrap().0;
        assert_eq!(
            s.history.len(),
            1,
            "samples older than the chart's reach are dropped"
        );
        assert!(s.plan.is_empty(), "nothing stuck: the plan is empty");
    }

    #[test]
    fn only_configured_sweeps_are_kept() {
        let b = StatusBoard::new(at(0));
        b.configure(&["a".to_string(), "b".to_string()]);
        b.configure(&["b".to_string()]);
        assert_eq!(b.snapshot().sweeps.len(), 1);
        assert!(b.sweep("a").is_none());
    }
}
