//! Exim main-log parser.
//!
//! `<=` arrival (with `id=` Message-ID and, under `+received_recipients`,
//! `for a b c`), `=>` / `->` delivered, `**` failed, `==` deferred,
//! `Completed`. Exim message IDs have 16 characters (`1xXRVo-0006uo-1l`,
//! up to 4.96) or 23 (`1rCPlh-00000000Ke6-2ZmN`, 4.97+). `*>` (delivery
//! suppressed) is not delivery and is ignored.

use super::timestamp::TimestampParser;
use super::{clip, find, normalize_key, text, KeyFilter, LineParser, LineRef, MessageTrace};
use super::{RcptStatus, TraceStore};
use std::collections::HashMap;

pub struct EximParser {
    filter: KeyFilter,
    ts: TimestampParser,
    active: HashMap<Vec<u8>, usize>,
}

impl EximParser {
    pub fn new(filter: KeyFilter, ts: TimestampParser) -> Self {
        EximParser {
            filter,
            ts,
            active: HashMap::new(),
        }
    }
}

fn is_exim_id(b: &[u8]) -> bool {
    let shape_ok = |parts: [usize; 3]| {
        let mut it = b.split(|c| *c == b'-');
        parts.iter().all(|n| {
            it.next()
                .is_some_and(|p| p.len() == *n && p.iter().all(u8::is_ascii_alphanumeric))
        }) && it.next().is_none()
    };
    match b.len() {
        16 => shape_ok([6, 6, 2]),
        23 => shape_ok([6, 11, 4]),
        _ => false,
    }
}

/// Split off the next space-separated token.
fn token(b: &[u8]) -> (&[u8], &[u8]) {
    let b = b.strip_prefix(b" ").unwrap_or(b);
    match memchr::memchr(b' ', b) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

/// Skip `YYYY-MM-DD HH:MM:SS[.fff][ +ZZZZ][ [pid]]` and return the rest.
fn after_prefix(line: &[u8]) -> Option<&[u8]> {
    if line.len() < 20 || line[4] != b'-' || line[13] != b':' {
        return None;
    }
    let (_, rest) = token(line); // date
    let (_, mut rest) = token(rest); // time
    let (t, r) = token(rest);
    if matches!(t.first(), Some(b'+' | b'-')) && t.len() == 5 {
        rest = r;
    }
    let (t, r) = token(rest);
    if t.first() == Some(&b'[') && t.last() == Some(&b']') {
        rest = r;
    }
    Some(rest)
}

/// The recipient list of an arrival line (`… for a@x b@y`), after the
/// quoted subject if there is one.
fn arrival_recipients(body: &[u8]) -> Vec<String> {
    let mut search_from = 0;
    if let Some(t) = find(body, b" T=\"") {
        let mut i = t + 4;
        while i < body.len() {
            match body[i] {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        search_from = i.min(body.len());
    }
    let tail = &body[search_from..];
    match find(tail, b" for ") {
        Some(f) => tail[f + 5..]
            .split(|c| *c == b' ')
            .filter(|r| !r.is_empty())
            .map(text)
            .collect(),
        None => Vec::new(),
    }
}

impl LineParser for EximParser {
    fn feed(&mut self, line: &[u8], at: LineRef, store: &mut TraceStore) {
        let Some(rest) = after_prefix(line) else {
            return;
        };
        let (id, rest) = token(rest);
        if !is_exim_id(id) {
            return;
        }
        let (op, body) = token(rest);
        if op == b"<=" {
            let Some(mid) = super::field(body, b" id=", b" ") else {
                self.active.remove(id);
                return;
            };
            let raw = String::from_utf8_lossy(mid);
            let key = normalize_key(&raw);
            if key.is_empty() || !self.filter.wants(key) {
                self.active.remove(id);
                return;
            }
            let seen = self.ts.parse(line).map(|(t, _)| t);
            let mut m = MessageTrace::new(key, &text(id), seen);
            let rcpts = arrival_recipients(body);
            if !rcpts.is_empty() {
                m.expected_recipients = Some(rcpts.len());
            }
            let idx = store.start(m);
            store.touch(idx, at, line);
            self.active.insert(id.to_vec(), idx);
            return;
        }
        let Some(&idx) = self.active.get(id) else {
            return;
        };
        store.touch(idx, at, line);
        let Some(m) = store.get_mut(idx) else { return };
        let status = match op {
            b"=>" | b"->" => RcptStatus::Sent,
            b"**" => RcptStatus::Bounced,
            b"==" => RcptStatus::Deferred,
            b"Completed" => {
                m.complete = true;
                self.active.remove(id);
                return;
            }
            _ => return,
        };
        let (rcpt, detail) = token(body);
        let rcpt = rcpt.strip_suffix(b":").unwrap_or(rcpt);
        if rcpt.is_empty() {
            return;
        }
        let detail = if status == RcptStatus::Sent {
            String::new()
        } else {
            // `… : SMTP error from remote mail server after RCPT TO:<x>: 550 …`
            let why = find(detail, b": ").map_or(detail, |i| &detail[i + 2..]);
            clip(&text(why), 160)
        };
        m.record(&text(rcpt), status, detail, at);
    }

    fn set_now(&mut self, now: crate::core::model::Timestamp) {
        self.ts.now = now;
    }

    fn reset_in_flight(&mut self) {
        self.active.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{FailReason, InFlightReason, Verdict};

    fn parse(lines: &[&str]) -> TraceStore {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut p = EximParser::new(KeyFilter::All, TimestampParser::utc(now));
        let mut store = TraceStore::new(false);
        for (i, l) in lines.iter().enumerate() {
            let at = LineRef {
                file: 0,
                line: i as u64 + 1,
            };
            p.feed(l.as_bytes(), at, &mut store);
        }
        store
    }

    #[test]
    fn delivered_after_retry() {
        let store = parse(&[
            "2026-11-28 23:07:20 1xXRVo-0006uo-1m <= n@a H=(h) [127.0.0.1]:5 P=esmtp S=803 id=e1.ff@a T=\"Reset for you\" for retry1@d",
            "2026-11-28 23:07:20 1xXRVo-0006uo-1m == retry1@d R=to_sink T=sink_smtp defer (-44) H=127.0.0.1 [127.0.0.1]:2525 DT=0s: SMTP error from remote mail server after RCPT TO:<retry1@d>: 450 4.2.0 try later",
            "2026-11-28 23:08:20 1xXRVo-0006uo-1m => retry1@d R=to_sink T=sink_smtp H=127.0.0.1 C=\"250 ok\"",
            "2026-11-28 23:08:20 1xXRVo-0006uo-1m Completed QT=60s",
        ]);
        let v = store.verdict("<e1.ff@a>", None);
        assert_eq!(v.verdict, Verdict::Delivered);
        assert_eq!(v.instances[0].expected_recipients, Some(1));
    }

    #[test]
    fn subject_containing_for_does_not_confuse_recipients() {
        let body = b"n@a P=esmtp id=x@a T=\"Thanks for all \\\"the\\\" fish for you\" for a@d b@d";
        assert_eq!(arrival_recipients(body), vec!["a@d", "b@d"]);
    }

    #[test]
    fn failures_deferrals_and_partials() {
        let store = parse(&[
            "2026-11-28 23:07:20 1xXRVo-0006uo-1q <= n@a P=esmtp S=1 id=bounce@a for bounce5@d",
            "2026-11-28 23:07:20 1xXRVo-0006uo-1q ** bounce5@d F=<n@a> R=to_sink T=sink_smtp H=127.0.0.1 [127.0.0.1]:2525: SMTP error from remote mail server after RCPT TO:<bounce5@d>: 550 5.1.1 unknown",
            "2026-11-28 23:07:20 1xXRVo-0006uo-1q Completed",
            "2026-11-28 23:07:21 1rCPlh-00000000Ke6-2ZmN <= n@a P=esmtp S=1 id=<mix@a> for ok@d bad@d",
            "2026-11-28 23:07:21 1rCPlh-00000000Ke6-2ZmN => ok@d R=r T=t",
            "2026-11-28 23:07:21 1rCPlh-00000000Ke6-2ZmN ** bad@d: retry timeout exceeded",
            "2026-11-28 23:07:21 1rCPlh-00000000Ke6-2ZmN Completed",
            "2026-11-28 23:07:22 [1234] 1xXRVo-0006uo-1r <= n@a P=esmtp S=1 id=defer@a for d@d",
            "2026-11-28 23:07:22 [1234] 1xXRVo-0006uo-1r == d@d R=r T=t defer (-44): 450 later",
        ]);
        assert_eq!(
            store.verdict("bounce@a", None).verdict,
            Verdict::Failed {
                reason: FailReason::Bounced
            }
        );
        let mix = store.verdict("mix@a", None);
        assert_eq!(
            mix.verdict,
            Verdict::Failed {
                reason: FailReason::PartialDelivery
            }
        );
        assert_eq!(mix.instances[0].failed_recipients(), vec!["bad@d"]);
        assert_eq!(
            store.verdict("defer@a", None).verdict,
            Verdict::InFlight {
                reason: InFlightReason::Deferred
            }
        );
    }

    #[test]
    fn exim_id_shapes() {
        for (id, ok) in [
            ("1xXRVo-0006uo-1l", true),
            ("1rCPlh-00000000Ke6-2ZmN", true),
            ("1xXRVo-0006uo-1", false),
            ("Start", false),
            ("1xXRVo_0006uo-1l", false),
        ] {
            assert_eq!(is_exim_id(id.as_bytes()), ok, "{id}");
        }
    }
}
