//! The result of a pass as plain data, and its renderings for on-call:
//! a terminal table, paste-ready Markdown, and the stable JSON schema
//! documented in docs/report-schema.md.
//!
//! Owns: the report model and its text. Does not own: producing it (the
//! shell's pass) or printing it.

use super::model::{Action, Outcome, Reason, RowState, SourceVerdict, Stage, Timestamp};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub generated_at: Timestamp,
    /// True when nothing was (or will be) written.
    pub dry_run: bool,
    pub sweeps: Vec<SweepReport>,
}

/// Rows now in each non-final state, any age.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub pending: u64,
    pub sending: u64,
    pub error: u64,
}

/// Per stuck state (pending, sending).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PerState<T> {
    pub pending: T,
    pub sending: T,
}

impl<T: Copy> PerState<T> {
    pub fn get(&self, s: RowState) -> T {
        match s {
            RowState::Pending => self.pending,
            RowState::Sending => self.sending,
        }
    }

    pub fn set(&mut self, s: RowState, v: T) {
        match s {
            RowState::Pending => self.pending = v,
            RowState::Sending => self.sending = v,
        }
    }
}

/// What happened to the writes of a pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Applied writes by action.
    pub applied: BTreeMap<Action, u64>,
    /// Rows that changed between read and write and were left alone.
    pub already_moved: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PassError {
    pub stage: Stage,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    pub name: String,
    pub table: String,
    /// Set when the sweep did not run (e.g. another instance holds its lock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub totals: Totals,
    /// Rows past their state's threshold.
    pub stuck: PerState<u64>,
    pub oldest_stuck_age_seconds: PerState<Option<f64>>,
    /// Decisions by action over all stuck rows.
    pub decisions: BTreeMap<Action, u64>,
    /// Decisions by reason.
    pub reasons: BTreeMap<Reason, u64>,
    /// Present when the plan was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<Outcomes>,
    pub rows: Vec<RowReport>,
    /// Stuck rows not listed in `rows` (report row limit).
    pub rows_omitted: u64,
    /// Sending rows without a verdict whose evidence a source will drop
    /// before `give_up_after`: settle them while it is still there.
    pub evidence_expiring: u64,
    pub errors: Vec<PassError>,
    pub duration_seconds: f64,
    /// Stale rows this pass read and decided (0 for a daemon pass that
    /// found its sweep at rest and unchanged). Not part of the JSON report.
    #[serde(skip)]
    pub examined: u64,
}

impl SweepReport {
    pub fn empty(name: &str, table: &str) -> Self {
        SweepReport {
            name: name.to_string(),
            table: table.to_string(),
            skipped: None,
            totals: Totals::default(),
            stuck: PerState::default(),
            oldest_stuck_age_seconds: PerState::default(),
            decisions: BTreeMap::new(),
            reasons: BTreeMap::new(),
            outcomes: None,
            rows: Vec::new(),
            rows_omitted: 0,
            evidence_expiring: 0,
            errors: Vec::new(),
            duration_seconds: 0.0,
            examined: 0,
        }
    }

    /// Whether any write failed or a stage errored.
    pub fn failed(&self) -> bool {
        !self.errors.is_empty() || self.outcomes.as_ref().is_some_and(|o| o.failed > 0)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RowReport {
    pub key: String,
    pub state: RowState,
    pub age_seconds: i64,
    pub decision: Action,
    pub reason: Reason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub evidence: Vec<SourceVerdict>,
    /// When a source will drop this row's evidence, if that is before the
    /// give-up policy applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_expires_at: Option<Timestamp>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `2h 13m`, `45s`, `3d 4h`.
pub fn human_age(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "0s".into();
    }
    let s = secs as u64;
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {}s", s % 60).replace(" 0s", ""),
        (0, h, m) => format!("{h}h {m}m").replace(" 0m", ""),
        (d, h, _) => format!("{d}d {h}h").replace(" 0h", ""),
    }
}

fn decision_label(r: &RowReport) -> String {
    match (r.decision, r.attempt) {
        (Action::Requeue, Some(a)) => format!("requeue #{a}"),
        (a, _) => a.as_str().to_string(),
    }
}

fn evidence_label(r: &RowReport) -> String {
    r.evidence
        .iter()
        .map(|e| {
            if e.detail.is_empty() {
                format!("{}: {}", e.source, e.verdict.label())
            } else {
                format!("{}: {} — {}", e.source, e.verdict.label(), e.detail)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn outcome_label(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Applied => Some("applied".into()),
        Outcome::AlreadyMoved => Some("already moved".into()),
        Outcome::Failed { stage, error } => Some(format!("FAILED at {stage}: {error}")),
        Outcome::NotApplied => None,
    }
}

fn counts_line(m: &BTreeMap<Action, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn oldest(v: Option<f64>) -> String {
    v.map(|s| format!(" (oldest {})", human_age(s)))
        .unwrap_or_default()
}

/// ANSI colours, only when asked (stdout is a TTY).
struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
    fn action(&self, a: Action, s: &str) -> String {
        let code = match a {
            Action::Requeue => "33",
            Action::MarkSent => "32",
            Action::MarkError => "31",
            Action::Hold => "35",
            Action::Leave => "2",
        };
        self.wrap(code, s)
    }
}

/// The terminal rendering.
pub fn render_text(report: &Report, color: bool) -> String {
    let paint = Paint(color);
    let mut out = String::new();
    let when = report.generated_at.format("%Y-%m-%d %H:%M:%S UTC");
    let _ = writeln!(
        out,
        "{} — {when}{}",
        paint.bold("sweeper"),
        if report.dry_run {
            " (dry run: nothing was changed)"
        } else {
            ""
        }
    );
    for s in &report.sweeps {
        let _ = writeln!(out);
        let _ = writeln!(out, "{} (table {})", paint.bold(&s.name), s.table);
        if let Some(why) = &s.skipped {
            let _ = writeln!(out, "  skipped: {why}");
        }
        let _ = writeln!(
            out,
            "  rows now:   pending {}   sending {}   error {}",
            s.totals.pending, s.totals.sending, s.totals.error
        );
        let _ = writeln!(
            out,
            "  stuck:      pending {}{}   sending {}{}",
            s.stuck.pending,
            oldest(s.oldest_stuck_age_seconds.pending),
            s.stuck.sending,
            oldest(s.oldest_stuck_age_seconds.sending)
        );
        let _ = writeln!(out, "  decisions:  {}", counts_line(&s.decisions));
        if s.evidence_expiring > 0 {
            let _ = writeln!(
                out,
                "  {}: {} sending row(s) will lose their provider evidence before give_up_after — settle them now",
                paint.wrap("33", "expiring"),
                s.evidence_expiring
            );
        }
        if let Some(o) = &s.outcomes {
            let _ = writeln!(
                out,
                "  applied:    {}   already moved {}   failed {}",
                counts_line(&o.applied),
                o.already_moved,
                o.failed
            );
        }
        for e in &s.errors {
            let _ = writeln!(
                out,
                "  {} at {}: {}",
                paint.wrap("31", "error"),
                e.stage,
                e.message
            );
        }
        if s.rows.is_empty() {
            continue;
        }
        let table: Vec<[String; 6]> = s
            .rows
            .iter()
            .map(|r| {
                let mut reason = r.reason.as_str().to_string();
                if let Some(o) = outcome_label(&r.outcome) {
                    reason = format!("{reason} [{o}]");
                }
                [
                    r.key.clone(),
                    r.state.as_str().to_string(),
                    human_age(r.age_seconds as f64),
                    decision_label(r),
                    reason,
                    evidence_label(r),
                ]
            })
            .collect();
        let head = ["KEY", "STATE", "AGE", "DECISION", "REASON", "EVIDENCE"];
        let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for row in &table {
            for (i, c) in row.iter().enumerate().take(5) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let _ = writeln!(out);
        let mut line = String::from("  ");
        for (i, h) in head.iter().enumerate() {
            let _ = write!(line, "{:w$}  ", h, w = if i < 5 { widths[i] } else { 0 });
        }
        let _ = writeln!(out, "{}", paint.bold(line.trim_end()));
        for (row, r) in table.iter().zip(&s.rows) {
            let mut line = String::from("  ");
            for (i, c) in row.iter().enumerate() {
                let cell = if i < 5 {
                    format!("{:w$}", c, w = widths[i])
                } else {
                    c.clone()
                };
                let cell = if i == 3 {
                    paint.action(r.decision, &cell)
                } else {
                    cell
                };
                let _ = write!(line, "{cell}  ");
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        if s.rows_omitted > 0 {
            let _ = writeln!(
                out,
                "  … and {} more rows (raise --max-rows to list them)",
                s.rows_omitted
            );
        }
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Paste-ready Markdown for an incident document.
pub fn render_markdown(report: &Report) -> String {
    let mut out = String::new();
    let when = report.generated_at.format("%Y-%m-%d %H:%M:%S UTC");
    let _ = writeln!(out, "## sweeper report — {when}\n");
    if report.dry_run {
        let _ = writeln!(out, "_Dry run: nothing was changed._\n");
    }
    for s in &report.sweeps {
        let _ = writeln!(out, "### {} (table `{}`)\n", s.name, s.table);
        if let Some(why) = &s.skipped {
            let _ = writeln!(out, "**Skipped:** {}\n", md_escape(why));
        }
        let _ = writeln!(out, "| | pending | sending | error |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| rows now | {} | {} | {} |",
            s.totals.pending, s.totals.sending, s.totals.error
        );
        let _ = writeln!(
            out,
            "| stuck | {} | {} | – |",
            s.stuck.pending, s.stuck.sending
        );
        let age = |v: Option<f64>| v.map(human_age).unwrap_or_else(|| "–".into());
        let _ = writeln!(
            out,
            "| oldest stuck | {} | {} | – |\n",
            age(s.oldest_stuck_age_seconds.pending),
            age(s.oldest_stuck_age_seconds.sending)
        );
        let _ = writeln!(out, "**Decisions:** {}\n", counts_line(&s.decisions));
        if s.evidence_expiring > 0 {
            let _ = writeln!(
                out,
                "**Evidence expiring:** {} sending row(s) will lose their provider evidence before give_up_after.\n",
                s.evidence_expiring
            );
        }
        if let Some(o) = &s.outcomes {
            let _ = writeln!(
                out,
                "**Applied:** {}; already moved {}; failed {}\n",
                counts_line(&o.applied),
                o.already_moved,
                o.failed
            );
        }
        for e in &s.errors {
            let _ = writeln!(out, "- **Error** at {}: {}", e.stage, md_escape(&e.message));
        }
        if !s.errors.is_empty() {
            out.push('\n');
        }
        if s.rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "| key | state | age | decision | reason | evidence |");
        let _ = writeln!(out, "|---|---|---:|---|---|---|");
        for r in &s.rows {
            let mut reason = r.reason.as_str().to_string();
            if let Some(o) = outcome_label(&r.outcome) {
                reason = format!("{reason} ({o})");
            }
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} |",
                md_escape(&r.key),
                r.state,
                human_age(r.age_seconds as f64),
                decision_label(r),
                md_escape(&reason),
                md_escape(&evidence_label(r))
            );
        }
        if s.rows_omitted > 0 {
            let _ = writeln!(out, "\n_… and {} more rows._", s.rows_omitted);
        }
        out.push('\n');
    }
    out
}

pub fn render_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("report serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Verdict;

    fn sample() -> Report {
        let mut s = SweepReport::empty("comments", "comments");
        s.totals = Totals {
            pending: 3,
            sending: 1,
            error: 2,
        };
        s.stuck = PerState {
            pending: 1,
            sending: 1,
        };
        s.oldest_stuck_age_seconds = PerState {
            pending: Some(7980.0),
            sending: Some(1200.0),
        };
        s.decisions.insert(Action::Requeue, 1);
        s.decisions.insert(Action::MarkSent, 1);
        s.rows = vec![
            RowReport {
                key: "17".into(),
                state: RowState::Pending,
                age_seconds: 7980,
                decision: Action::Requeue,
                reason: Reason::StalePending,
                attempt: Some(1),
                evidence: vec![],
                evidence_expires_at: None,
                outcome: Outcome::NotApplied,
            },
            RowReport {
                key: "a|b".into(),
                state: RowState::Sending,
                age_seconds: 1200,
                decision: Action::MarkSent,
                reason: Reason::Delivered,
                attempt: None,
                evidence: vec![SourceVerdict {
                    source: "postfix".into(),
                    verdict: Verdict::Delivered,
                    detail: "ED054C8803 1 recipient: ok0@d sent".into(),
                    references: vec!["mail.log:4".into()],
                }],
                evidence_expires_at: None,
                outcome: Outcome::NotApplied,
            },
        ];
        Report {
            schema_version: SCHEMA_VERSION,
            generated_at: chrono::DateTime::from_timestamp(1_795_905_345, 0).unwrap(),
            dry_run: true,
            sweeps: vec![s],
        }
    }

    #[test]
    fn human_ages() {
        let table = [
            (0.0, "0s"),
            (45.0, "45s"),
            (60.0, "1m"),
            (125.0, "2m 5s"),
            (3600.0, "1h"),
            (7980.0, "2h 13m"),
            (86_400.0 * 3.0 + 3600.0 * 4.0, "3d 4h"),
            (-5.0, "0s"),
        ];
        for (secs, want) in table {
            assert_eq!(human_age(secs), want, "{secs}");
        }
    }

    #[test]
    fn text_report_lists_counts_and_rows_without_colour_off_tty() {
        let t = render_text(&sample(), false);
        assert!(t.contains("dry run: nothing was changed"), "{t}");
        assert!(
            t.contains("stuck:      pending 1 (oldest 2h 13m)   sending 1 (oldest 20m)"),
            "{t}"
        );
        assert!(t.contains("requeue #1"), "{t}");
        assert!(t.contains("postfix: delivered — ED054C8803"), "{t}");
        assert!(!t.contains('\x1b'));
        assert!(render_text(&sample(), true).contains("\x1b["));
    }

    #[test]
    fn markdown_escapes_pipes() {
        let m = render_markdown(&sample());
        assert!(
            m.contains("| `a\\|b` | sending | 20m | mark_sent | delivered |"),
            "{m}"
        );
        assert!(m.contains("| stuck | 1 | 1 | – |"), "{m}");
    }

    #[test]
    fn json_report_has_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&sample())).unwrap();
        assert_eq!(v["schema_version"], 1);
        let s = &v["sweeps"][0];
        assert_eq!(s["name"], "comments");
        assert_eq!(s["stuck"]["pending"], 1);
        assert_eq!(s["totals"]["error"], 2);
        assert_eq!(s["decisions"]["requeue"], 1);
        let r = &s["rows"][1];
        assert_eq!(r["key"], "a|b");
        assert_eq!(r["state"], "sending");
        assert_eq!(r["age_seconds"], 1200);
        assert_eq!(r["decision"], "mark_sent");
        assert_eq!(r["reason"], "delivered");
        assert_eq!(r["outcome"], "not_applied");
        assert_eq!(r["evidence"][0]["verdict"], "delivered");
        assert_eq!(r["evidence"][0]["source"], "postfix");
    }
}
