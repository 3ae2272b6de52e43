//! MySQL/MariaDB app databases beyond the shared suites (`sql_sweeps`,
//! `failover`): a Rails-shaped schema read in a configured zone, `check`
//! and `migrate`, four concurrent passes over 10,000 rows, and a pass that
//! loses its lock's connection.

use crate::failover::status_api;
use crate::support::*;
use serde_json::json;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::Row;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A MariaDB pool on the test database; panics with instructions when
/// MariaDB is not there.
pub async fn mariadb() -> MySqlPool {
    let url = my_url();
    MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET time_zone = '+00:00'")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "MariaDB is required at {url} (run scripts/test, which starts it; or set SWEEPER_TEST_MYSQL_URL): {e}"
            )
        })
}

async fn exec(pool: &MySqlPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A Rails-shaped table (`bigint` auto-increment ids, `datetime(6)`
/// timestamps written in the app's zone, integer enum states) addressed as
/// `schema.table`: `check` prints MySQL DDL, `migrate` makes the ledger,
/// a dry run writes nothing, a real pass requeues and settles, and the
/// rows' ages are right in the configured zone.
#[tokio::test]
async fn a_rails_shaped_table_in_a_configured_zone_is_swept() {
    let pool = mariadb().await;
    let table = unique("receipts");
    let ledger = unique("ledger");
    exec(
        &pool,
        &format!(
            "CREATE TABLE test.{table} (id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             user_id bigint, status tinyint NOT NULL DEFAULT 0, amount decimal(10,2), \
             created_at datetime(6) NOT NULL, updated_at datetime(6) NOT NULL)"
        ),
    )
    .await;
    // The app writes local time at UTC+02:00 (e.g. Rails with
    // default_timezone :local): 70 and 2 minutes ago, and 2 days ago.
    let local = |mins: i64| format!("UTC_TIMESTAMP(6) + INTERVAL 2 HOUR - INTERVAL {mins} MINUTE");
    exec(
        &pool,
        &format!(
            "INSERT INTO test.{table} (user_id, status, amount, created_at, updated_at) VALUES \
             (41, 0, 12.50, {a}, {a}), (42, 0, 3.00, {b}, {b}), (43, 1, 1.00, {c}, {c}), (44, 2, 9.99, {c}, {c})",
            a = local(70),
            b = local(2),
            c = local(60 * 48),
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    let yaml = format!(
        r#"databases:
  app:
    url: "{url}"
    ledger_table: test.{ledger}
    timezone: "+02:00"
queues:
  jobs: {{kind: jsonl, path: "{jobs}"}}
sweeps:
  receipts:
    database: app
    table: test.{table}
    key: id
    state_column: status
    timestamp_column: updated_at
    states: {{pending: 0, sending: 1, sent: 2, error: 3}}
    pending:
      after: 10m
      queue: jobs
      job: {{queue: mailers, class: ReceiptMailerJob, args: [id, user_id, amount]}}
    sending:
      after: 15m
      give_up_after: 1d
      on_no_evidence: error
"#,
        url = my_url().replace("mysql://", "mariadb://"),
        jobs = jobs.display(),
    );
    let cfg = write(dir.path(), "rails.yaml", &yaml);
    let c = cfg.to_str().unwrap();

    let o = run(&["check", "-c", c]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    for want in [
        "ok    database app",
        "ok    sweep receipts: table",
        &format!(
            "CREATE INDEX {table}_sweeper_idx ON `test`.`{table}` (`status`, `id`, `updated_at`) ALGORITHM=INPLACE LOCK=NONE;"
        ),
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    assert!(!out.contains("WARN"), "{out}");

    // A dry run: the plan, with ages read in +02:00, and nothing written.
    let report = report_json(&cfg);
    let s = sweep_json(&report, "receipts");
    assert_eq!(
        s["totals"],
        json!({"pending": 2, "sending": 1, "error": 0}),
        "{s:#}"
    );
    assert_eq!(keys_with(s, "requeue"), ["1"], "{s:#}");
    assert_eq!(keys_with(s, "mark_error"), ["3"], "{s:#}");
    let age = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "1")
        .unwrap()["age_seconds"]
        .as_i64()
        .unwrap();
    assert!(
        (4180..=4260).contains(&age),
        "row 1 is 70 minutes old: {age}"
    );
    let ledger_tables: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'test' AND table_name = '{ledger}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ledger_tables, 0, "a dry run creates no ledger");

    let o = run(&["migrate", "-c", c]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ledger_tables: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'test' AND table_name = '{ledger}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ledger_tables, 1, "migrate creates the ledger");

    let done = once_json(&cfg, 0);
    let s = sweep_json(&done, "receipts");
    assert_eq!(
        s["outcomes"],
        json!({"applied": {"requeue": 1, "mark_error": 1}, "already_moved": 0, "failed": 0}),
        "{s:#}"
    );
    let lines = read_jsonl(&jobs);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["class"], "ReceiptMailerJob");
    // MariaDB's JSON_ARRAY writes a decimal as a JSON number.
    assert_eq!(lines[0]["args"], json!([1, 41, 12.50]));
    let states: Vec<(i64, i8, String)> = sqlx::query(&format!(
        "SELECT id, status, CAST(updated_at AS CHAR) FROM test.{table} ORDER BY id"
    ))
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    assert_eq!(
        states.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        [(1, 0), (2, 0), (3, 3), (4, 2)],
        "only row 3 changed (to the integer error state)"
    );
    assert!(
        states.iter().all(|s| s.2.contains('.')),
        "fractional seconds kept: {states:?}"
    );
    let ledger_rows: Vec<(String, i64)> = sqlx::query(&format!(
        "SELECT CAST(row_key AS CHAR(191)), attempts FROM test.{ledger} WHERE sweep = 'receipts'"
    ))
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(ledger_rows, [("1".to_string(), 1)]);
    let again = once_json(&cfg, 0);
    assert_eq!(
        keys_with(sweep_json(&again, "receipts"), "requeue"),
        Vec::<String>::new()
    );
    exec(&pool, &format!("DROP TABLE test.{table}, test.{ledger}")).await;
}

/// An unknown zone name is refused when sweeper connects, naming it.
#[tokio::test]
async fn an_unknown_zone_is_refused_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "databases:\n  app: {{url: \"{}\", timezone: Nowhere/Atlantis}}\n\
         queues:\n  q: {{kind: jsonl, path: /dev/null}}\n\
         sweeps:\n  s:\n    database: app\n    table: t\n    key: id\n    state_column: state\n    \
         timestamp_column: updated_at\n    pending: {{after: 10m, queue: q, job: {{queue: q, class: C}}}}\n",
        my_url()
    );
    let cfg = write(dir.path(), "tz.yaml", &yaml);
    let o = run(&["migrate", "-c", cfg.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("database app: setting the session time zone to \"Nowhere/Atlantis\"")
            && err.contains("Unknown or incorrect time zone"),
        "{err}"
    );
}

/// Database flavours of the concurrency acceptance.
#[derive(Clone, Copy, Debug)]
enum Flavour {
    Postgres,
    MariaDb,
}

/// Four `sweeper once` at the same time over 10,000 stale pending rows:
/// every row is pushed exactly once (the Redis list holds each id once)
/// and the ledger holds one attempt per row.
async fn four_concurrent_passes_push_every_row_once(flavour: Flavour) {
    const N: i64 = 10_000;
    sqlx::any::install_default_drivers();
    let url = match flavour {
        Flavour::Postgres => pg_url(),
        Flavour::MariaDb => my_url(),
    };
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("database required at {url}: {e}"));
    let run_sql = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::query(&sql)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    };
    let table = unique("storm");
    let ledger = unique("storm_ledger");
    let history = unique("storm_history");
    match flavour {
        Flavour::Postgres => {
            run_sql(format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, state text NOT NULL, updated_at timestamptz NOT NULL)"
            ))
            .await;
            run_sql(format!(
                "INSERT INTO {table} SELECT g, 'pending', now() - interval '1 hour' FROM generate_series(1, {N}) g"
            ))
            .await;
        }
        Flavour::MariaDb => {
            // A MySQL ENUM state column and TIMESTAMP(6).
            run_sql(format!(
                "CREATE TABLE {table} (id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                 state ENUM('pending','sending','sent','error') NOT NULL, updated_at timestamp(6) NOT NULL)"
            ))
            .await;
            run_sql(format!(
                "INSERT INTO {table} (id, state, updated_at) SELECT seq, 'pending', NOW(6) - INTERVAL 1 HOUR FROM seq_1_to_{N}"
            ))
            .await;
        }
    }
    let ns = unique("storm");
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"databases:
  app: {{url: "{url}", ledger_table: {ledger}, history_table: {history}}}
queues:
  resque: {{kind: resque, redis: "{redis}", namespace: {ns}}}
sweeps:
  storm:
    database: app
    table: {table}
    key: id
    state_column: state
    timestamp_column: updated_at
    pending:
      after: 10m
      queue: resque
      job: {{queue: notify, class: NotifyUser, args: [id]}}
    limits: {{max_actions: 100000}}
"#,
        redis = redis_url(),
    );
    let cfg = write(dir.path(), "storm.yaml", &yaml);
    let c = cfg.to_str().unwrap().to_string();
    let children: Vec<_> = (0..4)
        .map(|_| {
            sweeper()
                .args(["once", "-c", &c, "--format", "json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut acted: i64 = 0;
    for child in children {
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let s = sweep_json(&v, "storm");
        if s["outcomes"]["applied"]["requeue"].as_u64().unwrap_or(0) > 0 {
            acted += 1;
        }
    }
    assert!(acted >= 1, "{flavour:?}: some pass requeued");
    let mut r = redis().await;
    let jobs: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{ns}:queue:notify"))
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    let ids: std::collections::BTreeSet<i64> = jobs
        .iter()
        .map(|j| {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            v["args"][0].as_i64().unwrap()
        })
        .collect();
    assert_eq!(
        (jobs.len(), ids.len()),
        (N as usize, N as usize),
        "{flavour:?}: every row pushed exactly once"
    );
    assert_eq!(ids.first().copied(), Some(1));
    assert_eq!(ids.last().copied(), Some(N));
    let row = sqlx::query(&format!(
        "SELECT count(*), min(attempts), max(attempts) FROM {ledger} WHERE sweep = 'storm'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    let (count, min, max): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((count, min, max), (N, 1, 1), "{flavour:?}: ledger");
    let row = sqlx::query(&format!(
        "SELECT count(*), count(DISTINCT row_key), count(DISTINCT instance_id) FROM {history} \
         WHERE sweep = 'storm' AND queue = 'resque' AND attempt = 1 AND reason = 'stale_pending'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    let (entries, keys, instances): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (entries, keys),
        (N, N),
        "{flavour:?}: one history entry per requeue"
    );
    assert_eq!(
        instances, acted,
        "{flavour:?}: entries name the passes that acted"
    );
    redis_clear(&mut r, &ns).await;
    run_sql(format!("DROP TABLE {table}")).await;
    run_sql(format!("DROP TABLE {ledger}")).await;
    run_sql(format!("DROP TABLE {history}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_passes_on_postgres_push_every_row_once() {
    four_concurrent_passes_push_every_row_once(Flavour::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_passes_on_mariadb_push_every_row_once() {
    four_concurrent_passes_push_every_row_once(Flavour::MariaDb).await;
}

/// The connection holding a sweep's `GET_LOCK` dies mid-pass (killed on
/// the server while the page's evidence is being asked): the page in hand
/// is not written (the lock is re-checked before a page's writes), and the
/// pass stops there with a lock error, leaving the rest to whoever holds
/// the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_loses_its_lock_connection_writes_nothing_more() {
    let pool = mariadb().await;
    let table = unique("lost");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, state varchar(16) NOT NULL, \
             updated_at datetime(6) NOT NULL)"
        ),
    )
    .await;
    exec(
        &pool,
        &format!(
            "INSERT INTO {table} VALUES (1, 'sending', UTC_TIMESTAMP(6) - INTERVAL 1 HOUR), \
             (2, 'sending', UTC_TIMESTAMP(6) - INTERVAL 1 HOUR), (3, 'sending', UTC_TIMESTAMP(6) - INTERVAL 1 HOUR)"
        ),
    )
    .await;
    let hang = Arc::new(AtomicBool::new(true));
    let asked = Arc::new(AtomicUsize::new(0));
    let api = status_api(hang.clone(), asked.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = unique("lost_ledger");
    let yaml = format!(
        r#"databases:
  app: {{url: "{url}", ledger_table: {ledger}}}
evidence:
  status:
    kind: http
    url: "http://127.0.0.1:{api}/status/{{key}}"
    status_pointer: /status
    sent: [delivered]
    retries: 0
    timeout: 120s
sweeps:
  lost:
    database: app
    table: {table}
    key: id
    state_column: state
    timestamp_column: updated_at
    sending:
      after: 15m
      evidence: [{{source: status, match: id}}]
      give_up_after: 1d
      on_no_evidence: leave
    limits: {{batch_size: 1}}
"#,
        url = my_url(),
    );
    let cfg = write(dir.path(), "lost.yaml", &yaml);
    let child = sweeper()
        .args(["once", "-c", cfg.to_str().unwrap(), "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while asked.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pass never asked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Kill the connection that holds the sweep's lock, then let the
    // evidence answer.
    let sweeper_cfg = sweeper::config::load(&cfg).unwrap();
    let db = sweeper::adapters::db::Db::connect(&sweeper_cfg.databases["app"])
        .await
        .unwrap();
    let t = db
        .sweep_table(sweeper_cfg.sweep("lost").unwrap())
        .await
        .unwrap();
    let name = db.mysql_lock_name(&t);
    let holder: Option<i64> = sqlx::query_scalar("SELECT CAST(IS_USED_LOCK(?) AS SIGNED)")
        .bind(&name)
        .fetch_one(&pool)
        .await
        .unwrap();
    let holder = holder.expect("the pass holds the sweep's lock");
    exec(&pool, &format!("KILL {holder}")).await;
    hang.store(false, Ordering::SeqCst);
    let o = child.wait_with_output().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o)));
    let s = sweep_json(&v, "lost");
    let errors = s["errors"].to_string();
    assert!(
        errors.contains("\"lock\"") && errors.contains("lock was lost"),
        "{s:#}"
    );
    let sent: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE state = 'sent'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(sent, 0, "nothing written after the lock was lost: {s:#}");
    assert_eq!(
        s["outcomes"]["failed"], 1,
        "the page in hand failed at the lock: {s:#}"
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "no later page was asked about"
    );
    db.close().await;
    exec(&pool, &format!("DROP TABLE {table}")).await;
    let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {ledger}"))
        .execute(&pool)
        .await;
}

/// Hostile key values on MariaDB (whose string literals also read
/// backslash escapes) are bound, never spliced: each touches its own row;
/// keys differing only in case stay apart in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_key_values_are_bound_and_touch_only_their_own_row_on_mariadb() {
    let pool = mariadb().await;
    let (table, ledger, history) = (
        unique("guard_keys"),
        unique("guard_ledger"),
        unique("guard_history"),
    );
    exec(
        &pool,
        &format!(
            "CREATE TABLE {table} (id varchar(64) COLLATE utf8mb4_bin PRIMARY KEY, \
             state varchar(16) NOT NULL, updated_at datetime(6) NOT NULL)"
        ),
    )
    .await;
    let hostile = [
        "1' OR '1'='1",
        "x\"; DROP TABLE t; --",
        "ü\\'",
        "\\",
        "%",
        "_",
        "a",
        "A",
    ];
    for k in hostile {
        sqlx::query(&format!(
            "INSERT INTO {table} VALUES (?, 'pending', UTC_TIMESTAMP(6) - INTERVAL 1 HOUR)"
        ))
        .bind(k)
        .execute(&pool)
        .await
        .unwrap();
    }
    exec(
        &pool,
        &format!(
            "INSERT INTO {table} VALUES ('1', 'pending', UTC_TIMESTAMP(6)), \
             ('2', 'sent', UTC_TIMESTAMP(6) - INTERVAL 1 HOUR)"
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    let yaml = format!(
        r#"databases:
  app: {{url: "{url}", ledger_table: {ledger}, history_table: {history}}}
queues:
  jobs: {{kind: jsonl, path: "{jobs}"}}
sweeps:
  guard:
    database: app
    table: {table}
    key: id
    state_column: state
    timestamp_column: updated_at
    pending:
      after: 10m
      queue: jobs
      job: {{queue: q, class: Job, args: [id]}}
"#,
        url = my_url(),
        jobs = jobs.display(),
    );
    let cfg = write(dir.path(), "keys.yaml", &yaml);
    let report = once_json(&cfg, 0);
    let s = sweep_json(&report, "guard");
    assert_eq!(s["outcomes"]["applied"]["requeue"], hostile.len(), "{s:#}");
    let mut want: Vec<String> = hostile.iter().map(|k| k.to_string()).collect();
    want.sort();
    let mut pushed: Vec<String> = read_jsonl(&jobs)
        .iter()
        .map(|j| j["args"][0].as_str().unwrap().to_string())
        .collect();
    pushed.sort();
    assert_eq!(pushed, want);
    let mut ledger_keys: Vec<String> =
        sqlx::query_scalar(&format!("SELECT CAST(row_key AS CHAR(191)) FROM {ledger}"))
            .fetch_all(&pool)
            .await
            .unwrap();
    ledger_keys.sort();
    assert_eq!(ledger_keys, want, "each key recorded as itself");
    let others: Vec<(String, String)> = sqlx::query(&format!(
        "SELECT CAST(id AS CHAR(64)), state FROM {table} WHERE id IN ('1', '2') ORDER BY id"
    ))
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(
        others,
        [("1".into(), "pending".into()), ("2".into(), "sent".into())]
    );
    let o = explain(&cfg, "guard", hostile[0]);
    assert!(stdout(&o).contains("recently_requeued"), "{}", stdout(&o));
    exec(&pool, &format!("DROP TABLE {table}, {ledger}, {history}")).await;
}

/// Sweeper runs as a user with only SELECT/INSERT/UPDATE/DELETE once its
/// tables exist (a DBA applied `migrate --print`; here `migrate` as root):
/// it creates nothing it does not need.
#[tokio::test]
async fn a_user_without_create_rights_sweeps_once_the_tables_exist() {
    use crate::sql_sweeps::{config, Backend, Ts};
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::MyDatetime, dir.path()).await;
    let pool = mariadb().await;
    exec(
        &pool,
        "CREATE USER IF NOT EXISTS 'sweeper_dml'@'127.0.0.1' IDENTIFIED BY 'dml-pw'",
    )
    .await;
    exec(
        &pool,
        "CREATE USER IF NOT EXISTS 'sweeper_dml'@'localhost' IDENTIFIED BY 'dml-pw'",
    )
    .await;
    for host in ["127.0.0.1", "localhost"] {
        exec(
            &pool,
            &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON test.* TO 'sweeper_dml'@'{host}'"),
        )
        .await;
    }
    let ns = unique("dml");
    let root_cfg = config(&b, dir.path(), &ns, 5);
    let o = run(&["migrate", "-c", root_cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dml_url = b
        .url
        .replace("mysql://root@", "mysql://sweeper_dml:dml-pw@");
    assert_ne!(dml_url, b.url);
    let text = std::fs::read_to_string(&root_cfg)
        .unwrap()
        .replace(&b.url, &dml_url);
    let cfg = write(dir.path(), "dml.yaml", &text);
    let done = once_json(&cfg, 0);
    let s = sweep_json(&done, "notifications");
    assert_eq!(
        s["outcomes"],
        json!({"applied": {"requeue": 3, "mark_sent": 1, "mark_error": 1}, "already_moved": 0, "failed": 0}),
        "{s:#}"
    );
    let mut r = redis().await;
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}
