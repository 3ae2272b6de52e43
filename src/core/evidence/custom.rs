//! Custom log formats: a list of regexes with named captures.
//!
//! Captures: `key` (the lookup key, e.g. a Message-ID), `join` (a
//! correlation id such as a queue ID, linking lines of one message),
//! `status` (mapped through the `sent` / `failed` value lists; any other
//! value means still in flight), optional `rcpt` (per-recipient outcomes)
//! and optional `time` (otherwise the line's leading timestamp is used).
//! The first pattern that matches a line wins.

use super::timestamp::{parse_instant, TimestampParser};
use super::{normalize_key, KeyFilter, LineParser, LineRef, MessageTrace, RcptStatus, TraceStore};
use regex::bytes::Regex;
use std::collections::HashMap;

/// How a custom status value maps to an outcome.
#[derive(Clone, Debug, Default)]
pub struct StatusMap {
    pub sent: Vec<String>,
    pub failed: Vec<String>,
}

impl StatusMap {
    /// `sent` values → sent; `failed` → bounced; anything else → deferred.
    pub fn classify(&self, value: &str) -> RcptStatus {
        let value = value.trim();
        if self.sent.iter().any(|s| s.eq_ignore_ascii_case(value)) {
            RcptStatus::Sent
        } else if self.failed.iter().any(|s| s.eq_ignore_ascii_case(value)) {
            RcptStatus::Bounced
        } else {
            RcptStatus::Deferred
        }
    }
}

#[derive(Clone, Debug)]
pub struct CustomSpec {
    pub patterns: Vec<Regex>,
    pub statuses: StatusMap,
}

pub struct CustomParser {
    spec: CustomSpec,
    filter: KeyFilter,
    ts: TimestampParser,
    /// join value → instance
    joined: HashMap<Vec<u8>, usize>,
    /// key → instance, for patterns without a join
    keyed: HashMap<String, usize>,
}

impl CustomParser {
    pub fn new(spec: CustomSpec, filter: KeyFilter, ts: TimestampParser) -> Self {
        CustomParser {
            spec,
            filter,
            ts,
            joined: HashMap::new(),
            keyed: HashMap::new(),
        }
    }

    fn time_of(&self, line: &[u8], caps: &regex::bytes::Captures<'_>) -> Option<super::Timestamp> {
        match caps.name("time") {
            Some(t) => {
                let s = String::from_utf8_lossy(t.as_bytes());
                parse_instant(&s).or_else(|| self.ts.parse(t.as_bytes()).map(|(ts, _)| ts))
            }
            None => self.ts.parse(line).map(|(ts, _)| ts),
        }
    }
}

impl LineParser for CustomParser {
    fn feed(&mut self, line: &[u8], at: LineRef, store: &mut TraceStore) {
        let Some(caps) = self.spec.patterns.iter().find_map(|re| re.captures(line)) else {
            return;
        };
        let key = caps
            .name("key")
            .map(|m| normalize_key(&String::from_utf8_lossy(m.as_bytes())).to_string());
        let join = caps.name("join").map(|m| m.as_bytes().to_vec());
        let status = caps
            .name("status")
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned());

        let idx = match (&key, &join) {
            (Some(k), _) if !self.filter.wants(k) => {
                if let Some(j) = &join {
                    self.joined.remove(j);
                }
                return;
            }
            (Some(k), Some(j)) => {
                // A key+join line starts a message instance, unless this join
                // already tracks the same key (repeated lines).
                match self.joined.get(j) {
                    Some(&i) if store.get(i).is_some_and(|m| m.key == *k) => i,
                    _ => {
                        let id = String::from_utf8_lossy(j);
                        let seen = self.time_of(line, &caps);
                        let i = store.start(MessageTrace::new(k, &id, seen));
                        self.joined.insert(j.clone(), i);
                        i
                    }
                }
            }
            (Some(k), None) => match self.keyed.get(k) {
                Some(&i) => i,
                None => {
                    let seen = self.time_of(line, &caps);
                    let i = store.start(MessageTrace::new(k, k, seen));
                    self.keyed.insert(k.clone(), i);
                    i
                }
            },
            (None, Some(j)) => match self.joined.get(j) {
                Some(&i) => i,
                None => return,
            },
            (None, None) => return,
        };
        store.touch(idx, at, line);
        if let Some(status) = status {
            let rcpt = caps
                .name("rcpt")
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_else(|| "*".to_string());
            let outcome = self.spec.statuses.classify(&status);
            let detail = if outcome == RcptStatus::Sent {
                String::new()
            } else {
                format!("status={status}")
            };
            if let Some(m) = store.get_mut(idx) {
                m.record(&rcpt, outcome, detail, at);
            }
        }
    }

    fn set_now(&mut self, now: crate::core::model::Timestamp) {
        self.ts.now = now;
    }

    fn reset_in_flight(&mut self) {
        self.joined.clear();
        self.keyed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Verdict;

    fn spec() -> CustomSpec {
        CustomSpec {
            patterns: vec![
                Regex::new(r"queued (?P<join>\w+) for <(?P<key>[^>]+)>").unwrap(),
                Regex::new(r"job (?P<join>\w+) rcpt=(?P<rcpt>\S+) result=(?P<status>\w+)").unwrap(),
                Regex::new(r"direct <(?P<key>[^>]+)> (?P<status>\w+)").unwrap(),
            ],
            statuses: StatusMap {
                sent: vec!["ok".into(), "delivered".into()],
                failed: vec!["rejected".into()],
            },
        }
    }

    fn run(lines: &[&str]) -> TraceStore {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut p = CustomParser::new(spec(), KeyFilter::All, TimestampParser::utc(now));
        let mut store = TraceStore::new(false);
        for (i, l) in lines.iter().enumerate() {
            let at = LineRef {
                file: 0,
                line: i as u64,
            };
            p.feed(l.as_bytes(), at, &mut store);
        }
        store
    }

    #[test]
    fn joins_by_capture_and_maps_status_values() {
        let store = run(&[
            "2026-11-28T10:00:00Z app: queued J1 for <a@x>",
            "2026-11-28T10:00:00Z app: queued J2 for <b@x>",
            "2026-11-28T10:00:01Z app: job J1 rcpt=u@d result=OK",
            "2026-11-28T10:00:01Z app: job J2 rcpt=u@d result=later",
            "2026-11-28T10:00:01Z app: direct <c@x> rejected",
            "2026-11-28T10:00:01Z app: job J9 rcpt=u@d result=ok",
        ]);
        assert_eq!(store.verdict("a@x", None).verdict, Verdict::Delivered);
        assert!(matches!(
            store.verdict("b@x", None).verdict,
            Verdict::InFlight { .. }
        ));
        assert!(matches!(
            store.verdict("c@x", None).verdict,
            Verdict::Failed { .. }
        ));
        assert_eq!(store.len(), 3);
    }
}
