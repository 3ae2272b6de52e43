//! Every log-line parser (Postfix, Exim, custom regexes, JSON lines) fed
//! arbitrary bytes, line by line, then asked for verdicts: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use sweeper::config::{EvidenceKind, LogSourceConfig};
use sweeper::core::evidence::{KeyFilter, LineRef, TraceStore};

fn sources() -> &'static Vec<LogSourceConfig> {
    static SOURCES: OnceLock<Vec<LogSourceConfig>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let yaml = r#"databases: {app: {url: "sqlite::memory:"}}
queues: {q: {kind: jsonl, path: /dev/null}}
evidence:
  postfix: {kind: log, format: postfix, paths: [/dev/null]}
  exim: {kind: log, format: exim, paths: [/dev/null]}
  custom:
    kind: log
    format: custom
    paths: [/dev/null]
    patterns:
      - 'queued (?P<join>[0-9a-f]+) for <(?P<key>[^>]+)>'
      - 'job (?P<join>[0-9a-f]+) to=(?P<rcpt>\S+) result=(?P<status>\w+)'
    sent: [ok, delivered]
    failed: [rejected, bounced]
  jsonl:
    kind: log
    format: jsonl
    paths: [/dev/null]
    key_field: /message/headers/message-id
    status_field: /event
    recipient_field: /recipient
    time_field: /timestamp
    sent: [delivered]
    failed: [failed, rejected]
sweeps:
  s:
    database: app
    table: t
    key: id
    state_column: state
    timestamp_column: updated_at
    pending: {after: 10m, queue: q, job: {queue: q, class: C}}
"#;
        let cfg = sweeper::config::load_str(yaml, "fuzz.yaml", &|_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        cfg.evidence
            .values()
            .filter_map(|e| match &e.kind {
                EvidenceKind::Log(l) => Some(l.clone()),
                EvidenceKind::Provider(_) | EvidenceKind::Store(_) => None,
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    for cfg in sources() {
        let mut parser = sweeper::adapters::logfile::parser_for(cfg, KeyFilter::All, now);
        let mut store = TraceStore::new(true);
        for (i, line) in data.split(|b| *b == b'\n').enumerate() {
            parser.feed(
                line,
                LineRef {
                    file: 0,
                    line: i as u64 + 1,
                },
                &mut store,
            );
        }
        let keys: Vec<String> = store.messages().map(|(_, m)| m.key.clone()).collect();
        for k in keys {
            let _ = store.verdict(&k, None);
            let _ = store.verdict(&k, Some(now));
        }
        store.prune(now);
    }
});
