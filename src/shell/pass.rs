//! One pass over the selected sweeps: the path shared by `report`,
//! `explain`, `once` and `run` up to the plan; a dry run stops there.
//!
//! A pass is a pipeline of pages, and memory follows the page, not the pile:
//! 1. open — per sweep: take its lock (real passes), read the database
//!    clock, count rows and summarise the stale ones (count, oldest) with
//!    aggregate queries; the storm brake is decided from these counts;
//! 2. evidence read once per pass — each log source (or a provider's
//!    time-range scan) is read once for the lookup keys of every sweep's
//!    stale sending rows, collected by a keys-only walk into a compact
//!    per-key trace index; the daemon instead polls its long-lived tailers;
//! 3. walk — per sweep, per state in budget order (sending, then pending),
//!    per keyset page of `batch_size` stale rows: read the page's ledger
//!    entries, look up its evidence (providers asked per page, and not at
//!    all once `max_actions` is spent), check queue presence, plan with the
//!    pure core, apply unless dry run, account, and drop the page. One
//!    `RowWork` value per row carries row, ledger entry, evidence, presence,
//!    decision and outcome through the page.
//!
//! What outlives a page: counts, at most `max_rows` listed rows per sweep,
//! the keys of rows this pass moved from sending back to pending (at most
//! `max_actions`), and in single-row mode (`explain`) that one row.
//!
//! Owns: orchestration and error accounting. Does not own: decisions
//! (core::decide) or SQL/wire formats (adapters).

use crate::adapters::db::{Db, DbError, LockGuard, StaleSummary, SweepTable, Target, Transition};
use crate::adapters::journal;
use crate::adapters::logfile::{self, ScanStats};
use crate::adapters::logstore;
use crate::adapters::provider::{self, WantedRow};
use crate::adapters::queue::presence::PresenceIndex;
use crate::adapters::queue::{BuiltJob, JobRequest, QueueClient, QueueError};
use crate::adapters::tail::Tailer;
use crate::config::{Config, EvidenceKind, EvidenceRef, SweepConfig};
use crate::core::decide::BUDGET_ORDER;
use crate::core::decide::{
    at_rest, decision_changes_at, row_evidence_expiry, with_lag, Brakes, Planner, RowContext,
};
use crate::core::evidence::{normalize_key, KeyFilter, LineRef, TraceStore};
use crate::core::model::{
    Action, Decision, HistoryEntry, LedgerEntry, Outcome, Presence, RowState, SourceVerdict, Stage,
    StuckRow, Timestamp, Verdict,
};
use crate::core::report::{
    Outcomes, PassError, PerState, Report, RowReport, SweepReport, Totals, SCHEMA_VERSION,
};
use chrono::TimeDelta;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A daemon's log tailer, shared by the passes of every sweep reading it.
pub type SharedTailer = Arc<tokio::sync::Mutex<Tailer>>;

/// Connections kept across passes (the daemon reuses them).
#[derive(Default)]
pub struct Connections {
    dbs: HashMap<String, Db>,
    queues: HashMap<String, QueueClient>,
    ledger_ready: HashSet<String>,
    /// When each database's history was last pruned (at most every
    /// `HISTORY_PRUNE_EVERY`).
    history_pruned: HashMap<String, Instant>,
    /// The daemon's incremental log readers, by source name; shared with
    /// every `fork` of these connections.
    tailers: Arc<Mutex<HashMap<String, SharedTailer>>>,
    /// Per sweep: its last full pass, when every row was at rest.
    memos: HashMap<String, Memo>,
}

/// What the daemon keeps of a sweep's last full pass when every decision
/// was at rest (`core::decide::at_rest`): no per-row detail, only what
/// shows whether anything could have changed since, and the counts to
/// report again. A pass whose stale rows (count, oldest, newest), log
/// sources (bytes read) and clock (before `until`) show no change decides
/// exactly as that pass did, so it reports those counts without walking.
#[derive(Clone, Debug)]
struct Memo {
    stale: PerState<StaleSummary>,
    /// Bytes each log source's tailer had read.
    tails: BTreeMap<String, u64>,
    /// The first instant time alone may change a decision (`None`: never).
    until: Option<Timestamp>,
    decisions: BTreeMap<Action, u64>,
    reasons: BTreeMap<crate::core::model::Reason, u64>,
    evidence_expiring: u64,
}

impl Connections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections for a pass that runs beside others: the same database
    /// pools and log tailers, queue connections of its own.
    pub fn fork(&self) -> Connections {
        Connections {
            dbs: self.dbs.clone(),
            queues: HashMap::new(),
            ledger_ready: self.ledger_ready.clone(),
            history_pruned: HashMap::new(),
            tailers: self.tailers.clone(),
            memos: HashMap::new(),
        }
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

    /// The daemon's tailer of a log source, created on first use.
    fn tailer(&self, name: &str, make: impl FnOnce() -> Tailer) -> SharedTailer {
        self.tailers
            .lock()
            .expect("tailer map lock")
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(make())))
            .clone()
    }

    fn replace_tailer(&self, name: &str, t: Tailer) -> SharedTailer {
        let shared = Arc::new(tokio::sync::Mutex::new(t));
        self.tailers
            .lock()
            .expect("tailer map lock")
            .insert(name.to_string(), shared.clone());
        shared
    }

    pub async fn close(&mut self) {
        for db in self.dbs.values() {
            db.close().await;
        }
        self.dbs.clear();
        self.queues.clear();
        self.tailers.lock().expect("tailer map lock").clear();
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

/// Why a sweep's pass did nothing: another instance holds its lock.
pub const SKIPPED_LOCKED: &str = "another sweeper instance holds this sweep's lock";

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
    /// Whether the row's time window applies to this source's evidence.
    fn windowed(&self) -> bool {
        true
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
        if let Some(c) = self.cursors.get(&l.line) {
            return format!("{} cursor {c}", self.file_name(l.file));
        }
        match self.refs.get(l.line as usize) {
            Some(r) if !self.refs.is_empty() => r.clone(),
            _ => format!("{}:{}", self.file_name(l.file), l.line),
        }
    }
    fn key_error(&self, key: &str) -> Option<&str> {
        self.failed.get(key).map(String::as_str)
    }
    fn lag(&self) -> Duration {
        self.lag
    }
    fn windowed(&self) -> bool {
        self.windowed
    }
}

impl EvidenceIndex for Tailer {
    fn store(&self) -> &TraceStore {
        &self.store
    }
    fn reference(&self, l: &LineRef) -> String {
        match self.record_cursors.get(&l.line) {
            Some(c) => format!("{} cursor {c}", self.file_name(l.file)),
            None => format!("{}:{}", self.file_name(l.file), l.line),
        }
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

/// The scan of one evidence source.
pub struct SourceScan {
    pub files: Vec<PathBuf>,
    pub store: TraceStore,
    pub stats: ScanStats,
    pub slack: Duration,
    /// Provider event references (`LineRef.line` indexes them); empty for logs.
    pub refs: Vec<String>,
    /// Journal sources: the cursor of each record that became evidence.
    pub cursors: HashMap<u64, String>,
    /// Read from the systemd journal (`files` holds its label).
    pub journal: bool,
    /// Searched in a log store (Loki, Elasticsearch).
    pub searched: bool,
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
            cursors: HashMap::new(),
            journal: false,
            searched: false,
            failed: HashMap::new(),
            lag: Duration::ZERO,
            retention: None,
            windowed: true,
        }
    }

    fn of_store(cfg: &crate::config::StoreConfig, ls: logstore::StoreScan) -> Self {
        SourceScan {
            files: Vec::new(),
            store: ls.store,
            stats: ScanStats {
                files: 0,
                bytes: 0,
                lines: ls.lines,
            },
            slack: cfg.slack,
            refs: ls.refs,
            cursors: HashMap::new(),
            journal: false,
            searched: true,
            failed: HashMap::new(),
            lag: Duration::ZERO,
            retention: cfg.retention,
            windowed: true,
        }
    }

    fn of_provider(cfg: &crate::config::ProviderConfig, ps: provider::ProviderScan) -> Self {
        SourceScan {
            files: Vec::new(),
            store: ps.store,
            stats: ScanStats {
                files: 0,
                bytes: 0,
                lines: ps.requests,
            },
            slack: cfg.slack,
            refs: ps.refs,
            cursors: HashMap::new(),
            journal: false,
            searched: false,
            failed: ps.failed,
            lag: cfg.visibility_lag,
            retention: cfg.retention,
            windowed: !matches!(cfg.api, crate::config::ProviderApi::Http { .. }),
        }
    }
}

/// Everything a pass produced.
pub struct PassResult {
    pub report: Report,
    /// Evidence lookups by (source, verdict label).
    pub lookups: BTreeMap<(String, &'static str), u64>,
    /// Per source read once for this pass (and, in single-row mode, every
    /// source asked about the row): the scan, or why it failed.
    pub scans: BTreeMap<String, Result<SourceScan, String>>,
    /// Per sweep: the clock, and in single-row mode the row and its
    /// decision (for `explain`). Nothing per row otherwise.
    pub details: Vec<SweepDetail>,
    /// Every evidence source read in this pass: `None` when it was read,
    /// else why not.
    pub sources: BTreeMap<String, Option<String>>,
    /// Per log source: lines (journal: records) this pass read.
    pub lines_read: BTreeMap<String, u64>,
}

impl PassResult {
    /// Whether anything failed (exit code 1).
    pub fn failed(&self) -> bool {
        self.report.sweeps.iter().any(SweepReport::failed)
    }
}

/// A sweep as seen by this pass.
pub struct SweepDetail {
    pub sweep: String,
    pub now: Option<Timestamp>,
    /// Single-row mode only: the row, its decision, evidence and ledger
    /// entry, when it is stuck in a state the sweep has a rule for.
    pub rows: Vec<(StuckRow, Decision, Vec<SourceVerdict>, Option<LedgerEntry>)>,
    /// In single-row mode: the row's state as text and the row, whatever
    /// its state (`None` when no row has that key).
    pub target: Option<(String, StuckRow)>,
}

impl SweepDetail {
    /// A sweep that listed no row.
    fn empty(sweep: &SweepConfig, now: Option<Timestamp>) -> SweepDetail {
        SweepDetail {
            sweep: sweep.name.clone(),
            now,
            rows: vec![],
            target: None,
        }
    }
}

/// What went wrong in a pass, typed until it is rendered into the report.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// An evidence source could not be read or asked (already rendered by
    /// the adapter, which owns the source's words).
    #[error("{0}")]
    Source(String),
    #[error("no pending job configured")]
    NoJob,
    #[error("the connection holding this sweep's lock was lost; the pass stopped before its next page (another instance may hold the lock now)")]
    LockLost,
    #[error("queue {queue}: {message}")]
    Rejected { queue: String, message: String },
    /// A row's values cannot become the job (ActiveJob could not carry them).
    #[error("job {class}: {message}")]
    Job { class: String, message: String },
}

/// Record a stage error once per (stage, message) in a sweep's report.
fn note(errors: &mut Vec<PassError>, stage: Stage, fault: &Fault) {
    let message = fault.to_string();
    if !errors
        .iter()
        .any(|e| e.stage == stage && e.message == message)
    {
        errors.push(PassError { stage, message });
    }
}

fn failed(stage: Stage, fault: &Fault) -> Outcome {
    Outcome::Failed {
        stage,
        error: fault.to_string(),
    }
}

/// Phase 1 output for one sweep.
struct Opened<'c> {
    sweep: &'c SweepConfig,
    report: SweepReport,
    started: Instant,
    lock: Option<LockGuard>,
    ready: Option<Ready>,
}

/// A sweep whose table could be read.
struct Ready {
    db: Db,
    table: SweepTable,
    now: Timestamp,
    /// Per stuck state with a rule: rows older than this are stale.
    cutoffs: PerState<Option<Timestamp>>,
    stale: PerState<StaleSummary>,
    /// In single-row mode (`opts.key`): the row's state text and the row.
    target: Option<(String, StuckRow)>,
    pass: PassId,
}

/// Names a pass and the process that ran it, in the audit history.
#[derive(Clone, Debug)]
struct PassId {
    pass: String,
    instance: String,
}

impl PassId {
    fn new(wall_now: Timestamp) -> PassId {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        PassId {
            pass: format!("{}-{pid:x}-{seq}", wall_now.format("%Y%m%dT%H%M%S")),
            instance: instance_id(),
        }
    }
}

/// `host:pid` of this process.
fn instance_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown-host".into());
        format!("{host}:{}", std::process::id())
    })
    .clone()
}

/// One page's row, carried through lookup, planning, apply and accounting.
struct RowWork {
    row: StuckRow,
    ledger: Option<LedgerEntry>,
    /// One verdict per configured evidence entry (sending rows; empty when
    /// the row was not looked up because the action budget was spent).
    evidence: Vec<SourceVerdict>,
    presence: Option<Presence>,
    decision: Decision,
    expires: Option<Timestamp>,
    /// When time alone may change the decision (see `decision_changes_at`).
    changes_at: Option<Timestamp>,
    outcome: Outcome,
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

    let pass = PassId::new(wall_now);
    let mut opened = Vec::with_capacity(selected.len());
    for s in selected {
        opened.push(open(cfg, conns, s, opts, &pass).await);
    }

    let mut sources = BTreeMap::new();
    let mut scans = read_once(cfg, &mut opened, opts, wall_now).await;
    let (tailers, mut lines_read) = if opts.incremental {
        let used: HashSet<String> = opened
            .iter()
            .filter(|o| o.ready.is_some())
            .flat_map(|o| o.sweep.evidence.iter().map(|e| e.source.clone()))
            .collect();
        poll_tailers(cfg, conns, &used, wall_now).await
    } else {
        (BTreeMap::new(), BTreeMap::new())
    };
    for (name, scan) in &scans {
        let kind = cfg.evidence.get(name).map(|e| &e.kind);
        if let (Ok(s), Some(EvidenceKind::Log(_) | EvidenceKind::Store(_))) = (scan, kind) {
            lines_read.insert(name.clone(), s.stats.lines);
        }
    }
    for (name, scan) in &scans {
        let err = match scan {
            Err(e) => Some(e.clone()),
            Ok(s) => s.failed.values().next().cloned(),
        };
        sources.insert(name.clone(), err);
    }
    for (name, (_, err, _)) in &tailers {
        sources.insert(name.clone(), err.clone());
    }
    let per_page: BTreeMap<String, provider::Source> = per_page_sources(cfg, &opened, &scans);

    let mut lookups = BTreeMap::new();
    let mut sweeps = Vec::with_capacity(opened.len());
    let mut details = Vec::with_capacity(opened.len());
    let mut asked: BTreeMap<String, Result<SourceScan, String>> = BTreeMap::new();
    for o in opened {
        let ev = Evidence {
            scans: &scans,
            tailers: &tailers,
            per_page: &per_page,
        };
        let (report, detail) = walk_sweep(
            cfg,
            conns,
            o,
            &ev,
            opts,
            &mut lookups,
            &mut sources,
            &mut asked,
        )
        .await;
        sweeps.push(report);
        details.push(detail);
    }
    scans.extend(asked);
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
        lines_read,
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn age_secs(now: Timestamp, t: Timestamp) -> f64 {
    (now - t).num_milliseconds() as f64 / 1000.0
}

/// Phase 1 for one sweep: lock, clock, counts, stale summaries.
async fn open<'c>(
    cfg: &Config,
    conns: &mut Connections,
    sweep: &'c SweepConfig,
    opts: &PassOptions,
    pass: &PassId,
) -> Opened<'c> {
    let started = Instant::now();
    let mut report = SweepReport::empty(&sweep.name, &sweep.table.to_string());
    if opts.stopping() {
        report.skipped = Some("shutting down".into());
        return Opened {
            sweep,
            report,
            started,
            lock: None,
            ready: None,
        };
    }
    let mut lock = None;
    let ready = match try_open(cfg, conns, sweep, opts, &mut report, &mut lock, pass).await {
        Ok(r) => r,
        Err((stage, e)) => {
            note(&mut report.errors, stage, &e);
            None
        }
    };
    if ready.is_none() {
        if let Some(l) = lock.take() {
            l.release().await;
        }
    }
    Opened {
        sweep,
        report,
        started,
        lock,
        ready,
    }
}

type StageFault = (Stage, Fault);

fn at<E: Into<Fault>>(stage: Stage) -> impl Fn(E) -> StageFault {
    move |e| (stage, e.into())
}

async fn try_open(
    cfg: &Config,
    conns: &mut Connections,
    sweep: &SweepConfig,
    opts: &PassOptions,
    report: &mut SweepReport,
    lock_out: &mut Option<LockGuard>,
    pass: &PassId,
) -> Result<Option<Ready>, StageFault> {
    let db = conns
        .db(cfg, &sweep.database)
        .await
        .map_err(at(Stage::Fetch))?;
    let table = db.sweep_table(sweep).await.map_err(at(Stage::Fetch))?;
    if !opts.dry_run {
        match db.try_lock(&table).await.map_err(at(Stage::Lock))? {
            Some(l) => *lock_out = Some(l),
            None => {
                report.skipped = Some(SKIPPED_LOCKED.into());
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
    let target = match &opts.key {
        Some(key) => db.row_by_key(&table, key).await.map_err(at(Stage::Fetch))?,
        None => None,
    };
    let mut stale = PerState::<StaleSummary>::default();
    let mut cutoffs = PerState::<Option<Timestamp>>::default();
    for state in RowState::ALL {
        let after = match state {
            RowState::Pending => sweep.rules.pending.as_ref().map(|r| r.after),
            RowState::Sending => sweep.rules.sending.as_ref().map(|r| r.after),
        };
        let Some(after) = after else { continue };
        let cutoff = now - delta(after);
        cutoffs.set(state, Some(cutoff));
        let summary = db
            .stale_summary(&table, state, cutoff)
            .await
            .map_err(at(Stage::Fetch))?;
        stale.set(state, summary);
        report.stuck.set(state, summary.count);
        report
            .oldest_stuck_age_seconds
            .set(state, summary.oldest.map(|o| age_secs(now, o)));
    }
    Ok(Some(Ready {
        db,
        table,
        now,
        cutoffs,
        stale,
        target,
        pass: pass.clone(),
    }))
}

impl Ready {
    /// The rows of `state` this pass walks, page by page: every stale row
    /// in key order, or in single-row mode the target when it is in
    /// `state` (stale or not).
    fn target_in(&self, state: RowState) -> Option<&StuckRow> {
        let (text, row) = self.target.as_ref()?;
        (*text == Db::state_text(&self.table, state)).then_some(row)
    }
}

/// Whether a source is read once per pass (for the keys of every sweep)
/// rather than asked page by page.
fn read_once_kind(kind: &EvidenceKind, opts: &PassOptions, stale_sending: u64) -> bool {
    match kind {
        EvidenceKind::Log(_) => !opts.incremental,
        // Searched once per pass for every wanted key, daemon or not.
        EvidenceKind::Store(_) => true,
        EvidenceKind::Provider(p) => {
            matches!(p.api, crate::config::ProviderApi::Mailgun { .. })
                && stale_sending > p.time_range_above as u64
        }
    }
}

/// The lookup of one evidence entry for a row: the normalised key, the
/// window start and the extra fields, or `None` when the row has no value.
fn wanted_row(cfg: &Config, e: &EvidenceRef, row: &StuckRow) -> Option<WantedRow> {
    let k = normalize_key(row.lookup(e.lookup));
    if k.is_empty() {
        return None;
    }
    let slack = cfg
        .evidence
        .get(&e.source)
        .map_or(Duration::ZERO, |s| s.kind.slack());
    Some(WantedRow {
        key: k.to_string(),
        since: row.updated_at - delta(slack),
        fields: e
            .extra
            .iter()
            .map(|(name, i)| (name.clone(), row.lookup(*i).to_string()))
            .collect(),
    })
}

/// Phase 2: read each once-per-pass source for the lookup keys of every
/// sweep's stale sending rows. The keys are collected by a keys-only walk
/// (no job arguments), so what is held is one compact entry per key.
async fn read_once(
    cfg: &Config,
    opened: &mut [Opened<'_>],
    opts: &PassOptions,
    wall_now: Timestamp,
) -> BTreeMap<String, Result<SourceScan, String>> {
    // Which sources are read once, from the stale counts of their sweeps.
    let mut stale_by_source: BTreeMap<&str, u64> = BTreeMap::new();
    for o in opened.iter() {
        let Some(ready) = &o.ready else { continue };
        for e in &o.sweep.evidence {
            *stale_by_source.entry(e.source.as_str()).or_default() += ready.stale.sending.count;
        }
    }
    let once: HashSet<&str> = stale_by_source
        .iter()
        .filter(|(s, n)| {
            cfg.evidence
                .get(**s)
                .is_some_and(|e| read_once_kind(&e.kind, opts, **n))
        })
        .map(|(s, _)| *s)
        .collect();
    // Per source: the wanted keys (one compact entry each) and the earliest
    // window start among their rows.
    let mut wanted: BTreeMap<String, (HashSet<String>, Option<Timestamp>)> = BTreeMap::new();
    for o in opened.iter_mut() {
        let sweep = o.sweep;
        let Some(ready) = &o.ready else { continue };
        let entries: Vec<&EvidenceRef> = sweep
            .evidence
            .iter()
            .filter(|e| once.contains(e.source.as_str()))
            .collect();
        if entries.is_empty() {
            continue;
        }
        let mut add = |row: &StuckRow| {
            for e in &entries {
                if let Some(w) = wanted_row(cfg, e, row) {
                    let (keys, since) = wanted.entry(e.source.clone()).or_default();
                    *since = Some(since.map_or(w.since, |s| s.min(w.since)));
                    keys.insert(w.key);
                }
            }
        };
        if opts.key.is_some() {
            if let Some(row) = ready.target_in(RowState::Sending) {
                add(row);
            }
            continue;
        }
        let (Some(cutoff), true) = (ready.cutoffs.sending, ready.stale.sending.count > 0) else {
            continue;
        };
        // Keys only, so pages can be larger than the walk's.
        let mut light = ready.table.without_args();
        light.batch_size = light.batch_size.saturating_mul(10).min(10_000);
        let mut after: Option<StuckRow> = None;
        let walked: Result<(), DbError> = async {
            loop {
                let page = ready
                    .db
                    .stale_page(&light, RowState::Sending, cutoff, after.as_ref())
                    .await?;
                let done = page.len() < light.batch_size as usize;
                page.iter().for_each(&mut add);
                after = page.into_iter().last();
                if done || after.is_none() {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = walked {
            // Fail closed: without every key the scan would prove absence
            // it never looked for. The sweep sits this pass out.
            note(&mut o.report.errors, Stage::Fetch, &e.into());
            o.ready = None;
            if let Some(l) = o.lock.take() {
                l.release().await;
            }
        }
    }
    let mut out = BTreeMap::new();
    for (source, (keys, since)) in wanted {
        let ecfg = cfg
            .evidence
            .get(&source)
            .expect("validation resolves sources");
        let scan = match &ecfg.kind {
            EvidenceKind::Log(lcfg) if lcfg.journal.is_some() => {
                scan_journal(&source, lcfg, keys, since, opts).await
            }
            EvidenceKind::Log(lcfg) => scan_log(&source, lcfg, keys, opts, wall_now).await,
            EvidenceKind::Store(scfg) => {
                let since = since.unwrap_or(wall_now);
                logstore::fetch(&source, scfg, &keys, since, wall_now, opts.keep_text)
                    .await
                    .map(|ls| SourceScan::of_store(scfg, ls))
            }
            EvidenceKind::Provider(pcfg) => {
                // A time-range scan: it starts at the earliest window and
                // matches the keys locally (per-row fields are for per-key
                // queries, which are asked page by page instead).
                let since = since.unwrap_or(wall_now);
                let rows: Vec<WantedRow> = keys
                    .into_iter()
                    .map(|key| WantedRow {
                        key,
                        since,
                        fields: BTreeMap::new(),
                    })
                    .collect();
                let ps = provider::fetch(&source, pcfg, &rows, opts.keep_text).await;
                Ok(SourceScan::of_provider(pcfg, ps))
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
        out.insert(source, scan);
    }
    out
}

/// One read of a journal source for `keys`, from the earliest window start.
async fn scan_journal(
    source: &str,
    lcfg: &crate::config::LogSourceConfig,
    keys: HashSet<String>,
    since: Option<Timestamp>,
    opts: &PassOptions,
) -> Result<SourceScan, String> {
    let lcfg = lcfg.clone();
    let name = source.to_string();
    let keep_text = opts.keep_text;
    tokio::task::spawn_blocking(move || -> Result<SourceScan, String> {
        let input = lcfg.journal.clone().expect("a journal source");
        let from = match since {
            Some(t) => journal::From::Since(t - TimeDelta::seconds(1)),
            None => journal::From::Start,
        };
        let mut parser = logfile::parser_for(&lcfg, KeyFilter::Wanted(keys), chrono::Utc::now());
        let mut store = TraceStore::new(keep_text);
        let mut cursors = HashMap::new();
        let read = journal::read(
            &name,
            &input,
            &lcfg.format,
            &from,
            1,
            parser.as_mut(),
            &mut store,
            &mut cursors,
        )
        .map_err(|e| e.to_string())?;
        let mut scan = SourceScan::of_log(
            vec![PathBuf::from(crate::adapters::tail::journal_label(&input))],
            store,
            read.stats,
            lcfg.slack,
        );
        scan.cursors = cursors;
        scan.journal = true;
        Ok(scan)
    })
    .await
    .unwrap_or_else(|e| Err(format!("evidence {source}: journal read failed: {e}")))
}

/// One full scan of a log source for `keys`.
async fn scan_log(
    source: &str,
    lcfg: &crate::config::LogSourceConfig,
    keys: HashSet<String>,
    opts: &PassOptions,
    wall_now: Timestamp,
) -> Result<SourceScan, String> {
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
        let stats =
            logfile::scan_files_counted(&name, &files, parser.as_mut(), &mut store, counter)
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

/// Provider sources asked page by page (those not read once).
fn per_page_sources(
    cfg: &Config,
    opened: &[Opened<'_>],
    scans: &BTreeMap<String, Result<SourceScan, String>>,
) -> BTreeMap<String, provider::Source> {
    let mut out = BTreeMap::new();
    for o in opened.iter().filter(|o| o.ready.is_some()) {
        for e in &o.sweep.evidence {
            if scans.contains_key(&e.source) || out.contains_key(&e.source) {
                continue;
            }
            if let Some(EvidenceKind::Provider(p)) = cfg.evidence.get(&e.source).map(|c| &c.kind) {
                out.insert(e.source.clone(), provider::Source::new(&e.source, p));
            }
        }
    }
    out
}

/// Poll the daemon's tailer of every log source the sweeps use (creating
/// it on first use), then forget messages older than any row could need.
async fn poll_tailers(
    cfg: &Config,
    conns: &Connections,
    used: &HashSet<String>,
    wall_now: Timestamp,
) -> (
    BTreeMap<String, (SharedTailer, Option<String>, u64)>,
    BTreeMap<String, u64>,
) {
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
    horizon.retain(|s, _| used.contains(*s));
    let mut read = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (source, keep) in horizon {
        let ecfg = cfg
            .evidence
            .get(source)
            .expect("validation resolves sources");
        let EvidenceKind::Log(lcfg) = &ecfg.kind else {
            continue;
        };
        let shared = conns.tailer(source, || Tailer::new(source, lcfg, wall_now));
        let guard = shared.clone().lock_owned().await;
        let keep = delta(keep + guard.slack() + Duration::from_secs(86_400));
        let polled = tokio::task::spawn_blocking(move || {
            let mut tailer = guard;
            let r = tailer.poll(wall_now);
            tailer.prune(wall_now - keep);
            let polled_lines = r.as_ref().map_or(0, |s| s.lines);
            (
                r.err().map(|e| e.to_string()),
                tailer.stats.bytes,
                polled_lines,
            )
        })
        .await;
        let (shared, err, bytes) = match polled {
            Ok((err, bytes, polled_lines)) => {
                read.insert(source.to_string(), polled_lines);
                (shared, err, bytes)
            }
            Err(e) => {
                // The tailer may be half-updated; a fresh one re-reads.
                let fresh = conns.replace_tailer(source, Tailer::new(source, lcfg, wall_now));
                (
                    fresh,
                    Some(format!("evidence {source}: log reader failed: {e}")),
                    0,
                )
            }
        };
        if let Some(e) = &err {
            tracing::warn!(source, error = %e, "evidence source unavailable");
        }
        out.insert(source.to_string(), (shared, err, bytes));
    }
    (out, read)
}

/// Where the walk finds each source's evidence.
struct Evidence<'a> {
    /// Sources read once for this pass.
    scans: &'a BTreeMap<String, Result<SourceScan, String>>,
    /// The daemon's tailers, with this pass's poll error.
    tailers: &'a BTreeMap<String, (SharedTailer, Option<String>, u64)>,
    /// Provider sources asked per page.
    per_page: &'a BTreeMap<String, provider::Source>,
}

fn unavailable(source: &str, detail: String) -> SourceVerdict {
    SourceVerdict {
        source: source.to_string(),
        verdict: Verdict::Unavailable,
        detail,
        references: vec![],
    }
}

/// One source's verdict on one row.
fn source_verdict(
    e: &EvidenceRef,
    row: &StuckRow,
    index: Result<&dyn EvidenceIndex, &str>,
    now: Timestamp,
) -> SourceVerdict {
    let lookup = row.lookup(e.lookup);
    let key = normalize_key(lookup);
    if key.is_empty() {
        return SourceVerdict {
            source: e.source.clone(),
            verdict: Verdict::NotFound,
            detail: format!("the row has no {} value to look up", e.column),
            references: vec![],
        };
    }
    let scan = match index {
        Ok(s) => s,
        Err(msg) => return unavailable(&e.source, msg.to_string()),
    };
    if let Some(err) = scan.key_error(key) {
        return unavailable(&e.source, err.to_string());
    }
    let since = scan
        .windowed()
        .then(|| row.updated_at - delta(scan.slack()));
    let kv = scan.store().verdict(lookup, since);
    let mut references = Vec::new();
    for m in &kv.instances {
        for l in m.lines.iter().take(20) {
            references.push(scan.reference(l));
        }
    }
    let lag = scan.lag();
    let found = kv.verdict.clone();
    let verdict = with_lag(kv.verdict, now - row.updated_at, lag);
    let detail = if verdict != found {
        format!(
            "not found yet; {} may take up to {} to show events",
            e.source,
            crate::core::report::human_age(lag.as_secs_f64())
        )
    } else {
        kv.detail
    };
    SourceVerdict {
        source: e.source.clone(),
        verdict,
        detail,
        references,
    }
}

/// Everything the walk of one sweep accumulates.
struct SweepRun {
    report: SweepReport,
    outcomes: Outcomes,
    /// Sources whose failure is already charged to this sweep (once each).
    charged: HashSet<String>,
    listed: PerState<usize>,
    rows: BTreeMap<RowState, Vec<RowReport>>,
    omitted: u64,
    /// Keys this pass moved from sending back to pending: the pending walk
    /// must not meet them again (at most `max_actions` keys).
    moved_to_pending: HashSet<String>,
    requeued: bool,
    detail_rows: Vec<(StuckRow, Decision, Vec<SourceVerdict>, Option<LedgerEntry>)>,
    /// Every decision so far is at rest.
    at_rest: bool,
    /// The first instant time alone may change a decision so far.
    until: Option<Timestamp>,
    /// The walk went through every stale row.
    complete: bool,
}

/// What the walk of one sweep shares with every page.
struct Walk<'a, 'b> {
    cfg: &'a Config,
    sweep: &'a SweepConfig,
    ready: &'a Ready,
    ev: &'a Evidence<'b>,
    opts: &'a PassOptions,
    presence: Option<Result<PresenceIndex, ()>>,
}

#[allow(clippy::too_many_arguments)]
async fn walk_sweep(
    cfg: &Config,
    conns: &mut Connections,
    o: Opened<'_>,
    ev: &Evidence<'_>,
    opts: &PassOptions,
    lookups: &mut BTreeMap<(String, &'static str), u64>,
    sources: &mut BTreeMap<String, Option<String>>,
    asked: &mut BTreeMap<String, Result<SourceScan, String>>,
) -> (SweepReport, SweepDetail) {
    let Opened {
        sweep,
        report,
        started,
        mut lock,
        ready,
    } = o;
    let mut run = SweepRun {
        report,
        outcomes: Outcomes::default(),
        charged: HashSet::new(),
        listed: PerState::default(),
        rows: BTreeMap::new(),
        omitted: 0,
        moved_to_pending: HashSet::new(),
        requeued: false,
        detail_rows: Vec::new(),
        at_rest: true,
        until: None,
        complete: false,
    };
    let Some(ready) = ready else {
        run.report.duration_seconds = started.elapsed().as_secs_f64();
        return (run.report, SweepDetail::empty(sweep, None));
    };
    let now = ready.now;
    let single = opts.key.is_some();
    let stale_rows = ready.stale.pending.count + ready.stale.sending.count;
    let has_rows = if single {
        RowState::ALL.iter().any(|s| ready.target_in(*s).is_some())
    } else {
        stale_rows > 0
    };
    // The daemon: a sweep at rest whose stale rows, logs and clock show no
    // change decides as its last pass did; report that without a walk.
    let tails = if opts.incremental && !single {
        log_tails(sweep, ev)
    } else {
        None
    };
    if let Some(memo) = conns
        .memos
        .get(&sweep.name)
        .filter(|m| tails.as_ref().is_some_and(|t| m.still_holds(&ready, t)))
    {
        memo.report_into(&mut run.report, opts);
        if let Some(lock) = lock {
            lock.release().await;
        }
        run.report.duration_seconds = started.elapsed().as_secs_f64();
        return (run.report, SweepDetail::empty(sweep, Some(now)));
    }
    let (presence, workers_alive) = if has_rows {
        queue_checks(cfg, conns, sweep, &mut run.report).await
    } else {
        (None, None)
    };
    let mut planner = Planner::new(
        &sweep.rules,
        Brakes {
            stale_rows,
            workers_alive,
        },
    );
    let ledger_exists = ledger_state(&ready, has_rows, &mut run.report).await;
    run.complete = ledger_exists.is_some();
    if let Some(ledger_exists) = ledger_exists.filter(|_| has_rows) {
        let walk = Walk {
            cfg,
            sweep,
            ready: &ready,
            ev,
            opts,
            presence,
        };
        for state in BUDGET_ORDER {
            let Some(cutoff) = ready.cutoffs.get(state) else {
                continue;
            };
            let go_on = if single {
                settle_target(
                    &walk,
                    conns,
                    state,
                    ledger_exists,
                    &mut planner,
                    &mut run,
                    lookups,
                    sources,
                    asked,
                )
                .await;
                true
            } else {
                walk_pages(
                    &walk,
                    conns,
                    state,
                    cutoff,
                    ledger_exists,
                    &mut planner,
                    &mut run,
                    lookups,
                    sources,
                    lock.as_mut(),
                )
                .await
            };
            if !go_on {
                run.complete = false;
                break;
            }
        }
    }

    if !opts.dry_run {
        if run.requeued {
            prune_ledger(sweep, &ready, &mut run.report.errors).await;
        }
        prune_history(cfg, conns, &ready, &mut run.report.errors).await;
        run.report.outcomes = Some(std::mem::take(&mut run.outcomes));
    }
    remember(conns, sweep, &ready, tails, &run);
    list_rows(&mut run, opts);
    if let Some(lock) = lock {
        lock.release().await;
    }
    run.report.duration_seconds = started.elapsed().as_secs_f64();
    let detail = SweepDetail {
        sweep: sweep.name.clone(),
        now: Some(now),
        target: ready.target,
        rows: run.detail_rows,
    };
    (run.report, detail)
}

impl Memo {
    /// The remembered counts, as this pass's (which writes nothing).
    fn report_into(&self, report: &mut SweepReport, opts: &PassOptions) {
        report.decisions = self.decisions.clone();
        report.reasons = self.reasons.clone();
        report.evidence_expiring = self.evidence_expiring;
        if !opts.dry_run {
            report.outcomes = Some(Outcomes::default());
        }
    }

    /// Whether a pass now would decide as the remembered one did: the same
    /// stale rows, no new log bytes, and before the first instant time
    /// alone changes a decision.
    fn still_holds(&self, ready: &Ready, tails: &BTreeMap<String, u64>) -> bool {
        self.stale == ready.stale
            && self.tails == *tails
            && self.until.is_none_or(|u| ready.now < u)
    }
}

/// Whether the ledger table exists (`None`: it could not be told, which
/// is reported and decides nothing). Not asked when there is no row.
async fn ledger_state(ready: &Ready, has_rows: bool, report: &mut SweepReport) -> Option<bool> {
    if !has_rows {
        return Some(false);
    }
    match ready.db.ledger_exists().await {
        Ok(b) => Some(b),
        Err(e) => {
            note(&mut report.errors, Stage::Ledger, &e.into());
            None
        }
    }
}

/// Single-row mode (`explain`): the target row, when it is in `state`.
#[allow(clippy::too_many_arguments)]
async fn settle_target(
    walk: &Walk<'_, '_>,
    conns: &mut Connections,
    state: RowState,
    ledger_exists: bool,
    planner: &mut Planner<'_>,
    run: &mut SweepRun,
    lookups: &mut BTreeMap<(String, &'static str), u64>,
    sources: &mut BTreeMap<String, Option<String>>,
    asked: &mut BTreeMap<String, Result<SourceScan, String>>,
) {
    let Some(row) = walk.ready.target_in(state) else {
        return;
    };
    let ledger = if ledger_exists {
        match walk
            .ready
            .db
            .ledger_get(&walk.sweep.name, &[row.key.as_str()])
            .await
        {
            Ok(mut l) => l.remove(&row.key),
            Err(e) => {
                note(&mut run.report.errors, Stage::Ledger, &e.into());
                return;
            }
        }
    } else {
        None
    };
    let mut work = settle_page(
        walk,
        conns,
        vec![(row.clone(), ledger)],
        planner,
        run,
        lookups,
        sources,
        Some(asked),
        None,
    )
    .await;
    account(&mut work, run, walk.ready.now, walk.opts);
}

/// Every stale row of `state`, page by page in key order; the next page is
/// read while this one is settled. `false` when the walk must stop (a
/// shutdown, or a page that could not be read).
#[allow(clippy::too_many_arguments)]
async fn walk_pages(
    walk: &Walk<'_, '_>,
    conns: &mut Connections,
    state: RowState,
    cutoff: Timestamp,
    ledger_exists: bool,
    planner: &mut Planner<'_>,
    run: &mut SweepRun,
    lookups: &mut BTreeMap<(String, &'static str), u64>,
    sources: &mut BTreeMap<String, Option<String>>,
    mut lock: Option<&mut LockGuard>,
) -> bool {
    let Walk {
        sweep, ready, opts, ..
    } = *walk;
    if ready.stale.get(state).count == 0 {
        return true;
    }
    let page_size = ready.table.batch_size.max(1) as usize;
    let fetch = |after: Option<StuckRow>| {
        let db = ready.db.clone();
        let table = ready.table.clone();
        let sweep_name = sweep.name.clone();
        tokio::spawn(async move {
            db.stale_page_with_ledger(
                &table,
                state,
                cutoff,
                after.as_ref(),
                &sweep_name,
                ledger_exists,
            )
            .await
        })
    };
    let mut next = Some(fetch(None));
    while let Some(pending_page) = next.take() {
        if opts.stopping() && !opts.dry_run {
            pending_page.abort();
            return false;
        }
        let waited = Instant::now();
        let page = pending_page.await;
        tracing::debug!(
            sweep = %sweep.name,
            state = %state,
            wait_ms = waited.elapsed().as_secs_f64() * 1e3,
            "page read"
        );
        let page = match page {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                note(&mut run.report.errors, Stage::Fetch, &e.into());
                return false;
            }
            Err(e) => {
                let fault = Fault::Source(format!("reading a page of rows failed: {e}"));
                note(&mut run.report.errors, Stage::Fetch, &fault);
                return false;
            }
        };
        if page.len() >= page_size {
            next = page.last().map(|(r, _)| fetch(Some(r.clone())));
        }
        // A session lock lives as long as its connection: acting on a page
        // after losing it could race the instance that took over.
        if let Some(l) = lock.as_deref_mut() {
            if !l.still_held().await {
                if let Some(n) = next.take() {
                    n.abort();
                }
                note(&mut run.report.errors, Stage::Lock, &Fault::LockLost);
                return false;
            }
        }
        let page: Vec<(StuckRow, Option<LedgerEntry>)> = page
            .into_iter()
            .filter(|(r, _)| !run.moved_to_pending.contains(&r.key))
            .collect();
        let mut work = settle_page(
            walk,
            conns,
            page,
            planner,
            run,
            lookups,
            sources,
            None,
            lock.as_deref_mut(),
        )
        .await;
        account(&mut work, run, ready.now, opts);
    }
    true
}

/// After a complete walk in which every decision was at rest, remember the
/// sweep (the daemon skips the next walk while nothing changes); otherwise
/// forget it.
fn remember(
    conns: &mut Connections,
    sweep: &SweepConfig,
    ready: &Ready,
    tails: Option<BTreeMap<String, u64>>,
    run: &SweepRun,
) {
    match tails {
        Some(tails) if run.complete && run.at_rest && run.report.errors.is_empty() => {
            conns.memos.insert(
                sweep.name.clone(),
                Memo {
                    stale: ready.stale,
                    tails,
                    until: run.until,
                    decisions: run.report.decisions.clone(),
                    reasons: run.report.reasons.clone(),
                    evidence_expiring: run.report.evidence_expiring,
                },
            );
        }
        _ => {
            conns.memos.remove(&sweep.name);
        }
    }
}

/// The report's rows: pending first, then sending, at most `max_rows`.
fn list_rows(run: &mut SweepRun, opts: &PassOptions) {
    let mut rows = run.rows.remove(&RowState::Pending).unwrap_or_default();
    rows.extend(run.rows.remove(&RowState::Sending).unwrap_or_default());
    let max_rows = opts.max_rows.unwrap_or(usize::MAX);
    if rows.len() > max_rows {
        run.omitted += (rows.len() - max_rows) as u64;
        rows.truncate(max_rows);
    }
    run.report.rows = rows;
    run.report.rows_omitted = run.omitted;
}

/// Bytes read so far by the tailer of each of the sweep's evidence sources;
/// `None` unless every source is a log tailer that answered this pass (a
/// provider can learn of events at any time).
fn log_tails(sweep: &SweepConfig, ev: &Evidence<'_>) -> Option<BTreeMap<String, u64>> {
    sweep
        .evidence
        .iter()
        .map(|e| match ev.tailers.get(&e.source) {
            Some((_, None, bytes)) => Some((e.source.clone(), *bytes)),
            _ => None,
        })
        .collect()
}

/// Look up, plan and (unless dry run) apply one page of rows.
/// Whether the row's job was seen in the presence scan, found by the
/// identity its queue kind files jobs under. A row whose job cannot be
/// built fails when it is pushed.
fn job_presence(
    cfg: &Config,
    job: &crate::config::JobConfig,
    idx: &PresenceIndex,
    row: &StuckRow,
) -> Presence {
    let (Some(q), Ok(built)) = (
        cfg.queues.get(&job.queue_ref),
        crate::adapters::queue::build(job, &row.args),
    ) else {
        return Presence::Absent;
    };
    idx.lookup_key(&crate::adapters::queue::presence::identity(
        &q.kind, &job.class, &built,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn settle_page(
    walk: &Walk<'_, '_>,
    conns: &mut Connections,
    page: Vec<(StuckRow, Option<LedgerEntry>)>,
    planner: &mut Planner<'_>,
    run: &mut SweepRun,
    lookups: &mut BTreeMap<(String, &'static str), u64>,
    sources: &mut BTreeMap<String, Option<String>>,
    asked: Option<&mut BTreeMap<String, Result<SourceScan, String>>>,
    lock: Option<&mut LockGuard>,
) -> Vec<RowWork> {
    let Walk {
        cfg,
        sweep,
        ready,
        ev,
        opts,
        ..
    } = *walk;
    let now = ready.now;
    let started = Instant::now();
    let mut work: Vec<RowWork> = page
        .into_iter()
        .map(|(row, ledger)| RowWork {
            ledger,
            presence: walk.presence.as_ref().map(|p| match (p, &sweep.job) {
                (Ok(idx), Some(job)) => job_presence(cfg, job, idx, &row),
                _ => Presence::Unknown,
            }),
            row,
            evidence: Vec::new(),
            decision: Decision::new(Action::Leave, crate::core::model::Reason::Fresh),
            expires: None,
            changes_at: None,
            outcome: Outcome::NotApplied,
        })
        .collect();

    // Evidence for the sending rows — unless the budget is spent and the
    // sweep asks a provider per page: then those rows are not looked up.
    let sending: Vec<usize> = (0..work.len())
        .filter(|i| work[*i].row.state == RowState::Sending)
        .collect();
    let pays = sweep
        .evidence
        .iter()
        .any(|e| ev.per_page.contains_key(&e.source));
    let unasked = pays && planner.spent() && opts.key.is_none();
    if !sending.is_empty() && !unasked {
        page_evidence(walk, &mut work, &sending, run, sources, asked).await;
    }
    for w in &work {
        for sv in &w.evidence {
            *lookups
                .entry((sv.source.clone(), sv.verdict.label()))
                .or_default() += 1;
        }
    }

    // Plan, in key order, carrying the budget from page to page.
    let give_up = sweep.rules.sending.as_ref().map(|s| s.give_up_after);
    let retentions: Vec<Duration> = sweep
        .evidence
        .iter()
        .filter_map(|e| retention_of(cfg, &e.source))
        .collect();
    for w in &mut work {
        let ctx = RowContext {
            ledger: w.ledger.as_ref(),
            evidence: &w.evidence,
            presence: w.presence,
        };
        w.decision = if unasked && w.row.state == RowState::Sending {
            planner.unasked()
        } else {
            planner.decide(&w.row, &ctx, now)
        };
        w.changes_at = decision_changes_at(&sweep.rules, &w.row, &ctx, &w.decision);
        w.expires = row_evidence_expiry(
            &w.row,
            &w.decision,
            give_up,
            retentions.iter().copied(),
            now,
        );
    }

    let decided = Instant::now();
    // Evidence lookups may have taken long: the lock must still be ours
    // when the page's writes begin.
    let lock_lost = match lock {
        Some(l) if !opts.dry_run => !l.still_held().await,
        _ => false,
    };
    if lock_lost {
        for w in work.iter_mut().filter(|w| {
            matches!(
                w.decision.action,
                Action::MarkSent | Action::MarkError | Action::Requeue
            )
        }) {
            w.outcome = failed(Stage::Lock, &Fault::LockLost);
        }
        note(&mut run.report.errors, Stage::Lock, &Fault::LockLost);
    } else if !opts.dry_run && !opts.stopping() {
        apply_marks(conns, sweep, ready, &mut work, &mut run.report.errors).await;
        let marked = Instant::now();
        requeue(cfg, conns, sweep, ready, &mut work, &mut run.report.errors).await;
        tracing::debug!(
            sweep = %sweep.name,
            rows = work.len(),
            lookup_and_plan_ms = (decided - started).as_secs_f64() * 1e3,
            marks_ms = (marked - decided).as_secs_f64() * 1e3,
            requeues_ms = marked.elapsed().as_secs_f64() * 1e3,
            "page settled"
        );
    }
    work
}

fn retention_of(cfg: &Config, source: &str) -> Option<Duration> {
    match &cfg.evidence.get(source)?.kind {
        EvidenceKind::Provider(p) => p.retention,
        EvidenceKind::Store(s) => s.retention,
        EvidenceKind::Log(_) => None,
    }
}

/// Each configured source's verdict on the page's sending rows.
async fn page_evidence(
    walk: &Walk<'_, '_>,
    work: &mut [RowWork],
    sending: &[usize],
    run: &mut SweepRun,
    sources: &mut BTreeMap<String, Option<String>>,
    mut asked: Option<&mut BTreeMap<String, Result<SourceScan, String>>>,
) {
    let Walk {
        cfg,
        sweep,
        ready,
        ev,
        opts,
        ..
    } = *walk;
    let now = ready.now;
    for e in &sweep.evidence {
        let verdicts: Vec<SourceVerdict> = if let Some(scan) = ev.scans.get(&e.source) {
            let index = scan
                .as_ref()
                .map(|s| s as &dyn EvidenceIndex)
                .map_err(String::as_str);
            sending
                .iter()
                .map(|i| source_verdict(e, &work[*i].row, index, now))
                .collect()
        } else if let Some((tailer, err, _)) = ev.tailers.get(&e.source) {
            let guard = tailer.lock().await;
            let index = match err {
                None => Ok(&*guard as &dyn EvidenceIndex),
                Some(msg) => Err(msg.as_str()),
            };
            sending
                .iter()
                .map(|i| source_verdict(e, &work[*i].row, index, now))
                .collect()
        } else if let Some(src) = ev.per_page.get(&e.source) {
            let Some(EvidenceKind::Provider(pcfg)) = cfg.evidence.get(&e.source).map(|c| &c.kind)
            else {
                continue;
            };
            let mut rows: BTreeMap<String, WantedRow> = BTreeMap::new();
            for i in sending {
                if let Some(w) = wanted_row(cfg, e, &work[*i].row) {
                    let slot = rows.entry(w.key.clone()).or_insert_with(|| w.clone());
                    slot.since = slot.since.min(w.since);
                }
            }
            let rows: Vec<WantedRow> = rows.into_values().collect();
            let scan = SourceScan::of_provider(pcfg, src.fetch(&rows, opts.keep_text).await);
            let slot = sources.entry(e.source.clone()).or_insert(None);
            if let Some(err) = scan.failed.values().next() {
                tracing::warn!(source = %e.source, keys = scan.failed.len(), error = %err, "evidence source failed for some rows");
                slot.get_or_insert_with(|| err.clone());
            }
            let out = sending
                .iter()
                .map(|i| source_verdict(e, &work[*i].row, Ok(&scan), now))
                .collect();
            if let Some(asked) = asked.as_deref_mut() {
                asked.insert(e.source.clone(), Ok(scan));
            }
            out
        } else {
            sending
                .iter()
                .map(|_| unavailable(&e.source, "source was not read in this pass".into()))
                .collect()
        };
        for (i, sv) in sending.iter().zip(verdicts) {
            // A failing source is charged to the sweeps whose rows it
            // failed, once per sweep and pass.
            if sv.verdict == Verdict::Unavailable && run.charged.insert(e.source.clone()) {
                note(
                    &mut run.report.errors,
                    Stage::Evidence,
                    &Fault::Source(sv.detail.clone()),
                );
            }
            work[*i].evidence.push(sv);
        }
    }
}

/// Fold a settled page into the sweep's report and drop it, keeping at
/// most `max_rows` listed rows per state.
fn account(work: &mut Vec<RowWork>, run: &mut SweepRun, now: Timestamp, opts: &PassOptions) {
    let max_rows = opts.max_rows.unwrap_or(usize::MAX);
    for w in work.drain(..) {
        run.at_rest &= at_rest(&w.decision);
        run.report.examined += 1;
        for t in [w.changes_at, w.expires].into_iter().flatten() {
            run.until = Some(run.until.map_or(t, |u| u.min(t)));
        }
        *run.report.decisions.entry(w.decision.action).or_default() += 1;
        *run.report.reasons.entry(w.decision.reason).or_default() += 1;
        if w.expires.is_some() {
            run.report.evidence_expiring += 1;
        }
        match &w.outcome {
            Outcome::Applied => {
                *run.outcomes.applied.entry(w.decision.action).or_default() += 1;
                if w.decision.action == Action::Requeue {
                    run.requeued = true;
                    if w.row.state == RowState::Sending {
                        run.moved_to_pending.insert(w.row.key.clone());
                    }
                }
            }
            Outcome::AlreadyMoved => run.outcomes.already_moved += 1,
            Outcome::Failed { .. } => run.outcomes.failed += 1,
            Outcome::NotApplied => {}
        }
        let state = w.row.state;
        let listed = run.listed.get(state);
        if listed >= max_rows {
            run.omitted += 1;
        } else {
            run.listed.set(state, listed + 1);
            run.rows.entry(state).or_default().push(RowReport {
                key: w.row.key.clone(),
                state,
                age_seconds: (now - w.row.updated_at).num_seconds(),
                decision: w.decision.action,
                reason: w.decision.reason,
                attempt: w.decision.attempt,
                evidence: w.evidence.clone(),
                evidence_expires_at: w.expires,
                outcome: w.outcome.clone(),
            });
        }
        if opts.key.is_some() {
            run.detail_rows
                .push((w.row, w.decision, w.evidence, w.ledger));
        }
    }
}

/// Presence of each row's job (when the queue has `presence_check`) and
/// whether the queue has live workers (when it has `require_workers`).
/// Reads only; runs in dry runs too, so reports show holds. One bounded
/// scan per sweep and pass.
async fn queue_checks(
    cfg: &Config,
    conns: &mut Connections,
    sweep: &SweepConfig,
    report: &mut SweepReport,
) -> (Option<Result<PresenceIndex, ()>>, Option<bool>) {
    let Some(job) = &sweep.job else {
        return (None, None);
    };
    let Some(qcfg) = cfg.queues.get(&job.queue_ref) else {
        return (None, None);
    };
    let (presence_cfg, require_workers) = qcfg.kind.checks();
    if presence_cfg.is_none() && !require_workers {
        return (None, None);
    }
    let client = match conns.queue(cfg, &job.queue_ref).await {
        Ok(c) => c,
        Err(e) => {
            note(&mut report.errors, Stage::Presence, &e.into());
            conns.drop_queue(&job.queue_ref);
            return (presence_cfg.map(|_| Err(())), None);
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
                        "presence check stopped at max_entries; rows whose job was not seen are held (queue_backlog)"
                    );
                }
                Ok(idx)
            }
            Ok(None) => Ok(PresenceIndex::default()),
            Err(e) => {
                note(&mut report.errors, Stage::Presence, &e.into());
                Err(())
            }
        });
    }
    let mut alive = None;
    if require_workers {
        match client.workers_alive(&job.queue).await {
            Ok(a) => alive = a,
            Err(e) => note(&mut report.errors, Stage::Presence, &e.into()),
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

/// The history entry of an applied decision: `to` is the target state, or
/// `None` for a requeue into `queue`.
fn history_entry(
    sweep: &SweepConfig,
    ready: &Ready,
    w: &RowWork,
    to: Option<&str>,
    queue: Option<&str>,
) -> HistoryEntry {
    HistoryEntry {
        at: ready.now,
        sweep: sweep.name.clone(),
        key: w.row.key.clone(),
        from_state: w.row.state.to_string(),
        to_state: to.map(str::to_string),
        queue: queue.map(str::to_string),
        attempt: queue.and(w.decision.attempt),
        reason: w.decision.reason.to_string(),
        evidence: summary(&w.evidence),
        pass_id: ready.pass.pass.clone(),
        instance_id: ready.pass.instance.clone(),
    }
}

fn audit(sweep: &SweepConfig, w: &RowWork, to: &str) {
    tracing::info!(
        target: "sweeper::audit",
        sweep = %sweep.name,
        key = %w.row.key,
        from = %w.row.state,
        to,
        action = %w.decision.action,
        reason = %w.decision.reason,
        attempt = w.decision.attempt,
        evidence = %summary(&w.evidence),
        "applied"
    );
}

/// Create the ledger and history tables once per database and process
/// (before the first write that needs them).
async fn ensure_tables(conns: &mut Connections, ready: &Ready) -> Result<(), Fault> {
    let key = ready.db.name.clone();
    if !conns.ledger_ready.contains(&key) {
        ready.db.ensure_tables().await?;
        conns.ledger_ready.insert(key);
    }
    Ok(())
}

/// Marks: one guarded update statement per target for the page's
/// `mark_sent` / `mark_error` rows, in one transaction.
async fn apply_marks(
    conns: &mut Connections,
    sweep: &SweepConfig,
    ready: &Ready,
    work: &mut [RowWork],
    errors: &mut Vec<PassError>,
) {
    let marks: Vec<usize> = (0..work.len())
        .filter(|i| {
            matches!(
                work[*i].decision.action,
                Action::MarkSent | Action::MarkError
            )
        })
        .collect();
    if marks.is_empty() {
        return;
    }
    let target = |w: &RowWork| {
        if w.decision.action == Action::MarkSent {
            Target::Sent
        } else {
            Target::Error
        }
    };
    if let Err(fault) = ensure_tables(conns, ready).await {
        for i in marks {
            work[i].outcome = failed(Stage::Ledger, &fault);
        }
        note(errors, Stage::Ledger, &fault);
        return;
    }
    let entries: Vec<HistoryEntry> = marks
        .iter()
        .map(|i| {
            let to = if target(&work[*i]) == Target::Sent {
                "sent"
            } else {
                "error"
            };
            history_entry(sweep, ready, &work[*i], Some(to), None)
        })
        .collect();
    let changes: Vec<Transition<'_>> = marks
        .iter()
        .zip(&entries)
        .map(|(i, e)| Transition {
            row: &work[*i].row,
            to: target(&work[*i]),
            history: Some(e),
        })
        .collect();
    let result = ready.db.transition(&ready.table, &changes).await;
    drop(changes);
    match result {
        Ok(applied) => {
            for (i, ok) in marks.into_iter().zip(applied) {
                let w = &mut work[i];
                w.outcome = if ok {
                    let to = if target(w) == Target::Sent {
                        "sent"
                    } else {
                        "error"
                    };
                    audit(sweep, w, to);
                    Outcome::Applied
                } else {
                    Outcome::AlreadyMoved
                };
            }
        }
        Err(e) => {
            let fault = Fault::from(e);
            for i in marks {
                work[i].outcome = failed(Stage::Update, &fault);
            }
            note(errors, Stage::Update, &fault);
        }
    }
}

/// Requeues of a page: re-assert every row, push the jobs the queue
/// accepts, then record them in the ledger.
async fn requeue(
    cfg: &Config,
    conns: &mut Connections,
    sweep: &SweepConfig,
    ready: &Ready,
    work: &mut [RowWork],
    errors: &mut Vec<PassError>,
) {
    let requeues: Vec<usize> = (0..work.len())
        .filter(|i| work[*i].decision.action == Action::Requeue)
        .collect();
    if requeues.is_empty() {
        return;
    }
    let Some(job) = &sweep.job else {
        for i in requeues {
            work[i].outcome = failed(Stage::Enqueue, &Fault::NoJob);
        }
        return;
    };
    if let Err(fault) = ensure_tables(conns, ready).await {
        for i in requeues {
            work[i].outcome = failed(Stage::Ledger, &fault);
        }
        note(errors, Stage::Ledger, &fault);
        return;
    }
    // Every job is built before anything is written: a row whose values
    // its job could not carry (say, ActiveJob's reserved keys, a NULL RQ
    // job id) fails here, untouched.
    let mut built: HashMap<usize, BuiltJob> = HashMap::new();
    let mut requeues = requeues;
    requeues.retain(
        |i| match crate::adapters::queue::build(job, &work[*i].row.args) {
            Ok(b) => {
                built.insert(*i, b);
                true
            }
            Err(message) => {
                let fault = Fault::Job {
                    class: job.class.clone(),
                    message,
                };
                note(errors, Stage::Enqueue, &fault);
                work[*i].outcome = failed(Stage::Enqueue, &fault);
                false
            }
        },
    );
    let go = reassert_before_requeue(ready, work, &requeues, errors).await;
    if go.is_empty() {
        return;
    }
    push_and_record(cfg, conns, sweep, job, ready, work, &go, &built, errors).await;
}

/// Re-assert each row before its job is pushed: pending rows must still be
/// pending with the version read; sending rows are moved back to pending by
/// a guarded update first. Returns the rows that may be pushed.
async fn reassert_before_requeue(
    ready: &Ready,
    work: &mut [RowWork],
    requeues: &[usize],
    errors: &mut Vec<PassError>,
) -> Vec<usize> {
    let mut go: Vec<usize> = Vec::with_capacity(requeues.len());
    let (pend, send): (Vec<usize>, Vec<usize>) = requeues
        .iter()
        .partition(|i| work[**i].row.state == RowState::Pending);
    if !pend.is_empty() {
        let rows: Vec<&StuckRow> = pend.iter().map(|i| &work[*i].row).collect();
        let current = ready
            .db
            .current_versions(&ready.table, RowState::Pending, &rows)
            .await;
        drop(rows);
        let still = current.map(|current| {
            pend.iter()
                .map(|i| current.get(&work[*i].row.key) == Some(&work[*i].row.version))
                .collect()
        });
        reasserted(work, &pend, still, Stage::Fetch, &mut go, errors);
    }
    if !send.is_empty() {
        let changes: Vec<Transition<'_>> = send
            .iter()
            .map(|i| Transition {
                row: &work[*i].row,
                to: Target::Pending,
                history: None,
            })
            .collect();
        let result = ready.db.transition(&ready.table, &changes).await;
        drop(changes);
        reasserted(work, &send, result, Stage::Update, &mut go, errors);
    }
    go.sort_unstable();
    go
}

/// Record what re-asserting `rows` found: each row still as read goes on
/// to `go`, a row that moved on is `already_moved`, and an error fails them
/// all at `stage`.
fn reasserted(
    work: &mut [RowWork],
    rows: &[usize],
    result: Result<Vec<bool>, DbError>,
    stage: Stage,
    go: &mut Vec<usize>,
    errors: &mut Vec<PassError>,
) {
    match result {
        Ok(still) => {
            for (i, ok) in rows.iter().zip(still) {
                if ok {
                    go.push(*i);
                } else {
                    work[*i].outcome = Outcome::AlreadyMoved;
                }
            }
        }
        Err(e) => {
            let fault = Fault::from(e);
            for i in rows {
                work[*i].outcome = failed(stage, &fault);
            }
            note(errors, stage, &fault);
        }
    }
}

/// Push the jobs of `go`; a job counts once its queue accepted it, and only
/// then is the ledger written (at-least-once: if the ledger write fails the
/// row may be requeued again next pass; it is reported).
#[allow(clippy::too_many_arguments)]
async fn push_and_record(
    cfg: &Config,
    conns: &mut Connections,
    sweep: &SweepConfig,
    job: &crate::config::JobConfig,
    ready: &Ready,
    work: &mut [RowWork],
    go: &[usize],
    built: &HashMap<usize, BuiltJob>,
    errors: &mut Vec<PassError>,
) {
    let jobs: Vec<JobRequest<'_>> = go
        .iter()
        .filter_map(|i| {
            let b = built.get(i)?;
            Some(JobRequest {
                sweep: &sweep.name,
                row_key: &work[*i].row.key,
                attempt: work[*i].decision.attempt.unwrap_or(1),
                queue: &job.queue,
                class: &job.class,
                args: &b.args,
                kwargs: &b.kwargs,
                job_id: b.job_id.as_deref(),
                activejob: job.activejob.as_ref(),
            })
        })
        .collect();
    let pushed = match conns.queue(cfg, &job.queue_ref).await {
        Ok(q) => q.push(&jobs, ready.now).await,
        Err(e) => Err(e),
    };
    drop(jobs);
    let results = match pushed {
        Ok(r) => r,
        Err(e) => {
            conns.drop_queue(&job.queue_ref);
            let fault = Fault::from(e);
            for i in go {
                work[*i].outcome = failed(Stage::Enqueue, &fault);
            }
            note(errors, Stage::Enqueue, &fault);
            return;
        }
    };
    let mut accepted: Vec<usize> = Vec::with_capacity(go.len());
    for (i, r) in go.iter().zip(results) {
        match r {
            Ok(()) => {
                work[*i].outcome = Outcome::Applied;
                audit(sweep, &work[*i], "queue");
                accepted.push(*i);
            }
            Err(message) => {
                let fault = Fault::Rejected {
                    queue: job.queue_ref.clone(),
                    message,
                };
                note(errors, Stage::Enqueue, &fault);
                work[*i].outcome = failed(Stage::Enqueue, &fault);
            }
        }
    }
    if accepted.is_empty() {
        return;
    }
    let entries: Vec<(&str, &str, u32)> = accepted
        .iter()
        .map(|i| {
            let w = &work[*i];
            (
                w.row.key.as_str(),
                w.row.version.as_str(),
                w.decision.attempt.unwrap_or(1),
            )
        })
        .collect();
    if let Err(e) = ready.db.ledger_put(&sweep.name, &entries, ready.now).await {
        note(errors, Stage::Ledger, &e.into());
    }
    let history: Vec<HistoryEntry> = accepted
        .iter()
        .map(|i| history_entry(sweep, ready, &work[*i], None, Some(&job.queue_ref)))
        .collect();
    if let Err(e) = ready.db.history_put(&history).await {
        note(errors, Stage::Ledger, &e.into());
    }
}

/// How often a database's history is pruned.
const HISTORY_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Delete history entries older than `history.retention`, at most every
/// `HISTORY_PRUNE_EVERY` per database, when the table exists.
async fn prune_history(
    cfg: &Config,
    conns: &mut Connections,
    ready: &Ready,
    errors: &mut Vec<PassError>,
) {
    let name = ready.db.name.clone();
    if conns
        .history_pruned
        .get(&name)
        .is_some_and(|t| t.elapsed() < HISTORY_PRUNE_EVERY)
    {
        return;
    }
    conns.history_pruned.insert(name, Instant::now());
    let result = match ready.db.history_exists().await {
        Ok(true) => ready
            .db
            .history_prune(ready.now - delta(cfg.history.retention))
            .await
            .map(|_| ()),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        note(errors, Stage::Ledger, &e.into());
    }
}

/// Forget ledger entries of rows long settled — but never within two of
/// the sweep's longest requeue intervals.
async fn prune_ledger(sweep: &SweepConfig, ready: &Ready, errors: &mut Vec<PassError>) {
    let longest = sweep.rules.pending.as_ref().map_or(Duration::ZERO, |p| {
        p.backoff.as_ref().map_or(p.after, |b| b.max.max(p.after))
    });
    let keep = delta(longest.saturating_mul(2)).max(TimeDelta::days(30));
    let horizon = ready.now - keep;
    if let Err(e) = ready.db.ledger_prune(&sweep.name, horizon).await {
        note(errors, Stage::Ledger, &e.into());
    }
}
