//! Prometheus metrics: the contract of DESIGN.md plus build info, holds,
//! evidence-source health and config reloads.
//!
//! Owns: metric names, help texts, labels and how a pass result moves them.
//! Labels are config names and enum values only (ARCHITECTURE invariant 4).
//! Every label combination a sweep can produce is created at zero when the
//! sweep is registered, so `rate()` and absence alerts behave from the start.

use super::pass::PassResult;
use crate::config::Config;
use crate::core::model::{Action, Reason, Stage};
use crate::core::report::SweepReport;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Actions counted by `sweeper_actions_total`.
pub const ACTION_LABELS: [&str; 6] = [
    "requeue",
    "mark_sent",
    "mark_error",
    "leave",
    "hold",
    "already_moved",
];

/// Reasons a row can be held; `sweeper_held_rows` has one series each.
pub const HOLD_REASONS: [Reason; 8] = [
    Reason::Storm,
    Reason::NoWorkers,
    Reason::MaxActions,
    Reason::StillQueued,
    Reason::Running,
    Reason::Conflict,
    Reason::PresenceUnavailable,
    Reason::QueueBacklog,
];

/// Verdict labels of `sweeper_evidence_lookups_total`.
pub const VERDICT_LABELS: [&str; 5] = [
    "delivered",
    "failed",
    "in_flight",
    "not_found",
    "unavailable",
];

pub struct Metrics {
    registry: Registry,
    /// Every metric family name registered (histograms without suffixes).
    names: Vec<String>,
    rows: IntGaugeVec,
    stuck: IntGaugeVec,
    oldest: GaugeVec,
    actions: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    last_success: GaugeVec,
    held: IntGaugeVec,
    lookups: IntCounterVec,
    source_up: IntGaugeVec,
    lock_skipped: IntCounterVec,
    lines_read: IntCounterVec,
    expiring: IntGaugeVec,
    reloads: IntCounterVec,
    reload_ok: IntGaugeVec,
    examined: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are static and valid")
}

/// Registers collectors in order, keeping each family's name.
struct Families {
    registry: Registry,
    names: Vec<String>,
}

impl Families {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&mut self, c: C) -> C {
        self.names
            .extend(c.desc().iter().map(|d| d.fq_name.clone()));
        must(self.registry.register(Box::new(c.clone())));
        c
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut f = Families {
            registry: Registry::new(),
            names: Vec::new(),
        };
        let rows = f.add(must(IntGaugeVec::new(
            Opts::new(
                "sweeper_rows",
                "Rows now in pending, sending or error, any age.",
            ),
            &["sweep", "state"],
        )));
        let stuck = f.add(must(IntGaugeVec::new(
            Opts::new("sweeper_stuck_rows", "Rows past their state's threshold."),
            &["sweep", "state"],
        )));
        let oldest = f.add(must(GaugeVec::new(
            Opts::new(
                "sweeper_oldest_stuck_age_seconds",
                "Age of the oldest stuck row (0 when none), by the database clock.",
            ),
            &["sweep", "state"],
        )));
        let actions = f.add(must(IntCounterVec::new(
            Opts::new(
                "sweeper_actions_total",
                "Actions taken: applied requeues and marks, rows left or held, rows that had already moved.",
            ),
            &["sweep", "action"],
        )));
        let errors = f.add(must(IntCounterVec::new(
            Opts::new(
                "sweeper_errors_total",
                "Errors met during passes, by stage.",
            ),
            &["sweep", "stage"],
        )));
        let duration = f.add(must(HistogramVec::new(
            HistogramOpts::new(
                "sweeper_pass_duration_seconds",
                "Duration of a sweep's pass.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
            &["sweep"],
        )));
        let last_success = f.add(must(GaugeVec::new(
            Opts::new(
                "sweeper_last_success_timestamp_seconds",
                "Unix time of the sweep's last pass that finished without errors.",
            ),
            &["sweep"],
        )));
        let held = f.add(must(IntGaugeVec::new(
            Opts::new(
                "sweeper_held_rows",
                "Rows held in the last pass, by reason.",
            ),
            &["sweep", "reason"],
        )));
        let lookups = f.add(must(IntCounterVec::new(
            Opts::new(
                "sweeper_evidence_lookups_total",
                "Evidence lookups for stuck sending rows, by source and verdict.",
            ),
            &["source", "result"],
        )));
        let source_up = f.add(must(IntGaugeVec::new(
            Opts::new(
                "sweeper_evidence_source_up",
                "1 when the evidence source could be read in the last pass that used it, else 0.",
            ),
            &["source"],
        )));
        let lock_skipped = f.add(must(IntCounterVec::new(
            Opts::new(
                "sweeper_lock_skipped_total",
                "Passes that did nothing because another sweeper instance held the sweep's lock.",
            ),
            &["sweep"],
        )));
        let lines_read = f.add(must(IntCounterVec::new(
            Opts::new(
                "sweeper_evidence_lines_read_total",
                "Lines (journal sources: records) read from each log source; the daemon reads only what is new.",
            ),
            &["source"],
        )));
        let expiring = f.add(must(IntGaugeVec::new(
            Opts::new(
                "sweeper_evidence_expiring_rows",
                "Sending rows without a verdict whose provider evidence expires before give_up_after.",
            ),
            &["sweep"],
        )));
        let reloads = f.add(must(IntCounterVec::new(
            Opts::new(
                "sweeper_config_reloads_total",
                "Config reloads (SIGHUP), by result.",
            ),
            &["result"],
        )));
        let reload_ok = f.add(must(IntGaugeVec::new(
            Opts::new(
                "sweeper_config_last_reload_successful",
                "1 when the last config reload succeeded (or none was attempted), else 0.",
            ),
            &[],
        )));
        let examined = f.add(must(IntCounterVec::new(
            Opts::new(
                "sweeper_rows_examined_total",
                "Stale rows read and decided by passes; a daemon pass that finds its sweep at rest and unchanged examines none.",
            ),
            &["sweep"],
        )));
        let build = f.add(must(IntGaugeVec::new(
            Opts::new(
                "sweeper_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for r in ["success", "error"] {
            reloads.with_label_values(&[r]);
        }
        reload_ok.with_label_values(&[] as &[&str]).set(1);
        Metrics {
            registry: f.registry,
            names: f.names,
            rows,
            stuck,
            oldest,
            actions,
            errors,
            duration,
            last_success,
            held,
            lookups,
            source_up,
            lock_skipped,
            lines_read,
            expiring,
            reloads,
            reload_ok,
            examined,
        }
    }

    /// Create every series a config can produce, at zero; drop gauges of
    /// sweeps and sources no longer configured.
    pub fn register_config(&self, cfg: &Config) {
        for s in &cfg.sweeps {
            let n = s.name.as_str();
            for state in ["pending", "sending", "error"] {
                self.rows.with_label_values(&[n, state]);
            }
            for state in ["pending", "sending"] {
                self.stuck.with_label_values(&[n, state]);
                self.oldest.with_label_values(&[n, state]);
            }
            for a in ACTION_LABELS {
                self.actions.with_label_values(&[n, a]);
            }
            for st in Stage::ALL {
                self.errors.with_label_values(&[n, st.as_str()]);
            }
            for r in HOLD_REASONS {
                self.held.with_label_values(&[n, r.as_str()]);
            }
            self.duration.with_label_values(&[n]);
            self.last_success.with_label_values(&[n]);
            self.expiring.with_label_values(&[n]);
            self.examined.with_label_values(&[n]);
            self.lock_skipped.with_label_values(&[n]);
        }
        for (name, e) in &cfg.evidence {
            for v in VERDICT_LABELS {
                self.lookups.with_label_values(&[name, v]);
            }
            if matches!(
                e.kind,
                crate::config::EvidenceKind::Log(_) | crate::config::EvidenceKind::Store(_)
            ) {
                self.lines_read.with_label_values(&[name]);
            }
        }
        self.forget_removed(cfg);
    }

    fn forget_removed(&self, cfg: &Config) {
        let keep = |name: &str| cfg.sweep(name).is_some();
        for mf in self.registry.gather() {
            let gauge_like = [
                "sweeper_evidence_expiring_rows",
                "sweeper_rows",
                "sweeper_stuck_rows",
                "sweeper_oldest_stuck_age_seconds",
                "sweeper_held_rows",
                "sweeper_last_success_timestamp_seconds",
            ];
            if !gauge_like.contains(&mf.name()) {
                continue;
            }
            for m in mf.get_metric() {
                let labels: Vec<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                let Some((_, sweep)) = labels.iter().find(|(k, _)| *k == "sweep") else {
                    continue;
                };
                if keep(sweep) {
                    continue;
                }
                let by_name: std::collections::HashMap<&str, &str> =
                    labels.iter().copied().collect();
                let _ = match mf.name() {
                    "sweeper_rows" => self.rows.remove(&by_name),
                    "sweeper_stuck_rows" => self.stuck.remove(&by_name),
                    "sweeper_oldest_stuck_age_seconds" => self.oldest.remove(&by_name),
                    "sweeper_held_rows" => self.held.remove(&by_name),
                    "sweeper_evidence_expiring_rows" => self.expiring.remove(&by_name),
                    _ => self.last_success.remove(&by_name),
                };
            }
        }
        for mf in self.registry.gather() {
            if mf.name() != "sweeper_evidence_source_up" {
                continue;
            }
            for m in mf.get_metric() {
                let source = m.get_label().first().map(|l| l.value()).unwrap_or_default();
                if !cfg.evidence.contains_key(source) {
                    let _ = self.source_up.remove_label_values(&[source]);
                }
            }
        }
    }

    /// Move the metrics by what one pass did. `now` is the wall clock
    /// (unix seconds) for `last_success`.
    pub fn observe(&self, result: &PassResult, now_unix: f64) {
        for s in &result.report.sweeps {
            self.observe_sweep(s, now_unix);
        }
        for ((source, verdict), n) in &result.lookups {
            self.lookups
                .with_label_values(&[source.as_str(), verdict])
                .inc_by(*n);
        }
        for (source, err) in &result.sources {
            self.source_up
                .with_label_values(&[source])
                .set(i64::from(err.is_none()));
        }
        for (source, n) in &result.lines_read {
            self.lines_read.with_label_values(&[source]).inc_by(*n);
        }
    }

    fn observe_sweep(&self, s: &SweepReport, now_unix: f64) {
        let n = s.name.as_str();
        for e in &s.errors {
            self.errors.with_label_values(&[n, e.stage.as_str()]).inc();
        }
        if let Some(why) = &s.skipped {
            if why == super::pass::SKIPPED_LOCKED {
                self.lock_skipped.with_label_values(&[n]).inc();
            }
            return; // another instance holds the lock and reports
        }
        self.duration
            .with_label_values(&[n])
            .observe(s.duration_seconds);
        if !s
            .errors
            .iter()
            .any(|e| e.stage == Stage::Fetch || e.stage == Stage::Lock)
        {
            let to_i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.rows
                .with_label_values(&[n, "pending"])
                .set(to_i(s.totals.pending));
            self.rows
                .with_label_values(&[n, "sending"])
                .set(to_i(s.totals.sending));
            self.rows
                .with_label_values(&[n, "error"])
                .set(to_i(s.totals.error));
            self.stuck
                .with_label_values(&[n, "pending"])
                .set(to_i(s.stuck.pending));
            self.stuck
                .with_label_values(&[n, "sending"])
                .set(to_i(s.stuck.sending));
            self.oldest
                .with_label_values(&[n, "pending"])
                .set(s.oldest_stuck_age_seconds.pending.unwrap_or(0.0));
            self.oldest
                .with_label_values(&[n, "sending"])
                .set(s.oldest_stuck_age_seconds.sending.unwrap_or(0.0));
            self.expiring
                .with_label_values(&[n])
                .set(to_i(s.evidence_expiring));
            for r in HOLD_REASONS {
                let held = s.reasons.get(&r).copied().unwrap_or(0);
                self.held
                    .with_label_values(&[n, r.as_str()])
                    .set(to_i(held));
            }
        }
        self.examined.with_label_values(&[n]).inc_by(s.examined);
        for a in [Action::Leave, Action::Hold] {
            let c = s.decisions.get(&a).copied().unwrap_or(0);
            self.actions.with_label_values(&[n, a.as_str()]).inc_by(c);
        }
        if let Some(o) = &s.outcomes {
            for (a, c) in &o.applied {
                self.actions.with_label_values(&[n, a.as_str()]).inc_by(*c);
            }
            self.actions
                .with_label_values(&[n, "already_moved"])
                .inc_by(o.already_moved);
        }
        if !s.failed() {
            self.last_success.with_label_values(&[n]).set(now_unix);
        }
    }

    pub fn reloaded(&self, ok: bool) {
        // The gauge first: a scrape that sees the reload counted sees its
        // outcome too.
        self.reload_ok
            .with_label_values(&[] as &[&str])
            .set(i64::from(ok));
        self.reloads
            .with_label_values(&[if ok { "success" } else { "error" }])
            .inc();
    }

    /// Names of every metric family (for checking dashboards and alerts).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        must(TextEncoder::new().encode(&self.registry.gather(), &mut buf));
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
