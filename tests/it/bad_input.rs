//! Hostile input outside the config: logs with invalid UTF-8, a 1 MiB line,
//! binary garbage and a truncated `.gz` rotation; job argument columns with
//! NULL, unicode, 1 MiB of text and JSON-looking strings. Clear errors, no
//! panic, nothing lost or changed from a guess.

use crate::support::*;
use serde_json::Value;

/// A SQLite app whose argument columns hold NULL, unicode, 1 MiB of text
/// and JSON-looking text; returns its URL.
fn app(dir: &std::path::Path) -> String {
    let db = dir.join("app.db");
    create_app(&db);
    format!("sqlite://{}", db.display())
}

fn create_app(db: &std::path::Path) {
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let big = "é".repeat(1 << 19); // 1 MiB of UTF-8
        for sql in [
            "CREATE TABLE comments (id INTEGER PRIMARY KEY, user_id INTEGER, note TEXT, \
             notification_state TEXT, updated_at TEXT, message_id TEXT)"
                .to_string(),
            "INSERT INTO comments VALUES (5, 1, NULL, 'sending', datetime('now','-30 minutes'), '<m5@t.example>')".into(),
            "INSERT INTO comments VALUES (11, NULL, NULL, 'pending', datetime('now','-30 minutes'), NULL)".into(),
            "INSERT INTO comments VALUES (12, 2, 'ünïcødé ✓ \"quoted\" \\ back', 'pending', datetime('now','-30 minutes'), NULL)".into(),
            format!("INSERT INTO comments VALUES (13, 3, '{big}', 'pending', datetime('now','-30 minutes'), NULL)"),
            "INSERT INTO comments VALUES (14, 4, '{\"not\": \"json\"}', 'pending', datetime('now','-30 minutes'), NULL)".into(),
        ] {
            sqlx::query(&sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
    });
}

fn config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    write(
        dir,
        "bad.yaml",
        &format!(
            r#"databases: {{app: {{url: "{url}"}}}}
queues: {{jobs: {{kind: jsonl, path: "{jobs}"}}}}
evidence: {{postfix: {{kind: log, format: postfix, paths: ["{logs}/mail.log*"]}}}}
sweeps:
  c:
    database: app
    table: comments
    key: id
    state_column: notification_state
    timestamp_column: updated_at
    pending: {{after: 10m, queue: jobs, job: {{queue: q, class: Job, args: [user_id, note, id]}}}}
    sending: {{after: 15m, evidence: [{{source: postfix, match: message_id}}]}}
"#,
            jobs = dir.join("jobs.jsonl").display(),
            logs = dir.display(),
        ),
    )
}

#[test]
fn garbage_in_logs_and_columns_is_survived_and_a_corrupt_rotation_decides_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = app(dir.path());
    let at = (chrono::Utc::now() - chrono::TimeDelta::minutes(29))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut log: Vec<u8> = Vec::new();
    log.extend_from_slice(b"\xff\xfe garbage \x00\x01 not utf8 \xc3\x28\n");
    log.extend(std::iter::repeat_n(b'x', 1 << 20));
    log.push(b'\n');
    log.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    log.push(b'\n');
    log.extend_from_slice(
        format!(
            "{at} mail postfix/cleanup[1]: AAAA000005: message-id=<m5@t.example>\n\
             {at} mail postfix/smtp[3]: AAAA000005: to=<u5@d.example>, relay=mx[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=2.0.0, status=sent (250 ok)\n\
             {at} mail postfix/qmgr[2]: AAAA000005: removed\n"
        )
        .as_bytes(),
    );
    std::fs::write(dir.path().join("mail.log"), &log).unwrap();
    // A rotation cut off half way.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, "an older line\n".repeat(2000).as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let corrupt = dir.path().join("mail.log.2.gz");
    std::fs::write(&corrupt, &gz[..gz.len() / 2]).unwrap();
    let cfg = config(dir.path(), &url);

    // The corrupt rotation makes the log unreadable: row 5 waits, the file
    // is named, nothing is marked.
    let report = run_json(
        &["once", "-c", cfg.to_str().unwrap(), "--format", "json"],
        1,
    );
    let s = sweep_json(&report, "c");
    let row5 = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "5")
        .unwrap();
    assert_eq!(row5["reason"], "evidence_unavailable", "{s:#}");
    let msg = s["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("mail.log.2.gz"), "{msg}");
    // The argument columns — NULL, unicode, 1 MiB, JSON-looking text —
    // travel into the jobs unchanged.
    let jobs: Vec<Value> = read_jsonl(&dir.path().join("jobs.jsonl"));
    assert_eq!(jobs.len(), 4, "rows 11–14 requeued");
    let by_id = |id: i64| {
        jobs.iter()
            .find(|j| j["args"][2] == id)
            .unwrap_or_else(|| panic!("no job for {id}"))["args"]
            .clone()
    };
    assert_eq!(by_id(11), serde_json::json!([null, null, 11]));
    assert_eq!(by_id(12)[1], Value::from("ünïcødé ✓ \"quoted\" \\ back"));
    assert_eq!(by_id(13)[1].as_str().unwrap().len(), 1 << 20);
    assert_eq!(by_id(14)[1], Value::from("{\"not\": \"json\"}"));

    // Without the corrupt file, the garbage does not hide the delivery.
    std::fs::remove_file(&corrupt).unwrap();
    let report = run_json(
        &["once", "-c", cfg.to_str().unwrap(), "--format", "json"],
        0,
    );
    let s = sweep_json(&report, "c");
    assert_eq!(s["outcomes"]["applied"]["mark_sent"], 1, "{s:#}");
}

/// A log file that disappears between being listed and being read (deleted
/// or rotated away mid-scan) makes the scan fail, naming the file: it is
/// never read as "nothing logged".
#[test]
fn a_log_deleted_or_rotated_away_mid_scan_is_an_error_naming_it() {
    use sweeper::adapters::logfile;
    use sweeper::core::evidence::{KeyFilter, TraceStore};
    let dir = tempfile::tempdir().unwrap();
    let at = (chrono::Utc::now() - chrono::TimeDelta::minutes(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let line = |q: &str, id: &str| {
        format!(
            "{at} mail postfix/cleanup[1]: {q}: message-id=<{id}>\n\
             {at} mail postfix/smtp[3]: {q}: to=<u@d.example>, relay=mx[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=2.0.0, status=sent (250 ok)\n\
             {at} mail postfix/qmgr[2]: {q}: removed\n"
        )
    };
    std::fs::write(dir.path().join("mail.log.1"), line("AAAA000001", "old@x")).unwrap();
    std::fs::write(dir.path().join("mail.log"), line("AAAA000002", "new@x")).unwrap();
    let yaml = format!(
        "databases: {{app: {{url: \"sqlite::memory:\"}}}}\nqueues: {{q: {{kind: jsonl, path: /dev/null}}}}\n\
         evidence: {{postfix: {{kind: log, format: postfix, paths: [\"{}/mail.log*\"]}}}}\n\
         sweeps: {{s: {{database: app, table: t, key: id, state_column: state, timestamp_column: updated_at, \
         pending: {{after: 10m, queue: q, job: {{queue: q, class: C}}}}}}}}\n",
        dir.path().display()
    );
    let cfg = sweeper::config::load_str(&yaml, "t.yaml", &|_| None).unwrap();
    let sweeper::config::EvidenceKind::Log(lcfg) = &cfg.evidence["postfix"].kind else {
        panic!("a log source")
    };
    let now = chrono::Utc::now();
    let files = logfile::resolve("postfix", &lcfg.paths).unwrap();
    assert_eq!(files.len(), 2);
    // Rotated away between listing and reading.
    std::fs::remove_file(dir.path().join("mail.log.1")).unwrap();
    let mut parser = logfile::parser_for(lcfg, KeyFilter::All, now);
    let mut store = TraceStore::new(false);
    let err = logfile::scan_files("postfix", &files, parser.as_mut(), &mut store)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mail.log.1"), "{err}");
}
