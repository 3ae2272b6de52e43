//! Invariants 3 and 10 at the level of a whole pass: a row the app moves
//! while sweeper's guarded write waits for it is `already_moved` — also on
//! the `sending → pending` requeue path, where nothing is then pushed — and
//! values from rows are bound, never spliced into SQL (a key like
//! `1' OR '1'='1` touches its own row only).

use crate::support::*;
use serde_json::Value;
use sqlx::Row;
use std::time::{Duration, Instant};

async fn exec(pool: &sqlx::PgPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn yaml(table: &str, ledger: &str, jobs: &std::path::Path, key_args: &str, extra: &str) -> String {
    format!(
        r#"databases:
  app: {{url: "{url}", ledger_table: {ledger}}}
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
      job: {{queue: q, class: Job, args: [{key_args}]}}
{extra}"#,
        url = pg_url(),
        jobs = jobs.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_key_values_are_bound_and_touch_only_their_own_row() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pg().await;
    let (table, ledger) = (unique("guard_keys"), unique("guard_ledger"));
    exec(
        &pool,
        &format!("CREATE TABLE {table} (id text PRIMARY KEY, state text NOT NULL, updated_at timestamptz NOT NULL)"),
    )
    .await;
    let hostile = ["1' OR '1'='1", "x\"; DROP TABLE t; --", "ü\\'", "%", "_"];
    for k in hostile {
        sqlx::query(&format!(
            "INSERT INTO {table} VALUES ($1, 'pending', now() - interval '1 hour')"
        ))
        .bind(k)
        .execute(&pool)
        .await
        .unwrap();
    }
    // Rows the hostile keys must not reach: fresh, or already done.
    exec(&pool, &format!("INSERT INTO {table} VALUES ('1', 'pending', now()), ('2', 'sent', now() - interval '1 hour')")).await;
    let jobs = dir.path().join("jobs.jsonl");
    let cfg = write(
        dir.path(),
        "keys.yaml",
        &yaml(&table, &ledger, &jobs, "id", ""),
    );
    let report = once_json(&cfg, 0);
    let s = sweep_json(&report, "guard");
    assert_eq!(s["outcomes"]["applied"]["requeue"], hostile.len(), "{s:#}");
    let mut pushed: Vec<String> = read_jsonl(&jobs)
        .iter()
        .map(|j| j["args"][0].as_str().unwrap().to_string())
        .collect();
    pushed.sort();
    let mut want: Vec<String> = hostile.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(pushed, want);
    let ledger_keys: Vec<String> =
        sqlx::query(&format!("SELECT row_key FROM {ledger} ORDER BY row_key"))
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(ledger_keys, want, "each key recorded as itself");
    let others: Vec<(String, String)> = sqlx::query(&format!(
        "SELECT id, state FROM {table} WHERE id IN ('1', '2') ORDER BY id"
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
    // The explain of a hostile key reads exactly that row.
    let o = explain(&cfg, "guard", hostile[0]);
    assert!(stdout(&o).contains("recently_requeued"), "{}", stdout(&o));
    for t in [&table, &ledger] {
        exec(&pool, &format!("DROP TABLE IF EXISTS {t}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sending_row_the_app_settles_during_the_requeue_is_already_moved_and_not_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pg().await;
    let (table, ledger) = (unique("guard_race"), unique("guard_race_ledger"));
    exec(
        &pool,
        &format!("CREATE TABLE {table} (id bigint PRIMARY KEY, state text NOT NULL, updated_at timestamptz NOT NULL, message_id text)"),
    )
    .await;
    // Sending past give_up_after, no evidence: on_no_evidence requeue moves
    // it back to pending (guarded) and pushes its job.
    exec(
        &pool,
        &format!("INSERT INTO {table} VALUES (7, 'sending', now() - interval '3 days', NULL)"),
    )
    .await;
    let jobs = dir.path().join("jobs.jsonl");
    let extra = "    sending: {after: 15m, give_up_after: 24h, on_no_evidence: requeue}\n";
    let cfg = write(
        dir.path(),
        "race.yaml",
        &yaml(&table, &ledger, &jobs, "id", extra),
    );
    // The app holds the row…
    let mut tx = pool.begin().await.unwrap();
    exec_tx(
        &mut tx,
        &format!("SELECT id FROM {table} WHERE id = 7 FOR UPDATE"),
    )
    .await;
    let once = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || once_json(&cfg, 0)
    });
    // …until sweeper's guarded `sending → pending` update waits for it…
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE %{table}%'"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar(&waiting).fetch_one(&pool).await.unwrap();
        if n > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guarded update never waited for the row"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …and settles it itself.
    exec_tx(
        &mut tx,
        &format!("UPDATE {table} SET state = 'sent', updated_at = now() WHERE id = 7"),
    )
    .await;
    tx.commit().await.unwrap();
    let report = once.await.unwrap();
    let s = sweep_json(&report, "guard");
    assert_eq!(s["outcomes"]["already_moved"], 1, "{s:#}");
    assert_eq!(
        s["outcomes"]["applied"],
        Value::Object(Default::default()),
        "{s:#}"
    );
    assert!(
        read_jsonl(&jobs).is_empty(),
        "no job pushed for a row the app settled"
    );
    let state: String = sqlx::query_scalar(&format!("SELECT state FROM {table} WHERE id = 7"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "sent", "the app's write stands");
    for t in [&table, &ledger] {
        exec(&pool, &format!("DROP TABLE IF EXISTS {t}")).await;
    }
}

async fn exec_tx(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, sql: &str) {
    sqlx::query(sql)
        .execute(&mut **tx)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
