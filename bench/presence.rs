//! Presence-check cost on a 100k-job queue, against the raw read of the
//! same entries (LRANGE without parsing), measured in the same run.
//!
//! ```sh
//! cargo run --release --bin bench-presence -- [--redis redis://127.0.0.1:6379/0] [--jobs 100000]
//! ```
//!
//! Fills a Resque queue and a Sidekiq queue (unique keys, deleted after)
//! with `--jobs` jobs shaped like the app's (`NotifyUser`, two integer
//! arguments), then times, best of 5: the raw `LRANGE 0 -1`; sweeper's
//! presence check with `max_entries` = all jobs and = a tenth of them.

use std::time::Instant;
use sweeper::adapters::queue::QueueClient;
use sweeper::config::{PresenceConfig, QueueConfig, QueueKind, ResqueConfig, SidekiqConfig};

fn arg(name: &str, default: &str) -> String {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let redis_url = arg("--redis", "redis://127.0.0.1:6379/0");
    let jobs: u64 = arg("--jobs", "100000")
        .parse()
        .expect("--jobs takes a number");
    let ns = format!("bench_presence_{}", std::process::id());
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is required");

    let resque = QueueConfig {
        name: "resque".into(),
        kind: QueueKind::Resque(ResqueConfig {
            redis: sweeper::config::SecretUrl::new(redis_url.clone()),
            namespace: ns.clone(),
            presence: Some(PresenceConfig { max_entries: jobs }),
            require_workers: false,
            heartbeat_timeout: std::time::Duration::from_secs(300),
        }),
    };
    let sidekiq = QueueConfig {
        name: "sidekiq".into(),
        kind: QueueKind::Sidekiq(SidekiqConfig {
            redis: sweeper::config::SecretUrl::new(redis_url.clone()),
            namespace: Some(ns.clone()),
            retry: serde_json::Value::Bool(true),
            job_fields: Default::default(),
            presence: Some(PresenceConfig { max_entries: jobs }),
            require_workers: false,
            epoch_millis: false,
        }),
    };
    for (label, cfg, key) in [
        ("resque", &resque, format!("{ns}:queue:notify")),
        ("sidekiq", &sidekiq, format!("{ns}:queue:notify")),
    ] {
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut q = QueueClient::connect(cfg).await.unwrap();
        // Fill in chunks of 10k jobs through the real push path.
        let args: Vec<Vec<serde_json::Value>> = (0..jobs)
            .map(|i| vec![serde_json::json!(i * 7), serde_json::json!(i)])
            .collect();
        let keys: Vec<String> = (0..jobs).map(|i| i.to_string()).collect();
        let now = chrono::Utc::now();
        let no_kwargs = serde_json::Map::new();
        for chunk in (0..jobs as usize).collect::<Vec<_>>().chunks(10_000) {
            let reqs: Vec<sweeper::adapters::queue::JobRequest<'_>> = chunk
                .iter()
                .map(|i| sweeper::adapters::queue::JobRequest {
                    sweep: "bench",
                    row_key: &keys[*i],
                    attempt: 1,
                    queue: "notify",
                    class: "NotifyUser",
                    args: &args[*i],
                    kwargs: &no_kwargs,
                    job_id: None,
                    activejob: None,
                })
                .collect();
            q.push(&reqs, now).await.unwrap();
        }
        let len: u64 = redis::cmd("LLEN")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, jobs);

        let mut raw = 0.0;
        for _ in 0..5 {
            let t = Instant::now();
            let v: Vec<String> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(v.len() as u64, jobs);
            let e = t.elapsed().as_secs_f64();
            raw = if raw == 0.0 { e } else { f64::min(raw, e) };
        }
        let mut full = f64::INFINITY;
        let mut tenth = f64::INFINITY;
        let mut found = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let idx = q.presence("notify", jobs).await.unwrap().unwrap();
            full = full.min(t.elapsed().as_secs_f64());
            // Every pushed job is found; one never pushed is not.
            found = (0..jobs)
                .step_by((jobs / 100).max(1) as usize)
                .filter(|i| {
                    idx.lookup("NotifyUser", &args[*i as usize])
                        != sweeper::core::model::Presence::Absent
                })
                .count();
            assert_eq!(
                idx.lookup(
                    "NotifyUser",
                    &[serde_json::json!(-1), serde_json::json!(-1)]
                ),
                sweeper::core::model::Presence::Absent
            );
            let t = Instant::now();
            let small = q.presence("notify", jobs / 10).await.unwrap().unwrap();
            tenth = tenth.min(t.elapsed().as_secs_f64());
            assert!(small.truncated);
        }
        println!(
            "{label}: {jobs} jobs — raw LRANGE {:.1} ms; presence check (all {jobs}) {:.1} ms = {:.2}× raw; \
             presence check (max_entries {}) {:.1} ms; sampled lookups found {found}/100",
            raw * 1e3,
            full * 1e3,
            full / raw,
            jobs / 10,
            tenth * 1e3
        );
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .arg(format!("{ns}:queues"))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
