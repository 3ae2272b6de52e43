//! `sweeper explain --sweep NAME --key KEY`: one row, in words an on-call
//! engineer can act on — its state and age, the rule that applies, every
//! evidence line found (file:line), per-recipient outcomes, the verdict and
//! the decision. Runs the same dry-run pass as `report`, restricted to the
//! row, so it can never disagree with it.

use super::cli::{EXIT_FAILED, EXIT_OK};
use super::pass::{run_pass, Connections, PassOptions, PassResult, SourceScan};
use crate::config::{Config, QueueKind, SweepConfig};
use crate::core::decide::requeue_interval;
use crate::core::evidence::normalize_key;
use crate::core::model::{Action, LedgerEntry, RowState, StuckRow, Timestamp};
use crate::core::report::human_age;
use chrono::TimeDelta;
use std::fmt::Write as _;

fn when(t: Timestamp) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn dur(d: std::time::Duration) -> String {
    human_age(d.as_secs_f64())
}

fn rule_text(cfg: &Config, sweep: &SweepConfig, state: RowState) -> String {
    match state {
        RowState::Pending => match (&sweep.rules.pending, &sweep.job) {
            (Some(p), Some(job)) => {
                let kind = cfg
                    .queues
                    .get(&job.queue_ref)
                    .map(|q| q.kind.as_str())
                    .unwrap_or("?");
                let backoff = p
                    .backoff
                    .as_ref()
                    .map(|b| format!(", backing off ×{} up to {}", b.factor, dur(b.max)))
                    .unwrap_or_default();
                format!(
                    "pending rows untouched for {} are requeued as {} on queue {:?} of {} ({kind}), at most {} times{backoff}; then marked {}",
                    dur(p.after),
                    job.class,
                    job.queue,
                    job.queue_ref,
                    p.max_attempts,
                    sweep.states.error
                )
            }
            _ => "this sweep has no `pending` rule: pending rows are left alone".into(),
        },
        RowState::Sending => match &sweep.rules.sending {
            Some(s) => format!(
                "sending rows older than {} are settled from evidence ({}); without a verdict by {}, on_no_evidence = {}",
                dur(s.after),
                if sweep.evidence.is_empty() {
                    "no sources configured".to_string()
                } else {
                    sweep
                        .evidence
                        .iter()
                        .map(|e| format!("{} by {}", e.source, e.column))
                        .collect::<Vec<_>>()
                        .join(", then ")
                },
                dur(s.give_up_after),
                s.on_no_evidence.as_str()
            ),
            None => "this sweep has no `sending` rule: sending rows are left alone".into(),
        },
    }
}

/// Render the explanation of `key` from a single-row dry-run pass.
pub fn render(cfg: &Config, sweep: &SweepConfig, key: &str, result: &PassResult) -> (String, bool) {
    let mut out = String::new();
    let report = result.report.sweeps.iter().find(|s| s.name == sweep.name);
    let detail = result.details.iter().find(|d| d.sweep == sweep.name);
    let _ = writeln!(
        out,
        "sweep {} · table {} · {} = {key}",
        sweep.name, sweep.table, sweep.key
    );
    if let Some(r) = report {
        for e in &r.errors {
            let _ = writeln!(out, "  error       at {}: {}", e.stage, e.message);
        }
        if !r.errors.is_empty() {
            return (out, false);
        }
    }
    let (Some(detail), Some(now)) = (detail, detail.and_then(|d| d.now)) else {
        let _ = writeln!(out, "  the sweep did not run");
        return (out, false);
    };
    let Some((state_text, row)) = &detail.target else {
        let _ = writeln!(
            out,
            "  no row with {} = {key} in {}",
            sweep.key, sweep.table
        );
        return (out, false);
    };
    let age = (now - row.updated_at).num_milliseconds() as f64 / 1000.0;
    let _ = writeln!(
        out,
        "  state       {state_text}, since {} ({} ago, by the database clock)",
        when(row.updated_at),
        human_age(age)
    );
    let Some((row, decision, evidence, ledger)) = detail.rows.first() else {
        let _ = writeln!(
            out,
            "  decision    none: sweeper only acts on rows in {} or {} (with a rule for that state)",
            sweep.states.pending, sweep.states.sending
        );
        return (out, true);
    };
    let _ = writeln!(out, "  rule        {}", rule_text(cfg, sweep, row.state));

    if row.state == RowState::Pending {
        pending_lines(&mut out, cfg, sweep, row, ledger.as_ref(), now);
    }

    for (i, sv) in evidence.iter().enumerate() {
        let e = &sweep.evidence[i];
        let lookup = row.lookup(e.lookup);
        let _ = writeln!(
            out,
            "  evidence    {} — lookup {} = {:?}",
            sv.source, e.column, lookup
        );
        match result.scans.get(&sv.source) {
            Some(Ok(scan)) => scan_lines(&mut out, scan, row, lookup),
            Some(Err(e)) => {
                let _ = writeln!(out, "              source unavailable: {e}");
            }
            None if normalize_key(lookup).is_empty() => {}
            None => {
                let _ = writeln!(out, "              not scanned");
            }
        }
        let reason = match &sv.verdict {
            crate::core::model::Verdict::Failed { reason } => format!(" ({})", reason.as_str()),
            crate::core::model::Verdict::InFlight { reason } => {
                format!(" ({reason:?})").to_lowercase()
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "              verdict: {}{reason} — {}",
            sv.verdict.label(),
            sv.detail
        );
    }

    let action = match (decision.action, decision.attempt) {
        (Action::Requeue, Some(a)) => format!("requeue (attempt {a})"),
        (a, _) => a.as_str().to_string(),
    };
    let _ = writeln!(
        out,
        "  decision    {action} because {}: {}",
        decision.reason,
        decision.reason.describe()
    );
    let _ = writeln!(
        out,
        "              (explain is a dry run; limits.max_actions applies across a whole pass)"
    );
    (out, true)
}

/// A pending row: its requeues so far, and the job and payload a requeue
/// would send.
fn pending_lines(
    out: &mut String,
    cfg: &Config,
    sweep: &SweepConfig,
    row: &StuckRow,
    ledger: Option<&LedgerEntry>,
    now: Timestamp,
) {
    match ledger.filter(|l| l.version == row.version) {
        None => {
            let _ = writeln!(
                out,
                "  requeues    none recorded for this row since it last changed"
            );
        }
        Some(l) => {
            let next = sweep.rules.pending.as_ref().map(|p| {
                l.last_requeued_at
                    + TimeDelta::from_std(requeue_interval(p, l.attempts)).unwrap_or(TimeDelta::MAX)
            });
            let _ = writeln!(
                out,
                "  requeues    {} so far, the last at {} ({} ago){}",
                l.attempts,
                when(l.last_requeued_at),
                human_age((now - l.last_requeued_at).num_seconds() as f64),
                next.map(|n| format!("; the next not before {}", when(n)))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(job) = &sweep.job {
        let _ = writeln!(
            out,
            "  job         {} {} on {}",
            job.class,
            serde_json::Value::from(row.args.clone()),
            job.queue
        );
        if let Some(q) = cfg.queues.get(&job.queue_ref) {
            if matches!(q.kind, QueueKind::Jsonl { .. }) {
                let _ = writeln!(out, "              (appended to a jsonl file)");
            }
            let attempt = ledger
                .filter(|l| l.version == row.version)
                .map_or(1, |l| l.attempts + 1);
            let site = (sweep.name.as_str(), row.key.as_str(), attempt);
            match crate::adapters::queue::preview(q, job, &row.args, site, now) {
                Some(Ok(payload)) => {
                    let _ = writeln!(out, "  payload     {payload}");
                    let _ = writeln!(out, "              (as the worker will receive it)");
                }
                Some(Err(e)) => {
                    let _ = writeln!(out, "  payload     cannot be built: {e}");
                }
                None => {}
            }
        }
    }
}

/// What one source's scan holds for the row: the files read, and each
/// message with the lookup key since the row's time (less slack), line by
/// line and recipient by recipient.
fn scan_lines(out: &mut String, scan: &SourceScan, row: &StuckRow, lookup: &str) {
    let journal = scan.journal;
    if scan.searched {
        let _ = writeln!(
            out,
            "              searched: {} line(s) found for the wanted keys and their queue ids",
            scan.stats.lines
        );
    } else {
        let _ = writeln!(
            out,
            "              scanned {} {}, {} {}: {}",
            scan.stats.files,
            if journal { "journal" } else { "file(s)" },
            scan.stats.lines,
            if journal { "records" } else { "lines" },
            scan.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let since = row.updated_at - TimeDelta::from_std(scan.slack).unwrap_or(TimeDelta::MAX);
    let all = scan.store.instances(lookup, None);
    let counted = scan.store.instances(lookup, Some(since));
    if all.len() > counted.len() {
        let _ = writeln!(
            out,
            "              {} older message(s) with this key before {} (row time − slack) are ignored",
            all.len() - counted.len(),
            when(since)
        );
    }
    for m in counted {
        let _ = writeln!(
            out,
            "              message {}{}",
            m.id,
            m.first_seen
                .map(|t| format!(", first seen {}", when(t)))
                .unwrap_or_default()
        );
        for (l, text) in m.lines.iter().zip(&m.texts) {
            let at = crate::shell::pass::EvidenceIndex::reference(scan, l);
            let _ = writeln!(out, "                {at}  {text}");
        }
        for r in &m.recipients {
            let _ = writeln!(
                out,
                "                recipient {}: {}{}",
                r.rcpt,
                m.effective_status(r).as_str(),
                if r.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.detail)
                }
            );
        }
        if let Some(n) = m.expected_recipients {
            if n > m.recipients.len() {
                let _ = writeln!(
                    out,
                    "                {} of {n} recipients have no outcome logged yet",
                    n - m.recipients.len()
                );
            }
        }
    }
}

/// Explain `key` of `sweep` from a single-row dry run: the text, and
/// whether the row could be explained. `Err` for an unknown sweep.
pub async fn explain_text(
    cfg: &Config,
    sweep: &str,
    key: &str,
    progress: bool,
) -> anyhow::Result<(String, bool)> {
    let Some(s) = cfg.sweep(sweep) else {
        let known: Vec<&str> = cfg.sweeps.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!("unknown sweep {sweep:?} (defined: {})", known.join(", "));
    };
    let opts = PassOptions {
        dry_run: true,
        only: vec![sweep.to_string()],
        keep_text: true,
        max_rows: None,
        key: Some(key.to_string()),
        incremental: false,
        stop: None,
        progress,
    };
    let mut conns = Connections::new();
    let result = run_pass(cfg, &mut conns, &opts, chrono::Utc::now()).await;
    let (mut text, ok) = render(cfg, s, key, &result);
    if ok {
        text.push_str(&history_text(cfg, &mut conns, s, key).await);
    }
    conns.close().await;
    Ok((text, ok))
}

/// The row's audit history (the newest `EXPLAIN_HISTORY` entries), as an
/// indented section.
async fn history_text(cfg: &Config, conns: &mut Connections, s: &SweepConfig, key: &str) -> String {
    const EXPLAIN_HISTORY: u32 = 20;
    let label = "  history     ";
    let found = match conns.db(cfg, &s.database).await {
        Ok(db) => match db.history_exists().await {
            Ok(true) => db
                .history_list(&s.name, Some(key), None, EXPLAIN_HISTORY)
                .await
                .map(Some),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match found {
        Ok(None) => format!("{label}none (no history table yet)\n"),
        Ok(Some(entries)) if entries.is_empty() => {
            format!("{label}none: sweeper has not changed this row\n")
        }
        Ok(Some(entries)) => {
            let mut out = String::new();
            for (i, line) in super::history::render_text(&entries).lines().enumerate() {
                let _ = writeln!(
                    out,
                    "{}{line}",
                    if i == 0 { label } else { "              " }
                );
            }
            out
        }
        Err(e) => format!("{label}cannot be read: {e}\n"),
    }
}

pub async fn run(cfg: &Config, sweep: &str, key: &str) -> anyhow::Result<u8> {
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (text, ok) = explain_text(cfg, sweep, key, progress).await?;
    print!("{text}");
    Ok(if ok { EXIT_OK } else { EXIT_FAILED })
}
