//! The streaming pass decides exactly as one big page would: the same
//! table walked in pages of 7 rows and in one page of 10,000 gives the same
//! decision for every row, spends `max_actions` on the same rows, and
//! leaves the table, the ledger and the queue in the same state.

use crate::support::*;
use serde_json::Value;
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::Path;

const ROWS: i64 = 400;

/// The same mixed pile every time: fresh and stale pending rows, sending
/// rows delivered / bounced / without a trace / past their give-up time,
/// and settled rows.
async fn seed(pool: &sqlx::PgPool, table: &str) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, user_id bigint, state text NOT NULL, \
         updated_at timestamptz NOT NULL, message_id text)"
    ))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} SELECT g, g * 10, \
           CASE g % 8 WHEN 0 THEN 'pending' WHEN 1 THEN 'pending' WHEN 2 THEN 'pending' \
                      WHEN 7 THEN 'sent' ELSE 'sending' END, \
           now() - CASE g % 8 WHEN 0 THEN interval '2 minutes' WHEN 6 THEN interval '3 days' \
                              WHEN 1 THEN interval '60 minutes' WHEN 2 THEN interval '90 minutes' \
                              ELSE interval '30 minutes' END, \
           '<s' || g || '@stream.example>' \
         FROM generate_series(1, {ROWS}) g"
    ))
    .execute(pool)
    .await
    .unwrap();
}

fn mail_log(dir: &Path) -> std::path::PathBuf {
    let at = (chrono::Utc::now() - chrono::TimeDelta::minutes(29))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut text = String::new();
    for g in 1..=ROWS {
        let (dsn, status) = match g % 8 {
            3 => ("2.0.0", "sent (250 ok)"),
            4 => ("5.1.1", "bounced (550 5.1.1 user unknown)"),
            _ => continue,
        };
        let q = format!("B{g:09X}");
        text.push_str(&format!(
            "{at} mail postfix/cleanup[1]: {q}: message-id=<s{g}@stream.example>\n\
             {at} mail postfix/qmgr[2]: {q}: from=<n@stream.example>, size=500, nrcpt=1 (queue active)\n\
             {at} mail postfix/smtp[3]: {q}: to=<u{g}@d.example>, relay=mx[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn={dsn}, status={status}\n\
             {at} mail postfix/qmgr[2]: {q}: removed\n"
        ));
    }
    write(dir, "mail.log", &text)
}

fn config(dir: &Path, name: &str, table: &str, ledger: &str, batch: u32) -> std::path::PathBuf {
    let log = dir.join("mail.log");
    let jobs = dir.join(format!("{name}.jobs.jsonl"));
    let yaml = format!(
        r#"databases:
  app:
    url: "{url}"
    ledger_table: {ledger}
queues:
  jobs: {{kind: jsonl, path: "{jobs}"}}
evidence:
  postfix: {{kind: log, format: postfix, paths: ["{log}"]}}
sweeps:
  stream:
    database: app
    table: {table}
    key: id
    state_column: state
    timestamp_column: updated_at
    pending:
      after: 10m
      queue: jobs
      job: {{queue: notify, class: Notify, args: [user_id, id]}}
      max_attempts: 3
    sending:
      after: 15m
      evidence: [{{source: postfix, match: message_id}}]
      give_up_after: 24h
      on_no_evidence: requeue
    limits: {{batch_size: {batch}, max_actions: 120}}
"#,
        url = pg_url(),
        jobs = jobs.display(),
        log = log.display(),
    );
    write(dir, &format!("{name}.yaml"), &yaml)
}

/// Every listed row as "key state decision reason attempt".
fn decisions(report: &Value) -> Vec<String> {
    let sweep = &report["sweeps"][0];
    assert_eq!(sweep["rows_omitted"], 0, "every row is listed");
    sweep["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {}",
                r["key"], r["state"], r["decision"], r["reason"], r["attempt"]
            )
        })
        .collect()
}

async fn table_states(pool: &sqlx::PgPool, table: &str) -> Vec<(i64, String)> {
    sqlx::query(&format!("SELECT id, state FROM {table} ORDER BY id"))
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn jobs(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .map(|l| {
            let j: Value = serde_json::from_str(l).unwrap();
            format!("{} {}", j["args"], j["attempt"])
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_pass_in_small_pages_decides_and_applies_exactly_as_one_big_page() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pg().await;
    mail_log(dir.path());
    let (small_t, big_t) = (unique("stream_small"), unique("stream_big"));
    let (small_l, big_l) = (unique("stream_ledger_s"), unique("stream_ledger_b"));
    seed(&pool, &small_t).await;
    seed(&pool, &big_t).await;
    let small = config(dir.path(), "small", &small_t, &small_l, 7);
    let big = config(dir.path(), "big", &big_t, &big_l, 10_000);

    // The dry-run plans agree row for row, and the budget ran out mid-walk.
    let plan = |cfg: &Path| {
        run_json(
            &[
                "report",
                "-c",
                cfg.to_str().unwrap(),
                "--format",
                "json",
                "--max-rows",
                "100000",
            ],
            0,
        )
    };
    let (ps, pb) = (plan(&small), plan(&big));
    assert_eq!(decisions(&ps), decisions(&pb));
    assert_eq!(ps["sweeps"][0]["reasons"], pb["sweeps"][0]["reasons"]);
    // 150 sending rows want a write (sent, bounced, given up); the budget
    // of 120 runs out among them, so 30 of those and all 100 stale pending
    // rows are held.
    assert_eq!(ps["sweeps"][0]["reasons"]["max_actions"], 130, "{ps}");
    assert_eq!(decisions(&ps).len(), 300);

    // Two real passes each: same outcomes, same table, same jobs.
    for pass in 1..=2 {
        let os = once_json(&small, 0);
        let ob = once_json(&big, 0);
        assert_eq!(decisions(&os), decisions(&ob), "pass {pass}");
        assert_eq!(
            os["sweeps"][0]["outcomes"], ob["sweeps"][0]["outcomes"],
            "pass {pass}"
        );
        assert_eq!(
            table_states(&pool, &small_t).await,
            table_states(&pool, &big_t).await,
            "pass {pass}"
        );
        assert_eq!(
            jobs(&dir.path().join("small.jobs.jsonl")),
            jobs(&dir.path().join("big.jobs.jsonl")),
            "pass {pass}"
        );
        let applied = &os["sweeps"][0]["outcomes"]["applied"];
        let total: u64 = applied
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert!(total > 0 && total <= 120, "pass {pass}: {applied}");
    }
    // The first pass spent its budget on sending rows first: every
    // delivered and bounced row is settled.
    let states: BTreeMap<i64, String> = table_states(&pool, &small_t).await.into_iter().collect();
    for g in (3..=ROWS).step_by(8) {
        assert_eq!(states[&g], "sent", "row {g}");
    }
    for g in (4..=ROWS).step_by(8) {
        assert_eq!(states[&g], "error", "row {g}");
    }

    for t in [&small_t, &big_t, &small_l, &big_l] {
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {t}"))
            .execute(&pool)
            .await;
    }
}
