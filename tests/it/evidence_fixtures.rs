//! Verdicts on genuine mail-server captures (tests/fixtures, with manifests
//! of the expected outcome of every message).

use crate::support::*;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use sweeper::adapters::logfile;
use sweeper::config::{LogFormat, LogSourceConfig};
use sweeper::core::evidence::{normalize_key, KeyFilter, TraceStore};
use sweeper::core::model::{FailReason, InFlightReason, Verdict};

pub fn manifest(path: &Path) -> Vec<(String, Value)> {
    let m: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    m["messages"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub fn scan(
    format: LogFormat,
    files: &[std::path::PathBuf],
    wanted: HashSet<String>,
) -> TraceStore {
    let cfg = LogSourceConfig {
        format,
        journal: None,
        paths: vec![],
        utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
        slack: std::time::Duration::from_secs(600),
    };
    // The captures were made on 2026-11-28; read them "a day later".
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let mut parser = logfile::parser_for(&cfg, KeyFilter::Wanted(wanted), now);
    let mut store = TraceStore::new(false);
    logfile::scan_files("fixture", files, parser.as_mut(), &mut store).unwrap();
    store
}

pub fn wanted(messages: &[(String, Value)]) -> HashSet<String> {
    messages
        .iter()
        .map(|(k, _)| normalize_key(k).to_string())
        .collect()
}

fn expected_postfix(kind: &str) -> Verdict {
    match kind {
        "sent" => Verdict::Delivered,
        "bounced" => Verdict::Failed {
            reason: FailReason::Bounced,
        },
        "mixed" => Verdict::Failed {
            reason: FailReason::PartialDelivery,
        },
        "deferred" => Verdict::InFlight {
            reason: InFlightReason::Deferred,
        },
        "expired" => Verdict::Failed {
            reason: FailReason::Expired,
        },
        other => panic!("unknown expectation {other}"),
    }
}

/// Every verdict matches the manifest; returns (matched, false sent).
pub fn check_postfix(store: &TraceStore, messages: &[(String, Value)]) {
    let mut false_sent = Vec::new();
    let mut wrong = Vec::new();
    for (mid, m) in messages {
        let want = expected_postfix(m["expected"].as_str().unwrap());
        let got = store.verdict(mid, None);
        if got.verdict == Verdict::Delivered && want != Verdict::Delivered {
            false_sent.push(mid.clone());
        }
        if got.verdict != want {
            wrong.push(format!(
                "{mid}: want {want:?}, got {:?} ({})",
                got.verdict, got.detail
            ));
            continue;
        }
        if m["expected"] == "mixed" {
            // The failed recipients are named.
            let failed: Vec<String> = m["expected_per_recipient"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, s)| *s != "sent")
                .map(|(r, _)| r.clone())
                .collect();
            let named = got.instances.last().unwrap().failed_recipients();
            assert_eq!(named, failed, "{mid}");
            for r in &failed {
                assert!(
                    got.detail.contains(r),
                    "{mid}: detail names {r}: {}",
                    got.detail
                );
            }
        }
    }
    assert!(false_sent.is_empty(), "false sent: {false_sent:?}");
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn genuine_postfix_log_every_verdict_matches() {
    let dir = fixtures().join("postfix");
    let messages = manifest(&dir.join("manifest.json"));
    assert!(messages.len() >= 200, "{} messages", messages.len());
    let store = scan(
        LogFormat::Postfix,
        &[dir.join("mail.log")],
        wanted(&messages),
    );
    check_postfix(&store, &messages);
}

/// Our own captures (scripts/capture-postfix): retries then sent, message
/// expiry after deferrals, ok+defer partials, alias rewrites (orig_to),
/// connection reuse (conn_use=), and a run with long queue IDs.
#[test]
fn own_postfix_captures_every_verdict_matches() {
    let dir = fixtures().join("postfix-own");
    for (log, manifest_file, min) in [
        ("mail.log", "manifest.json", 60),
        ("mail-long-ids.log", "manifest-long-ids.json", 16),
    ] {
        let messages = manifest(&dir.join(manifest_file));
        assert!(messages.len() >= min, "{manifest_file}");
        let store = scan(LogFormat::Postfix, &[dir.join(log)], wanted(&messages));
        check_postfix(&store, &messages);
        for (mid, m) in &messages {
            let got = store.verdict(mid, None);
            assert_eq!(
                got.instances.last().unwrap().id,
                m["queue_id"].as_str().unwrap(),
                "{mid}"
            );
        }
    }
}

#[test]
fn rotated_postfix_set_with_gz_gives_the_same_verdicts() {
    let dir = fixtures().join("postfix");
    let messages = manifest(&dir.join("manifest.json"));
    let files =
        logfile::resolve("fixture", &[format!("{}/rotated/mail.log*", dir.display())]).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["mail.log.2.gz", "mail.log.1", "mail.log"],
        "oldest first"
    );
    let store = scan(LogFormat::Postfix, &files, wanted(&messages));
    check_postfix(&store, &messages);
    // Some messages really do span two files, and are resolved.
    let spanning = store
        .messages()
        .filter(|(_, m)| {
            let files: HashSet<u32> = m.lines.iter().map(|l| l.file).collect();
            files.len() > 1
        })
        .count();
    assert!(spanning > 0, "no message spans two files");
}

#[test]
fn genuine_exim_log_every_verdict_matches() {
    let dir = fixtures().join("exim");
    let messages = manifest(&dir.join("manifest.json"));
    let store = scan(LogFormat::Exim, &[dir.join("mainlog")], wanted(&messages));
    let mut wrong = Vec::new();
    for (mid, m) in &messages {
        let want = match m["expected"].as_str().unwrap() {
            "sent" => Verdict::Delivered,
            "error" => Verdict::Failed {
                reason: FailReason::Bounced,
            },
            "partial" => Verdict::Failed {
                reason: FailReason::PartialDelivery,
            },
            "pending" => Verdict::InFlight {
                reason: InFlightReason::Deferred,
            },
            other => panic!("unknown {other}"),
        };
        let got = store.verdict(mid, None);
        assert!(
            !(got.verdict == Verdict::Delivered && want != Verdict::Delivered),
            "false sent: {mid}"
        );
        if got.verdict != want {
            wrong.push(format!(
                "{mid}: want {want:?}, got {:?} ({})",
                got.verdict, got.detail
            ));
        }
        assert_eq!(got.instances[0].id, m["exim_id"].as_str().unwrap());
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
