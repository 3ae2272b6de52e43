//! The plain data the decision core works on: stuck rows, their ledger
//! entries, evidence verdicts, and the closed enums for decisions and reasons.
//!
//! Owns: the vocabulary shared by every layer (`Action`, `Reason`, `Verdict`).
//! Does not own: how rows are fetched or how decisions are applied (adapters
//! and the shell do that).

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt;

/// All instants in the core are UTC; the shell passes `now` in.
pub type Timestamp = DateTime<Utc>;

/// The two states a row can be stuck in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowState {
    Pending,
    Sending,
}

impl RowState {
    pub const ALL: [RowState; 2] = [RowState::Pending, RowState::Sending];

    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::Sending => "sending",
        }
    }
}

impl fmt::Display for RowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row found past its state's threshold, as read from the app's table.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckRow {
    /// The key as text (how it is shown, logged and stored in the ledger).
    pub key: String,
    /// The key as an integer when the database stores it as one (adapters bind
    /// it natively); `None` for text/uuid keys.
    pub key_int: Option<i64>,
    pub state: RowState,
    /// The state-change timestamp, normalised to UTC.
    pub updated_at: Timestamp,
    /// The timestamp exactly as the database rendered it as text. Every write
    /// re-asserts it, so a row that moved on since it was read is never
    /// overwritten.
    pub version: String,
    /// Job arguments from the configured columns, JSON types preserved.
    pub args: Vec<serde_json::Value>,
    /// Evidence lookup values, one per `sending.evidence` entry, in order.
    pub lookups: Vec<Option<String>>,
}

impl StuckRow {
    /// The value of lookup column `index`; empty when it is NULL.
    pub fn lookup(&self, index: usize) -> &str {
        self.lookups
            .get(index)
            .and_then(|v| v.as_deref())
            .unwrap_or_default()
    }
}

/// Sweeper's own bookkeeping for a row it has requeued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Requeues done so far for this row version.
    pub attempts: u32,
    pub last_requeued_at: Timestamp,
    /// The row version (timestamp text) the requeues were made for. A row
    /// whose version differs has moved on and come back: its count restarts.
    pub version: String,
}

/// One applied decision, as kept in the audit history table: who changed
/// which row, when, from what to what, and on what evidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// When it was applied (the database clock of the pass).
    #[serde(serialize_with = "rfc3339")]
    pub at: Timestamp,
    pub sweep: String,
    pub key: String,
    /// `pending` or `sending`.
    pub from_state: String,
    /// `sent` or `error` for a settled row; absent for a requeue.
    pub to_state: Option<String>,
    /// The queue entry a requeue was pushed to; absent otherwise.
    pub queue: Option<String>,
    /// The requeue's attempt number.
    pub attempt: Option<u32>,
    /// The decision's reason (as in reports and metrics).
    pub reason: String,
    /// Each evidence source's verdict with its references (file:line,
    /// journal cursor, provider event…); empty when none was needed.
    pub evidence: String,
    /// The pass that applied it, and the sweeper process that ran the pass.
    pub pass_id: String,
    pub instance_id: String,
}

fn rfc3339<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// What an evidence source says about one lookup key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every recipient accepted by the next hop / provider.
    Delivered,
    /// Definitively failed.
    Failed { reason: FailReason },
    /// Known to the source and still in flight (deferred, accepted, queued).
    InFlight { reason: InFlightReason },
    /// The source has no trace of this key in the row's window.
    NotFound,
    /// The source could not be read or asked (I/O error, HTTP 500, timeout).
    Unavailable,
}

impl Verdict {
    pub fn is_definitive(&self) -> bool {
        matches!(self, Verdict::Delivered | Verdict::Failed { .. })
    }

    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Failed { .. } => "failed",
            Verdict::InFlight { .. } => "in_flight",
            Verdict::NotFound => "not_found",
            Verdict::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// Permanently rejected by the receiving server (5xx).
    Bounced,
    /// The MTA gave up retrying (queue lifetime exceeded).
    Expired,
    /// Some recipients got it, others failed permanently.
    PartialDelivery,
    /// The provider refused to send (dropped, blocked, suppressed).
    Rejected,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Bounced => "bounced",
            FailReason::Expired => "expired",
            FailReason::PartialDelivery => "partial_delivery",
            FailReason::Rejected => "rejected",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InFlightReason {
    /// The MTA or provider is retrying after a temporary failure.
    Deferred,
    /// Accepted / queued, no delivery attempt outcome yet.
    Queued,
    /// Not found, but the source may not show it yet (visibility lag):
    /// absence is not evidence.
    Lagging,
}

/// One source's verdict on one row, with what it was based on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceVerdict {
    pub source: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Human summary, e.g. "2 recipients: a@x sent, b@y bounced (550 5.1.1)".
    pub detail: String,
    /// Where the evidence came from: `file:line` references or event ids.
    pub references: Vec<String>,
}

/// Whether a pending row's job is still somewhere in the queue system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Not found in the queue, schedule, retry set or among running jobs.
    Absent,
    /// Waiting in the queue (or its schedule/retry set).
    Queued,
    /// A worker is processing it right now.
    Running,
    /// The presence check was configured but could not be made.
    Unknown,
    /// Not among the jobs looked at, but the queue holds more than the
    /// check looks at (`presence_check.max_entries`): it may be waiting
    /// further back. A truncated scan proves nothing about absence.
    Backlog,
}

/// The five things sweeper can decide to do with a stuck row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Requeue,
    MarkSent,
    MarkError,
    Leave,
    Hold,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Requeue,
        Action::MarkSent,
        Action::MarkError,
        Action::Leave,
        Action::Hold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Requeue => "requeue",
            Action::MarkSent => "mark_sent",
            Action::MarkError => "mark_error",
            Action::Leave => "leave",
            Action::Hold => "hold",
        }
    }

    /// Whether applying this action writes anything.
    pub fn writes(self) -> bool {
        match self {
            Action::Requeue | Action::MarkSent | Action::MarkError => true,
            Action::Leave | Action::Hold => false,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a decision was made. Closed: every value is a metric label, a JSON
/// value and an `explain` sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not past its threshold yet.
    Fresh,
    /// Pending past its threshold and never requeued (or the row moved on since).
    StalePending,
    /// Requeued recently; waiting `after` (with backoff) before trying again.
    RecentlyRequeued,
    /// Requeued `max_attempts` times and still pending.
    AttemptsExhausted,
    /// Evidence: delivered.
    Delivered,
    /// Evidence: permanently rejected.
    Bounced,
    /// Evidence: the MTA gave up.
    Expired,
    /// Evidence: some recipients delivered, others failed.
    PartialDelivery,
    /// Evidence: the provider refused to send.
    Rejected,
    /// No evidence yet; before `give_up_after`.
    AwaitingEvidence,
    /// The MTA/provider is still retrying; before `give_up_after`.
    Deferred,
    /// An evidence source failed to answer; nothing is decided without it.
    EvidenceUnavailable,
    /// No verdict by `give_up_after`: the `on_no_evidence` policy applied.
    NoEvidence,
    /// Two sources gave contradicting definitive verdicts.
    Conflict,
    /// The job is still waiting in the queue.
    StillQueued,
    /// A worker is running the job now.
    Running,
    /// More stale rows than `limits.hold_above`: a storm, not a straggler.
    Storm,
    /// The queue has no live workers (`require_workers`).
    NoWorkers,
    /// `limits.max_actions` already used this pass.
    MaxActions,
    /// The presence check could not be made (queue unreachable).
    PresenceUnavailable,
    /// The queue is longer than the presence check looks at, and the job
    /// was not among the entries looked at: it may still be waiting.
    QueueBacklog,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Fresh => "fresh",
            Reason::StalePending => "stale_pending",
            Reason::RecentlyRequeued => "recently_requeued",
            Reason::AttemptsExhausted => "attempts_exhausted",
            Reason::Delivered => "delivered",
            Reason::Bounced => "bounced",
            Reason::Expired => "expired",
            Reason::PartialDelivery => "partial_delivery",
            Reason::Rejected => "rejected",
            Reason::AwaitingEvidence => "awaiting_evidence",
            Reason::Deferred => "deferred",
            Reason::EvidenceUnavailable => "evidence_unavailable",
            Reason::NoEvidence => "no_evidence",
            Reason::Conflict => "conflict",
            Reason::StillQueued => "still_queued",
            Reason::Running => "running",
            Reason::Storm => "storm",
            Reason::NoWorkers => "no_workers",
            Reason::MaxActions => "max_actions",
            Reason::PresenceUnavailable => "presence_unavailable",
            Reason::QueueBacklog => "queue_backlog",
        }
    }

    /// One sentence for `explain` and the text report.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Fresh => "not past its threshold yet",
            Reason::StalePending => {
                "pending past its threshold and not requeued since it last changed: the job was probably lost"
            }
            Reason::RecentlyRequeued => {
                "requeued recently; waiting for the requeue interval before trying again"
            }
            Reason::AttemptsExhausted => {
                "requeued max_attempts times and still pending: giving up on the queue"
            }
            Reason::Delivered => "the evidence shows the message was delivered",
            Reason::Bounced => "the evidence shows a permanent failure (bounce)",
            Reason::Expired => "the mail server gave up retrying (expired)",
            Reason::PartialDelivery => {
                "some recipients got the message and others failed permanently"
            }
            Reason::Rejected => "the provider refused to send the message",
            Reason::AwaitingEvidence => {
                "no evidence yet; waiting until give_up_after before applying on_no_evidence"
            }
            Reason::Deferred => "the mail server or provider is still retrying",
            Reason::EvidenceUnavailable => {
                "an evidence source could not be read, so nothing is decided for this row"
            }
            Reason::NoEvidence => "no verdict by give_up_after: on_no_evidence applies",
            Reason::Conflict => "evidence sources disagree; a human should look",
            Reason::StillQueued => "its job is still waiting in the queue",
            Reason::Running => "a worker is running its job right now",
            Reason::Storm => {
                "more stale rows than limits.hold_above: holding instead of flooding the queue"
            }
            Reason::NoWorkers => "the queue has no live workers; requeueing would only grow the pile",
            Reason::MaxActions => "limits.max_actions already reached in this pass",
            Reason::PresenceUnavailable => {
                "could not check whether its job is still queued; not requeueing blind"
            }
            Reason::QueueBacklog => {
                "its queue holds more jobs than presence_check.max_entries and the job was not among those looked at: it may still be waiting, so it is not pushed again"
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision for one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub action: Action,
    pub reason: Reason,
    /// For `requeue`: which attempt this is (1 = first requeue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl Decision {
    pub const fn new(action: Action, reason: Reason) -> Self {
        Decision {
            action,
            reason,
            attempt: None,
        }
    }

    pub const fn requeue(reason: Reason, attempt: u32) -> Self {
        Decision {
            action: Action::Requeue,
            reason,
            attempt: Some(attempt),
        }
    }
}

/// What happened when a decision was applied. `AlreadyMoved` is a normal
/// outcome: the row changed between read and write, and was left alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    AlreadyMoved,
    Failed {
        stage: Stage,
        error: String,
    },
    /// Not applied: a dry run, or a non-writing decision.
    NotApplied,
}

/// Where in a pass something failed; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Lock,
    Fetch,
    Ledger,
    Evidence,
    Presence,
    Enqueue,
    Update,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Lock,
        Stage::Fetch,
        Stage::Ledger,
        Stage::Evidence,
        Stage::Presence,
        Stage::Enqueue,
        Stage::Update,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Lock => "lock",
            Stage::Fetch => "fetch",
            Stage::Ledger => "ledger",
            Stage::Evidence => "evidence",
            Stage::Presence => "presence",
            Stage::Enqueue => "enqueue",
            Stage::Update => "update",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
