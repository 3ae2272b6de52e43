//! Evidence matching: turning log lines into per-message traces and traces
//! into verdicts.
//!
//! Owns: the line parsers (Postfix, Exim, custom regexes, JSON lines), the
//! trace store they fill, and the verdict rules (every recipient sent →
//! delivered; all failed → failed; mixed → partial delivery; anything
//! deferred → no verdict yet).
//! Does not own: finding, opening or tailing files (adapters::logfile), or
//! provider HTTP APIs.
//!
//! Parsers are fed raw bytes one line at a time: invalid UTF-8, truncated
//! lines and other programs' lines are skipped, never an error.

pub mod custom;
pub mod exim;
pub mod jsonl;
pub mod postfix;
pub mod provider;
pub mod timestamp;

use super::model::{FailReason, InFlightReason, Timestamp, Verdict};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// Where a line came from: an index into the scan's file list and a 1-based
/// line number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineRef {
    pub file: u32,
    pub line: u64,
}

/// Strip surrounding whitespace and angle brackets: Message-IDs are matched
/// with or without them.
pub fn normalize_key(s: &str) -> &str {
    let s = s.trim();
    let s = s.strip_prefix('<').unwrap_or(s);
    s.strip_suffix('>').unwrap_or(s)
}

/// Which keys a scan keeps traces for.
#[derive(Clone, Debug)]
pub enum KeyFilter {
    /// Only these (normalised) keys: a one-off scan for the stuck rows.
    Wanted(HashSet<String>),
    /// Everything: the daemon's incremental index.
    All,
}

impl KeyFilter {
    pub fn wants(&self, key: &str) -> bool {
        match self {
            KeyFilter::Wanted(set) => set.contains(key),
            KeyFilter::All => true,
        }
    }
}

/// One recipient's latest outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RcptStatus {
    Sent,
    Deferred,
    /// Permanently rejected.
    Bounced,
    /// Given up by the MTA after retrying.
    Expired,
    /// Refused by a provider before any delivery attempt (dropped, blocked,
    /// suppressed).
    Rejected,
}

impl RcptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RcptStatus::Sent => "sent",
            RcptStatus::Deferred => "deferred",
            RcptStatus::Bounced => "bounced",
            RcptStatus::Expired => "expired",
            RcptStatus::Rejected => "rejected",
        }
    }

    fn is_failure(self) -> bool {
        matches!(
            self,
            RcptStatus::Bounced | RcptStatus::Expired | RcptStatus::Rejected
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub rcpt: String,
    pub status: RcptStatus,
    /// e.g. `dsn=5.1.1 (550 5.1.1 <x>: Recipient address rejected)`.
    pub detail: String,
    pub line: LineRef,
}

/// Everything one mail server logged about one message instance. Short
/// Postfix queue IDs are reused, so an instance is its id plus first-seen.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageTrace {
    /// The lookup key (Message-ID without brackets, or a custom key).
    pub key: String,
    /// Queue ID / Exim message ID / custom join value.
    pub id: String,
    pub first_seen: Option<Timestamp>,
    /// Recipients the server said it would deliver to, when it said so.
    pub expected_recipients: Option<usize>,
    /// Latest outcome per recipient, in first-seen order.
    pub recipients: Vec<RecipientOutcome>,
    /// The whole message expired (Postfix `status=expired`).
    pub expired: bool,
    /// The server is done with it (`removed`, `Completed`).
    pub complete: bool,
    pub lines: Vec<LineRef>,
    /// Line texts, kept only when the store was asked to (explain).
    pub texts: Vec<String>,
}

impl MessageTrace {
    pub fn new(key: &str, id: &str, first_seen: Option<Timestamp>) -> Self {
        MessageTrace {
            key: key.to_string(),
            id: id.to_string(),
            first_seen,
            expected_recipients: None,
            recipients: Vec::new(),
            expired: false,
            complete: false,
            lines: Vec::new(),
            texts: Vec::new(),
        }
    }

    /// Record a recipient's outcome; a later line for the same recipient
    /// replaces the earlier (deferred, then sent).
    pub fn record(&mut self, rcpt: &str, status: RcptStatus, detail: String, line: LineRef) {
        let outcome = RecipientOutcome {
            rcpt: rcpt.to_string(),
            status,
            detail,
            line,
        };
        match self.recipients.iter_mut().find(|r| r.rcpt == rcpt) {
            Some(r) => *r = outcome,
            None => self.recipients.push(outcome),
        }
    }

    /// A recipient's final status: a message that expired took its
    /// still-deferred recipients with it.
    pub fn effective_status(&self, r: &RecipientOutcome) -> RcptStatus {
        match r.status {
            RcptStatus::Deferred if self.expired => RcptStatus::Expired,
            s => s,
        }
    }

    /// The verdict this message's trace supports, with a one-line summary.
    pub fn verdict(&self) -> (Verdict, String) {
        let statuses: Vec<RcptStatus> = self
            .recipients
            .iter()
            .map(|r| self.effective_status(r))
            .collect();
        let summary = self.summary(&statuses);
        if statuses.is_empty() {
            let v = if self.expired {
                Verdict::Failed {
                    reason: FailReason::Expired,
                }
            } else {
                Verdict::InFlight {
                    reason: InFlightReason::Queued,
                }
            };
            return (v, summary);
        }
        if statuses.contains(&RcptStatus::Deferred) {
            let v = Verdict::InFlight {
                reason: InFlightReason::Deferred,
            };
            return (v, summary);
        }
        // Recipients the server announced but has not logged an outcome for
        // are still in flight, unless it says it is done with the message.
        let missing = self.expected_recipients.is_some_and(|n| statuses.len() < n);
        if missing && !self.complete && !self.expired {
            let v = Verdict::InFlight {
                reason: InFlightReason::Queued,
            };
            return (v, summary);
        }
        let failed = statuses.iter().filter(|s| s.is_failure()).count();
        let v = if failed == 0 && !missing {
            Verdict::Delivered
        } else if failed == statuses.len() {
            let all = |want: RcptStatus| statuses.iter().all(|s| *s == want);
            Verdict::Failed {
                reason: if all(RcptStatus::Expired) {
                    FailReason::Expired
                } else if all(RcptStatus::Rejected) {
                    FailReason::Rejected
                } else {
                    FailReason::Bounced
                },
            }
        } else {
            Verdict::Failed {
                reason: FailReason::PartialDelivery,
            }
        };
        (v, summary)
    }

    fn summary(&self, statuses: &[RcptStatus]) -> String {
        let mut s = format!("{} ", self.id);
        match statuses.len() {
            0 if self.expired => s.push_str("expired before any delivery attempt"),
            0 => s.push_str("accepted, no delivery attempt logged yet"),
            n => {
                let _ = write!(s, "{n} recipient{}: ", if n == 1 { "" } else { "s" });
                for (i, (r, st)) in self.recipients.iter().zip(statuses).enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    let _ = write!(s, "{} {}", r.rcpt, st.as_str());
                    if *st != RcptStatus::Sent && !r.detail.is_empty() {
                        let _ = write!(s, " ({})", r.detail);
                    }
                }
            }
        }
        if let Some(n) = self.expected_recipients {
            if n > statuses.len() {
                let _ = write!(s, "; {} of {n} recipients not logged", n - statuses.len());
            }
        }
        s
    }

    /// The failed recipients (for `partial_delivery` reports).
    pub fn failed_recipients(&self) -> Vec<&str> {
        self.recipients
            .iter()
            .filter(|r| self.effective_status(r).is_failure())
            .map(|r| r.rcpt.as_str())
            .collect()
    }
}

/// Traces by key, filled by a parser. Every trace has a stable id (parsers
/// keep ids of messages in flight across calls); pruning removes traces
/// without renumbering the others.
#[derive(Clone, Debug, Default)]
pub struct TraceStore {
    messages: BTreeMap<usize, MessageTrace>,
    next_id: usize,
    by_key: HashMap<String, Vec<usize>>,
    /// Keep line texts (for `explain`).
    pub keep_text: bool,
    /// Lines recorded so far (a reader can tell whether a line it fed
    /// became evidence).
    touches: u64,
}

impl TraceStore {
    pub fn new(keep_text: bool) -> Self {
        TraceStore {
            keep_text,
            ..Default::default()
        }
    }

    /// Start a new instance; returns its id.
    pub fn start(&mut self, trace: MessageTrace) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        self.by_key.entry(trace.key.clone()).or_default().push(id);
        self.messages.insert(id, trace);
        id
    }

    /// Remember that `line` belongs to message `id` (ignored when the
    /// message was pruned).
    pub fn touch(&mut self, id: usize, at: LineRef, text: &[u8]) {
        let keep = self.keep_text;
        if let Some(m) = self.messages.get_mut(&id) {
            self.touches += 1;
            m.lines.push(at);
            if keep {
                m.texts.push(String::from_utf8_lossy(text).into_owned());
            }
        }
    }

    /// Lines recorded so far.
    pub fn touches(&self) -> u64 {
        self.touches
    }

    /// Every line any kept trace refers to.
    pub fn lines(&self) -> impl Iterator<Item = &LineRef> {
        self.messages.values().flat_map(|m| m.lines.iter())
    }

    pub fn get(&self, id: usize) -> Option<&MessageTrace> {
        self.messages.get(&id)
    }

    pub fn get_mut(&mut self, id: usize) -> Option<&mut MessageTrace> {
        self.messages.get_mut(&id)
    }

    /// Every trace, oldest first.
    pub fn messages(&self) -> impl Iterator<Item = (usize, &MessageTrace)> {
        self.messages.iter().map(|(id, m)| (*id, m))
    }

    /// All instances of `key` first seen at or after `since` (the row's
    /// window). Instances without a timestamp count only when `since` is
    /// `None`.
    pub fn instances(&self, key: &str, since: Option<Timestamp>) -> Vec<&MessageTrace> {
        let key = normalize_key(key);
        self.by_key
            .get(key)
            .map(|ids| {
                ids.iter()
                    .filter_map(|i| self.messages.get(i))
                    .filter(|m| match (since, m.first_seen) {
                        (None, _) => true,
                        (Some(s), Some(seen)) => seen >= s,
                        (Some(_), None) => false,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The verdict for `key` in its window: delivered if any instance was
    /// delivered (the mail got there), otherwise the latest instance's.
    pub fn verdict(&self, key: &str, since: Option<Timestamp>) -> KeyVerdict<'_> {
        let instances = self.instances(key, since);
        let judged: Vec<(Verdict, String)> = instances.iter().map(|m| m.verdict()).collect();
        let pick = judged
            .iter()
            .position(|(v, _)| *v == Verdict::Delivered)
            .or_else(|| judged.len().checked_sub(1));
        match pick {
            None => KeyVerdict {
                verdict: Verdict::NotFound,
                detail: "no trace in the log window".to_string(),
                instances,
            },
            Some(i) => {
                let (verdict, mut detail) = judged[i].clone();
                if judged.len() > 1 {
                    let _ = write!(detail, " (latest of {} instances)", judged.len());
                }
                KeyVerdict {
                    verdict,
                    detail,
                    instances,
                }
            }
        }
    }

    /// Forget instances first seen before `before` (bounds the daemon's
    /// memory). Instances without a timestamp are kept. Ids of the others
    /// do not change.
    pub fn prune(&mut self, before: Timestamp) {
        let gone: Vec<usize> = self
            .messages
            .iter()
            .filter(|(_, m)| m.first_seen.is_some_and(|t| t < before))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(m) = self.messages.remove(&id) {
                if let Some(ids) = self.by_key.get_mut(&m.key) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        self.by_key.remove(&m.key);
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// A key's verdict and the instances behind it.
#[derive(Debug)]
pub struct KeyVerdict<'a> {
    pub verdict: Verdict,
    pub detail: String,
    pub instances: Vec<&'a MessageTrace>,
}

/// A line parser for one log format. Parsers keep their own in-flight state
/// (queue IDs seen but not finished), so feeding consecutive files carries a
/// message across rotation.
pub trait LineParser: Send + Sync {
    fn feed(&mut self, line: &[u8], at: LineRef, store: &mut TraceStore);

    /// Forget in-flight state (used when a tailed file is truncated).
    fn reset_in_flight(&mut self) {}

    /// Move the clock used to infer missing years (a long-running daemon).
    fn set_now(&mut self, _now: Timestamp) {}
}

/// Find `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// The bytes after `prefix` up to the first byte in `stops`.
pub(crate) fn field<'a>(hay: &'a [u8], prefix: &[u8], stops: &[u8]) -> Option<&'a [u8]> {
    let start = find(hay, prefix)? + prefix.len();
    let rest = &hay[start..];
    let end = rest
        .iter()
        .position(|b| stops.contains(b))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Shorten a detail for summaries (bounces can be long).
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(n: u64) -> LineRef {
        LineRef { file: 0, line: n }
    }

    fn trace(outcomes: &[(&str, RcptStatus)]) -> MessageTrace {
        let mut m = MessageTrace::new("k", "Q1", None);
        for (i, (r, s)) in outcomes.iter().enumerate() {
            m.record(r, *s, String::new(), l(i as u64));
        }
        m
    }

    #[test]
    fn verdict_rules_per_message() {
        use RcptStatus::*;
        let delivered = Verdict::Delivered;
        let bounced = Verdict::Failed {
            reason: FailReason::Bounced,
        };
        let partial = Verdict::Failed {
            reason: FailReason::PartialDelivery,
        };
        let deferred = Verdict::InFlight {
            reason: InFlightReason::Deferred,
        };
        let queued = Verdict::InFlight {
            reason: InFlightReason::Queued,
        };
        let expired = Verdict::Failed {
            reason: FailReason::Expired,
        };
        let table: Vec<(&str, MessageTrace, Verdict)> = vec![
            ("one sent", trace(&[("a", Sent)]), delivered.clone()),
            (
                "all sent",
                trace(&[("a", Sent), ("b", Sent)]),
                delivered.clone(),
            ),
            ("one bounced", trace(&[("a", Bounced)]), bounced.clone()),
            (
                "mixed",
                trace(&[("a", Sent), ("b", Bounced)]),
                partial.clone(),
            ),
            ("deferred", trace(&[("a", Deferred)]), deferred.clone()),
            (
                "deferred wins over final",
                trace(&[("a", Sent), ("b", Deferred)]),
                deferred.clone(),
            ),
            (
                "deferred then sent",
                trace(&[("a", Deferred), ("a", Sent)]),
                delivered.clone(),
            ),
            ("nothing yet", trace(&[]), queued.clone()),
            (
                "expired whole message",
                {
                    let mut m = trace(&[("a", Deferred)]);
                    m.expired = true;
                    m
                },
                expired.clone(),
            ),
            (
                "expired with one sent is partial",
                {
                    let mut m = trace(&[("a", Sent), ("b", Deferred)]);
                    m.expired = true;
                    m
                },
                partial.clone(),
            ),
            (
                "bounced and expired is bounced",
                trace(&[("a", Bounced), ("b", Expired)]),
                bounced.clone(),
            ),
            (
                "announced recipients still missing",
                {
                    let mut m = trace(&[("a", Sent)]);
                    m.expected_recipients = Some(2);
                    m
                },
                queued.clone(),
            ),
            (
                "announced recipients missing but removed",
                {
                    let mut m = trace(&[("a", Sent)]);
                    m.expected_recipients = Some(2);
                    m.complete = true;
                    m
                },
                partial.clone(),
            ),
        ];
        for (name, m, want) in table {
            assert_eq!(m.verdict().0, want, "{name}");
        }
    }

    #[test]
    fn any_delivered_instance_wins_then_latest() {
        let mut store = TraceStore::new(false);
        let t0 = chrono::DateTime::from_timestamp(1_000, 0).unwrap();
        let mut a = MessageTrace::new("m@x", "A", Some(t0));
        a.record("r", RcptStatus::Sent, String::new(), l(1));
        let mut b = MessageTrace::new("m@x", "B", Some(t0 + chrono::TimeDelta::seconds(60)));
        b.record("r", RcptStatus::Deferred, String::new(), l(2));
        store.start(a);
        store.start(b);
        assert_eq!(store.verdict("<m@x>", None).verdict, Verdict::Delivered);
        // Outside the window the delivered instance does not count.
        let since = Some(t0 + chrono::TimeDelta::seconds(30));
        assert_eq!(
            store.verdict("m@x", since).verdict,
            Verdict::InFlight {
                reason: InFlightReason::Deferred
            }
        );
        assert_eq!(store.verdict("other@x", None).verdict, Verdict::NotFound);
        let b_id = store.messages().nth(1).map(|(id, _)| id).unwrap();
        store.prune(t0 + chrono::TimeDelta::seconds(30));
        assert_eq!(store.len(), 1);
        assert_eq!(store.instances("m@x", None)[0].id, "B");
        // Ids survive pruning: a parser holding B's id still reaches it.
        assert_eq!(store.get(b_id).map(|m| m.id.as_str()), Some("B"));
        assert!(store.get(0).is_none());
    }

    #[test]
    fn normalizes_message_ids() {
        for (input, want) in [
            ("<a@b>", "a@b"),
            ("a@b", "a@b"),
            (" <a@b> ", "a@b"),
            ("<>", ""),
        ] {
            assert_eq!(normalize_key(input), want);
        }
    }
}
