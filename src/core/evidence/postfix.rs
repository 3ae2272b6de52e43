//! Postfix log parser: joins every line of a message by queue ID.
//!
//! `cleanup[..]: QID: message-id=<…>` starts a message (an instance keyed by
//! queue ID + first-seen: short queue IDs are reused); `qmgr` lines give the
//! recipient count, message-level `status=expired` and `removed`; delivery
//! agents (`smtp`, `lmtp`, `local`, `virtual`, `pipe`, `error`, …) log one
//! `to=<…>, …, dsn=…, status=…` line per recipient attempt.
//!
//! Cost per line: one search for `]: `, a queue-ID check and a hash lookup;
//! everything else runs only on lines of tracked messages.

use super::timestamp::TimestampParser;
use super::{clip, field, find, normalize_key, text, KeyFilter, LineParser, LineRef, MessageTrace};
use super::{RcptStatus, TraceStore};
use std::collections::HashMap;

pub struct PostfixParser {
    filter: KeyFilter,
    ts: TimestampParser,
    /// Queue ID → index of the tracked instance in the store.
    active: HashMap<Vec<u8>, usize>,
}

impl PostfixParser {
    pub fn new(filter: KeyFilter, ts: TimestampParser) -> Self {
        PostfixParser {
            filter,
            ts,
            active: HashMap::new(),
        }
    }
}

/// Short IDs are upper-case hex; long IDs (`enable_long_queue_ids`) use a
/// vowel-free base-52 alphabet with a `z` separator.
fn is_queue_id(b: &[u8]) -> bool {
    let short = (5..=16).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c));
    let long = (10..=24).contains(&b.len())
        && b.contains(&b'z')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() && !b"AEIOUaeiou".contains(c));
    short || long
}

fn status_of(word: &[u8]) -> Option<RcptStatus> {
    match word {
        b"sent" | b"delivered" => Some(RcptStatus::Sent),
        b"deferred" => Some(RcptStatus::Deferred),
        b"bounced" | b"undeliverable" => Some(RcptStatus::Bounced),
        b"expired" => Some(RcptStatus::Expired),
        _ => None,
    }
}

impl LineParser for PostfixParser {
    fn feed(&mut self, line: &[u8], at: LineRef, store: &mut TraceStore) {
        // `… postfix/smtp[123]: QID: rest`
        let Some(p) = find(line, b"]: ") else { return };
        let after = &line[p + 3..];
        let Some(colon) = memchr::memchr(b':', after) else {
            return;
        };
        let qid = &after[..colon];
        if !is_queue_id(qid) {
            return;
        }
        let body = after.get(colon + 1..).unwrap_or_default();
        let body = body.strip_prefix(b" ").unwrap_or(body);

        if let Some(rest) = body.strip_prefix(b"message-id=") {
            let end = rest
                .iter()
                .position(|c| *c == b' ' || *c == b',')
                .unwrap_or(rest.len());
            let raw = String::from_utf8_lossy(&rest[..end]);
            let key = normalize_key(&raw);
            if key.is_empty() || !self.filter.wants(key) {
                // A new, unwanted message under this queue ID: the ID was
                // reused; whatever we tracked under it is finished.
                self.active.remove(qid);
                return;
            }
            let seen = self.ts.parse(line).map(|(t, _)| t);
            let idx = store.start(MessageTrace::new(key, &text(qid), seen));
            store.touch(idx, at, line);
            self.active.insert(qid.to_vec(), idx);
            return;
        }

        let Some(&idx) = self.active.get(qid) else {
            return;
        };
        store.touch(idx, at, line);
        if body == b"removed" {
            if let Some(m) = store.get_mut(idx) {
                m.complete = true;
            }
            self.active.remove(qid);
            return;
        }
        let Some(m) = store.get_mut(idx) else { return };
        if body.starts_with(b"from=<") {
            if let Some(n) = field(body, b", nrcpt=", b" ,") {
                m.expected_recipients = std::str::from_utf8(n).ok().and_then(|s| s.parse().ok());
            }
            if field(body, b", status=", b" ,") == Some(b"expired") {
                m.expired = true;
            }
            return;
        }
        if body.starts_with(b"to=<") {
            let Some(rcpt) = field(body, b"to=<", b">") else {
                return;
            };
            // A line cut at the syslog limit may lack its status: skip it.
            let Some(status) = field(body, b", status=", b" ,").and_then(status_of) else {
                return;
            };
            let dsn = field(body, b", dsn=", b" ,").map(text).unwrap_or_default();
            let why = find(body, b", status=")
                .and_then(|i| memchr::memchr(b'(', &body[i..]).map(|j| &body[i + j..]))
                .map(|b| {
                    let t = text(b);
                    let t = t.strip_prefix('(').unwrap_or(&t);
                    clip(t.strip_suffix(')').unwrap_or(t), 160)
                })
                .unwrap_or_default();
            let detail = match (dsn.is_empty(), why.is_empty()) {
                (true, true) => String::new(),
                (false, true) => format!("dsn={dsn}"),
                (true, false) => why,
                (false, false) => format!("dsn={dsn}: {why}"),
            };
            m.record(&text(rcpt), status, detail, at);
        }
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
    use std::collections::HashSet;

    fn parse(lines: &[&str], wanted: &[&str]) -> TraceStore {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let filter =
            KeyFilter::Wanted(wanted.iter().map(|s| s.to_string()).collect::<HashSet<_>>());
        let mut p = PostfixParser::new(filter, TimestampParser::utc(now));
        let mut store = TraceStore::new(true);
        for (i, l) in lines.iter().enumerate() {
            p.feed(
                l.as_bytes(),
                LineRef {
                    file: 0,
                    line: i as u64 + 1,
                },
                &mut store,
            );
        }
        store
    }

    const SENT: &[&str] = &[
        "Nov 28 22:35:45 mail postfix/smtpd[22067]: ED054C8803: client=localhost[127.0.0.1]",
        "Nov 28 22:35:45 mail postfix/cleanup[22070]: ED054C8803: message-id=<msg-0@app.test>",
        "Nov 28 22:35:45 mail postfix/qmgr[22049]: ED054C8803: from=<noreply@app.test>, size=529, nrcpt=1 (queue active)",
        "Nov 28 22:35:45 mail postfix/smtp[22071]: ED054C8803: to=<ok0@dest.test>, relay=127.0.0.1[127.0.0.1]:2525, delay=0.02, delays=0.01/0.01/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as SINK000001)",
        "Nov 28 22:35:45 mail postfix/qmgr[22049]: ED054C8803: removed",
    ];

    #[test]
    fn joins_message_id_with_status_by_queue_id() {
        let store = parse(SENT, &["msg-0@app.test"]);
        let v = store.verdict("<msg-0@app.test>", None);
        assert_eq!(v.verdict, Verdict::Delivered);
        assert_eq!(v.instances[0].lines.len(), 4);
        assert!(v.instances[0].complete);
    }

    #[test]
    fn ignores_unwanted_messages() {
        let store = parse(SENT, &["other@app.test"]);
        assert!(store.is_empty());
    }

    #[test]
    fn mixed_recipients_are_partial_delivery_naming_the_failed() {
        let lines = [
            "Nov 28 22:35:45 mail postfix/cleanup[1]: F0E42C8803: message-id=<m2@a>",
            "Nov 28 22:35:45 mail postfix/qmgr[2]: F0E42C8803: from=<n@a>, size=532, nrcpt=2 (queue active)",
            "Nov 28 22:35:46 mail postfix/smtp[3]: F0E42C8803: to=<ok2a@d>, relay=x, delay=0.02, delays=0/0/0/0, dsn=2.0.0, status=sent (250 ok)",
            "Nov 28 22:35:46 mail postfix/smtp[3]: F0E42C8803: to=<bounce2b@d>, relay=x, delay=0.03, delays=0/0/0/0, dsn=5.1.1, status=bounced (host said: 550 5.1.1 user unknown)",
            "Nov 28 22:35:46 mail postfix/bounce[4]: F0E42C8803: sender non-delivery notification: 05192C8807",
            "Nov 28 22:35:46 mail postfix/qmgr[2]: F0E42C8803: removed",
        ];
        let store = parse(&lines, &["m2@a"]);
        let v = store.verdict("m2@a", None);
        assert_eq!(
            v.verdict,
            Verdict::Failed {
                reason: FailReason::PartialDelivery
            }
        );
        assert_eq!(v.instances[0].failed_recipients(), vec!["bounce2b@d"]);
        assert!(
            v.detail.contains("bounce2b@d bounced (dsn=5.1.1"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn first_recipient_logged_of_two_is_not_a_verdict() {
        let lines = [
            "Nov 28 22:35:45 mail postfix/cleanup[1]: F0E42C8803: message-id=<m2@a>",
            "Nov 28 22:35:45 mail postfix/qmgr[2]: F0E42C8803: from=<n@a>, size=532, nrcpt=2 (queue active)",
            "Nov 28 22:35:46 mail postfix/smtp[3]: F0E42C8803: to=<ok2a@d>, relay=x, delay=0.02, delays=0/0/0/0, dsn=2.0.0, status=sent (250 ok)",
        ];
        let store = parse(&lines, &["m2@a"]);
        assert!(matches!(
            store.verdict("m2@a", None).verdict,
            Verdict::InFlight { .. }
        ));
    }

    #[test]
    fn message_level_expiry_fails_deferred_recipients() {
        let lines = [
            "Nov 23 10:00:00 mail postfix/cleanup[1]: 3E1B8C8783: message-id=<m3@a>",
            "Nov 23 10:00:00 mail postfix/qmgr[2]: 3E1B8C8783: from=<n@a>, size=529, nrcpt=1 (queue active)",
            "Nov 23 10:00:01 mail postfix/smtp[3]: 3E1B8C8783: to=<d@d>, relay=x, delay=1, delays=0/0/0/0, dsn=4.2.0, status=deferred (450 try later)",
            "Nov 28 10:00:00 mail postfix/qmgr[2]: 3E1B8C8783: from=<n@a>, status=expired, returned to sender",
            "Nov 28 10:00:00 mail postfix/qmgr[2]: 3E1B8C8783: removed",
        ];
        let store = parse(&lines, &["m3@a"]);
        assert_eq!(
            store.verdict("m3@a", None).verdict,
            Verdict::Failed {
                reason: FailReason::Expired
            }
        );
    }

    #[test]
    fn reused_short_queue_id_starts_a_new_instance() {
        let lines = [
            "Nov 28 10:00:00 mail postfix/cleanup[1]: ABCDEF1234: message-id=<first@a>",
            "Nov 28 10:00:00 mail postfix/qmgr[2]: ABCDEF1234: from=<n@a>, size=1, nrcpt=1 (queue active)",
            "Nov 28 10:00:01 mail postfix/smtp[3]: ABCDEF1234: to=<x@d>, relay=x, delay=1, delays=0/0/0/0, dsn=4.2.0, status=deferred (450)",
            // `removed` was lost; the ID is reused by an unrelated message.
            "Nov 28 12:00:00 mail postfix/cleanup[1]: ABCDEF1234: message-id=<unrelated@a>",
            "Nov 28 12:00:01 mail postfix/smtp[3]: ABCDEF1234: to=<y@d>, relay=x, delay=1, delays=0/0/0/0, dsn=2.0.0, status=sent (250)",
        ];
        let store = parse(&lines, &["first@a"]);
        assert_eq!(
            store.verdict("first@a", None).verdict,
            Verdict::InFlight {
                reason: InFlightReason::Deferred
            }
        );
    }

    #[test]
    fn truncated_binary_and_foreign_lines_never_abort() {
        let mut lines: Vec<&str> = vec![
            "Nov 28 22:35:45 mail kernel: [12345.6] eth0: link up",
            "\u{1}\u{2}\u{3}garbage ]: :: ]: ",
            "Nov 28 22:35:45 mail postfix/smtp[1]: warning: something odd: here",
            "Nov 28 22:35:45 mail postfix/smtpd[1]: NOQUEUE: reject: RCPT from x: 554",
        ];
        lines.extend_from_slice(SENT);
        // The status line cut mid-way at a syslog limit.
        lines[7] = "Nov 28 22:35:45 mail postfix/smtp[22071]: ED054C8803: to=<ok0@dest.test>, relay=127.0.0.1[127.0.0.1]:2525, del";
        let store = parse(&lines, &["msg-0@app.test"]);
        // The cut status line gives no outcome; `removed` alone is not delivery.
        let v = store.verdict("msg-0@app.test", None);
        assert_ne!(v.verdict, Verdict::Delivered);
    }

    #[test]
    fn long_queue_ids_and_tls_fields() {
        let lines = [
            "2026-11-28T10:00:00.123456+00:00 mail postfix/cleanup[1]: 4Ndx2V1Gf8z2Y8k: message-id=<long@a>",
            "2026-11-28T10:00:00.200000+00:00 mail postfix/smtp[3]: 4Ndx2V1Gf8z2Y8k: to=<x@d>, orig_to=<alias@d>, relay=mx.d[1.2.3.4]:25, conn_use=2, delay=0.5, delays=0.1/0/0.2/0.2, tls=TLSv1.3 with cipher TLS_AES_256_GCM_SHA384, dsn=2.0.0, status=sent (250 2.0.0 OK)",
        ];
        let store = parse(&lines, &["long@a"]);
        let v = store.verdict("long@a", None);
        assert_eq!(v.verdict, Verdict::Delivered);
        assert_eq!(v.instances[0].recipients[0].rcpt, "x@d");
    }

    #[test]
    fn a_message_across_new_year_is_joined_and_dated_right() {
        // Read on Jan 1st: the message was queued on Dec 31st and delivered
        // after midnight; syslog timestamps carry no year.
        let now = chrono::DateTime::parse_from_rfc3339("2027-01-01T00:30:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let filter = KeyFilter::Wanted(["ny@a".to_string()].into());
        let mut p = PostfixParser::new(filter, TimestampParser::utc(now));
        let mut store = TraceStore::new(false);
        let lines = [
            "Dec 31 23:59:58 mail postfix/cleanup[1]: 9A8B7C6D5E: message-id=<ny@a>",
            "Dec 31 23:59:59 mail postfix/qmgr[2]: 9A8B7C6D5E: from=<n@a>, size=1, nrcpt=1 (queue active)",
            "Jan  1 00:00:04 mail postfix/smtp[3]: 9A8B7C6D5E: to=<r@d>, relay=x, delay=6, delays=0/0/3/3, dsn=2.0.0, status=sent (250 ok)",
        ];
        for (i, l) in lines.iter().enumerate() {
            let at = LineRef {
                file: 0,
                line: i as u64,
            };
            p.feed(l.as_bytes(), at, &mut store);
        }
        let row_changed = chrono::DateTime::parse_from_rfc3339("2026-12-31T23:59:50Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let v = store.verdict("ny@a", Some(row_changed));
        assert_eq!(v.verdict, Verdict::Delivered);
        assert_eq!(
            v.instances[0].first_seen,
            Some(
                chrono::DateTime::parse_from_rfc3339("2026-12-31T23:59:58Z")
                    .unwrap()
                    .with_timezone(&chrono::Utc)
            )
        );
    }

    #[test]
    fn queue_id_shapes() {
        for (id, ok) in [
            ("ED054C8803", true),
            ("4Ndx2V1Gf8z2Y8k", true),
            ("NOQUEUE", false),
            ("warning", false),
            ("connect from x", false),
            ("AB", false),
        ] {
            assert_eq!(is_queue_id(id.as_bytes()), ok, "{id}");
        }
    }
}
