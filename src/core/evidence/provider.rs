//! Email-provider event APIs as evidence: turning Mailgun, SendGrid,
//! Postmark and generic JSON responses into per-recipient events, and
//! events into traces (the same verdict rules as mail logs).
//!
//! Owns: what each provider's documented payloads mean (see
//! tests/fixtures/providers/NOTES.md for the sources). Does not own: the
//! HTTP requests, paging loops, rate limits (adapters::provider).

use super::custom::StatusMap;
use super::timestamp::{epoch_seconds, parse_instant};
use super::{normalize_key, LineRef, MessageTrace, RcptStatus, TraceStore};
use crate::core::model::Timestamp;
use serde_json::Value;
use std::collections::HashMap;

/// What one provider event says about one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Accepted / processed / queued: no outcome yet.
    Accepted,
    Delivered,
    /// Temporary failure; the provider retries.
    Deferred,
    /// Permanent failure at the receiving server.
    Bounced,
    /// The provider refused to send (dropped, suppressed, blocked).
    Rejected,
}

impl EventKind {
    fn status(self) -> Option<RcptStatus> {
        match self {
            EventKind::Accepted => None,
            EventKind::Delivered => Some(RcptStatus::Sent),
            EventKind::Deferred => Some(RcptStatus::Deferred),
            EventKind::Bounced => Some(RcptStatus::Bounced),
            EventKind::Rejected => Some(RcptStatus::Rejected),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProviderEvent {
    /// The lookup key it belongs to (normalised).
    pub key: String,
    pub recipient: String,
    pub kind: EventKind,
    pub at: Option<Timestamp>,
    /// e.g. `mailgun event Xq3vR1kFTcOb2yM8nW5aJg`.
    pub reference: String,
    pub detail: String,
}

/// Record events into a store: one trace per key (id = the key), events in
/// time order per recipient; a final outcome is never replaced by a later
/// temporary one (providers deliver events out of order). `refs` receives
/// each event's reference; its index is the event's `LineRef.line`.
///
/// Every recipient any event names — accepted or processed with no outcome
/// yet included — counts towards the message's recipients: a message is
/// delivered only when each of them has a final outcome. Recipients compare
/// without case (providers echo addresses as they were given).
pub fn record(store: &mut TraceStore, events: &mut [ProviderEvent], refs: &mut Vec<String>) {
    events.sort_by_key(|e| e.at);
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for (id, m) in store.messages() {
        by_key.insert(m.key.clone(), id);
    }
    let mut named: HashMap<usize, std::collections::BTreeSet<String>> = HashMap::new();
    for e in events.iter_mut() {
        e.recipient = e.recipient.to_ascii_lowercase();
    }
    for e in events.iter() {
        let idx = match by_key.get(&e.key) {
            Some(&i) => i,
            None => {
                let i = store.start(MessageTrace::new(&e.key, &e.key, e.at));
                by_key.insert(e.key.clone(), i);
                i
            }
        };
        let at = LineRef {
            file: 0,
            line: refs.len() as u64,
        };
        refs.push(e.reference.clone());
        store.touch(idx, at, e.detail.as_bytes());
        if e.recipient != "*" && !e.recipient.is_empty() {
            named.entry(idx).or_default().insert(e.recipient.clone());
        }
        let Some(status) = e.kind.status() else {
            continue;
        };
        let Some(m) = store.get_mut(idx) else {
            continue;
        };
        if m.first_seen.is_none() {
            m.first_seen = e.at;
        }
        let settled = m
            .recipients
            .iter()
            .any(|r| r.rcpt == e.recipient && r.status != RcptStatus::Deferred);
        if settled && status == RcptStatus::Deferred {
            continue;
        }
        m.record(&e.recipient, status, e.detail.clone(), at);
    }
    for (idx, rcpts) in named {
        if let Some(m) = store.get_mut(idx) {
            let known = m.expected_recipients.unwrap_or(0).max(rcpts.len());
            m.expected_recipients = Some(known);
        }
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// One page of Mailgun's `GET /v3/{domain}/events`: its events and the
/// `paging.next` URL. An empty `items` is the last page.
pub fn mailgun_page(v: &Value) -> Result<(Vec<ProviderEvent>, Option<String>), String> {
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .ok_or("mailgun: the response has no `items` list")?;
    let mut out = Vec::new();
    for it in items {
        let Some(key) = s(it, "/message/headers/message-id") else {
            continue;
        };
        let kind = match (
            it.get("event").and_then(Value::as_str),
            it.get("severity").and_then(Value::as_str),
        ) {
            (Some("delivered"), _) => EventKind::Delivered,
            (Some("failed"), Some("permanent")) => {
                let reason = it.get("reason").and_then(Value::as_str).unwrap_or("");
                if reason.starts_with("suppress") {
                    EventKind::Rejected
                } else {
                    EventKind::Bounced
                }
            }
            (Some("failed"), _) => EventKind::Deferred,
            (Some("rejected"), _) => EventKind::Rejected,
            (Some("accepted"), _) => EventKind::Accepted,
            _ => continue, // opened, clicked, stored, …: not delivery evidence
        };
        let status = it.get("delivery-status");
        let detail = [
            it.get("event").and_then(Value::as_str).map(str::to_string),
            it.get("severity")
                .and_then(Value::as_str)
                .map(|s| format!("({s})")),
            status
                .and_then(|d| d.get("code"))
                .filter(|c| !c.is_null())
                .map(|c| c.to_string()),
            status
                .and_then(|d| d.get("message").or_else(|| d.get("description")))
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map(str::to_string),
            s(it, "/reject/reason").map(str::to_string),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        out.push(ProviderEvent {
            key: normalize_key(key).to_string(),
            recipient: it
                .get("recipient")
                .and_then(Value::as_str)
                .unwrap_or("*")
                .to_string(),
            kind,
            at: it
                .get("timestamp")
                .and_then(Value::as_f64)
                .and_then(epoch_seconds),
            reference: format!(
                "mailgun event {}",
                it.get("id").and_then(Value::as_str).unwrap_or("?")
            ),
            detail,
        });
    }
    let next = if items.is_empty() {
        None
    } else {
        s(v, "/paging/next").map(str::to_string)
    };
    Ok((out, next))
}

/// SendGrid's `GET /v3/messages`: every message whose `msg_id` starts with
/// one of `keys` (the stored `X-Message-Id`; the per-recipient `msg_id` is
/// it plus a suffix). `delivered` → delivered, `not_delivered` → failed,
/// `processed` → no outcome yet.
pub fn sendgrid_messages(v: &Value, keys: &[String]) -> Result<Vec<ProviderEvent>, String> {
    let msgs = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("sendgrid: the response has no `messages` list")?;
    let mut out = Vec::new();
    for m in msgs {
        let Some(msg_id) = m.get("msg_id").and_then(Value::as_str) else {
            continue;
        };
        let Some(key) = keys
            .iter()
            .find(|k| msg_id == k.as_str() || msg_id.starts_with(&format!("{k}.")))
        else {
            continue;
        };
        let status = m.get("status").and_then(Value::as_str).unwrap_or("");
        let kind = match status {
            "delivered" => EventKind::Delivered,
            "not_delivered" => EventKind::Bounced,
            _ => EventKind::Accepted,
        };
        out.push(ProviderEvent {
            key: key.clone(),
            recipient: m
                .get("to_email")
                .and_then(Value::as_str)
                .unwrap_or("*")
                .to_string(),
            kind,
            at: m
                .get("last_event_time")
                .and_then(Value::as_str)
                .and_then(parse_instant),
            reference: format!("sendgrid message {msg_id}"),
            detail: format!("status={status}"),
        });
    }
    Ok(out)
}

/// A bounce to look up: (BounceID, recipient, when).
pub type BounceRef = (String, String, Option<Timestamp>);

/// Postmark's `GET /messages/outbound/{id}/details`: `Delivered` events
/// and the `BounceID`s of `Bounced` events (whose meaning needs the
/// bounce's type). A message with no events is known and in flight.
pub fn postmark_details(v: &Value, key: &str) -> (Vec<ProviderEvent>, Vec<BounceRef>) {
    let mut events = Vec::new();
    let mut bounces = Vec::new();
    let status = v.get("Status").and_then(Value::as_str).unwrap_or("?");
    // Every recipient the message was sent to (`Recipients`: To, Cc and
    // Bcc), each accepted until its own event says otherwise.
    let mut recipients: Vec<String> = v
        .get("Recipients")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    if recipients.is_empty() {
        recipients = ["To", "Cc", "Bcc"]
            .iter()
            .filter_map(|f| v.get(*f).and_then(Value::as_array))
            .flatten()
            .filter_map(|r| r.get("Email").and_then(Value::as_str).map(str::to_string))
            .collect();
    }
    if recipients.is_empty() {
        recipients.push("*".into());
    }
    let received = v
        .get("ReceivedAt")
        .and_then(Value::as_str)
        .and_then(parse_instant);
    for rcpt in recipients {
        events.push(ProviderEvent {
            key: key.to_string(),
            recipient: rcpt,
            kind: EventKind::Accepted,
            at: received,
            reference: format!("postmark message {key}"),
            detail: format!("Status={status}"),
        });
    }
    for e in v
        .get("MessageEvents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let rcpt = e
            .get("Recipient")
            .and_then(Value::as_str)
            .unwrap_or("*")
            .to_string();
        let at = e
            .get("ReceivedAt")
            .and_then(Value::as_str)
            .and_then(parse_instant);
        match e.get("Type").and_then(Value::as_str) {
            Some("Delivered") => events.push(ProviderEvent {
                key: key.to_string(),
                recipient: rcpt,
                kind: EventKind::Delivered,
                at,
                reference: format!("postmark message {key} Delivered"),
                detail: s(e, "/Details/DeliveryMessage")
                    .unwrap_or("Delivered")
                    .to_string(),
            }),
            Some("Bounced") => {
                let id = match e.pointer("/Details/BounceID") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => continue,
                };
                bounces.push((id, rcpt, at));
            }
            _ => {}
        }
    }
    (events, bounces)
}

/// The MessageIDs of a Postmark outbound search (`GET /messages/outbound`).
pub fn postmark_search_ids(v: &Value) -> Vec<String> {
    v.get("Messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            m.get("MessageID")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// What a Postmark bounce record means: hard failures are final, delays
/// and soft bounces are not (Postmark may still deliver).
pub fn postmark_bounce(v: &Value) -> (EventKind, String) {
    let ty = v.get("Type").and_then(Value::as_str).unwrap_or("");
    let inactive = v.get("Inactive").and_then(Value::as_bool).unwrap_or(false);
    let kind = match ty {
        "HardBounce" | "BadEmailAddress" | "ManuallyDeactivated" | "Unknown" => EventKind::Bounced,
        "Blocked" | "SMTPApiError" | "DMARCPolicy" | "SpamComplaint" | "SpamNotification" => {
            EventKind::Rejected
        }
        _ if inactive => EventKind::Bounced,
        _ => EventKind::Deferred, // Transient, DnsError, SoftBounce, AutoResponder, …
    };
    let details = v.get("Details").and_then(Value::as_str).unwrap_or("");
    (
        kind,
        format!("{ty}: {details}")
            .trim_end_matches(": ")
            .to_string(),
    )
}

/// A generic JSON status API. With `events` set, the response (or the
/// array at that pointer) is a list of events; otherwise the document is
/// one event. `status` (and `recipient`) are pointers within an event.
pub fn generic(
    v: &Value,
    key: &str,
    events: Option<&str>,
    status: &str,
    recipient: Option<&str>,
    map: &StatusMap,
) -> Result<Vec<ProviderEvent>, String> {
    let list: Vec<&Value> = match events {
        Some(p) => v
            .pointer(p)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("no event list at {p}"))?
            .iter()
            .collect(),
        None => vec![v],
    };
    let mut out = Vec::new();
    for (i, e) in list.into_iter().enumerate() {
        let Some(st) = e.pointer(status).and_then(|x| match x {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }) else {
            // One document answering about the key must say something: a
            // document without its status proves nothing (never absence).
            // In an event list, events of other kinds carry none.
            if events.is_none() {
                return Err(format!("no status at {status} in the response"));
            }
            continue;
        };
        let kind = match map.classify(&st) {
            RcptStatus::Sent => EventKind::Delivered,
            RcptStatus::Bounced | RcptStatus::Expired | RcptStatus::Rejected => EventKind::Bounced,
            RcptStatus::Deferred => EventKind::Deferred,
        };
        out.push(ProviderEvent {
            key: key.to_string(),
            recipient: recipient
                .and_then(|p| e.pointer(p))
                .and_then(Value::as_str)
                .unwrap_or("*")
                .to_string(),
            kind,
            at: None,
            reference: format!("event {i} of {key}"),
            detail: format!("status={st}"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{FailReason, InFlightReason, Verdict};
    use serde_json::json;

    fn ev(key: &str, rcpt: &str, kind: EventKind, t: i64) -> ProviderEvent {
        ProviderEvent {
            key: key.into(),
            recipient: rcpt.into(),
            kind,
            at: chrono::DateTime::from_timestamp(1_700_000_000 + t, 0),
            reference: format!("e{t}"),
            detail: String::new(),
        }
    }

    #[test]
    fn events_become_verdicts() {
        use EventKind::*;
        let table: Vec<(Vec<ProviderEvent>, Verdict)> = vec![
            (
                vec![ev("k", "a", Accepted, 0)],
                Verdict::InFlight {
                    reason: InFlightReason::Queued,
                },
            ),
            (
                vec![ev("k", "a", Accepted, 0), ev("k", "a", Delivered, 5)],
                Verdict::Delivered,
            ),
            (
                vec![ev("k", "a", Deferred, 1), ev("k", "a", Delivered, 9)],
                Verdict::Delivered,
            ),
            // Out of order: the later-arriving temporary failure is older.
            (
                vec![ev("k", "a", Delivered, 9), ev("k", "a", Deferred, 10)],
                Verdict::Delivered,
            ),
            (
                vec![ev("k", "a", Bounced, 3)],
                Verdict::Failed {
                    reason: FailReason::Bounced,
                },
            ),
            (
                vec![ev("k", "a", Rejected, 3)],
                Verdict::Failed {
                    reason: FailReason::Rejected,
                },
            ),
            (
                vec![ev("k", "a", Delivered, 3), ev("k", "b", Bounced, 4)],
                Verdict::Failed {
                    reason: FailReason::PartialDelivery,
                },
            ),
            (
                vec![ev("k", "a", Deferred, 3)],
                Verdict::InFlight {
                    reason: InFlightReason::Deferred,
                },
            ),
        ];
        for (mut events, want) in table {
            let mut store = TraceStore::new(false);
            let mut refs = Vec::new();
            record(&mut store, &mut events, &mut refs);
            assert_eq!(store.verdict("k", None).verdict, want, "{events:?}");
            assert_eq!(refs.len(), events.len());
        }
    }

    #[test]
    fn mailgun_severity_and_reasons() {
        let page = json!({"items": [
            {"event": "failed", "severity": "temporary", "id": "a", "timestamp": 1.0, "recipient": "r@x",
             "message": {"headers": {"message-id": "m1@x"}}, "delivery-status": {"code": 451, "message": "try later"}},
            {"event": "failed", "severity": "permanent", "reason": "suppress-bounce", "id": "b", "timestamp": 2.0,
             "recipient": "r@x", "message": {"headers": {"message-id": "m2@x"}}},
            {"event": "opened", "id": "c", "timestamp": 3.0, "recipient": "r@x", "message": {"headers": {"message-id": "m3@x"}}}
        ], "paging": {"next": "https://api/next"}});
        let (events, next) = mailgun_page(&page).unwrap();
        assert_eq!(next.as_deref(), Some("https://api/next"));
        assert_eq!(events.len(), 2, "opened is not delivery evidence");
        assert_eq!(events[0].kind, EventKind::Deferred);
        assert_eq!(events[0].detail, "failed (temporary) 451 try later");
        assert_eq!(events[1].kind, EventKind::Rejected);
        let (_, next) = mailgun_page(&json!({"items": [], "paging": {"next": "x"}})).unwrap();
        assert_eq!(next, None, "an empty page ends paging");
        assert!(mailgun_page(&json!({"message": "oops"})).is_err());
    }

    #[test]
    fn postmark_bounce_types() {
        for (ty, inactive, want) in [
            ("HardBounce", true, EventKind::Bounced),
            ("Transient", false, EventKind::Deferred),
            ("SoftBounce", false, EventKind::Deferred),
            ("DnsError", false, EventKind::Deferred),
            ("Blocked", false, EventKind::Rejected),
            ("SoftBounce", true, EventKind::Bounced),
        ] {
            let (k, _) = postmark_bounce(&json!({"Type": ty, "Inactive": inactive}));
            assert_eq!(k, want, "{ty}");
        }
    }

    #[test]
    fn generic_status_documents_and_event_lists() {
        let map = StatusMap {
            sent: vec!["delivered".into()],
            failed: vec!["bounced".into(), "failed".into()],
        };
        let one = generic(
            &json!({"state": {"name": "delivered"}}),
            "k",
            None,
            "/state/name",
            None,
            &map,
        )
        .unwrap();
        assert_eq!(one[0].kind, EventKind::Delivered);
        let many = generic(
            &json!({"events": [{"s": "queued", "to": "a"}, {"s": "failed", "to": "b"}]}),
            "k",
            Some("/events"),
            "/s",
            Some("/to"),
            &map,
        )
        .unwrap();
        assert_eq!(
            many.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::Deferred, EventKind::Bounced]
        );
        assert!(generic(&json!({"x": 1}), "k", Some("/events"), "/s", None, &map).is_err());
        // One document without its status proves nothing: an error, not
        // "no events" (which would read as absence).
        for doc in [
            json!([1, 2, 3]),
            json!({"state": {}}),
            json!({"state": {"name": null}}),
        ] {
            assert!(
                generic(&doc, "k", None, "/state/name", None, &map).is_err(),
                "{doc}"
            );
        }
    }

    #[test]
    fn a_recipient_without_an_outcome_keeps_the_message_in_flight() {
        use EventKind::*;
        let queued = Verdict::InFlight {
            reason: InFlightReason::Queued,
        };
        let table: Vec<(Vec<ProviderEvent>, Verdict)> = vec![
            // One delivered, the other only accepted: not sent yet.
            (
                vec![ev("k", "a@x", Delivered, 3), ev("k", "b@x", Accepted, 1)],
                queued.clone(),
            ),
            // Each has its outcome: delivered.
            (
                vec![
                    ev("k", "a@x", Accepted, 0),
                    ev("k", "b@x", Accepted, 0),
                    ev("k", "A@X", Delivered, 3),
                    ev("k", "b@x", Delivered, 4),
                ],
                Verdict::Delivered,
            ),
            // One bounced, the other still accepted: not settled either.
            (
                vec![ev("k", "a@x", Bounced, 3), ev("k", "b@x", Accepted, 1)],
                queued,
            ),
        ];
        for (mut events, want) in table {
            let mut store = TraceStore::new(false);
            let mut refs = Vec::new();
            record(&mut store, &mut events, &mut refs);
            assert_eq!(store.verdict("k", None).verdict, want, "{events:?}");
        }
    }

    /// SendGrid's Email Activity list (GET /v3/messages) as documented: one
    /// entry per recipient, `msg_id` = the X-Message-Id plus a filter suffix.
    #[test]
    fn sendgrid_two_recipients_one_still_processed_is_not_sent() {
        let doc = json!({"messages": [
            {"from_email": "noreply@app.example.test", "msg_id": "abc123.filterdrecv-1.1.0",
             "subject": "Receipt", "to_email": "a@dest.example.test", "status": "delivered",
             "opens_count": 0, "clicks_count": 0, "last_event_time": "2024-05-14T10:00:05Z"},
            {"from_email": "noreply@app.example.test", "msg_id": "abc123.filterdrecv-1.2.0",
             "subject": "Receipt", "to_email": "b@dest.example.test", "status": "processed",
             "opens_count": 0, "clicks_count": 0, "last_event_time": "2024-05-14T10:00:01Z"}
        ]});
        let mut events = sendgrid_messages(&doc, &["abc123".to_string()]).unwrap();
        assert_eq!(events.len(), 2);
        let mut store = TraceStore::new(false);
        record(&mut store, &mut events, &mut Vec::new());
        let v = store.verdict("abc123", None);
        assert_eq!(
            v.verdict,
            Verdict::InFlight {
                reason: InFlightReason::Queued
            },
            "{}",
            v.detail
        );
        assert!(
            v.detail.contains("1 of 2 recipients not logged"),
            "{}",
            v.detail
        );
    }

    /// Postmark's message details (GET /messages/outbound/{id}/details) as
    /// documented: `Recipients` lists everyone; `MessageEvents` has a
    /// `Delivered` for one of them only.
    #[test]
    fn postmark_two_recipients_one_delivered_is_not_sent() {
        let details = |events: Value| {
            json!({
                "MessageID": "07311c54-0687-4ab9-b034-b54b5bad88ba",
                "To": [{"Email": "a@dest.example.test", "Name": ""}, {"Email": "b@dest.example.test", "Name": ""}],
                "Cc": [], "Bcc": [],
                "Recipients": ["a@dest.example.test", "b@dest.example.test"],
                "ReceivedAt": "2024-05-14T06:00:00.1234567-04:00",
                "Status": "Sent",
                "MessageEvents": events
            })
        };
        let delivered = |rcpt: &str, t: &str| {
            json!({"Recipient": rcpt, "Type": "Delivered", "ReceivedAt": t,
                   "Details": {"DeliveryMessage": "250 OK", "DestinationServer": "mx", "DestinationIP": "192.0.2.1"}})
        };
        let key = "07311c54-0687-4ab9-b034-b54b5bad88ba";
        let one = details(json!([delivered(
            "a@dest.example.test",
            "2024-05-14T06:00:05-04:00"
        )]));
        let (mut events, _) = postmark_details(&one, key);
        let mut store = TraceStore::new(false);
        record(&mut store, &mut events, &mut Vec::new());
        assert_eq!(
            store.verdict(key, None).verdict,
            Verdict::InFlight {
                reason: InFlightReason::Queued
            }
        );
        let both = details(json!([
            delivered("a@dest.example.test", "2024-05-14T06:00:05-04:00"),
            delivered("b@dest.example.test", "2024-05-14T06:00:06-04:00")
        ]));
        let (mut events, _) = postmark_details(&both, key);
        let mut store = TraceStore::new(false);
        record(&mut store, &mut events, &mut Vec::new());
        assert_eq!(store.verdict(key, None).verdict, Verdict::Delivered);
    }
}
