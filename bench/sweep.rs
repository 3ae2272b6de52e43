//! Finding stuck rows on a large table, with and without the index
//! `sweeper check` recommends, measured in the same run.
//!
//! ```sh
//! cargo run --release --bin bench-sweep -- [--rows 2000000] [--pg postgres://postgres@127.0.0.1:5432/test]
//! ```
//!
//! Builds a Postgres table of `--rows` rows — 99.7% `sent` spread over 30
//! days, 0.1% `error`, 0.1% `pending` (half stale), 0.1% `sending` (stale) —
//! then times one pass's reads (state counts, stale counts and oldest age,
//! every stale row by keyset pages of 500), best of three: first without
//! any index but the primary key (the baseline), then with the recommended
//! partial index. The table is dropped afterwards.

use std::time::Instant;
use sweeper::adapters::db::{Db, SweepTable};
use sweeper::core::model::RowState;

fn arg(name: &str, default: &str) -> String {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

async fn one_pass(db: &Db, t: &SweepTable) -> (f64, usize) {
    let start = Instant::now();
    let now = db.now().await.unwrap();
    db.state_counts(t).await.unwrap();
    let mut found = 0;
    for (state, mins) in [(RowState::Pending, 10), (RowState::Sending, 15)] {
        let cutoff = now - chrono::TimeDelta::minutes(mins);
        let summary = db.stale_summary(t, state, cutoff).await.unwrap();
        let n = db.stale_rows(t, state, cutoff).await.unwrap().len();
        // Every stale row is found exactly once.
        assert_eq!(
            n as u64, summary.count,
            "{state}: pages found {n} of {} stale rows",
            summary.count
        );
        found += n;
    }
    (start.elapsed().as_secs_f64(), found)
}

async fn best(db: &Db, t: &SweepTable) -> (f64, usize) {
    let mut best = (f64::INFINITY, 0);
    for _ in 0..3 {
        let r = one_pass(db, t).await;
        if r.0 < best.0 {
            best = r;
        }
    }
    best
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rows: u64 = arg("--rows", "2000000")
        .parse()
        .expect("--rows takes a number");
    let url = arg("--pg", "postgres://postgres@127.0.0.1:5432/test");
    let table = format!("bench_sweep_{}", std::process::id());
    let yaml = format!(
        r#"databases:
  app: {{url: "{url}"}}
queues:
  q: {{kind: jsonl, path: /dev/null}}
sweeps:
  bench:
    database: app
    table: {table}
    key: id
    state_column: state
    timestamp_column: updated_at
    pending: {{after: 10m, queue: q, job: {{queue: q, class: C, args: [user_id, id]}}}}
    sending: {{after: 15m}}
"#
    );
    let cfg =
        sweeper::config::load_str(&yaml, "bench", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let sweep = cfg.sweep("bench").unwrap();
    let db = Db::connect(&cfg.databases["app"])
        .await
        .expect("Postgres is required");
    let exec = |sql: String| {
        let db = db.clone();
        async move {
            db.execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    };
    eprintln!("building {rows} rows in {table} …");
    exec(format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, user_id bigint, state text NOT NULL, \
         updated_at timestamptz NOT NULL, message_id text)"
    ))
    .await;
    exec(format!(
        "INSERT INTO {table} SELECT g, g % 9973, \
           CASE g % 1000 WHEN 0 THEN 'pending' WHEN 1 THEN 'sending' WHEN 2 THEN 'error' ELSE 'sent' END, \
           CASE g % 1000 WHEN 0 THEN now() - (CASE WHEN g % 2000 = 0 THEN interval '1 hour' ELSE interval '1 minute' END) \
                         WHEN 1 THEN now() - interval '2 hours' \
                         ELSE now() - (g % 43200) * interval '1 minute' END, \
           '<m' || g || '@bench>' \
         FROM generate_series(1, {rows}) g"
    ))
    .await;
    exec(format!("ANALYZE {table}")).await;
    let t = db.sweep_table(sweep).await.unwrap();

    let (without, found) = best(&db, &t).await;
    let index = Db::recommended_index(sweep, sweeper::config::Dialect::Postgres)
        .replace(" CONCURRENTLY", "");
    exec(index.clone()).await;
    exec(format!("ANALYZE {table}")).await;
    let (with, found2) = best(&db, &t).await;
    assert_eq!(found, found2);
    exec(format!("DROP TABLE {table}")).await;

    println!("table: {rows} rows; stale rows found per pass: {found}");
    println!("index: {index}");
    println!("| reads of one pass | seconds (best of 3) |");
    println!("|---|---:|");
    println!("| primary key only (baseline) | {without:.4} |");
    println!("| with the recommended index | {with:.4} |");
    println!("speed-up: {:.1}×", without / with);
}
