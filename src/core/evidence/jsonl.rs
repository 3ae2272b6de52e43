//! JSON-lines evidence (provider webhooks stored as NDJSON): one JSON object
//! per line; JSON pointers name the key, status, and optional recipient and
//! time fields. Lines that are not JSON objects are skipped.
//!
//! In a one-off scan for wanted keys, an Aho-Corasick prefilter over the
//! keys means only candidate lines are parsed as JSON.

use super::custom::StatusMap;
use super::timestamp::{epoch_seconds, parse_instant};
use super::{normalize_key, KeyFilter, LineParser, LineRef, MessageTrace, TraceStore};
use aho_corasick::AhoCorasick;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct JsonlSpec {
    /// JSON pointers (`/message/headers/message-id`).
    pub key: String,
    pub status: String,
    pub recipient: Option<String>,
    pub time: Option<String>,
    pub statuses: StatusMap,
}

pub struct JsonlParser {
    spec: JsonlSpec,
    filter: KeyFilter,
    prefilter: Option<AhoCorasick>,
    keyed: HashMap<String, usize>,
}

impl JsonlParser {
    pub fn new(spec: JsonlSpec, filter: KeyFilter) -> Self {
        let prefilter = match &filter {
            KeyFilter::Wanted(keys) if !keys.is_empty() => AhoCorasick::new(keys.iter()).ok(),
            _ => None,
        };
        JsonlParser {
            spec,
            filter,
            prefilter,
            keyed: HashMap::new(),
        }
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn instant(v: &Value) -> Option<super::Timestamp> {
    match v {
        Value::Number(n) => epoch_seconds(n.as_f64()?),
        Value::String(s) => parse_instant(s),
        _ => None,
    }
}

impl LineParser for JsonlParser {
    fn feed(&mut self, line: &[u8], at: LineRef, store: &mut TraceStore) {
        if let Some(ac) = &self.prefilter {
            if !ac.is_match(line) {
                return;
            }
        }
        let Ok(doc) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        let Some(raw_key) = doc.pointer(&self.spec.key).and_then(scalar_text) else {
            return;
        };
        let key = normalize_key(&raw_key).to_string();
        if key.is_empty() || !self.filter.wants(&key) {
            return;
        }
        let time = self
            .spec
            .time
            .as_deref()
            .and_then(|p| doc.pointer(p))
            .and_then(instant);
        let idx = match self.keyed.get(&key) {
            Some(&i) => i,
            None => {
                let i = store.start(MessageTrace::new(&key, &key, time));
                self.keyed.insert(key.clone(), i);
                i
            }
        };
        store.touch(idx, at, line);
        let Some(status) = doc.pointer(&self.spec.status).and_then(scalar_text) else {
            return;
        };
        let rcpt = self
            .spec
            .recipient
            .as_deref()
            .and_then(|p| doc.pointer(p))
            .and_then(scalar_text)
            .unwrap_or_else(|| "*".to_string());
        let outcome = self.spec.statuses.classify(&status);
        if let Some(m) = store.get_mut(idx) {
            // Events can arrive out of order: never let a later "deferred"
            // overwrite a final outcome for the same recipient.
            let final_already = m
                .recipients
                .iter()
                .any(|r| r.rcpt == rcpt && r.status != super::RcptStatus::Deferred);
            if outcome == super::RcptStatus::Deferred && final_already {
                return;
            }
            m.record(&rcpt, outcome, format!("{}={status}", self.spec.status), at);
        }
    }

    fn reset_in_flight(&mut self) {
        self.keyed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Verdict;
    use std::collections::HashSet;

    #[test]
    fn reads_webhook_events_by_pointer() {
        let spec = JsonlSpec {
            key: "/message/headers/message-id".into(),
            status: "/event".into(),
            recipient: Some("/recipient".into()),
            time: Some("/timestamp".into()),
            statuses: StatusMap {
                sent: vec!["delivered".into()],
                failed: vec!["failed".into()],
            },
        };
        let wanted: HashSet<String> = ["a@x".to_string(), "b@x".to_string()].into();
        let mut p = JsonlParser::new(spec, KeyFilter::Wanted(wanted));
        let mut store = TraceStore::new(false);
        let lines = [
            r#"{"event":"accepted","timestamp":1795905345.1,"recipient":"u@d","message":{"headers":{"message-id":"<a@x>"}}}"#,
            r#"{"event":"delivered","timestamp":1795905346.1,"recipient":"u@d","message":{"headers":{"message-id":"a@x"}}}"#,
            r#"{"event":"accepted","timestamp":1795905346.2,"recipient":"u@d","message":{"headers":{"message-id":"a@x"}}}"#,
            r#"{"event":"failed","recipient":"v@d","message":{"headers":{"message-id":"b@x"}}}"#,
            r#"{"event":"delivered","message":{"headers":{"message-id":"c@x"}}}"#,
            "not json at all a@x",
            r#"["a@x"]"#,
        ];
        for (i, l) in lines.iter().enumerate() {
            let at = LineRef {
                file: 0,
                line: i as u64,
            };
            p.feed(l.as_bytes(), at, &mut store);
        }
        assert_eq!(store.verdict("a@x", None).verdict, Verdict::Delivered);
        assert!(matches!(
            store.verdict("b@x", None).verdict,
            Verdict::Failed { .. }
        ));
        assert_eq!(store.verdict("c@x", None).verdict, Verdict::NotFound);
    }
}
