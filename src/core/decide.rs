//! The decision function and the planner: pure functions from rows, their
//! ledger entries, evidence and `now` to decisions.
//!
//! Owns: every rule about what happens to a stuck row, including the brakes
//! (`hold_above`, `max_actions`, `require_workers`).
//! Does not own: reading rows, asking sources, or applying decisions.

use super::model::{
    Action, Decision, FailReason, InFlightReason, LedgerEntry, Presence, Reason, RowState,
    SourceVerdict, StuckRow, Timestamp, Verdict,
};
use chrono::TimeDelta;
use std::time::Duration;

/// What a sweep does with its stuck rows: the core's view of a sweep config.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub pending: Option<PendingRule>,
    pub sending: Option<SendingRule>,
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PendingRule {
    /// A pending row untouched this long has lost its job.
    pub after: Duration,
    /// Requeues before giving up and marking the row `error`.
    pub max_attempts: u32,
    pub backoff: Option<Backoff>,
}

/// Per-row requeue backoff: the wait before requeue number `n + 1` is
/// `after × factor^n`, capped at `max`.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    pub factor: f64,
    pub max: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SendingRule {
    /// A sending row this old is looked at.
    pub after: Duration,
    /// Without a verdict by this age, `on_no_evidence` applies.
    pub give_up_after: Duration,
    pub on_no_evidence: GiveUpPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUpPolicy {
    /// Leave the row for a human (it stays visible in metrics).
    Leave,
    /// Mark it `error`.
    Error,
    /// Put it back to `pending` and requeue its job.
    Requeue,
}

impl GiveUpPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpPolicy::Leave => "leave",
            GiveUpPolicy::Error => "error",
            GiveUpPolicy::Requeue => "requeue",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Rows per query and per write batch.
    pub batch_size: u32,
    /// Writing actions per pass; the rest are held until the next pass.
    pub max_actions: u32,
    /// Storm brake: with more stale rows than this, hold unbacked actions.
    pub hold_above: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_size: 500,
            max_actions: 1000,
            hold_above: None,
        }
    }
}

/// Everything known about one row besides the row itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct RowContext<'a> {
    pub ledger: Option<&'a LedgerEntry>,
    /// One verdict per configured evidence source, in configured order.
    pub evidence: &'a [SourceVerdict],
    /// `None` when no presence check ran.
    pub presence: Option<Presence>,
}

/// Sweep-wide facts the brakes need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Brakes {
    /// Stale rows (pending + sending past their thresholds) in the table now.
    pub stale_rows: u64,
    /// `Some(false)` when the queue requires live workers and has none.
    pub workers_alive: Option<bool>,
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// How long to wait after the latest requeue before requeue number
/// `attempts + 1`.
pub fn requeue_interval(rule: &PendingRule, attempts: u32) -> Duration {
    match &rule.backoff {
        None => rule.after,
        Some(b) => {
            let exp = i32::try_from(attempts).unwrap_or(i32::MAX);
            let secs = rule.after.as_secs_f64() * b.factor.powi(exp);
            if !secs.is_finite() || secs >= b.max.as_secs_f64() {
                b.max
            } else {
                Duration::from_secs_f64(secs)
            }
        }
    }
}

/// Decide what to do with one stuck row. Total: every input has an answer.
pub fn decide(rules: &Rules, row: &StuckRow, ctx: &RowContext<'_>, now: Timestamp) -> Decision {
    let age = now - row.updated_at;
    match row.state {
        RowState::Pending => match &rules.pending {
            Some(rule) => decide_pending(rule, row, ctx, age, now),
            None => Decision::new(Action::Leave, Reason::Fresh),
        },
        RowState::Sending => match &rules.sending {
            Some(rule) => decide_sending(rules, rule, row, ctx, age, now),
            None => Decision::new(Action::Leave, Reason::Fresh),
        },
    }
}

/// Requeues already made for this version of the row.
fn live_ledger<'a>(row: &StuckRow, ctx: &RowContext<'a>) -> Option<&'a LedgerEntry> {
    ctx.ledger.filter(|l| l.version == row.version)
}

fn decide_pending(
    rule: &PendingRule,
    row: &StuckRow,
    ctx: &RowContext<'_>,
    age: TimeDelta,
    now: Timestamp,
) -> Decision {
    if age < delta(rule.after) {
        return Decision::new(Action::Leave, Reason::Fresh);
    }
    requeue_or_give_up(rule, row, ctx, now, Reason::StalePending)
}

/// The shared tail of "this row's job should run again": respect the requeue
/// interval, the presence check and `max_attempts`.
fn requeue_or_give_up(
    rule: &PendingRule,
    row: &StuckRow,
    ctx: &RowContext<'_>,
    now: Timestamp,
    reason: Reason,
) -> Decision {
    let ledger = live_ledger(row, ctx);
    let attempts = ledger.map_or(0, |l| l.attempts);
    if let Some(l) = ledger {
        if now - l.last_requeued_at < delta(requeue_interval(rule, attempts)) {
            return Decision::new(Action::Leave, Reason::RecentlyRequeued);
        }
    }
    match ctx.presence {
        Some(Presence::Queued) => return Decision::new(Action::Hold, Reason::StillQueued),
        Some(Presence::Running) => return Decision::new(Action::Hold, Reason::Running),
        Some(Presence::Unknown) => return Decision::new(Action::Hold, Reason::PresenceUnavailable),
        Some(Presence::Backlog) => return Decision::new(Action::Hold, Reason::QueueBacklog),
        Some(Presence::Absent) | None => {}
    }
    if attempts >= rule.max_attempts {
        return Decision::new(Action::MarkError, Reason::AttemptsExhausted);
    }
    Decision::requeue(reason, attempts + 1)
}

fn decide_sending(
    rules: &Rules,
    rule: &SendingRule,
    row: &StuckRow,
    ctx: &RowContext<'_>,
    age: TimeDelta,
    now: Timestamp,
) -> Decision {
    if age < delta(rule.after) {
        return Decision::new(Action::Leave, Reason::Fresh);
    }
    match combine(ctx.evidence) {
        Combined::Delivered => Decision::new(Action::MarkSent, Reason::Delivered),
        Combined::Failed(r) => Decision::new(Action::MarkError, fail_reason(r)),
        Combined::Conflict => Decision::new(Action::Hold, Reason::Conflict),
        Combined::Unavailable => Decision::new(Action::Leave, Reason::EvidenceUnavailable),
        Combined::Open { deferred, lagging } => {
            if age < delta(rule.give_up_after) || lagging {
                let reason = if deferred {
                    Reason::Deferred
                } else {
                    Reason::AwaitingEvidence
                };
                return Decision::new(Action::Leave, reason);
            }
            match rule.on_no_evidence {
                super::decide::GiveUpPolicy::Leave => {
                    Decision::new(Action::Leave, Reason::NoEvidence)
                }
                GiveUpPolicy::Error => Decision::new(Action::MarkError, Reason::NoEvidence),
                GiveUpPolicy::Requeue => match &rules.pending {
                    Some(p) => requeue_or_give_up(p, row, ctx, now, Reason::NoEvidence),
                    // Validation requires a pending rule for this policy;
                    // without one there is no job to requeue.
                    None => Decision::new(Action::Leave, Reason::NoEvidence),
                },
            }
        }
    }
}

fn fail_reason(r: FailReason) -> Reason {
    match r {
        FailReason::Bounced => Reason::Bounced,
        FailReason::Expired => Reason::Expired,
        FailReason::PartialDelivery => Reason::PartialDelivery,
        FailReason::Rejected => Reason::Rejected,
    }
}

/// What several sources say together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combined {
    Delivered,
    Failed(FailReason),
    /// Definitive verdicts that contradict each other.
    Conflict,
    /// No definitive verdict and at least one source failed to answer.
    Unavailable,
    /// No definitive verdict; `deferred` when some source knows it is
    /// retrying, `lagging` when a source may not show it yet.
    Open {
        deferred: bool,
        lagging: bool,
    },
}

/// First definitive verdict wins; a delivered and a failed verdict together
/// are a conflict.
pub fn combine(evidence: &[SourceVerdict]) -> Combined {
    let mut first: Option<Combined> = None;
    let (mut delivered, mut failed) = (false, false);
    let (mut unavailable, mut deferred, mut lagging) = (false, false, false);
    for sv in evidence {
        match &sv.verdict {
            Verdict::Delivered => {
                delivered = true;
                first.get_or_insert(Combined::Delivered);
            }
            Verdict::Failed { reason } => {
                failed = true;
                first.get_or_insert(Combined::Failed(*reason));
            }
            Verdict::InFlight {
                reason: InFlightReason::Deferred,
            } => deferred = true,
            Verdict::InFlight {
                reason: InFlightReason::Lagging,
            } => lagging = true,
            Verdict::InFlight {
                reason: InFlightReason::Queued,
            }
            | Verdict::NotFound => {}
            Verdict::Unavailable => unavailable = true,
        }
    }
    if delivered && failed {
        return Combined::Conflict;
    }
    match first {
        Some(c) => c,
        None if unavailable => Combined::Unavailable,
        None => Combined::Open { deferred, lagging },
    }
}

/// When a row's evidence at a source with `retention` will be gone before
/// `give_up_after` applies: the instant it expires, while that is still
/// ahead (the row can still be settled). `None` when there is no such risk.
pub fn evidence_expiry(
    updated_at: Timestamp,
    retention: Duration,
    give_up_after: Duration,
    now: Timestamp,
) -> Option<Timestamp> {
    if retention >= give_up_after {
        return None;
    }
    let expires = updated_at + delta(retention);
    (expires > now).then_some(expires)
}

/// Writes not backed by evidence: the ones the storm and no-workers brakes
/// hold. Settling a row from a delivery or bounce record is always safe.
fn unbacked(d: &Decision) -> bool {
    match d.action {
        Action::Requeue => true,
        Action::MarkError => matches!(d.reason, Reason::AttemptsExhausted | Reason::NoEvidence),
        Action::MarkSent | Action::Leave | Action::Hold => false,
    }
}

/// The planner of one sweep's pass, fed page by page: it carries the brakes
/// and the `max_actions` budget from one page to the next, so a pass that
/// streams its rows decides exactly as one that saw them all at once.
#[derive(Clone, Debug)]
pub struct Planner<'r> {
    rules: &'r Rules,
    storm: bool,
    no_workers: bool,
    writes: u32,
}

impl<'r> Planner<'r> {
    /// The storm brake is decided here, from counts, before any row is read.
    pub fn new(rules: &'r Rules, brakes: Brakes) -> Self {
        Planner {
            rules,
            storm: rules
                .limits
                .hold_above
                .is_some_and(|limit| brakes.stale_rows > limit),
            no_workers: brakes.workers_alive == Some(false),
            writes: 0,
        }
    }

    /// Decide one row, applying the brakes: `hold_above` and
    /// `require_workers` hold unbacked writes; `max_actions` caps the writes
    /// of the pass (the rest are held until the next one).
    pub fn decide(&mut self, row: &StuckRow, ctx: &RowContext<'_>, now: Timestamp) -> Decision {
        let mut d = decide(self.rules, row, ctx, now);
        if unbacked(&d) {
            if self.storm {
                d = Decision::new(Action::Hold, Reason::Storm);
            } else if self.no_workers {
                d = Decision::new(Action::Hold, Reason::NoWorkers);
            }
        }
        if d.action.writes() {
            if self.spent() {
                d = Decision::new(Action::Hold, Reason::MaxActions);
            } else {
                self.writes += 1;
            }
        }
        d
    }

    /// Whether the pass has used its whole `max_actions` budget: every
    /// further write is held, so evidence that costs requests (provider
    /// APIs) need not be asked for.
    pub fn spent(&self) -> bool {
        self.writes >= self.rules.limits.max_actions
    }

    /// The decision for a stale sending row whose evidence was not asked
    /// for because the budget is spent: held until the next pass.
    pub fn unasked(&self) -> Decision {
        Decision::new(Action::Hold, Reason::MaxActions)
    }
}

/// Decide every row of one sweep for one pass, applying the brakes (see
/// `Planner`, which this feeds one row at a time).
pub fn plan<'a>(
    rules: &Rules,
    rows: impl IntoIterator<Item = (&'a StuckRow, RowContext<'a>)>,
    brakes: Brakes,
    now: Timestamp,
) -> Vec<Decision> {
    let mut planner = Planner::new(rules, brakes);
    rows.into_iter()
        .map(|(row, ctx)| planner.decide(row, &ctx, now))
        .collect()
}

/// Whether a decision is at rest: it writes nothing, holds nothing that can
/// lift without new input (a queue draining, workers returning, a storm
/// passing, the next pass's budget), and rests on every source answering.
/// A sweep whose every row is at rest can only change when its stale rows,
/// its evidence or time do (see `decision_changes_at`).
pub fn at_rest(d: &Decision) -> bool {
    match d.action {
        Action::Leave => d.reason != Reason::EvidenceUnavailable,
        Action::Hold => d.reason == Reason::Conflict,
        Action::Requeue | Action::MarkSent | Action::MarkError => false,
    }
}

/// The instant from which `decide` may answer otherwise for this row with
/// the same row, ledger entry and evidence — time passing alone: a requeue
/// interval ending, a give-up time arriving, a fresh row turning stale.
/// `None` when only new input can change the decision. Decisions not at
/// rest, and rows a source reports as lagging (the lag is the source's),
/// may change at any time: their answer is the row's own time, already past.
pub fn decision_changes_at(
    rules: &Rules,
    row: &StuckRow,
    ctx: &RowContext<'_>,
    d: &Decision,
) -> Option<Timestamp> {
    let lagging = ctx.evidence.iter().any(|sv| {
        sv.verdict
            == Verdict::InFlight {
                reason: InFlightReason::Lagging,
            }
    });
    if !at_rest(d) || lagging {
        return Some(row.updated_at);
    }
    match (row.state, d.reason) {
        (RowState::Pending, Reason::Fresh) => rules
            .pending
            .as_ref()
            .map(|p| row.updated_at + delta(p.after)),
        (RowState::Sending, Reason::Fresh) => rules
            .sending
            .as_ref()
            .map(|s| row.updated_at + delta(s.after)),
        (RowState::Pending, Reason::RecentlyRequeued) => {
            let rule = rules.pending.as_ref()?;
            let l = live_ledger(row, ctx)?;
            Some(l.last_requeued_at + delta(requeue_interval(rule, l.attempts)))
        }
        (RowState::Sending, Reason::Deferred | Reason::AwaitingEvidence) => rules
            .sending
            .as_ref()
            .map(|s| row.updated_at + delta(s.give_up_after)),
        _ => None,
    }
}

/// The order a pass walks a sweep's stuck rows in, which is the order the
/// `max_actions` budget is spent in: sending rows first, so marks backed by
/// a delivery or bounce record (and give-ups that are due) are never starved
/// by a pile of pending requeues; requeues of rows the app has not touched
/// can wait a pass without harm, and their jobs may still arrive meanwhile.
pub const BUDGET_ORDER: [RowState; 2] = [RowState::Sending, RowState::Pending];

/// A source's answer for a row, with its visibility lag applied: a source
/// that may not show events younger than `lag` proves nothing by not
/// finding a row that young, so "not found" becomes in flight (`lagging`).
pub fn with_lag(verdict: Verdict, row_age: TimeDelta, lag: Duration) -> Verdict {
    if verdict == Verdict::NotFound && row_age < delta(lag) {
        Verdict::InFlight {
            reason: InFlightReason::Lagging,
        }
    } else {
        verdict
    }
}

/// When a row's evidence expires at the first source to drop it, for rows
/// that still await a verdict (sending, not settled by this decision) and
/// that no give-up policy will settle first. `retentions` lists the
/// retention of every source the row is looked up in, where known.
pub fn row_evidence_expiry(
    row: &StuckRow,
    decision: &Decision,
    give_up_after: Option<Duration>,
    retentions: impl IntoIterator<Item = Duration>,
    now: Timestamp,
) -> Option<Timestamp> {
    let give_up = give_up_after?;
    if row.state != RowState::Sending || decision.action.writes() {
        return None;
    }
    retentions
        .into_iter()
        .filter_map(|ret| evidence_expiry(row.updated_at, ret, give_up, now))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }
    const MIN: i64 = 60;
    const HOUR: i64 = 3600;

    fn rules() -> Rules {
        Rules {
            pending: Some(PendingRule {
                after: Duration::from_secs(10 * 60),
                max_attempts: 3,
                backoff: None,
            }),
            sending: Some(SendingRule {
                after: Duration::from_secs(15 * 60),
                give_up_after: Duration::from_secs(24 * 3600),
                on_no_evidence: GiveUpPolicy::Leave,
            }),
            limits: Limits::default(),
        }
    }

    fn row(state: RowState, updated: i64) -> StuckRow {
        StuckRow {
            key: "42".into(),
            key_int: Some(42),
            state,
            updated_at: t(updated),
            version: format!("v{updated}"),
            args: vec![],
            lookups: vec![Some("<m@x>".into())],
        }
    }

    fn sv(verdict: Verdict) -> SourceVerdict {
        SourceVerdict {
            source: "postfix".into(),
            verdict,
            detail: String::new(),
            references: vec![],
        }
    }

    fn failed(reason: FailReason) -> Verdict {
        Verdict::Failed { reason }
    }
    fn deferred() -> Verdict {
        Verdict::InFlight {
            reason: InFlightReason::Deferred,
        }
    }

    struct Case {
        name: &'static str,
        state: RowState,
        age: i64,
        ledger: Option<(u32, i64, bool)>, // attempts, requeued secs ago, same version
        evidence: Vec<Verdict>,
        presence: Option<Presence>,
        policy: GiveUpPolicy,
        want: (Action, Reason, Option<u32>),
    }

    fn case(name: &'static str, state: RowState, age: i64) -> Case {
        Case {
            name,
            state,
            age,
            ledger: None,
            evidence: vec![],
            presence: None,
            policy: GiveUpPolicy::Leave,
            want: (Action::Leave, Reason::Fresh, None),
        }
    }

    impl Case {
        fn ledger(mut self, attempts: u32, ago: i64, same_version: bool) -> Self {
            self.ledger = Some((attempts, ago, same_version));
            self
        }
        fn evidence(mut self, v: Vec<Verdict>) -> Self {
            self.evidence = v;
            self
        }
        fn presence(mut self, p: Presence) -> Self {
            self.presence = Some(p);
            self
        }
        fn policy(mut self, p: GiveUpPolicy) -> Self {
            self.policy = p;
            self
        }
        fn want(mut self, a: Action, r: Reason) -> Self {
            self.want = (a, r, None);
            self
        }
        fn want_requeue(mut self, r: Reason, attempt: u32) -> Self {
            self.want = (Action::Requeue, r, Some(attempt));
            self
        }
    }

    #[test]
    fn decide_covers_every_branch() {
        use Action::*;
        use RowState::*;
        let now = t(0);
        let cases = vec![
            case("fresh pending is left", Pending, -5 * MIN).want(Leave, Reason::Fresh),
            case(
                "stale pending never requeued is requeued",
                Pending,
                -11 * MIN,
            )
            .want_requeue(Reason::StalePending, 1),
            case(
                "pending exactly at threshold is requeued",
                Pending,
                -10 * MIN,
            )
            .want_requeue(Reason::StalePending, 1),
            case("recently requeued pending waits", Pending, -2 * HOUR)
                .ledger(1, 3 * MIN, true)
                .want(Leave, Reason::RecentlyRequeued),
            case("requeued long ago is requeued again", Pending, -2 * HOUR)
                .ledger(1, 11 * MIN, true)
                .want_requeue(Reason::StalePending, 2),
            case("attempts exhausted marks error", Pending, -2 * HOUR)
                .ledger(3, 11 * MIN, true)
                .want(MarkError, Reason::AttemptsExhausted),
            case(
                "exhausted but requeued recently still waits",
                Pending,
                -2 * HOUR,
            )
            .ledger(3, MIN, true)
            .want(Leave, Reason::RecentlyRequeued),
            case(
                "ledger for an older row version is ignored",
                Pending,
                -2 * HOUR,
            )
            .ledger(3, MIN, false)
            .want_requeue(Reason::StalePending, 1),
            case("job still queued is held", Pending, -2 * HOUR)
                .presence(Presence::Queued)
                .want(Hold, Reason::StillQueued),
            case("job running is held", Pending, -2 * HOUR)
                .ledger(3, 20 * MIN, true)
                .presence(Presence::Running)
                .want(Hold, Reason::Running),
            case("unknown presence holds", Pending, -2 * HOUR)
                .presence(Presence::Unknown)
                .want(Hold, Reason::PresenceUnavailable),
            case(
                "a job not seen in a truncated scan is held",
                Pending,
                -2 * HOUR,
            )
            .presence(Presence::Backlog)
            .want(Hold, Reason::QueueBacklog),
            case(
                "a truncated scan holds even the last attempt",
                Pending,
                -2 * HOUR,
            )
            .ledger(3, 20 * MIN, true)
            .presence(Presence::Backlog)
            .want(Hold, Reason::QueueBacklog),
            case("absent job is requeued", Pending, -2 * HOUR)
                .presence(Presence::Absent)
                .want_requeue(Reason::StalePending, 1),
            case("fresh sending is left", Sending, -14 * MIN).want(Leave, Reason::Fresh),
            case("stale sending delivered marks sent", Sending, -20 * MIN)
                .evidence(vec![Verdict::Delivered])
                .want(MarkSent, Reason::Delivered),
            case("stale sending bounced marks error", Sending, -20 * MIN)
                .evidence(vec![failed(FailReason::Bounced)])
                .want(MarkError, Reason::Bounced),
            case("expired marks error", Sending, -20 * MIN)
                .evidence(vec![failed(FailReason::Expired)])
                .want(MarkError, Reason::Expired),
            case("partial delivery marks error", Sending, -20 * MIN)
                .evidence(vec![failed(FailReason::PartialDelivery)])
                .want(MarkError, Reason::PartialDelivery),
            case("provider rejection marks error", Sending, -20 * MIN)
                .evidence(vec![failed(FailReason::Rejected)])
                .want(MarkError, Reason::Rejected),
            case("no verdict before give-up waits", Sending, -2 * HOUR)
                .evidence(vec![Verdict::NotFound])
                .want(Leave, Reason::AwaitingEvidence),
            case(
                "deferred before give-up waits as deferred",
                Sending,
                -2 * HOUR,
            )
            .evidence(vec![deferred()])
            .want(Leave, Reason::Deferred),
            case("queued at provider waits", Sending, -2 * HOUR)
                .evidence(vec![Verdict::InFlight {
                    reason: InFlightReason::Queued,
                }])
                .want(Leave, Reason::AwaitingEvidence),
            case("give-up policy leave", Sending, -25 * HOUR)
                .evidence(vec![Verdict::NotFound])
                .want(Leave, Reason::NoEvidence),
            case("give-up policy error", Sending, -25 * HOUR)
                .evidence(vec![Verdict::NotFound])
                .policy(GiveUpPolicy::Error)
                .want(MarkError, Reason::NoEvidence),
            case("give-up policy requeue", Sending, -25 * HOUR)
                .evidence(vec![deferred()])
                .policy(GiveUpPolicy::Requeue)
                .want_requeue(Reason::NoEvidence, 1),
            case("give-up requeue respects the ledger", Sending, -25 * HOUR)
                .ledger(3, 11 * MIN, true)
                .policy(GiveUpPolicy::Requeue)
                .want(MarkError, Reason::AttemptsExhausted),
            case(
                "unavailable source decides nothing even past give-up",
                Sending,
                -25 * HOUR,
            )
            .evidence(vec![Verdict::NotFound, Verdict::Unavailable])
            .policy(GiveUpPolicy::Error)
            .want(Leave, Reason::EvidenceUnavailable),
            case(
                "a definitive verdict beats an unavailable source",
                Sending,
                -20 * MIN,
            )
            .evidence(vec![Verdict::Unavailable, Verdict::Delivered])
            .want(MarkSent, Reason::Delivered),
            case("first definitive verdict wins", Sending, -20 * MIN)
                .evidence(vec![
                    failed(FailReason::Expired),
                    failed(FailReason::Bounced),
                ])
                .want(MarkError, Reason::Expired),
            case("delivered and failed conflict", Sending, -20 * MIN)
                .evidence(vec![Verdict::Delivered, failed(FailReason::Bounced)])
                .want(Hold, Reason::Conflict),
        ];
        for c in cases {
            let mut rules = rules();
            rules.sending.as_mut().unwrap().on_no_evidence = c.policy;
            let r = row(c.state, c.age);
            let ledger = c.ledger.map(|(attempts, ago, same)| LedgerEntry {
                attempts,
                last_requeued_at: t(-ago),
                version: if same {
                    r.version.clone()
                } else {
                    "older".into()
                },
            });
            let evidence: Vec<SourceVerdict> = c.evidence.into_iter().map(sv).collect();
            let ctx = RowContext {
                ledger: ledger.as_ref(),
                evidence: &evidence,
                presence: c.presence,
            };
            let d = decide(&rules, &r, &ctx, now);
            assert_eq!((d.action, d.reason, d.attempt), c.want, "case: {}", c.name);
        }
    }

    #[test]
    fn evidence_expiry_escalates_only_rows_that_can_still_be_settled() {
        let day = Duration::from_secs(86_400);
        let table = [
            // (retention, give_up_after, row age, expiry?)
            (3 * day, day, 2 * HOUR, None), // kept longer than we wait
            (day, 3 * day, 2 * HOUR, Some(24 * HOUR)), // gone before give-up: escalate
            (day, 3 * day, 30 * HOUR, None), // already gone
        ];
        for (retention, give_up, age, want) in table {
            let got = evidence_expiry(t(-age), retention, give_up, t(0));
            assert_eq!(
                got,
                want.map(|h| t(-age + h)),
                "{retention:?} {give_up:?} {age}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let rule = PendingRule {
            after: Duration::from_secs(600),
            max_attempts: 10,
            backoff: Some(Backoff {
                factor: 2.0,
                max: Duration::from_secs(3600),
            }),
        };
        let table = [
            (0, 600),
            (1, 1200),
            (2, 2400),
            (3, 3600),
            (9, 3600),
            (400, 3600),
        ];
        for (attempts, want) in table {
            assert_eq!(
                requeue_interval(&rule, attempts),
                Duration::from_secs(want),
                "attempts {attempts}"
            );
        }
        let plain = PendingRule {
            backoff: None,
            ..rule
        };
        assert_eq!(requeue_interval(&plain, 7), Duration::from_secs(600));
    }

    #[test]
    fn backoff_delays_the_second_requeue() {
        let mut rules = rules();
        rules.pending.as_mut().unwrap().backoff = Some(Backoff {
            factor: 3.0,
            max: Duration::from_secs(10 * 3600),
        });
        let r = row(RowState::Pending, -5 * HOUR);
        let ledger = LedgerEntry {
            attempts: 1,
            last_requeued_at: t(-20 * MIN),
            version: r.version.clone(),
        };
        let ctx = RowContext {
            ledger: Some(&ledger),
            ..Default::default()
        };
        // 20 min since the first requeue < 10 min × 3.
        let d = decide(&rules, &r, &ctx, t(0));
        assert_eq!(d.reason, Reason::RecentlyRequeued);
        let d = decide(&rules, &r, &ctx, t(11 * MIN));
        assert_eq!((d.action, d.attempt), (Action::Requeue, Some(2)));
    }

    fn stale_rows(n: usize) -> Vec<StuckRow> {
        (0..n)
            .map(|i| {
                let mut r = row(RowState::Pending, -HOUR);
                r.key = i.to_string();
                r
            })
            .collect()
    }

    fn plan_all(
        rules: &Rules,
        rows: &[StuckRow],
        ev: &[SourceVerdict],
        brakes: Brakes,
    ) -> Vec<Decision> {
        plan(
            rules,
            rows.iter().map(|r| {
                (
                    r,
                    RowContext {
                        evidence: ev,
                        ..Default::default()
                    },
                )
            }),
            brakes,
            t(0),
        )
    }

    #[test]
    fn storm_brake_holds_requeues_above_threshold() {
        let mut rules = rules();
        rules.limits.hold_above = Some(10);
        let rows = stale_rows(50);
        let ds = plan_all(
            &rules,
            &rows,
            &[],
            Brakes {
                stale_rows: 50,
                workers_alive: None,
            },
        );
        assert_eq!(ds.len(), 50);
        assert!(ds
            .iter()
            .all(|d| d.action == Action::Hold && d.reason == Reason::Storm));
        let ds = plan_all(
            &rules,
            &rows[..10],
            &[],
            Brakes {
                stale_rows: 10,
                workers_alive: None,
            },
        );
        assert!(ds.iter().all(|d| d.action == Action::Requeue));
    }

    #[test]
    fn storm_brake_lets_evidence_backed_marks_through() {
        let mut rules = rules();
        rules.limits.hold_above = Some(1);
        rules.sending.as_mut().unwrap().on_no_evidence = GiveUpPolicy::Error;
        let brakes = Brakes {
            stale_rows: 100,
            workers_alive: Some(false),
        };
        // (evidence, row age, what passes the storm and no-workers brakes)
        let table = [
            (
                Verdict::Delivered,
                -HOUR,
                Action::MarkSent,
                Reason::Delivered,
            ),
            (
                failed(FailReason::Bounced),
                -HOUR,
                Action::MarkError,
                Reason::Bounced,
            ),
            (
                failed(FailReason::Expired),
                -HOUR,
                Action::MarkError,
                Reason::Expired,
            ),
            // Not backed by a record: a give-up is held.
            (Verdict::NotFound, -30 * HOUR, Action::Hold, Reason::Storm),
        ];
        for (verdict, age, action, reason) in table {
            let rows = vec![row(RowState::Sending, age)];
            let ev = [sv(verdict.clone())];
            let ds = plan_all(&rules, &rows, &ev, brakes);
            assert_eq!(
                (ds[0].action, ds[0].reason),
                (action, reason),
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn max_actions_caps_marks_too() {
        let mut rules = rules();
        rules.limits.max_actions = 2;
        let rows: Vec<StuckRow> = (0..5)
            .map(|i| {
                let mut r = row(RowState::Sending, -HOUR);
                r.key = i.to_string();
                r
            })
            .collect();
        let ev = [sv(Verdict::Delivered)];
        let ds = plan_all(&rules, &rows, &ev, Brakes::default());
        let marks = ds.iter().filter(|d| d.action == Action::MarkSent).count();
        let held = ds.iter().filter(|d| d.reason == Reason::MaxActions).count();
        assert_eq!((marks, held), (2, 3));
    }

    #[test]
    fn no_workers_holds_requeues() {
        let rows = stale_rows(3);
        let ds = plan_all(
            &rules(),
            &rows,
            &[],
            Brakes {
                stale_rows: 3,
                workers_alive: Some(false),
            },
        );
        assert!(ds
            .iter()
            .all(|d| d.reason == Reason::NoWorkers && d.action == Action::Hold));
    }

    #[test]
    fn max_actions_caps_writes_per_pass() {
        let mut rules = rules();
        rules.limits.max_actions = 4;
        let rows = stale_rows(10);
        let ds = plan_all(&rules, &rows, &[], Brakes::default());
        let requeued = ds.iter().filter(|d| d.action == Action::Requeue).count();
        let held = ds
            .iter()
            .filter(|d| d.action == Action::Hold && d.reason == Reason::MaxActions)
            .count();
        assert_eq!((requeued, held), (4, 6));
        // Attempt numbers are per row, not per pass.
        assert!(ds[..4].iter().all(|d| d.attempt == Some(1)));
    }

    #[test]
    fn leaves_do_not_use_the_action_budget() {
        let mut rules = rules();
        rules.limits.max_actions = 1;
        let mut rows = vec![row(RowState::Pending, -MIN); 3];
        rows.push(row(RowState::Pending, -HOUR));
        let ds = plan_all(&rules, &rows, &[], Brakes::default());
        assert_eq!(ds[3].action, Action::Requeue);
    }

    #[test]
    fn a_planner_fed_in_pages_decides_like_one_plan_over_all_rows() {
        let mut rules = rules();
        rules.limits.max_actions = 7;
        let mut rows = stale_rows(20);
        rows[3].updated_at = t(-MIN); // fresh: leave, no budget used
        let ev: [SourceVerdict; 0] = [];
        let whole = plan_all(&rules, &rows, &ev, Brakes::default());
        for page in [1, 3, 7, 20] {
            let mut planner = Planner::new(&rules, Brakes::default());
            let mut streamed = Vec::new();
            for chunk in rows.chunks(page) {
                for r in chunk {
                    streamed.push(planner.decide(r, &RowContext::default(), t(0)));
                }
            }
            assert_eq!(streamed, whole, "pages of {page}");
        }
        assert_eq!(
            whole.iter().filter(|d| d.action == Action::Requeue).count(),
            7
        );
    }

    #[test]
    fn a_spent_budget_holds_the_rest_and_says_so() {
        let mut rules = rules();
        rules.limits.max_actions = 1;
        let mut planner = Planner::new(&rules, Brakes::default());
        let r = row(RowState::Pending, -HOUR);
        assert!(!planner.spent());
        assert_eq!(
            planner.decide(&r, &RowContext::default(), t(0)).action,
            Action::Requeue
        );
        assert!(planner.spent());
        assert_eq!(
            planner.unasked(),
            Decision::new(Action::Hold, Reason::MaxActions)
        );
    }

    #[test]
    fn the_budget_is_spent_on_sending_rows_before_pending_ones() {
        assert_eq!(BUDGET_ORDER, [RowState::Sending, RowState::Pending]);
        assert_eq!(BUDGET_ORDER.len(), RowState::ALL.len());
    }

    #[test]
    fn not_found_within_the_visibility_lag_is_lagging() {
        let lagging = Verdict::InFlight {
            reason: InFlightReason::Lagging,
        };
        let table = [
            // (verdict, row age, lag, expected)
            (Verdict::NotFound, 5 * MIN, 10 * MIN, lagging.clone()),
            (Verdict::NotFound, 10 * MIN, 10 * MIN, Verdict::NotFound),
            (Verdict::NotFound, HOUR, 0, Verdict::NotFound),
            (Verdict::Delivered, MIN, 10 * MIN, Verdict::Delivered),
            (deferred(), MIN, 10 * MIN, deferred()),
            (Verdict::Unavailable, MIN, 10 * MIN, Verdict::Unavailable),
        ];
        for (v, age, lag, want) in table {
            let got = with_lag(
                v.clone(),
                TimeDelta::seconds(age),
                Duration::from_secs(lag as u64),
            );
            assert_eq!(got, want, "{v:?} at age {age}s with lag {lag}s");
        }
    }

    #[test]
    fn evidence_expiry_is_the_first_source_to_drop_an_unsettled_sending_row() {
        let day = Duration::from_secs(86_400);
        let sending = row(RowState::Sending, -HOUR);
        let leave = Decision::new(Action::Leave, Reason::AwaitingEvidence);
        let mark = Decision::new(Action::MarkSent, Reason::Delivered);
        let give_up = Some(Duration::from_secs(30 * 86_400));
        // Two sources keep 3 and 5 days: the first to drop it wins.
        assert_eq!(
            row_evidence_expiry(&sending, &leave, give_up, [5 * day, 3 * day], t(0)),
            Some(t(-HOUR) + TimeDelta::days(3))
        );
        // Settled now, no give-up rule, a pending row, or no retention: none.
        assert_eq!(
            row_evidence_expiry(&sending, &mark, give_up, [day], t(0)),
            None
        );
        assert_eq!(
            row_evidence_expiry(&sending, &leave, None, [day], t(0)),
            None
        );
        let pending = row(RowState::Pending, -HOUR);
        assert_eq!(
            row_evidence_expiry(&pending, &leave, give_up, [day], t(0)),
            None
        );
        assert_eq!(
            row_evidence_expiry(&sending, &leave, give_up, [], t(0)),
            None
        );
    }

    #[test]
    fn decisions_at_rest_say_when_time_alone_changes_them() {
        let rules = rules();
        let ledger = LedgerEntry {
            attempts: 2,
            last_requeued_at: t(-5 * MIN),
            version: format!("v{}", -HOUR),
        };
        let leave = |r| Decision::new(Action::Leave, r);
        let pending = row(RowState::Pending, -HOUR);
        let sending = row(RowState::Sending, -HOUR);
        let with_ledger = RowContext {
            ledger: Some(&ledger),
            ..Default::default()
        };
        let lag = [sv(Verdict::InFlight {
            reason: InFlightReason::Lagging,
        })];
        let lagging = RowContext {
            evidence: &lag,
            ..Default::default()
        };
        let none = RowContext::default();
        let table: Vec<(
            &str,
            &StuckRow,
            &RowContext<'_>,
            Decision,
            Option<Timestamp>,
        )> = vec![
            (
                "recently requeued: when the interval ends",
                &pending,
                &with_ledger,
                leave(Reason::RecentlyRequeued),
                Some(t(5 * MIN)),
            ),
            (
                "awaiting evidence: at the give-up time",
                &sending,
                &none,
                leave(Reason::AwaitingEvidence),
                Some(t(23 * HOUR)),
            ),
            (
                "deferred: at the give-up time",
                &sending,
                &none,
                leave(Reason::Deferred),
                Some(t(23 * HOUR)),
            ),
            (
                "fresh: when it turns stale",
                &pending,
                &none,
                leave(Reason::Fresh),
                Some(t(-HOUR + 10 * MIN)),
            ),
            (
                "given up and left: only new input",
                &sending,
                &none,
                leave(Reason::NoEvidence),
                None,
            ),
            (
                "a conflict: only new evidence",
                &sending,
                &none,
                Decision::new(Action::Hold, Reason::Conflict),
                None,
            ),
            (
                "a write: any time",
                &pending,
                &none,
                Decision::requeue(Reason::StalePending, 1),
                Some(t(-HOUR)),
            ),
            (
                "still queued: any time",
                &pending,
                &none,
                Decision::new(Action::Hold, Reason::StillQueued),
                Some(t(-HOUR)),
            ),
            (
                "a source down: any time",
                &sending,
                &none,
                leave(Reason::EvidenceUnavailable),
                Some(t(-HOUR)),
            ),
            (
                "lagging: any time",
                &sending,
                &lagging,
                leave(Reason::AwaitingEvidence),
                Some(t(-HOUR)),
            ),
        ];
        for (name, row, ctx, d, want) in table {
            assert_eq!(decision_changes_at(&rules, row, ctx, &d), want, "{name}");
        }
        assert!(at_rest(&leave(Reason::AwaitingEvidence)));
        assert!(!at_rest(&Decision::new(Action::Hold, Reason::MaxActions)));
    }
}
