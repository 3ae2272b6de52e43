//! Mail logs from the systemd journal: the genuine Postfix and Exim captures
//! turned into real journal files (Debian's systemd-journal-remote reads
//! them in export format), read back by the machine's own journalctl, give
//! exactly the verdicts the files give; a daemon reading the journal settles
//! a row in the pass after its delivery record arrives, reading only the new
//! records.

use crate::evidence_fixtures::{check_postfix, manifest, scan, wanted};
use crate::sql_sweeps::{config, Backend, Ts};
use crate::support::*;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use sweeper::adapters::journal;
use sweeper::adapters::logfile;
use sweeper::config::{JournalInput, LogFormat, LogSourceConfig};
use sweeper::core::evidence::{KeyFilter, TraceStore};

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// One journal entry in export format.
fn entry(
    at: chrono::DateTime<chrono::Utc>,
    seq: u64,
    ident: &str,
    pid: Option<&str>,
    msg: &str,
) -> String {
    let mut e = format!(
        "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=5e1f00d5e1f00d5e1f00d5e1f00d5e1f\n\
         _HOSTNAME=mail\nSYSLOG_IDENTIFIER={ident}\n",
        at.timestamp_micros(),
        1_000_000 + seq,
    );
    if let Some(p) = pid {
        e.push_str(&format!("_PID={p}\n"));
    }
    e.push_str(&format!("MESSAGE={msg}\n\n"));
    e
}

/// A Postfix syslog line (`Nov 28 22:35:44 mail postfix/smtpd[22067]: …`)
/// as the journal entry Postfix would have written instead (year 2026).
fn postfix_entry(line: &str, seq: u64) -> Option<String> {
    let stamp = line.get(..15)?;
    let at = chrono::NaiveDateTime::parse_from_str(&format!("2026 {stamp}"), "%Y %b %e %H:%M:%S")
        .ok()?
        .and_utc();
    let rest = line.get(16..)?;
    let (_host, rest) = rest.split_once(' ')?;
    let (tag, msg) = rest.split_once(": ")?;
    let (ident, pid) = match tag.split_once('[') {
        Some((i, p)) => (i, Some(p.trim_end_matches(']'))),
        None => (tag, None),
    };
    // Keep file order within a second.
    let at = at + chrono::TimeDelta::microseconds((seq % 1_000_000) as i64);
    Some(entry(at, seq, ident, pid, msg))
}

/// An Exim mainlog line (`2026-11-28 23:07:20 …`) as Exim's journal entry.
fn exim_entry(line: &str, seq: u64) -> Option<String> {
    let at = chrono::NaiveDateTime::parse_from_str(line.get(..19)?, "%Y-%m-%d %H:%M:%S")
        .ok()?
        .and_utc()
        + chrono::TimeDelta::microseconds((seq % 1_000_000) as i64);
    Some(entry(at, seq, "exim", Some("4242"), line.get(20..)?))
}

/// Append entries to a journal file through systemd-journal-remote.
pub fn write_journal(file: &Path, export: &str) {
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-journal-remote runs (run scripts/test, which installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(export.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "systemd-journal-remote: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn journal_of(log: &Path, dir: &Path, to_entry: fn(&str, u64) -> Option<String>) -> (PathBuf, u64) {
    let text = std::fs::read_to_string(log).unwrap();
    let mut export = String::new();
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        if let Some(e) = to_entry(line, i as u64) {
            export.push_str(&e);
            n += 1;
        }
    }
    let file = dir.join(format!("{}.journal", unique("capture")));
    write_journal(&file, &export);
    (file, n)
}

fn read_journal(
    file: &Path,
    format: LogFormat,
    keys: std::collections::HashSet<String>,
) -> (TraceStore, journal::JournalRead, HashMap<u64, String>) {
    let input = JournalInput {
        units: vec![],
        identifiers: vec![],
        directory: None,
        files: vec![file.display().to_string()],
        journalctl: "journalctl".into(),
    };
    let cfg = LogSourceConfig {
        format: format.clone(),
        journal: Some(input.clone()),
        paths: vec![],
        utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
        slack: Duration::from_secs(600),
    };
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let mut parser = logfile::parser_for(&cfg, KeyFilter::Wanted(keys), now);
    let mut store = TraceStore::new(false);
    let mut cursors = HashMap::new();
    let read = journal::read(
        "journal",
        &input,
        &format,
        &journal::From::Start,
        1,
        parser.as_mut(),
        &mut store,
        &mut cursors,
    )
    .unwrap();
    (store, read, cursors)
}

/// Every message's verdict and detail are the file's.
fn same_verdicts(
    from_file: &TraceStore,
    from_journal: &TraceStore,
    messages: &[(String, serde_json::Value)],
) {
    for (mid, _) in messages {
        let f = from_file.verdict(mid, None);
        let j = from_journal.verdict(mid, None);
        assert_eq!((&f.verdict, &f.detail), (&j.verdict, &j.detail), "{mid}");
    }
}

#[test]
fn the_genuine_postfix_capture_read_from_the_journal_gives_the_files_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures().join("postfix");
    let messages = manifest(&fx.join("manifest.json"));
    let (file, n) = journal_of(&fx.join("mail.log"), dir.path(), postfix_entry);
    let (store, read, cursors) = read_journal(&file, LogFormat::Postfix, wanted(&messages));
    assert_eq!(read.stats.lines, n, "every record read");
    check_postfix(&store, &messages);
    let from_file = scan(
        LogFormat::Postfix,
        &[fx.join("mail.log")],
        wanted(&messages),
    );
    same_verdicts(&from_file, &store, &messages);
    // Each record that became evidence is referenced by its cursor.
    assert!(cursors.len() >= messages.len(), "{} cursors", cursors.len());
    assert!(cursors.values().all(|c| c.starts_with("s=")), "{cursors:?}");
}

#[test]
fn the_genuine_exim_capture_read_from_the_journal_gives_the_files_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures().join("exim");
    let messages = manifest(&fx.join("manifest.json"));
    let (file, n) = journal_of(&fx.join("mainlog"), dir.path(), exim_entry);
    let (store, read, _) = read_journal(&file, LogFormat::Exim, wanted(&messages));
    assert_eq!(read.stats.lines, n);
    let from_file = scan(LogFormat::Exim, &[fx.join("mainlog")], wanted(&messages));
    assert!(messages.len() >= 20, "{}", messages.len());
    same_verdicts(&from_file, &store, &messages);
    for (mid, m) in &messages {
        assert_eq!(
            store.verdict(mid, None).instances[0].id,
            m["exim_id"].as_str().unwrap()
        );
    }
}

#[test]
fn a_journal_that_cannot_be_read_is_an_error_not_absence() {
    let input = JournalInput {
        units: vec![],
        identifiers: vec![],
        directory: Some("/nonexistent/journal".into()),
        files: vec![],
        journalctl: "journalctl".into(),
    };
    let mut parser = logfile::parser_for(
        &LogSourceConfig {
            format: LogFormat::Postfix,
            journal: Some(input.clone()),
            paths: vec![],
            utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
            slack: Duration::from_secs(600),
        },
        KeyFilter::All,
        chrono::Utc::now(),
    );
    let broken = JournalInput {
        journalctl: "/nonexistent/journalctl".into(),
        ..input.clone()
    };
    let mut store = TraceStore::new(false);
    let err = journal::read(
        "j",
        &broken,
        &LogFormat::Postfix,
        &journal::From::Start,
        1,
        parser.as_mut(),
        &mut store,
        &mut HashMap::new(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot run /nonexistent/journalctl"),
        "{err}"
    );
}

fn now_entry(mins_ago: i64, seq: u64, ident: &str, msg: &str) -> String {
    let at = chrono::Utc::now() - chrono::TimeDelta::minutes(mins_ago);
    entry(at, seq, ident, Some("300"), msg)
}

fn delivered(qid: &str, mid: &str, mins_ago: i64, seq: u64) -> String {
    [
        now_entry(mins_ago, seq, "postfix/cleanup", &format!("{qid}: message-id=<{mid}>")),
        now_entry(mins_ago, seq + 1, "postfix/qmgr", &format!("{qid}: from=<n@t.example>, size=500, nrcpt=1 (queue active)")),
        now_entry(mins_ago, seq + 2, "postfix/smtp", &format!("{qid}: to=<u@d.example>, relay=mx[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=2.0.0, status=sent (250 ok)")),
        now_entry(mins_ago, seq + 3, "postfix/qmgr", &format!("{qid}: removed")),
    ]
    .concat()
}

fn metric_value(port: u16, series: &str) -> Option<f64> {
    let (code, body) = crate::daemon::get(port, "/metrics")?;
    if code != 200 {
        return None;
    }
    crate::daemon::parse_metrics(&body)
        .get(&crate::daemon::canon(series))
        .copied()
}

#[tokio::test]
async fn a_daemon_reading_the_journal_settles_a_row_when_its_record_arrives_reading_only_new_records(
) {
    journal_daemon(Ts::PgTz).await;
}

#[tokio::test]
async fn a_daemon_on_mariadb_reading_the_journal_settles_a_row_when_its_record_arrives() {
    journal_daemon(Ts::MyDatetime).await;
}

async fn journal_daemon(ts: Ts) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let file = dir.path().join("mail.journal");
    // Rows 5 and 6 are stuck sending (m5, m6); only m5's delivery is in the
    // journal at first.
    write_journal(&file, &delivered("CCCC000005", "m5@t.example", 29, 0));
    let port = crate::daemon::free_port();
    let ns = unique("journal_ns");
    let base = std::fs::read_to_string(config(&b, dir.path(), &ns, 5)).unwrap();
    let start = base.find("  postfix:\n").unwrap();
    let end = base.find("sweeps:").unwrap();
    let text = format!(
        "metrics:\n  listen: 127.0.0.1:{port}\n{}  postfix:\n    kind: journal\n    format: postfix\n    files: [\"{}\"]\n{}",
        &base[..start],
        file.display(),
        &base[end..]
    )
    .replacen("    timestamp_column: updated_at\n", "    timestamp_column: updated_at\n    every: 1s\n", 1);
    let cfg = write(dir.path(), "journal.yaml", &text);
    let checked = stdout(&run(&["check", "-c", cfg.to_str().unwrap()]));
    assert!(
        checked.contains("ok    evidence postfix: postfix records in journal"),
        "{checked}"
    );
    let _d = crate::daemon::spawn_with(&cfg, &["--initial-delay", "0s"]);
    let state = |id: i64| b.state(id);
    let series = "sweeper_evidence_lines_read_total{source=\"postfix\"}";
    wait_until("the first pass", Duration::from_secs(60), || {
        metric_value(port, series).filter(|v| *v >= 4.0)
    });
    let start = std::time::Instant::now();
    while state(5).await != "sent" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "row 5 was not settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state(6).await, "sending", "no record of m6 yet");
    // Let a few passes find nothing new.
    wait_until("three more passes", Duration::from_secs(60), || {
        metric_value(
            port,
            "sweeper_pass_duration_seconds_count{sweep=\"notifications\"}",
        )
        .filter(|v| *v >= 4.0)
    });
    assert_eq!(
        metric_value(port, series),
        Some(4.0),
        "passes with nothing new read nothing"
    );

    // m6's delivery arrives; the next pass reads only those 4 records.
    write_journal(&file, &delivered("CCCC000006", "m6@t.example", 39, 10));
    let start = std::time::Instant::now();
    while state(6).await != "sent" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "row 6 was not settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric_value(port, series),
        Some(8.0),
        "only the new records were read"
    );
    // explain names the records used by their journal cursors (row 7 is
    // still sending; its message never arrives: put one in flight).
    write_journal(
        &file,
        &now_entry(
            49,
            20,
            "postfix/cleanup",
            "CCCC000007: message-id=<m7@t.example>",
        ),
    );
    let text = stdout(&explain(&cfg, "notifications", "7"));
    assert!(
        text.contains(&format!("journal {} cursor s=", file.display())),
        "{text}"
    );
    redis_clear(&mut redis().await, &ns).await;
    b.cleanup().await;
}
