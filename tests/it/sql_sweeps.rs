//! End-to-end sweeps against real Postgres, MariaDB and SQLite tables, a
//! real Redis and a real node-resque worker: the foundation's acceptance,
//! one test body per behaviour run against each database.

use crate::support::*;
use serde_json::{json, Value};
use sqlx::{AnyPool, Row};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ts {
    PgTz,
    PgNaive,
    SqliteText,
    SqliteInt,
    /// MariaDB, `DATETIME(6)` (naive, read as UTC).
    MyDatetime,
    /// MariaDB, `TIMESTAMP(6)`.
    MyTimestamp,
    /// MariaDB, `BIGINT` unix seconds.
    MyEpoch,
}

impl Ts {
    pub fn mysql(self) -> bool {
        matches!(self, Ts::MyDatetime | Ts::MyTimestamp | Ts::MyEpoch)
    }
}

pub struct Backend {
    pub ts: Ts,
    pub url: String,
    pub pool: AnyPool,
    pub table: String,
    pub ledger: String,
    pub history: String,
}

/// (id, user_id, state, minutes ago, message_id)
type Seed = (i64, Option<i64>, &'static str, i64, Option<&'static str>);

pub const ROWS: &[Seed] = &[
    (1, Some(11), "pending", 2, None),
    (2, Some(12), "pending", 20, None),
    (3, None, "pending", 180, None),
    (4, Some(14), "sending", 5, Some("<m4@t.example>")),
    (5, Some(15), "sending", 30, Some("<m5@t.example>")),
    (6, Some(16), "sending", 40, Some("m6@t.example")),
    (7, Some(17), "sending", 50, Some("<m7@t.example>")),
    (8, Some(18), "sent", 100, None),
    (9, Some(19), "error", 100, None),
    (10, Some(20), "pending", 60 * 48, None),
];

impl Backend {
    pub async fn new(ts: Ts, dir: &Path) -> Backend {
        sqlx::any::install_default_drivers();
        let url = match ts {
            Ts::PgTz | Ts::PgNaive => pg_url(),
            Ts::MyDatetime | Ts::MyTimestamp | Ts::MyEpoch => my_url(),
            Ts::SqliteText | Ts::SqliteInt => {
                format!("sqlite://{}?mode=rwc", dir.join("app.db").display())
            }
        };
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if ts.mysql() {
                        sqlx::query("SET time_zone = '+00:00'")
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("database required at {url}: {e}"));
        let b = Backend {
            ts,
            url: url.replace("?mode=rwc", ""),
            pool,
            table: unique("comments"),
            ledger: unique("ledger"),
            history: unique("history"),
        };
        let ts_type = match ts {
            Ts::PgTz => "timestamptz",
            Ts::PgNaive => "timestamp",
            Ts::SqliteText => "TEXT",
            Ts::SqliteInt => "INTEGER",
            Ts::MyDatetime => "DATETIME(6)",
            Ts::MyTimestamp => "TIMESTAMP(6)",
            Ts::MyEpoch => "BIGINT",
        };
        // MySQL cannot index TEXT and reads it back as a blob: VARCHAR.
        let text = if ts.mysql() { "VARCHAR(255)" } else { "TEXT" };
        b.exec(&format!(
            "CREATE TABLE {} (id BIGINT PRIMARY KEY, user_id BIGINT, notification_state {text} NOT NULL, \
             updated_at {ts_type} NOT NULL, message_id {text})",
            b.table
        ))
        .await;
        for (id, user, state, mins, mid) in ROWS {
            let user = user.map_or("NULL".to_string(), |u| u.to_string());
            let mid = mid.map_or("NULL".to_string(), |m| format!("'{m}'"));
            b.exec(&format!(
                "INSERT INTO {} VALUES ({id}, {user}, '{state}', {}, {mid})",
                b.table,
                b.ago(*mins)
            ))
            .await;
        }
        b
    }

    pub fn ago(&self, mins: i64) -> String {
        match self.ts {
            Ts::PgTz => format!("now() - interval '{mins} minutes'"),
            Ts::PgNaive => format!("(now() AT TIME ZONE 'UTC') - interval '{mins} minutes'"),
            Ts::SqliteText => format!("datetime('now', '-{mins} minutes')"),
            Ts::SqliteInt => format!("CAST(strftime('%s','now') AS INTEGER) - {}", mins * 60),
            // The test pool's session zone is UTC (see `new`).
            Ts::MyDatetime | Ts::MyTimestamp => {
                format!("UTC_TIMESTAMP(6) - INTERVAL {mins} MINUTE")
            }
            Ts::MyEpoch => format!("UNIX_TIMESTAMP() - {}", mins * 60),
        }
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Every row as text, for before/after comparisons.
    pub async fn snapshot(&self) -> Vec<String> {
        let cast = |c: &str| match self.ts {
            Ts::PgTz | Ts::PgNaive => format!("{c}::text"),
            Ts::MyDatetime | Ts::MyTimestamp | Ts::MyEpoch => format!("CAST({c} AS CHAR)"),
            _ => format!("CAST({c} AS TEXT)"),
        };
        let sql = if self.ts.mysql() {
            format!(
                "SELECT CAST(CONCAT({}, '|', COALESCE({}, ''), '|', notification_state, '|', {}, '|', COALESCE(message_id, '')) AS CHAR(1000)) FROM {} ORDER BY id",
                cast("id"),
                cast("user_id"),
                cast("updated_at"),
                self.table
            )
        } else {
            format!(
            "SELECT {} || '|' || COALESCE({}, '') || '|' || notification_state || '|' || {} || '|' || COALESCE(message_id, '') FROM {} ORDER BY id",
            cast("id"),
            cast("user_id"),
            cast("updated_at"),
            self.table
        )
        };
        sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect()
    }

    pub async fn state(&self, id: i64) -> String {
        sqlx::query(&format!(
            "SELECT {} FROM {} WHERE id = {id}",
            if self.ts.mysql() {
                "CAST(notification_state AS CHAR(255))"
            } else {
                "notification_state"
            },
            self.table
        ))
        .fetch_one(&self.pool)
        .await
        .unwrap()
        .get(0)
    }

    pub async fn ledger_exists(&self) -> bool {
        let sql = match self.ts {
            Ts::PgTz | Ts::PgNaive => format!(
                "SELECT CAST(count(*) AS BIGINT) FROM pg_tables WHERE tablename = '{}'",
                self.ledger
            ),
            Ts::MyDatetime | Ts::MyTimestamp | Ts::MyEpoch => format!(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '{}'",
                self.ledger
            ),
            _ => format!(
                "SELECT count(*) FROM sqlite_master WHERE name = '{}'",
                self.ledger
            ),
        };
        let n: i64 = sqlx::query(&sql)
            .fetch_one(&self.pool)
            .await
            .unwrap()
            .get(0);
        n > 0
    }

    pub async fn cleanup(&self) {
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {}", self.table))
            .execute(&self.pool)
            .await;
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {}", self.ledger))
            .execute(&self.pool)
            .await;
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {}", self.history))
            .execute(&self.pool)
            .await;
        self.pool.close().await;
    }
}

fn mail_log(dir: &Path) -> std::path::PathBuf {
    let at = |mins: i64| {
        (chrono::Utc::now() - chrono::TimeDelta::minutes(mins))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let text = format!(
        "{t5} mail postfix/cleanup[1]: AAAA000005: message-id=<m5@t.example>\n\
         {t5} mail postfix/qmgr[2]: AAAA000005: from=<n@t.example>, size=500, nrcpt=1 (queue active)\n\
         {t5} mail postfix/smtp[3]: AAAA000005: to=<u5@d.example>, relay=mx[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=2.0.0, status=sent (250 ok)\n\
         {t5} mail postfix/qmgr[2]: AAAA000005: removed\n\
         {t6} mail postfix/cleanup[1]: AAAA000006: message-id=<m6@t.example>\n\
         {t6} mail postfix/qmgr[2]: AAAA000006: from=<n@t.example>, size=500, nrcpt=1 (queue active)\n\
         {t6} mail postfix/smtp[3]: AAAA000006: to=<u6@d.example>, relay=mx[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=5.1.1, status=bounced (550 5.1.1 user unknown)\n\
         {t6} mail postfix/qmgr[2]: AAAA000006: removed\n",
        t5 = at(29),
        t6 = at(39),
    );
    write(dir, "mail.log", &text)
}

pub fn config(b: &Backend, dir: &Path, namespace: &str, max_attempts: u32) -> std::path::PathBuf {
    let log = mail_log(dir);
    let yaml = format!(
        r#"databases:
  app:
    url: "{url}"
    ledger_table: {ledger}
    history_table: {history}
queues:
  resque:
    kind: resque
    redis: "{redis}"
    namespace: {namespace}
evidence:
  postfix:
    kind: log
    format: postfix
    paths: ["{log}"]
sweeps:
  notifications:
    database: app
    table: {table}
    key: id
    state_column: notification_state
    timestamp_column: updated_at
    pending:
      after: 10m
      queue: resque
      job: {{queue: notify, class: NotifyUser, args: [user_id, id]}}
      max_attempts: {max_attempts}
    sending:
      after: 15m
      evidence: [{{source: postfix, match: message_id}}]
      give_up_after: 24h
      on_no_evidence: leave
"#,
        url = b.url,
        ledger = b.ledger,
        history = b.history,
        redis = redis_url(),
        log = log.display(),
        table = b.table,
    );
    write(dir, "sweeper.yaml", &yaml)
}

fn sorted_args(jobs: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = jobs.iter().map(|j| j["args"].to_string()).collect();
    v.sort();
    v
}

async fn requeues_exactly_the_stale_pending_rows(ts: Ts) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let ns = unique("resque_it");
    let mut r = redis().await;
    let cfg = config(&b, dir.path(), &ns, 2);
    let c = cfg.to_str().unwrap();

    // 1. The dry-run report: decisions, and nothing written anywhere.
    let before = b.snapshot().await;
    let report = run_json(&["report", "-c", c, "--format", "json"], 0);
    let s = sweep_json(&report, "notifications");
    assert_eq!(
        s["totals"],
        json!({"pending": 4, "sending": 4, "error": 1}),
        "{s:#}"
    );
    assert_eq!(s["stuck"], json!({"pending": 3, "sending": 3}), "{s:#}");
    assert_eq!(keys_with(s, "requeue"), ["10", "2", "3"]);
    assert_eq!(keys_with(s, "mark_sent"), ["5"]);
    assert_eq!(keys_with(s, "mark_error"), ["6"]);
    assert_eq!(keys_with(s, "leave"), ["7"]);
    let oldest = s["oldest_stuck_age_seconds"]["pending"].as_f64().unwrap();
    assert!(
        (oldest - 48.0 * 3600.0).abs() < 120.0,
        "oldest pending {oldest}"
    );
    assert_eq!(b.snapshot().await, before, "report changed rows");
    assert!(!b.ledger_exists().await, "report created the ledger");
    assert!(
        redis_snapshot(&mut r, &ns).await.is_empty(),
        "report wrote to Redis"
    );

    // `once --dry-run` is the same plan and also writes nothing.
    let dry = run_json(&["once", "-c", c, "--dry-run", "--format", "json"], 0);
    assert_eq!(
        sweep_json(&dry, "notifications")["decisions"],
        s["decisions"]
    );
    assert_eq!(b.snapshot().await, before, "dry run changed rows");
    assert!(!b.ledger_exists().await);
    assert!(redis_snapshot(&mut r, &ns).await.is_empty());
    let o = run(&["history", "-c", c, "--sweep", "notifications"]);
    assert_eq!(o.status.code(), Some(1), "a dry run makes no history table");
    assert!(stderr(&o).contains("no history table"), "{}", stderr(&o));

    // 2. A real pass applies exactly that plan.
    let done = run_json(&["once", "-c", c, "--format", "json"], 0);
    let s = sweep_json(&done, "notifications");
    assert_eq!(
        s["outcomes"],
        json!({"applied": {"requeue": 3, "mark_sent": 1, "mark_error": 1}, "already_moved": 0, "failed": 0}),
        "{s:#}"
    );
    assert_eq!(b.state(5).await, "sent");
    assert_eq!(b.state(6).await, "error");
    for id in [1, 2, 3, 10] {
        assert_eq!(
            b.state(id).await,
            "pending",
            "requeue must not touch the row"
        );
    }
    assert_eq!(b.state(7).await, "sending");
    // Every applied decision is in the history, with reason and evidence.
    let h = run_json(
        &[
            "history",
            "-c",
            c,
            "--sweep",
            "notifications",
            "--format",
            "json",
        ],
        0,
    );
    let mut got: Vec<(String, String, String, String)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["sweep"], "notifications");
            assert!(!e["pass_id"].as_str().unwrap().is_empty(), "{e}");
            assert!(e["instance_id"].as_str().unwrap().contains(':'), "{e}");
            let change = match (e["to_state"].as_str(), e["queue"].as_str()) {
                (Some(to), None) => to.to_string(),
                (None, Some(q)) => format!("{q}#{}", e["attempt"]),
                other => panic!("{other:?}: {e}"),
            };
            (
                e["key"].as_str().unwrap().to_string(),
                change,
                e["reason"].as_str().unwrap().to_string(),
                e["evidence"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let keys: Vec<(&str, &str)> = got.iter().map(|g| (g.0.as_str(), g.1.as_str())).collect();
    assert_eq!(
        keys,
        [
            ("10", "resque#1"),
            ("2", "resque#1"),
            ("3", "resque#1"),
            ("5", "sent"),
            ("6", "error")
        ],
        "{h:#}"
    );
    let sent = &got[3];
    assert_eq!(sent.2, "delivered", "{h:#}");
    assert!(
        sent.3.starts_with("postfix: delivered (") && sent.3.contains("mail.log:"),
        "evidence with its file:line: {}",
        sent.3
    );
    let one = run_json(
        &[
            "history",
            "-c",
            c,
            "--sweep",
            "notifications",
            "--key",
            "6",
            "--since",
            "1h",
            "--format",
            "json",
        ],
        0,
    );
    assert_eq!(one.as_array().unwrap().len(), 1, "{one:#}");
    // Dry runs over a sweep that now has history add none.
    run_json(&["report", "-c", c, "--format", "json"], 0);
    run_json(&["once", "-c", c, "--dry-run", "--format", "json"], 0);
    let after = run_json(
        &[
            "history",
            "-c",
            c,
            "--sweep",
            "notifications",
            "--format",
            "json",
        ],
        0,
    );
    assert_eq!(after, h, "dry runs wrote history");
    assert_eq!(one[0]["to_state"], "error");
    let text = stdout(&explain(&cfg, "notifications", "5"));
    assert!(
        text.contains("  history     ") && text.contains("sending -> sent  reason delivered"),
        "{text}"
    );
    let queues: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{ns}:queues"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(queues, ["notify"]);

    // A real Resque worker (node-resque) consumes every job, class and args intact.
    let jobs = resque_consume(&ns, "notify", &["NotifyUser"], 3);
    assert!(jobs.iter().all(|j| j["class"] == "NotifyUser"));
    assert_eq!(sorted_args(&jobs), ["[12,2]", "[20,10]", "[null,3]"]);

    // 3. Right after: nothing is requeued again.
    let again = run_json(&["once", "-c", c, "--format", "json"], 0);
    let s = sweep_json(&again, "notifications");
    assert_eq!(keys_with(s, "requeue"), Vec::<String>::new(), "{s:#}");
    let reasons: Vec<&Value> = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "pending")
        .map(|r| &r["reason"])
        .collect();
    assert_eq!(reasons.len(), 3, "rows 2, 3 and 10 are still pending");
    assert!(
        reasons.iter().all(|r| *r == "recently_requeued"),
        "{reasons:?}"
    );
    let left: i64 = redis::cmd("LLEN")
        .arg(format!("{ns}:queue:notify"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(left, 0);

    // 4. Once `after` has passed since the requeue (simulated by ageing the
    // ledger), attempt #2; after that, max_attempts (2) is exhausted.
    let age_ledger = format!(
        "UPDATE {} SET last_requeued_at = last_requeued_at - 3600",
        b.ledger
    );
    b.exec(&age_ledger).await;
    let second = run_json(&["once", "-c", c, "--format", "json"], 0);
    let s = sweep_json(&second, "notifications");
    assert_eq!(keys_with(s, "requeue"), ["10", "2", "3"]);
    assert!(s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["decision"] == "requeue")
        .all(|r| r["attempt"] == 2));
    b.exec(&age_ledger).await;
    let third = run_json(&["once", "-c", c, "--format", "json"], 0);
    let s = sweep_json(&third, "notifications");
    assert_eq!(keys_with(s, "mark_error"), ["10", "2", "3"]);
    assert!(s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["decision"] == "mark_error")
        .all(|r| r["reason"] == "attempts_exhausted"));
    assert_eq!(b.state(2).await, "error");
    assert_eq!(
        b.state(1).await,
        "pending",
        "the fresh row is never touched"
    );

    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

#[tokio::test]
async fn postgres_requeues_exactly_the_stale_pending_rows() {
    requeues_exactly_the_stale_pending_rows(Ts::PgTz).await;
}

#[tokio::test]
async fn sqlite_requeues_exactly_the_stale_pending_rows() {
    requeues_exactly_the_stale_pending_rows(Ts::SqliteText).await;
}

#[tokio::test]
async fn mariadb_requeues_exactly_the_stale_pending_rows() {
    requeues_exactly_the_stale_pending_rows(Ts::MyDatetime).await;
}

/// Naive Postgres timestamps (read as UTC) and SQLite integer timestamps
/// find the same stale rows.
async fn finds_the_same_stale_rows(ts: Ts) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let ns = unique("resque_it");
    let cfg = config(&b, dir.path(), &ns, 5);
    let report = report_json(&cfg);
    let s = sweep_json(&report, "notifications");
    assert_eq!(
        s["stuck"],
        json!({"pending": 3, "sending": 3}),
        "{ts:?}: {s:#}"
    );
    assert_eq!(keys_with(s, "requeue"), ["10", "2", "3"], "{ts:?}");
    assert_eq!(keys_with(s, "mark_sent"), ["5"], "{ts:?}");
    let ages: Vec<i64> = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["age_seconds"].as_i64().unwrap())
        .collect();
    // Ages come from the database clock: row 2 is 20 minutes old.
    let row2 = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "2")
        .unwrap();
    let age2 = row2["age_seconds"].as_i64().unwrap();
    assert!(
        (1190..=1260).contains(&age2),
        "{ts:?}: row 2 age {age2} ({ages:?})"
    );
    b.cleanup().await;
}

#[tokio::test]
async fn postgres_naive_timestamps_are_read_as_utc() {
    finds_the_same_stale_rows(Ts::PgNaive).await;
}

#[tokio::test]
async fn sqlite_integer_timestamps_are_unix_seconds() {
    finds_the_same_stale_rows(Ts::SqliteInt).await;
}

#[tokio::test]
async fn mariadb_timestamp_columns_find_the_same_stale_rows() {
    finds_the_same_stale_rows(Ts::MyTimestamp).await;
}

#[tokio::test]
async fn mariadb_unix_seconds_find_the_same_stale_rows() {
    finds_the_same_stale_rows(Ts::MyEpoch).await;
}

/// Guarded writes: a row that moved between read and write is counted as
/// already moved and never overwritten.
async fn a_row_that_moved_since_it_was_read_is_not_overwritten(ts: Ts) {
    use sweeper::adapters::db::{Db, Target, Transition};
    use sweeper::core::model::{HistoryEntry, RowState};
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let cfg_path = config(&b, dir.path(), "unused", 5);
    let cfg = sweeper::config::load(&cfg_path).unwrap();
    let sweep = cfg.sweep("notifications").unwrap();
    let db = Db::connect(&cfg.databases["app"]).await.unwrap();
    let table = db.sweep_table(sweep).await.unwrap();
    let now = db.now().await.unwrap();
    let rows = db
        .stale_rows(
            &table,
            RowState::Sending,
            now - chrono::TimeDelta::minutes(15),
        )
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["5", "6", "7"]
    );
    // The app's worker finishes row 5 and touches row 6 after we read them.
    b.exec(&format!(
        "UPDATE {} SET notification_state = 'sent' WHERE id = 5",
        b.table
    ))
    .await;
    b.exec(&format!(
        "UPDATE {} SET updated_at = updated_at + {} WHERE id = 6",
        b.table,
        if ts.mysql() {
            "INTERVAL 1 SECOND"
        } else {
            "interval '1 second'"
        }
    ))
    .await;
    db.ensure_tables().await.unwrap();
    let entries: Vec<HistoryEntry> = rows
        .iter()
        .map(|r| HistoryEntry {
            at: now,
            sweep: "notifications".into(),
            key: r.key.clone(),
            from_state: "sending".into(),
            to_state: Some("error".into()),
            queue: None,
            attempt: None,
            reason: "gave_up".into(),
            evidence: String::new(),
            pass_id: "p".into(),
            instance_id: "test:1".into(),
        })
        .collect();
    let changes: Vec<Transition<'_>> = rows
        .iter()
        .zip(&entries)
        .map(|(r, e)| Transition {
            row: r,
            to: Target::Error,
            history: Some(e),
        })
        .collect();
    let applied = db.transition(&table, &changes).await.unwrap();
    assert_eq!(applied, [false, false, true]);
    let history = db
        .history_list("notifications", None, None, 100)
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["7"],
        "history only for the row that changed"
    );
    assert_eq!(b.state(5).await, "sent", "a moved row is never overwritten");
    assert_eq!(b.state(6).await, "sending");
    assert_eq!(b.state(7).await, "error");
    // Same for requeues: the re-read before pushing sees who moved.
    let pending = db
        .stale_rows(
            &table,
            RowState::Pending,
            now - chrono::TimeDelta::minutes(10),
        )
        .await
        .unwrap();
    b.exec(&format!(
        "UPDATE {} SET notification_state = 'sending' WHERE id = 2",
        b.table
    ))
    .await;
    let refs: Vec<&_> = pending.iter().collect();
    let current = db
        .current_versions(&table, RowState::Pending, &refs)
        .await
        .unwrap();
    assert!(!current.contains_key("2"));
    assert_eq!(
        current.get("3"),
        Some(&pending.iter().find(|r| r.key == "3").unwrap().version)
    );
    db.close().await;
    b.cleanup().await;
}

#[tokio::test]
async fn a_postgres_row_that_moved_since_it_was_read_is_not_overwritten() {
    a_row_that_moved_since_it_was_read_is_not_overwritten(Ts::PgTz).await;
}

#[tokio::test]
async fn a_mariadb_row_that_moved_since_it_was_read_is_not_overwritten() {
    a_row_that_moved_since_it_was_read_is_not_overwritten(Ts::MyDatetime).await;
}

/// A column the config names but the table lacks is named, with the
/// columns the table does have.
#[tokio::test]
async fn once_reports_missing_tables_and_columns_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::SqliteText, dir.path()).await;
    let cfg = config(&b, dir.path(), "unused", 5);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("message_id}", "msg_id}");
    let bad = write(dir.path(), "bad.yaml", &text);
    let o = run(&["once", "-c", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("column \"msg_id\" not found in table"),
        "{out}"
    );
    assert!(
        out.contains("message_id"),
        "lists the columns it has: {out}"
    );
    b.cleanup().await;
}

/// `explain` shows one row's state, rule, every matched log line with its
/// file:line, the recipient outcomes, the verdict and the decision — the
/// same decision `report` makes.
#[tokio::test]
async fn explain_shows_evidence_lines_and_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::SqliteText, dir.path()).await;
    let cfg = config(&b, dir.path(), "unused", 5);
    let c = cfg.to_str().unwrap();
    let explain = |key: &str| explain(&cfg, "notifications", key);

    let o = explain("6");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let log = dir.path().join("mail.log").display().to_string();
    for want in [
        "state       sending, since",
        "rule        sending rows older than 15m are settled from evidence (postfix by message_id)",
        "lookup message_id = \"m6@t.example\"",
        &format!("{log}:5  "),
        &format!("{log}:7  "),
        "recipient u6@d.example: bounced (dsn=5.1.1: 550 5.1.1 user unknown)",
        "verdict: failed (bounced)",
        "decision    mark_error because bounced",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }

    let out = stdout(&explain("7"));
    assert!(out.contains("verdict: not_found"), "{out}");
    assert!(
        out.contains("decision    leave because awaiting_evidence"),
        "{out}"
    );

    let out = stdout(&explain("3"));
    assert!(out.contains("requeues    none recorded"), "{out}");
    assert!(
        out.contains("job         NotifyUser [null,3] on notify"),
        "{out}"
    );
    assert!(
        out.contains("decision    requeue (attempt 1) because stale_pending"),
        "{out}"
    );

    let out = stdout(&explain("1"));
    assert!(out.contains("decision    leave because fresh"), "{out}");

    let out = stdout(&explain("8"));
    assert!(out.contains("state       sent"), "{out}");
    assert!(out.contains("decision    none"), "{out}");

    let o = explain("404");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("no row with id = 404"),
        "{}",
        stdout(&o)
    );

    // The decisions agree with the report's.
    let report = run_json(&["report", "-c", c, "--format", "json"], 0);
    let s = sweep_json(&report, "notifications");
    assert_eq!(keys_with(s, "mark_error"), ["6"]);
    b.cleanup().await;
}

/// HA: only one instance acts on a sweep at a time (a Postgres advisory
/// lock, or a lock file beside a SQLite database, per sweep and table); a
/// second instance skips it.
async fn a_second_instance_skips_a_locked_sweep(ts: Ts) {
    use sweeper::adapters::db::Db;
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let cfg_path = config(&b, dir.path(), &unique("ha"), 5);
    let cfg = sweeper::config::load(&cfg_path).unwrap();
    let sweep = cfg.sweep("notifications").unwrap();
    let db = Db::connect(&cfg.databases["app"]).await.unwrap();
    let table = db.sweep_table(sweep).await.unwrap();
    let held = db
        .try_lock(&table)
        .await
        .unwrap()
        .expect("first instance takes the lock");
    assert!(
        db.try_lock(&table).await.unwrap().is_none(),
        "second instance does not"
    );
    let o = run(&["once", "-c", cfg_path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = sweep_json(&v, "notifications");
    assert_eq!(
        s["skipped"],
        "another sweeper instance holds this sweep's lock"
    );
    assert_eq!(
        b.state(5).await,
        "sending",
        "the skipped instance changed nothing"
    );
    held.release().await;
    let again = db.try_lock(&table).await.unwrap();
    assert!(again.is_some(), "released");
    again.unwrap().release().await;
    db.close().await;
    b.cleanup().await;
}

#[tokio::test]
async fn a_second_instance_skips_a_locked_postgres_sweep() {
    a_second_instance_skips_a_locked_sweep(Ts::PgTz).await;
}

#[tokio::test]
async fn a_second_instance_skips_a_locked_sqlite_sweep() {
    a_second_instance_skips_a_locked_sweep(Ts::SqliteText).await;
}

#[tokio::test]
async fn a_second_instance_skips_a_locked_mariadb_sweep() {
    a_second_instance_skips_a_locked_sweep(Ts::MyDatetime).await;
}

/// `check` reaches everything the config names, prints the index to
/// create, and warns when the key is not unique.
#[tokio::test]
async fn check_reaches_everything_and_warns_about_non_unique_keys() {
    check_reaches_everything_and_warns_about_non_unique_keys_on(Ts::PgTz).await;
}

#[tokio::test]
async fn check_reaches_everything_and_warns_about_non_unique_keys_on_mariadb() {
    check_reaches_everything_and_warns_about_non_unique_keys_on(Ts::MyDatetime).await;
}

async fn check_reaches_everything_and_warns_about_non_unique_keys_on(ts: Ts) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let (index, down) = if ts.mysql() {
        (
            "recommended index: CREATE INDEX",
            "mysql://root@127.0.0.1:1/test",
        )
    } else {
        (
            "recommended index: CREATE INDEX CONCURRENTLY",
            "postgres://postgres@127.0.0.1:1/test",
        )
    };
    let cfg = config(&b, dir.path(), &unique("check"), 5);
    let o = run(&["check", "-c", cfg.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    for want in [
        "ok    database app",
        "ok    sweep notifications: table",
        index,
        "ok    queue resque: resque at redis://",
        "ok    evidence postfix: postfix log, 1 file(s)",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    assert!(!out.contains("WARN"), "{out}");
    let loose = unique("loose");
    b.exec(&format!(
        "CREATE TABLE {loose} AS SELECT * FROM {}",
        b.table
    ))
    .await;
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("table: {}", b.table), &format!("table: {loose}"));
    let cfg2 = write(dir.path(), "loose.yaml", &text);
    let out = stdout(&run(&["check", "-c", cfg2.to_str().unwrap()]));
    assert!(out.contains("WARN  sweep notifications: key column id is neither a primary key nor uniquely indexed"), "{out}");
    b.exec(&format!("DROP TABLE {loose}")).await;
    // An unreachable database fails the check, naming it.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(&b.url, down);
    let cfg3 = write(dir.path(), "down.yaml", &text);
    let o = run(&["check", "-c", cfg3.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(&format!("FAIL  cannot connect to database app ({down})")),
        "{}",
        stdout(&o)
    );
    b.cleanup().await;
}

/// Keyset pagination returns every stale row exactly once across pages,
/// including when the count is a multiple of the page size and when keys
/// of different lengths would sort differently as text (9 < 10 < 100).
#[tokio::test]
async fn keyset_pages_return_every_stale_row_once() {
    use sweeper::adapters::db::Db;
    use sweeper::core::model::RowState;
    for ts in [Ts::PgTz, Ts::SqliteText, Ts::MyDatetime] {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::new(ts, dir.path()).await;
        b.exec(&format!("DELETE FROM {}", b.table)).await;
        for chunk in 0..4 {
            let values: Vec<String> = (0..500)
                .map(|i| {
                    // 1…9, 10…99, 100…999, 1000…1999 and beyond.
                    let id = 1 + chunk * 500 + i;
                    format!("({id}, 1, 'sending', {}, NULL)", b.ago(120))
                })
                .collect();
            b.exec(&format!(
                "INSERT INTO {} VALUES {}",
                b.table,
                values.join(", ")
            ))
            .await;
        }
        let cfg_path = config(&b, dir.path(), "unused", 5);
        let cfg = sweeper::config::load(&cfg_path).unwrap();
        let db = Db::connect(&cfg.databases["app"]).await.unwrap();
        let table = db
            .sweep_table(cfg.sweep("notifications").unwrap())
            .await
            .unwrap();
        let now = db.now().await.unwrap();
        let rows = db
            .stale_rows(
                &table,
                RowState::Sending,
                now - chrono::TimeDelta::minutes(15),
            )
            .await
            .unwrap();
        let keys: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!((rows.len(), keys.len()), (2000, 2000), "{ts:?}");
        let numeric: Vec<i64> = rows.iter().map(|r| r.key.parse().unwrap()).collect();
        assert!(
            numeric.windows(2).all(|w| w[0] < w[1]),
            "{ts:?}: keys in numeric order"
        );
        db.close().await;
        b.cleanup().await;
    }
}

/// Rails-style tables: uuid keys, integer enum states, naive timestamps,
/// a schema-qualified table; requeued into a jsonl queue.
#[tokio::test]
async fn uuid_keys_and_integer_enum_states_in_a_schema() {
    let pool = pg().await;
    let schema = unique("billing");
    let q = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::query(&sql)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    };
    q(format!("CREATE SCHEMA {schema}")).await;
    q(format!(
        "CREATE TABLE {schema}.receipts (uuid uuid PRIMARY KEY, status integer NOT NULL, \
         status_changed_at timestamp NOT NULL, amount_cents bigint, note text)"
    ))
    .await;
    q(format!(
        "INSERT INTO {schema}.receipts VALUES \
         ('00000000-0000-0000-0000-000000000001', 0, (now() AT TIME ZONE 'UTC') - interval '1 hour', 1250, 'a'), \
         ('00000000-0000-0000-0000-000000000002', 0, (now() AT TIME ZONE 'UTC') - interval '1 minute', 300, NULL), \
         ('00000000-0000-0000-0000-000000000003', 1, (now() AT TIME ZONE 'UTC') - interval '2 days', 99, NULL), \
         ('00000000-0000-0000-0000-000000000004', 2, (now() AT TIME ZONE 'UTC') - interval '2 days', 1, NULL)"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    let yaml = format!(
        r#"databases:
  app: {{url: "{url}", ledger_table: {schema}.sweeper_ledger}}
queues:
  jobs: {{kind: jsonl, path: "{jobs}"}}
sweeps:
  receipts:
    database: app
    table: {schema}.receipts
    key: uuid
    state_column: status
    timestamp_column: status_changed_at
    states: {{pending: 0, sending: 1, sent: 2, error: 3}}
    pending:
      after: 5m
      queue: jobs
      job: {{queue: mailers, class: ReceiptMailerJob, args: [uuid, amount_cents, note]}}
    sending:
      after: 15m
      give_up_after: 1d
      on_no_evidence: error
"#,
        url = pg_url(),
        jobs = jobs.display(),
    );
    let cfg = write(dir.path(), "rails.yaml", &yaml);
    let done = once_json(&cfg, 0);
    let s = sweep_json(&done, "receipts");
    assert_eq!(
        s["totals"],
        json!({"pending": 2, "sending": 1, "error": 0}),
        "{s:#}"
    );
    assert_eq!(
        keys_with(s, "requeue"),
        ["00000000-0000-0000-0000-000000000001"]
    );
    assert_eq!(
        keys_with(s, "mark_error"),
        ["00000000-0000-0000-0000-000000000003"]
    );
    let lines = read_jsonl(&jobs);
    assert_eq!(lines.len(), 1);
    assert_eq!(
        lines[0]["args"],
        json!(["00000000-0000-0000-0000-000000000001", 1250, "a"])
    );
    let status: i32 = sqlx::query_scalar(&format!(
        "SELECT status FROM {schema}.receipts WHERE uuid = '00000000-0000-0000-0000-000000000003'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, 3, "the integer error state");
    let again = once_json(&cfg, 0);
    assert_eq!(
        keys_with(sweep_json(&again, "receipts"), "requeue"),
        Vec::<String>::new()
    );
    q(format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Postgres `timestamp` columns written in the app's local zone (UTC+2
/// here) and read in the configured `timezone`, as an offset or as a zone
/// name, give the same stale rows and ages as UTC ones.
#[tokio::test]
async fn postgres_naive_timestamps_are_read_in_the_configured_zone() {
    for zone in ["+02:00", "Etc/GMT-2"] {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::new(Ts::PgNaive, dir.path()).await;
        b.exec(&format!(
            "UPDATE {} SET updated_at = updated_at + interval '2 hours'",
            b.table
        ))
        .await;
        let cfg = config(&b, dir.path(), "unused", 5);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "    ledger_table:",
            &format!("    timezone: \"{zone}\"\n    ledger_table:"),
        );
        let cfg = write(dir.path(), "zoned.yaml", &text);
        let report = report_json(&cfg);
        let s = sweep_json(&report, "notifications");
        assert_eq!(
            s["stuck"],
            json!({"pending": 3, "sending": 3}),
            "{zone}: {s:#}"
        );
        assert_eq!(keys_with(s, "requeue"), ["10", "2", "3"], "{zone}");
        let age2 = s["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == "2")
            .unwrap()["age_seconds"]
            .as_i64()
            .unwrap();
        assert!((1190..=1260).contains(&age2), "{zone}: row 2 age {age2}");
        b.cleanup().await;
    }
}
