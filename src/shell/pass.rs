//! One pass over the selected sweeps: the path shared by `report`,
//! `explain`, `once` and `run` up to the plan; a dry run stops there.
//!
//! Phases:
//! 1. collect — per sweep: take its lock (real passes), read the database
//!    clock, count rows, fetch stuck rows page by page, read the ledger;
//! 2. evidence — per evidence source, one scan for the lookup keys of *all*
//!    sweeps' stuck sending rows;
//! 3. settle — per sweep: plan with the pure core, then (unless dry run)
//!    apply: guarded updates, queue pushes, ledger writes.
//!
//! Owns: orchestration and error accounting. Does not own: decisions
//! (core::decide) or SQL/wire formats (adapters).

use crate::adapters::db::{Db, DbError, LockGuard, StaleSummary, SweepTable, Target, Transition};
use crate::adapters::logfile::{self, ScanStats};
use crate::adapters::provider::{self, WantedRow};
use crate::adapters::queue::{JobRequest, QueueClient, QueueError};
use crate::adapters::tail::Tailer;
use crate::config::{Config, EvidenceKind, QueueKind, SweepConfig};
use crate::core::decide::{plan, Brakes, RowContext};
use crate::core::evidence::{KeyFilter, LineRef, TraceStore};
use crate::core::model::{
    Action, Decision, LedgerEntry, Outcome, Presence, RowState, SourceVerdict, Stage, StuckRow,
    Timestamp, Verdict,
};
use crate::core::report::{
    Outcomes, PassError, PerState, Report, RowReport, SweepReport, Totals, SCHEMA_VERSION,
};
use chrono::TimeDelta;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections kept across passes (the daemon reuses them).
#[derive(Default)]
pub struct Connections {
    dbs: HashMap<String, Db>,
    queues: HashMap<String, QueueClient>,
    ledger_ready: HashSet<String>,
    /// The daemon's incremental log readers, by source name.
    tailers: HashMap<String, Tailer>,
}

impl Connections {
    pub fn new() -> Self {
        Self::default()
    }

    /// The named database, connecting on first use.
    pub async fn db(&mut self, cfg: &Config, name: &str) -> Result<Db, DbError> {
        if let Some(db) = self.dbs.get(name) {
            return Ok(db.clone());
        }
        let dcfg = cfg
            .databases
            .get(name)
            .expect("validation resolves database references");
        let db = Db::connect(dcfg).await?;
        self.dbs.insert(name.to_string(), db.clone());
        Ok(db)
    }

    /// The named queue, connecting on first use.
    pub async fn queue(
        &mut self,
        cfg: &Config,
        name: &str,
    ) -> Result<&mut QueueClient, QueueError> {
        if !self.queues.contains_key(name) {
            let qcfg = cfg
                .queues
                .get(name)
                .expect("validation resolves queue references");
            let q = QueueClient::connect(qcfg).await?;
            self.queues.insert(name.to_string(), q);
        }
        Ok(self.queues.get_mut(name).expect("just inserted"))
    }

    /// Forget a queue connection after an error, so the next use reconnects.
    pub fn drop_queue(&mut self, name: &str) {
        self.queues.remove(name);
    }

    pub async fn close(&mut self) {
        for db in self.dbs.values() {
            db.close().await;
        }
        self.dbs.clear();
        self.queues.clear();
        self.tailers.clear();
    }
}

#[derive(Clone, Debug, Default)]
pub struct PassOptions {
    /// Plan only; write nothing anywhere.
    pub dry_run: bool,
    /// Only these sweeps (all when empty).
    pub only: Vec<String>,
    /// Keep evidence line texts (for `explain`).
    pub keep_text: bool,
    /// List at most this many rows per sweep in the report (counts stay complete).
    pub max_rows: Option<usize>,
    /// Only this row key (for `explain`); other rows are not listed.
    pub key: Option<String>,
    /// Read logs incrementally through long-lived tailers kept in
    /// `Connections` (the daemon), instead of one full scan per pass.
    pub incremental: bool,
    /// Set by a shutdown signal: finish the batch in hand, apply no more.
    pub stop: Option<Arc<AtomicBool>>,
    /// Show scan progress on stderr (the CLI sets it when stderr is a TTY).
    pub progress: bool,
}

impl PassOptions {
    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }
}

/// Where a pass looks evidence up: a one-off scan or a daemon's tailer.
pub trait EvidenceIndex: Sync {
    fn store(&self) -> &TraceStore;
    /// The name of file `i` of `LineRef.file`.
    fn file_name(&self, i: u32) -> String;
    fn slack(&self) -> Duration;
    /// Where a piece of evidence came from, for reports and logs.
    fn reference(&self, l: &LineRef) -> String {
        format!("{}:{}", self.file_name(l.file), l.line)
    }
    /// Why this key could not be looked up, if it could not.
    fn key_error(&self, _key: &str) -> Option<&str> {
        None
    }
    fn lag(&self) -> Duration {
        Duration::ZERO
    }
    fn retention(&self) -> Option<Duration> {
        None
    }
    /// Whether the row's time window applies to this source's evidence.
    fn windowed(&self) -> bool {
        true
    }
    /// Some per-key failure, if any (the source is partly down).
    fn any_key_error(&self) -> Option<&str> {
        None
    }
}

impl EvidenceIndex for SourceScan {
    fn store(&self) -> &TraceStore {
        &self.store
    }
    fn file_name(&self, i: u32) -> String {
        self.files
            .get(i as usize)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
    fn slack(&self) -> Duration {
        self.slack
    }
    fn reference(&self, l: &LineRef) -> String {
        match self.refs.get(l.line as usize) {
            Some(r) if !self.refs.is_empty() => r.clone(),
            _ => format!("{}:{}", self.file_name(l.file), l.line),
        }
    }
    fn key_error(&self, key: &str) -> Option<&str> {
        self.failed.get(key).map(String::as_str)
    }
    fn any_key_error(&self) -> Option<&str> {
        self.failed.values().next().map(String::as_str)
    }
    fn lag(&self) -> Duration {
        self.lag
    }
    fn retention(&self) -> Option<Duration> {
        self.retention
    }
    fn windowed(&self) -> bool {
        self.windowed
    }
}

impl EvidenceIndex for Tailer {
    fn store(&self) -> &TraceStore {
        &self.store
    }
    fn file_name(&self, i: u32) -> String {
        self.names
            .get(i as usize)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
    fn slack(&self) -> Duration {
        Tailer::slack(self)
    }
}

type Views<'a> = BTreeMap<String, Result<&'a (dyn EvidenceIndex + Sync), String>>;

/// The scan of one evidence source.
pub struct SourceScan {
    pub files: Vec<PathBuf>,
    pub store: TraceStore,
    pub stats: ScanStats,
    pub slack: Duration,
    /// Provider event references (`LineRef.line` indexes them); empty for logs.
    pub refs: Vec<String>,
    /// Keys a provider could not be asked about, and why.
    pub failed: HashMap<String, String>,
    /// Absence means nothing for rows younger than this.
    pub lag: Duration,
    /// How long the source keeps evidence, when known.
    pub retention: Option<Duration>,
    /// Whether evidence carries times, so the row's window applies (a
    /// generic status API answers about the key only).
    pub windowed: bool,
}

impl SourceScan {
    fn of_log(files: Vec<PathBuf>, store: TraceStore, stats: ScanStats, slack: Duration) -> Self {
        SourceScan {
            files,
            store,
            stats,
            slack,
            refs: Vec::new(),
            failed: HashMap::new(),
            lag: Duration::ZERO,
            retention: None,
            windowed: true,
        }
    }
}

/// Everything a pass produced.
pub struct PassResult {
    pub report: Report,
    /// Evidence lookups by (source, verdict label).
    pub lookups: BTreeMap<(String, &'static str), u64>,
    /// Per source: the scan, or why it failed.
    pub scans: BTreeMap<String, Result<SourceScan, String>>,
    /// Stuck rows and decisions per sweep (for `explain`).
    pub details: Vec<SweepDetail>,
    /// Every evidence source read in this pass: `None` when it was read,
    /// else why not.
    pub sources: BTreeMap<String, Option<String>>,
}

impl PassResult {
    /// Whether anything failed (exit code 1).
    pub fn failed(&self) -> bool {
        self.report.sweeps.iter().any(SweepReport::failed)
    }
}

/// A sweep's rows as decided in this pass.
pub struct SweepDetail {
    pub sweep: String,
    pub now: Option<Timestamp>,
    pub rows: Vec<(StuckRow, Decision, Vec<SourceVerdict>, Option<LedgerEntry>)>,
    /// In single-row mode: the row's state as text and the row, whatever
    /// its state (`None` when no row has that key).
    pub target: Option<(String, StuckRow)>,
}

/// Phase 1 output for one sweep.
struct Collected<'c> {
    sweep: &'c SweepConfig,
    report: SweepReport,
    started: Instant,
    ready: Option<Ready>,
}

struct Ready {
    db: Db,
    table: SweepTable,
    now: Timestamp,
    stale: PerState<StaleSummary>,
    rows: Vec<StuckRow>,
    ledger: HashMap<String, LedgerEntry>,
    /// In single-row mode (`opts.key`): the row's state text and the row.
    target: Option<(String, StuckRow)>,
}

/// Run one pass. `wall_now` is only used for log-year inference and the
/// report header; decisions use each database's clock.
pub async fn run_pass(
    cfg: &Config,
    conns: &mut Connections,
    opts: &PassOptions,
    wall_now: Timestamp,
) -> PassResult {
    let selected: Vec<&SweepConfig> = cfg
        .sweeps
        .iter()
        .filter(|s| opts.only.is_empty() || opts.only.contains(&s.name))
        .collect();

    let mut collected = Vec::with_capacity(selected.len());
    // Sweep locks, held from collect to the end of settle (real passes).
    let mut locks: Vec<Option<LockGuard>> = Vec::with_capacity(selected.len());
    for s in selected {
        if opts.stopping() {
            let mut report = SweepReport::empty(&s.name, &s.table.to_string());
            report.skipped = Some("shutting down".into());
            collected.push(Collected {
                sweep: s,
                report,
                started: Instant::now(),
                ready: None,
            });
            locks.push(None);
            continue;
        }
        let (c, lock) = collect(cfg, conns, s, opts).await;
        collected.push(c);
        locks.push(lock);
    }

    let scans = scan_evidence(cfg, &collected, opts, wall_now).await;
    let tailers = if opts.incremental {
        poll_tailers(cfg, conns, &collected, wall_now).await
    } else {
        BTreeMap::new()
    };
    let mut sources = BTreeMap::new();
    for (name, scan) in &scans {
        let err = match scan {
            Err(e) => Some(e.clone()),
            Ok(s) => s.failed.values().next().cloned(),
        };
        sources.insert(name.clone(), err);
    }
    for (name, (_, err)) in &tailers {
        sources.insert(name.clone(), err.clone());
    }
    let mut views: Views<'_> = BTreeMap::new();
    for (name, scan) in &scans {
        views.insert(
            name.clone(),
            scan.as_ref()
                .map(|s| s as &(dyn EvidenceIndex + Sync))
                .map_err(Clone::clone),
        );
    }
    for (name, (tailer, err)) in &tailers {
        views.insert(
            name.clone(),
            match err {
                None => Ok(tailer as &(dyn EvidenceIndex + Sync)),
                Some(e) => Err(e.clone()),
            },
        );
    }

    let mut lookups = BTreeMap::new();
    let mut sweeps = Vec::with_capacity(collected.len());
    let mut details = Vec::with_capacity(collected.len());
    for (c, lock) in collected.into_iter().zip(locks) {
        let (report, detail) = settle(cfg, conns, c, lock, &views, opts, &mut lookups).await;
        sweeps.push(report);
        details.push(detail);
    }
    drop(views);
    for (name, (tailer, _)) in tailers {
        conns.tailers.insert(name, tailer);
    }
    PassResult {
        report: Report {
            schema_version: SCHEMA_VERSION,
            generated_at: wall_now,
            dry_run: opts.dry_run,
            sweeps,
        },
        lookups,
        scans,
        details,
        sources,
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn age_secs(now: Timestamp, t: Timestamp) -> f64 {
    (now - t).num_milliseconds() as f64 / 1000.0
}

async fn collect<'c>(
    cfg: &Config,
    conns: &mut Connections,
    sweep: &'c SweepConfig,
    opts: &PassOptions,
) -> (Collected<'c>, Option<LockGuard>) {
    let started = Instant::now();
    let mut report = SweepReport::empty(&sweep.name, &sweep.table.to_string());
    let mut lock = None;
    let ready = match try_collect(cfg, conns, sweep, opts, &mut report, &mut lock).await {
        Ok(r) => r,
        Err(e) => {
            report.errors.push(PassError {
                stage: e.0,
                message: e.1,
            });
            None
        }
    };
    if ready.is_none() {
        if let Some(l) = lock.take() {
            l.release().await;
        }
    }
    (
        Collected {
            sweep,
            report,
            started,
            ready,
        },
        lock,
    )
}

type StageError = (Stage, String);

fn at<E: std::fmt::Display>(stage: Stage) -> impl Fn(E) -> StageError {
    move |e| (stage, e.to_string())
}

async fn try_collect(
    cfg: &Config,
    conns: &mut Connections,
    sweep: &SweepConfig,
    opts: &PassOptions,
    report: &mut SweepReport,
    lock_out: &mut Option<LockGuard>,
) -> Result<Option<Ready>, StageError> {
    let db = conns
        .db(cfg, &sweep.database)
        .await
        .map_err(at(Stage::Fetch))?;
    let table = db.sweep_table(sweep).await.map_err(at(Stage::Fetch))?;
    if !opts.dry_run {
        match db.try_lock(&table).await.map_err(at(Stage::Lock))? {
            Some(l) => *lock_out = Some(l),
            None => {
                report.skipped = Some("another sweeper instance holds this sweep's lock".into());
                return Ok(None);
            }
        }
    }
    let now = db.now().await.map_err(at(Stage::Fetch))?;
    let counts = db.state_counts(&table).await.map_err(at(Stage::Fetch))?;
    report.totals = Totals {
        pending: counts.pending,
        sending: counts.sending,
        error: counts.error,
    };
    let mut stale = PerState::<StaleSummary>::default();
    let mut rows = Vec::new();
    let target = match &opts.key {
        Some(key) => db.row_by_key(&table, key).await.map_err(at(Stage::Fetch))?,
        None => None,
    };
    for state in RowState::ALL {
        let after = match state {
            RowState::Pending => sweep.rules.pending.as_ref().map(|r| r.after),
            RowState::Sending => sweep.rules.sending.as_ref().map(|r| r.after),
        };
        let Some(after) = after else { continue };
        let cutoff = now - delta(after);
        let summary = db
            .stale_summary(&table, state, cutoff)
            .await
            .map_err(at(Stage::Fetch))?;
        stale.set(state, summary);
        report.stuck.set(state, summary.count);
        report
            .oldest_stuck_age_seconds
            .set(state, summary.oldest.map(|o| age_secs(now, o)));
        if opts.key.is_some() {
            // Single-row mode: the row, stale or not, when it is in this state.
            if let Some((text, row)) = &target {
                if *text == Db::state_text(&table, state) {
                    rows.push(row.clone());
                }
            }
        } else if summary.count > 0 {
            rows.extend(
                db.stale_rows(&table, state, cutoff)
                    .await
                    .map_err(at(Stage::Fetch))?,
            );
        }
    }
    let ledger = if rows.is_empty() || !db.ledger_exists().await.map_err(at(Stage::Ledger))? {
        HashMap::new()
    } else {
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        db.ledger_get(&sweep.name, &keys)
            .await
            .map_err(at(Stage::Ledger))?
    };
    Ok(Some(Ready {
        db,
        table,
        now,
        stale,
        rows,
        ledger,
        target,
    }))
}

/// Scan every evidence source once for the lookup keys of all sweeps.
async fn scan_evidence(
    cfg: &Config,
    collected: &[Collected<'_>],
    opts: &PassOptions,
    wall_now: Timestamp,
) -> BTreeMap<String, Result<SourceScan, String>> {
    // Per source: every stuck sending row's lookup (earliest window wins).
    let mut wanted: BTreeMap<&str, BTreeMap<String, WantedRow>> = BTreeMap::new();
    for c in collected {
        let Some(ready) = &c.ready else { continue };
        for row in ready.rows.iter().filter(|r| r.state == RowState::Sending) {
            for e in &c.sweep.evidence {
                let Some(Some(v)) = row.lookups.get(e.lookup) else {
                    continue;
                };
                let k = crate::core::evidence::normalize_key(v);
                if k.is_empty() {
                    continue;
                }
                let slack = cfg
                    .evidence
                    .get(&e.source)
                    .map_or(Duration::ZERO, |s| s.kind.slack());
                let since = row.updated_at - delta(slack);
                let fields = e
                    .extra
                    .iter()
                    .map(|(name, i)| {
                        (
                            name.clone(),
                            row.lookups.get(*i).cloned().flatten().unwrap_or_default(),
                        )
                    })
                    .collect();
                let w = wanted
                    .entry(e.source.as_str())
                    .or_default()
                    .entry(k.to_string())
                    .or_insert(WantedRow {
                        key: k.to_string(),
                        since,
                        fields,
                    });
                w.since = w.since.min(since);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (source, rows) in wanted {
        let ecfg = cfg
            .evidence
            .get(source)
            .expect("validation resolves sources");
        let scan = match &ecfg.kind {
            // The daemon reads logs through its tailers instead.
            EvidenceKind::Log(_) if opts.incremental => continue,
            EvidenceKind::Log(lcfg) => {
                let keys: HashSet<String> = rows.into_keys().collect();
                let lcfg = lcfg.clone();
                let name = source.to_string();
                let keep_text = opts.keep_text;
                let counter = opts.progress.then(|| Arc::new(AtomicU64::new(0)));
                let ticker = counter
                    .clone()
                    .map(|c| spawn_progress(source.to_string(), lcfg.paths.clone(), c));
                let scan = tokio::task::spawn_blocking(move || -> Result<SourceScan, String> {
                    let files = logfile::resolve(&name, &lcfg.paths).map_err(|e| e.to_string())?;
                    let mut parser = logfile::parser_for(&lcfg, KeyFilter::Wanted(keys), wall_now);
                    let mut store = TraceStore::new(keep_text);
                    let stats = logfile::scan_files_counted(
                        &name,
                        &files,
                        parser.as_mut(),
                        &mut store,
                        counter,
                    )
                    .map_err(|e| e.to_string())?;
                    Ok(SourceScan::of_log(files, store, stats, lcfg.slack))
                })
                .await
                .unwrap_or_else(|e| Err(format!("evidence {source}: scan task failed: {e}")));
                if let Some(t) = ticker {
                    t.abort();
                    eprint!("\r\x1b[2K");
                }
                scan
            }
            EvidenceKind::Provider(pcfg) => {
                let rows: Vec<WantedRow> = rows.into_values().collect();
                let ps = provider::fetch(source, pcfg, &rows, opts.keep_text).await;
                Ok(SourceScan {
                    files: Vec::new(),
                    store: ps.store,
                    stats: ScanStats {
                        files: 0,
                        bytes: 0,
                        lines: ps.requests,
                    },
                    slack: pcfg.slack,
                    refs: ps.refs,
                    failed: ps.failed,
                    lag: pcfg.visibility_lag,
                    retention: pcfg.retention,
                    windowed: !matches!(pcfg.api, crate::config::ProviderApi::Http { .. }),
                })
            }
        };
        if let Err(e) = &scan {
            tracing::warn!(source, error = %e, "evidence source unavailable");
        }
        if let Ok(s) = &scan {
            if let Some(e) = s.failed.values().next() {
                tracing::warn!(source, keys = s.failed.len(), error = %e, "evidence source failed for some rows");
            }
        }
        out.insert(source.to_string(), scan);
    }
    out
}

/// Print "scanning SOURCE: 120 / 1074 MB" on stderr until aborted.
fn spawn_progress(
    source: String,
    patterns: Vec<String>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let total: u64 = logfile::resolve(&source, &patterns)
        .map(|files| {
            files
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let d = done.load(Ordering::Relaxed);
            eprint!(
                "\r\x1b[2Kscanning {source}: {:.0} / {:.0} MB",
                d as f64 / 1e6,
                total as f64 / 1e6
            );
        }
    })
}

/// Poll the daemon's tailer of every log source the sweeps use (creating
/// it on first use), then forget messages older than any row could need.
async fn poll_tailers(
    cfg: &Config,
    conns: &mut Connections,
    collected: &[Collected<'_>],
    wall_now: Timestamp,
) -> BTreeMap<String, (Tailer, Option<String>)> {
    // Per source: the longest any configured sweep may wait for its
    // evidence (not only the sweeps due now: pruning for one sweep must not
    // drop what another still needs).
    let mut horizon: BTreeMap<&str, Duration> = BTreeMap::new();
    for sweep in &cfg.sweeps {
        let give_up = sweep
            .rules
            .sending
            .as_ref()
            .map_or(Duration::ZERO, |s| s.give_up_after);
        for e in &sweep.evidence {
            let h = horizon.entry(e.source.as_str()).or_default();
            *h = (*h).max(give_up);
        }
    }
    // Only sources the sweeps of this pass use are read now.
    let used: HashSet<&str> = collected
        .iter()
        .flat_map(|c| c.sweep.evidence.iter().map(|e| e.source.as_str()))
        .collect();
    horizon.retain(|s, _| used.contains(s));
    let mut out = BTreeMap::new();
    for (source, keep) in horizon {
        let ecfg = cfg
            .evidence
            .get(source)
            .expect("validation resolves sources");
        let EvidenceKind::Log(lcfg) = &ecfg.kind else {
            continue;
        };
        let mut tailer = conns
            .tailers
            .remove(source)
            .unwrap_or_else(|| Tailer::new(source, lcfg, wall_now));
        let keep = delta(keep + tailer.slack() + Duration::from_secs(86_400));
        let polled = tokio::task::spawn_blocking(move || {
            let r = tailer.poll(wall_now);
            tailer.prune(wall_now - keep);
            (tailer, r.err().map(|e| e.to_string()))
        })
        .await;
        let (tailer, err) = match polled {
            Ok(r) => r,
            Err(e) => {
                // The tailer is lost with the task; a fresh one re-reads.
                let fresh = Tailer::new(source, lcfg, wall_now);
                (
                    fresh,
                    Some(format!("evidence {source}: log reader failed: {e}")),
                )
            }
        };
        if let Some(e) = &err {
            tracing::warn!(source, error = %e, "evidence source unavailable");
        }
        out.insert(source.to_string(), (tailer, err));
    }
    out
}

/// Each configured source's verdict on one row.
fn row_evidence(
    sweep: &SweepConfig,
    row: &StuckRow,
    scans: &Views<'_>,
    now: Timestamp,
) -> Vec<SourceVerdict> {
    if row.state != RowState::Sending {
        return Vec::new();
    }
    sweep
        .evidence
        .iter()
        .map(|e| {
            let lookup = row
                .lookups
                .get(e.lookup)
                .cloned()
                .flatten()
                .unwrap_or_default();
            if crate::core::evidence::normalize_key(&lookup).is_empty() {
                return SourceVerdict {
                    source: e.source.clone(),
                    verdict: Verdict::NotFound,
                    detail: format!("the row has no {} value to look up", e.column),
                    references: vec![],
                };
            }
            match scans.get(&e.source) {
                Some(Ok(scan)) => {
                    let key = crate::core::evidence::normalize_key(&lookup);
                    if let Some(err) = scan.key_error(key) {
                        return SourceVerdict {
                            source: e.source.clone(),
                            verdict: Verdict::Unavailable,
                            detail: err.to_string(),
                            references: vec![],
                        };
                    }
                    let since = scan
                        .windowed()
                        .then(|| row.updated_at - delta(scan.slack()));
                    let kv = scan.store().verdict(&lookup, since);
                    let mut references = Vec::new();
                    for m in &kv.instances {
                        for l in m.lines.iter().take(20) {
                            references.push(scan.reference(l));
                        }
                    }
                    let lag = scan.lag();
                    let (verdict, detail) =
                        if kv.verdict == Verdict::NotFound && now - row.updated_at < delta(lag) {
                            (
                                Verdict::InFlight {
                                    reason: crate::core::model::InFlightReason::Lagging,
                                },
                                format!(
                                    "not found yet; {} may take up to {} to show events",
                                    e.source,
                                    crate::core::report::human_age(lag.as_secs_f64())
                                ),
                            )
                        } else {
                            (kv.verdict, kv.detail)
                        };
                    SourceVerdict {
                        source: e.source.clone(),
                        verdict,
                        detail,
                        references,
                    }
                }
                Some(Err(msg)) => SourceVerdict {
                    source: e.source.clone(),
                    verdict: Verdict::Unavailable,
                    detail: msg.clone(),
                    references: vec![],
                },
                None => SourceVerdict {
                    source: e.source.clone(),
                    verdict: Verdict::Unavailable,
                    detail: "source was not scanned".into(),
                    references: vec![],
                },
            }
        })
        .collect()
}

async fn settle(
    cfg: &Config,
    conns: &mut Connections,
    c: Collected<'_>,
    lock: Option<LockGuard>,
    scans: &Views<'_>,
    opts: &PassOptions,
    lookups: &mut BTreeMap<(String, &'static str), u64>,
) -> (SweepReport, SweepDetail) {
    let Collected {
        sweep,
        mut report,
        started,
        ready,
    } = c;
    let Some(ready) = ready else {
        report.duration_seconds = started.elapsed().as_secs_f64();
        return (
            report,
            SweepDetail {
                sweep: sweep.name.clone(),
                now: None,
                rows: vec![],
                target: None,
            },
        );
    };
    let now = ready.now;
    let mut seen_sources = HashSet::new();
    for e in &sweep.evidence {
        if !seen_sources.insert(e.source.as_str()) {
            continue;
        }
        let failure = match scans.get(&e.source) {
            Some(Err(msg)) => Some(msg.clone()),
            Some(Ok(s)) => s.any_key_error().map(str::to_string),
            None => None,
        };
        if let Some(message) = failure {
            report.errors.push(PassError {
                stage: Stage::Evidence,
                message,
            });
        }
    }
    let evidence: Vec<Vec<SourceVerdict>> = ready
        .rows
        .iter()
        .map(|r| row_evidence(sweep, r, scans, now))
        .collect();
    for ev in &evidence {
        for sv in ev {
            *lookups
                .entry((sv.source.clone(), sv.verdict.label()))
                .or_default() += 1;
        }
    }
    let (presence, workers_alive) = queue_checks(cfg, conns, sweep, &ready.rows, &mut report).await;
    let brakes = Brakes {
        stale_rows: ready.stale.pending.count + ready.stale.sending.count,
        workers_alive,
    };
    let decisions = plan(
        &sweep.rules,
        ready
            .rows
            .iter()
            .zip(&evidence)
            .enumerate()
            .map(|(i, (r, ev))| {
                (
                    r,
                    RowContext {
                        ledger: ready.ledger.get(&r.key),
                        evidence: ev,
                        presence: presence.as_ref().map(|p| p[i]),
                    },
                )
            }),
        brakes,
        now,
    );
    for d in &decisions {
        *report.decisions.entry(d.action).or_default() += 1;
        *report.reasons.entry(d.reason).or_default() += 1;
    }

    let outcomes = if opts.dry_run {
        vec![Outcome::NotApplied; decisions.len()]
    } else {
        let (outcomes, errors) =
            apply(cfg, conns, sweep, &ready, &decisions, &evidence, opts).await;
        let mut o = Outcomes::default();
        for (out, d) in outcomes.iter().zip(&decisions) {
            match out {
                Outcome::Applied => *o.applied.entry(d.action).or_default() += 1,
                Outcome::AlreadyMoved => o.already_moved += 1,
                Outcome::Failed { .. } => o.failed += 1,
                Outcome::NotApplied => {}
            }
        }
        report.outcomes = Some(o);
        report.errors.extend(errors);
        outcomes
    };

    // Rows still without a verdict whose evidence a source will drop before
    // the give-up policy applies: escalate while they can be settled.
    let expiries: Vec<Option<Timestamp>> = ready
        .rows
        .iter()
        .zip(&decisions)
        .map(|(r, d)| {
            let give_up = sweep.rules.sending.as_ref()?.give_up_after;
            if r.state != RowState::Sending || d.action.writes() {
                return None;
            }
            sweep
                .evidence
                .iter()
                .filter_map(|e| scans.get(&e.source)?.as_ref().ok()?.retention())
                .filter_map(|ret| {
                    crate::core::decide::evidence_expiry(r.updated_at, ret, give_up, now)
                })
                .min()
        })
        .collect();
    report.evidence_expiring = expiries.iter().filter(|e| e.is_some()).count() as u64;

    let max_rows = opts.max_rows.unwrap_or(usize::MAX);
    let mut listed = 0usize;
    for (i, row) in ready.rows.iter().enumerate() {
        if opts.key.as_deref().is_some_and(|k| k != row.key) {
            continue;
        }
        if listed >= max_rows {
            report.rows_omitted += 1;
            continue;
        }
        listed += 1;
        report.rows.push(RowReport {
            key: row.key.clone(),
            state: row.state,
            age_seconds: (now - row.updated_at).num_seconds(),
            decision: decisions[i].action,
            reason: decisions[i].reason,
            attempt: decisions[i].attempt,
            evidence: evidence[i].clone(),
            evidence_expires_at: expiries[i],
            outcome: outcomes[i].clone(),
        });
    }
    if let Some(lock) = lock {
        lock.release().await;
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    let detail = SweepDetail {
        sweep: sweep.name.clone(),
        now: Some(now),
        target: ready.target,
        rows: ready
            .rows
            .into_iter()
            .zip(decisions)
            .zip(evidence)
            .filter(|((r, _), _)| opts.key.as_deref().is_none_or(|k| k == r.key))
            .map(|((r, d), ev)| {
                let l = ready.ledger.get(&r.key).cloned();
                (r, d, ev, l)
            })
            .collect(),
    };
    (report, detail)
}

/// Presence of each row's job (when the queue has `presence_check`) and
/// whether the queue has live workers (when it has `require_workers`).
/// Reads only; runs in dry runs too, so reports show holds.
async fn queue_checks(
    cfg: &Config,
    conns: &mut Connections,
    sweep: &SweepConfig,
    rows: &[StuckRow],
    report: &mut SweepReport,
) -> (Option<Vec<Presence>>, Option<bool>) {
    let Some(job) = &sweep.job else {
        return (None, None);
    };
    let Some(qcfg) = cfg.queues.get(&job.queue_ref) else {
        return (None, None);
    };
    let (presence_cfg, require_workers) = match &qcfg.kind {
        QueueKind::Resque(r) => (r.presence.clone(), r.require_workers),
        QueueKind::Sidekiq(s) => (s.presence.clone(), s.require_workers),
        QueueKind::Jsonl { .. } | QueueKind::Amqp(_) | QueueKind::Http(_) => (None, false),
    };
    if rows.is_empty() || (presence_cfg.is_none() && !require_workers) {
        return (None, None);
    }
    let client = match conns.queue(cfg, &job.queue_ref).await {
        Ok(c) => c,
        Err(e) => {
            report.errors.push(PassError {
                stage: Stage::Presence,
                message: e.to_string(),
            });
            conns.drop_queue(&job.queue_ref);
            let unknown = presence_cfg.map(|_| vec![Presence::Unknown; rows.len()]);
            return (unknown, None);
        }
    };
    let mut presence = None;
    if let Some(p) = presence_cfg {
        presence = Some(match client.presence(&job.queue, p.max_entries).await {
            Ok(Some(idx)) => {
                if idx.truncated {
                    tracing::warn!(
                        sweep = %sweep.name,
                        queue = %job.queue,
                        max_entries = p.max_entries,
                        "presence check stopped at max_entries; jobs beyond it count as absent"
                    );
                }
                rows.iter()
                    .map(|r| idx.lookup(&job.class, &r.args))
                    .collect()
            }
            Ok(None) => vec![Presence::Absent; rows.len()],
            Err(e) => {
                report.errors.push(PassError {
                    stage: Stage::Presence,
                    message: e.to_string(),
                });
                vec![Presence::Unknown; rows.len()]
            }
        });
    }
    let mut alive = None;
    if require_workers {
        match client.workers_alive(&job.queue).await {
            Ok(a) => alive = a,
            Err(e) => report.errors.push(PassError {
                stage: Stage::Presence,
                message: e.to_string(),
            }),
        }
    }
    (presence, alive)
}

fn summary(ev: &[SourceVerdict]) -> String {
    ev.iter()
        .map(|e| {
            format!(
                "{}: {} ({})",
                e.source,
                e.verdict.label(),
                e.references.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn audit(sweep: &SweepConfig, row: &StuckRow, d: &Decision, to: &str, ev: &[SourceVerdict]) {
    tracing::info!(
        target: "sweeper::audit",
        sweep = %sweep.name,
        key = %row.key,
        from = %row.state,
        to,
        action = %d.action,
        reason = %d.reason,
        attempt = d.attempt,
        evidence = %summary(ev),
        "applied"
    );
}

/// Apply the writing decisions. Returns one outcome per row and the
/// stage errors met.
async fn apply(
    cfg: &Config,
    conns: &mut Connections,
    sweep: &SweepConfig,
    ready: &Ready,
    decisions: &[Decision],
    evidence: &[Vec<SourceVerdict>],
    opts: &PassOptions,
) -> (Vec<Outcome>, Vec<PassError>) {
    let mut outcomes = vec![Outcome::NotApplied; decisions.len()];
    let mut errors: Vec<PassError> = Vec::new();
    let batch = ready.table.batch_size.max(1) as usize;
    let note = |errors: &mut Vec<PassError>, stage: Stage, message: String| {
        if !errors
            .iter()
            .any(|e| e.stage == stage && e.message == message)
        {
            errors.push(PassError { stage, message });
        }
    };

    // Marks: guarded updates, one transaction per batch.
    let marks: Vec<usize> = (0..decisions.len())
        .filter(|i| matches!(decisions[*i].action, Action::MarkSent | Action::MarkError))
        .collect();
    for chunk in marks.chunks(batch) {
        if opts.stopping() {
            break;
        }
        let changes: Vec<Transition<'_>> = chunk
            .iter()
            .map(|i| Transition {
                row: &ready.rows[*i],
                to: if decisions[*i].action == Action::MarkSent {
                    Target::Sent
                } else {
                    Target::Error
                },
            })
            .collect();
        match ready.db.transition(&ready.table, &changes).await {
            Ok(applied) => {
                for (i, ok) in chunk.iter().zip(applied) {
                    outcomes[*i] = if ok {
                        let to = if decisions[*i].action == Action::MarkSent {
                            "sent"
                        } else {
                            "error"
                        };
                        audit(sweep, &ready.rows[*i], &decisions[*i], to, &evidence[*i]);
                        Outcome::Applied
                    } else {
                        Outcome::AlreadyMoved
                    };
                }
            }
            Err(e) => {
                for i in chunk {
                    outcomes[*i] = Outcome::Failed {
                        stage: Stage::Update,
                        error: e.to_string(),
                    };
                }
                note(&mut errors, Stage::Update, e.to_string());
            }
        }
    }

    // Requeues.
    let requeues: Vec<usize> = (0..decisions.len())
        .filter(|i| decisions[*i].action == Action::Requeue)
        .collect();
    if requeues.is_empty() {
        return (outcomes, errors);
    }
    let Some(job) = &sweep.job else {
        for i in &requeues {
            outcomes[*i] = Outcome::Failed {
                stage: Stage::Enqueue,
                error: "no pending job configured".into(),
            };
        }
        return (outcomes, errors);
    };
    let ledger_key = ready.db.name.clone();
    if !conns.ledger_ready.contains(&ledger_key) {
        match ready.db.ensure_ledger().await {
            Ok(()) => {
                conns.ledger_ready.insert(ledger_key);
            }
            Err(e) => {
                for i in &requeues {
                    outcomes[*i] = Outcome::Failed {
                        stage: Stage::Ledger,
                        error: e.to_string(),
                    };
                }
                note(&mut errors, Stage::Ledger, e.to_string());
                return (outcomes, errors);
            }
        }
    }
    for chunk in requeues.chunks(batch) {
        if opts.stopping() {
            break;
        }
        // Re-assert every row before pushing: pending rows must still be
        // pending with the version we read; sending rows are moved back to
        // pending by a guarded update first.
        let mut go: Vec<usize> = Vec::with_capacity(chunk.len());
        let (pend, send): (Vec<usize>, Vec<usize>) = chunk
            .iter()
            .partition(|i| ready.rows[**i].state == RowState::Pending);
        if !pend.is_empty() {
            let rows: Vec<&StuckRow> = pend.iter().map(|i| &ready.rows[*i]).collect();
            match ready
                .db
                .current_versions(&ready.table, RowState::Pending, &rows)
                .await
            {
                Ok(current) => {
                    for i in pend {
                        let r = &ready.rows[i];
                        if current.get(&r.key) == Some(&r.version) {
                            go.push(i);
                        } else {
                            outcomes[i] = Outcome::AlreadyMoved;
                        }
                    }
                }
                Err(e) => {
                    for i in pend {
                        outcomes[i] = Outcome::Failed {
                            stage: Stage::Fetch,
                            error: e.to_string(),
                        };
                    }
                    note(&mut errors, Stage::Fetch, e.to_string());
                }
            }
        }
        if !send.is_empty() {
            let changes: Vec<Transition<'_>> = send
                .iter()
                .map(|i| Transition {
                    row: &ready.rows[*i],
                    to: Target::Pending,
                })
                .collect();
            match ready.db.transition(&ready.table, &changes).await {
                Ok(applied) => {
                    for (i, ok) in send.into_iter().zip(applied) {
                        if ok {
                            go.push(i);
                        } else {
                            outcomes[i] = Outcome::AlreadyMoved;
                        }
                    }
                }
                Err(e) => {
                    for i in send {
                        outcomes[i] = Outcome::Failed {
                            stage: Stage::Update,
                            error: e.to_string(),
                        };
                    }
                    note(&mut errors, Stage::Update, e.to_string());
                }
            }
        }
        if go.is_empty() {
            continue;
        }
        let jobs: Vec<JobRequest<'_>> = go
            .iter()
            .map(|i| JobRequest {
                sweep: &sweep.name,
                row_key: &ready.rows[*i].key,
                attempt: decisions[*i].attempt.unwrap_or(1),
                queue: &job.queue,
                class: &job.class,
                args: &ready.rows[*i].args,
            })
            .collect();
        let pushed = match conns.queue(cfg, &job.queue_ref).await {
            Ok(q) => q.push(&jobs, ready.now).await,
            Err(e) => Err(e),
        };
        let results = match pushed {
            Ok(r) => r,
            Err(e) => {
                conns.drop_queue(&job.queue_ref);
                for i in &go {
                    outcomes[*i] = Outcome::Failed {
                        stage: Stage::Enqueue,
                        error: e.to_string(),
                    };
                }
                note(&mut errors, Stage::Enqueue, e.to_string());
                continue;
            }
        };
        // At-least-once: a job counts once the queue accepted it; then the
        // ledger records it. If the ledger write fails the row may be
        // requeued again next pass. Report it.
        let mut entries: Vec<(&str, &str, u32)> = Vec::with_capacity(go.len());
        for (i, r) in go.iter().zip(results) {
            match r {
                Ok(()) => {
                    outcomes[*i] = Outcome::Applied;
                    audit(
                        sweep,
                        &ready.rows[*i],
                        &decisions[*i],
                        "queue",
                        &evidence[*i],
                    );
                    let row = &ready.rows[*i];
                    entries.push((
                        row.key.as_str(),
                        row.version.as_str(),
                        decisions[*i].attempt.unwrap_or(1),
                    ));
                }
                Err(msg) => {
                    let msg = format!("queue {}: {msg}", job.queue_ref);
                    note(&mut errors, Stage::Enqueue, msg.clone());
                    outcomes[*i] = Outcome::Failed {
                        stage: Stage::Enqueue,
                        error: msg,
                    };
                }
            }
        }
        if entries.is_empty() {
            continue;
        }
        if let Err(e) = ready.db.ledger_put(&sweep.name, &entries, ready.now).await {
            note(&mut errors, Stage::Ledger, e.to_string());
        }
    }
    // Entries this old belong to rows long settled — but never prune
    // within two of the sweep's longest requeue intervals.
    let longest = sweep.rules.pending.as_ref().map_or(Duration::ZERO, |p| {
        p.backoff.as_ref().map_or(p.after, |b| b.max.max(p.after))
    });
    let keep = delta(longest.saturating_mul(2)).max(TimeDelta::days(30));
    let horizon = ready.now - keep;
    if let Err(e) = ready.db.ledger_prune(&sweep.name, horizon).await {
        note(&mut errors, Stage::Ledger, e.to_string());
    }
    (outcomes, errors)
}
