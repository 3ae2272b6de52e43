//! A real worker moves rows `pending → sending → sent` and gives up stale
//! `sending` rows as `error` while sweeper passes run over the same table:
//! no row the worker moved is overwritten, no job is pushed twice, and every
//! write sweeper lost to the worker is counted as `already_moved`. Run on
//! Postgres (`UPDATE … RETURNING` guards) and MariaDB (`SELECT … FOR UPDATE`
//! then `UPDATE`).

use crate::support::*;
use serde_json::Value;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const ROWS: i64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_racing_a_real_worker_overwrite_nothing_and_push_nothing_twice() {
    race(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_racing_a_real_worker_on_mariadb_overwrite_nothing_and_push_nothing_twice() {
    race(true).await;
}

async fn race(mysql: bool) {
    let dir = tempfile::tempdir().unwrap();
    sqlx::any::install_default_drivers();
    let url = if mysql { my_url() } else { pg_url() };
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("database required at {url} (run scripts/test): {e}"));
    let table = unique("race");
    let worker_log = unique("race_worker");
    let ledger = unique("race_ledger");
    let history = unique("race_history");
    let ddl = if mysql {
        [
            format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, user_id bigint, state varchar(16) NOT NULL, \
                 updated_at datetime(6) NOT NULL, message_id varchar(255))"
            ),
            // Odd rows stale pending, even rows stale sending (delivered per the log).
            format!(
                "INSERT INTO {table} SELECT seq, seq, IF(seq % 2 = 1, 'pending', 'sending'), \
                 UTC_TIMESTAMP(6) - INTERVAL 2 HOUR, CONCAT('<r', seq, '@race.example>') FROM seq_1_to_{ROWS}"
            ),
            format!(
                "CREATE TABLE {worker_log} (seq bigint AUTO_INCREMENT PRIMARY KEY, id bigint, to_state varchar(16))"
            ),
        ]
    } else {
        [
            format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, user_id bigint, state text NOT NULL, \
                 updated_at timestamptz NOT NULL, message_id text)"
            ),
            format!(
                "INSERT INTO {table} SELECT g, g, CASE WHEN g % 2 = 1 THEN 'pending' ELSE 'sending' END, \
                 now() - interval '2 hours', '<r' || g || '@race.example>' FROM generate_series(1, {ROWS}) g"
            ),
            format!("CREATE TABLE {worker_log} (seq bigserial PRIMARY KEY, id bigint, to_state text)"),
        ]
    };
    for sql in ddl {
        sqlx::query(&sql)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // The worker's statements in the database's own dialect.
    let (move_sql, log_sql) = if mysql {
        (
            format!("UPDATE {table} SET state = ?, updated_at = UTC_TIMESTAMP(6) WHERE id = ? AND state = ?"),
            format!("INSERT INTO {worker_log} (id, to_state) VALUES (?, ?)"),
        )
    } else {
        (
            format!(
                "UPDATE {table} SET state = $1, updated_at = now() WHERE id = $2 AND state = $3"
            ),
            format!("INSERT INTO {worker_log} (id, to_state) VALUES ($1, $2)"),
        )
    };
    let at = (chrono::Utc::now() - chrono::TimeDelta::minutes(100))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut log = String::new();
    for g in (2..=ROWS).step_by(2) {
        let q = format!("C{g:09X}");
        log.push_str(&format!(
            "{at} mail postfix/cleanup[1]: {q}: message-id=<r{g}@race.example>\n\
             {at} mail postfix/smtp[3]: {q}: to=<u{g}@d.example>, relay=mx[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=2.0.0, status=sent (250 ok)\n\
             {at} mail postfix/qmgr[2]: {q}: removed\n"
        ));
    }
    let log_path = write(dir.path(), "mail.log", &log);
    let jobs = dir.path().join("jobs.jsonl");
    let cfg = write(
        dir.path(),
        "race.yaml",
        &format!(
            r#"databases:
  app: {{url: "{url}", ledger_table: {ledger}, history_table: {history}}}
queues:
  jobs: {{kind: jsonl, path: "{jobs}"}}
evidence:
  postfix: {{kind: log, format: postfix, paths: ["{log}"]}}
sweeps:
  race:
    database: app
    table: {table}
    key: id
    state_column: state
    timestamp_column: updated_at
    pending:
      after: 10m
      queue: jobs
      job: {{queue: q, class: Job, args: [id]}}
    sending:
      after: 15m
      evidence: [{{source: postfix, match: message_id}}]
      give_up_after: 24h
    limits: {{batch_size: 7, max_actions: 100000}}
"#,
            jobs = jobs.display(),
            log = log_path.display(),
        ),
    );

    // The app's worker: guarded transitions, each logged in its transaction.
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let pool = pool.clone();
        let stop = stop.clone();
        let (move_sql, log_sql) = (move_sql.clone(), log_sql.clone());
        tokio::spawn(async move {
            let mut moves = 0u64;
            let mut id = 1i64;
            while !stop.load(Ordering::SeqCst) {
                let (from, to) = if id % 2 == 1 {
                    ("pending", "sending")
                } else {
                    ("sending", "error")
                };
                for (from, to) in [(from, to), ("sending", "sent")] {
                    if id % 2 == 0 && to == "sent" {
                        continue;
                    }
                    let mut tx = pool.begin().await.unwrap();
                    let n = sqlx::query(&move_sql)
                        .bind(to)
                        .bind(id)
                        .bind(from)
                        .execute(&mut *tx)
                        .await
                        .unwrap()
                        .rows_affected();
                    if n == 1 {
                        sqlx::query(&log_sql)
                            .bind(id)
                            .bind(to)
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                        moves += 1;
                    }
                    tx.commit().await.unwrap();
                }
                // Visit every row, in an order unlike sweeper's key order.
                id = (id + 36) % ROWS + 1;
                tokio::task::yield_now().await;
            }
            moves
        })
    };

    let mut already_moved = 0u64;
    let mut applied = 0u64;
    for _ in 0..5 {
        let report = tokio::task::spawn_blocking({
            let cfg = cfg.clone();
            move || once_json(&cfg, 0)
        })
        .await
        .unwrap();
        let s = sweep_json(&report, "race");
        already_moved += s["outcomes"]["already_moved"].as_u64().unwrap();
        applied += s["outcomes"]["applied"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>();
    }
    stop.store(true, Ordering::SeqCst);
    let moves = worker.await.unwrap();
    assert!(moves > 50, "the worker moved {moves} rows");
    assert!(applied > 50, "sweeper applied {applied} writes");

    // Every row the worker moved is as the worker last left it.
    let last: HashMap<i64, String> = sqlx::query(&format!(
        "SELECT w.id, w.to_state FROM {worker_log} w JOIN \
         (SELECT id, max(seq) AS last FROM {worker_log} GROUP BY id) l ON w.id = l.id AND w.seq = l.last"
    ))
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let now: BTreeMap<i64, String> = sqlx::query(&format!("SELECT id, state FROM {table}"))
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let overwritten: Vec<String> = last
        .iter()
        .filter(|(id, state)| now[id] != **state)
        .map(|(id, state)| format!("{id}: worker {state}, now {}", now[id]))
        .collect();
    assert!(overwritten.is_empty(), "overwritten: {overwritten:?}");

    // No job pushed twice.
    let text = std::fs::read_to_string(&jobs).unwrap_or_default();
    let mut pushes: HashMap<i64, u32> = HashMap::new();
    for l in text.lines() {
        let j: Value = serde_json::from_str(l).unwrap();
        *pushes.entry(j["args"][0].as_i64().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = pushes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "pushed twice: {twice:?}");
    assert!(!pushes.is_empty());
    // Lost races are counted as `already_moved`, never as failures (every
    // pass above exited 0); how many depends on timing.
    let db = if mysql { "MariaDB" } else { "Postgres" };
    eprintln!(
        "{db}: {applied} writes applied, {already_moved} lost to the worker, {moves} worker moves"
    );

    // Every write sweeper applied is in the history, once.
    let entries: i64 = sqlx::query(&format!(
        "SELECT count(*) FROM {history} WHERE sweep = 'race'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap()
    .get(0);
    assert_eq!(
        entries as u64, applied,
        "one history entry per applied write"
    );

    for t in [&table, &worker_log, &ledger, &history] {
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {t}"))
            .execute(&pool)
            .await;
    }
}
