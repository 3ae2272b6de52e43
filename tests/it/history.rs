//! The audit history table on each database: pruned past retention in
//! batches, and `migrate --print` for DBAs who apply DDL themselves.

use crate::sql_sweeps::{config, Backend, Ts};
use crate::support::*;
use sweeper::adapters::db::Db;
use sweeper::core::model::HistoryEntry;

fn entry(key: usize, at: chrono::DateTime<chrono::Utc>) -> HistoryEntry {
    HistoryEntry {
        at,
        sweep: "notifications".into(),
        key: key.to_string(),
        from_state: "pending".into(),
        to_state: None,
        queue: Some("resque".into()),
        attempt: Some(1),
        reason: "stale_pending".into(),
        evidence: String::new(),
        pass_id: "p".into(),
        instance_id: "test:1".into(),
    }
}

/// 12,000 entries past retention go (more than one delete batch), the
/// recent one stays, read back whole.
async fn old_history_is_pruned_in_batches(ts: Ts) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let cfg_path = config(&b, dir.path(), "unused", 5);
    let cfg = sweeper::config::load(&cfg_path).unwrap();
    let db = Db::connect(&cfg.databases["app"]).await.unwrap();
    db.ensure_tables().await.unwrap();
    let now = db.now().await.unwrap();
    let old: Vec<HistoryEntry> = (0..12_000)
        .map(|i| entry(i, now - chrono::TimeDelta::days(40)))
        .collect();
    db.history_put(&old).await.unwrap();
    let mut recent = entry(99_999, now);
    recent.to_state = Some("sent".into());
    recent.queue = None;
    recent.attempt = None;
    recent.evidence = "postfix: delivered (mail.log:3 mail.log:4)".into();
    db.history_put(std::slice::from_ref(&recent)).await.unwrap();
    let pruned = db
        .history_prune(now - chrono::TimeDelta::days(30))
        .await
        .unwrap();
    assert_eq!(pruned, 12_000, "{ts:?}");
    let left = db
        .history_list("notifications", None, None, 100)
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "{ts:?}");
    let mut got = left[0].clone();
    // Times come back through a float of unix seconds: to the microsecond.
    assert!(
        (got.at - recent.at).num_microseconds().unwrap().abs() <= 1,
        "{ts:?}"
    );
    got.at = recent.at;
    assert_eq!(got, recent, "{ts:?}");
    db.close().await;
    b.cleanup().await;
}

#[tokio::test]
async fn postgres_history_is_pruned_in_batches() {
    old_history_is_pruned_in_batches(Ts::PgTz).await;
}

#[tokio::test]
async fn mariadb_history_is_pruned_in_batches() {
    old_history_is_pruned_in_batches(Ts::MyDatetime).await;
}

#[tokio::test]
async fn sqlite_history_is_pruned_in_batches() {
    old_history_is_pruned_in_batches(Ts::SqliteText).await;
}

/// `migrate --print` prints each database's DDL in its dialect without
/// connecting (the URLs here point at nothing), and the printed DDL is what
/// `migrate` runs: applied by hand, `migrate` then finds nothing to do.
#[tokio::test]
async fn migrate_print_writes_each_dialects_ddl_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "databases:\n  pg: {url: \"postgres://u:secret@127.0.0.1:1/app\"}\n  \
                my: {url: \"mysql://u:secret@127.0.0.1:1/app\", history_table: app.audit}\n  \
                lite: {url: \"sqlite:///nonexistent/dir/app.db\"}\n\
                queues:\n  q: {kind: jsonl, path: /dev/null}\n\
                sweeps:\n  s:\n    database: pg\n    table: t\n    key: id\n    state_column: state\n    \
                timestamp_column: updated_at\n    pending: {after: 10m, queue: q, job: {queue: q, class: C}}\n";
    let cfg = write(dir.path(), "m.yaml", yaml);
    let o = run(&["migrate", "--print", "-c", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "-- database pg (postgres): ledger sweeper_ledger, history sweeper_history",
        "CREATE TABLE IF NOT EXISTS \"sweeper_history\" (id BIGSERIAL PRIMARY KEY",
        "CREATE INDEX IF NOT EXISTS sweeper_history_row_idx ON \"sweeper_history\" (sweep, row_key, at);",
        "-- database my (mysql): ledger sweeper_ledger, history app.audit",
        "CREATE TABLE IF NOT EXISTS `sweeper_ledger` (sweep VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
        "CREATE TABLE IF NOT EXISTS `app`.`audit` (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
        "-- database lite (sqlite)",
        "CREATE TABLE IF NOT EXISTS \"sweeper_history\" (id INTEGER PRIMARY KEY",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    assert!(!out.contains("secret"), "{out}");

    // The printed Postgres DDL, applied by hand, is exactly what migrate needs.
    let history = unique("dba_history");
    let ledger = unique("dba_ledger");
    let yaml = format!(
        "databases:\n  pg: {{url: \"{}\", ledger_table: {ledger}, history_table: {history}}}\n\
         queues:\n  q: {{kind: jsonl, path: /dev/null}}\n\
         sweeps:\n  s:\n    database: pg\n    table: t\n    key: id\n    state_column: state\n    \
         timestamp_column: updated_at\n    pending: {{after: 10m, queue: q, job: {{queue: q, class: C}}}}\n",
        pg_url()
    );
    let cfg = write(dir.path(), "pg.yaml", &yaml);
    let script = stdout(&run(&["migrate", "--print", "-c", cfg.to_str().unwrap()]));
    let pool = pg().await;
    for stmt in script.split(";\n").filter(|s| s.contains("CREATE")) {
        let stmt: String = stmt
            .lines()
            .filter(|l| !l.starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        sqlx::query(&stmt)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    let o = run(&["migrate", "-c", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
    )
    .bind(&history)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        cols,
        [
            "id",
            "at",
            "sweep",
            "row_key",
            "from_state",
            "to_state",
            "queue",
            "attempt",
            "reason",
            "evidence",
            "pass_id",
            "instance_id"
        ]
    );
    for t in [&history, &ledger] {
        sqlx::query(&format!("DROP TABLE {t}"))
            .execute(&pool)
            .await
            .unwrap();
    }
}
