//! Two `sweeper run` instances on one config and one database (Postgres,
//! then MariaDB): while one holds a sweep's lock the other only counts
//! skipped passes (`sweeper_lock_skipped_total`); when the one acting is
//! killed with SIGKILL mid-pass, the database ends its session (Postgres'
//! advisory lock, MariaDB's `GET_LOCK`), the lock is released, and the
//! other acts within one `every` (plus the pass itself) — each row once.

use crate::daemon::{canon, free_port, get, parse_metrics, spawn_with};
use crate::sql_sweeps::{config, Backend, Ts};
use crate::support::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A status API that hangs while `hang` is set, then says "delivered".
pub async fn status_api(hang: Arc<AtomicBool>, asked: Arc<AtomicUsize>) -> u16 {
    let app = axum::Router::new().fallback(move || {
        let (hang, asked) = (hang.clone(), asked.clone());
        async move {
            asked.fetch_add(1, Ordering::SeqCst);
            while hang.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            axum::Json(serde_json::json!({"status": "delivered"}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn instance_config(
    base: &str,
    port: u16,
    api: u16,
    dir: &std::path::Path,
    name: &str,
) -> std::path::PathBuf {
    let start = base.find("evidence:").unwrap();
    let end = base.find("sweeps:").unwrap();
    let text = format!(
        "metrics:\n  listen: 127.0.0.1:{port}\n{}evidence:\n  status:\n    kind: http\n    url: \"http://127.0.0.1:{api}/status/{{key}}\"\n    status_pointer: /status\n    sent: [delivered]\n    retries: 0\n    timeout: 120s\n{}",
        &base[..start],
        &base[end..]
    )
    .replace("source: postfix", "source: status")
    .replacen("    timestamp_column: updated_at\n", "    timestamp_column: updated_at\n    every: 1s\n", 1);
    write(dir, name, &text)
}

fn metric(port: u16, series: &str) -> Option<f64> {
    let (code, body) = get(port, "/metrics")?;
    (code == 200).then_some(())?;
    parse_metrics(&body).get(&canon(series)).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_acting_instance_is_killed_the_other_takes_over_and_acts_once_on_postgres() {
    takeover(Ts::PgTz).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_acting_instance_is_killed_the_other_takes_over_and_acts_once_on_mariadb() {
    takeover(Ts::MyDatetime).await;
}

async fn takeover(ts: Ts) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let ns = unique("failover");
    let hang = Arc::new(AtomicBool::new(true));
    let asked = Arc::new(AtomicUsize::new(0));
    let api = status_api(hang.clone(), asked.clone()).await;
    let base = std::fs::read_to_string(config(&b, dir.path(), &ns, 5)).unwrap();
    let (pa, pb) = (free_port(), free_port());
    let cfg_a = instance_config(&base, pa, api, dir.path(), "a.yaml");
    let cfg_b = instance_config(&base, pb, api, dir.path(), "b.yaml");

    // A starts and hangs mid-pass, holding the sweep's lock (sending rows
    // are settled first; its evidence source does not answer).
    let mut a = spawn_with(&cfg_a, &["--initial-delay", "0s"]);
    let started = Instant::now();
    while asked.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "A never asked the status API: {}",
            std::fs::read_to_string(a.log.path()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // B runs beside it: every pass finds the lock taken and does nothing.
    let _b = spawn_with(&cfg_b, &["--initial-delay", "0s"]);
    let skipped = "sweeper_lock_skipped_total{sweep=\"notifications\"}";
    let started = Instant::now();
    while metric(pb, skipped).is_none_or(|v| v < 3.0) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "B skipped no passes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut r = redis().await;
    let queue = format!("{ns}:queue:notify");
    let llen = |r: &mut redis::aio::MultiplexedConnection| {
        let queue = queue.clone();
        let mut r = r.clone();
        async move {
            redis::cmd("LLEN")
                .arg(&queue)
                .query_async::<i64>(&mut r)
                .await
                .unwrap()
        }
    };
    assert_eq!(llen(&mut r).await, 0, "nobody acted while A held the lock");
    assert_eq!(metric(pa, skipped), Some(0.0), "A never skipped");

    // SIGKILL A mid-pass; its evidence source answers from now on.
    a.child.kill().unwrap();
    let killed = Instant::now();
    let _ = a.child.wait();
    hang.store(false, Ordering::SeqCst);
    let mut took = Duration::ZERO;
    while llen(&mut r).await < 3 {
        took = killed.elapsed();
        assert!(took < Duration::from_secs(30), "B did not take over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{ts:?}: B requeued the stale pending rows {took:?} after A was killed");
    // One `every` (1 s, +10% jitter) plus the pass: well within 5 s here.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // B settled the sending rows too; each pending row was pushed once.
    let wait_sent = Instant::now();
    loop {
        let sent: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE notification_state = 'sent' AND id IN (5, 6, 7)",
            b.table
        ))
        .fetch_one(&b.pool)
        .await
        .unwrap();
        if sent == 3 {
            break;
        }
        assert!(
            wait_sent.elapsed() < Duration::from_secs(30),
            "sending rows not settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(llen(&mut r).await, 3, "each stale pending row pushed once");
    let attempts: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT attempts FROM {} WHERE sweep = 'notifications' ORDER BY row_key",
        b.ledger
    ))
    .fetch_all(&b.pool)
    .await
    .unwrap();
    assert_eq!(attempts, [1, 1, 1], "one requeue each in the ledger");
    // Every change is in the history once, made by B, with its reason and
    // evidence.
    let h = run_json(
        &[
            "history",
            "-c",
            cfg_b.to_str().unwrap(),
            "--sweep",
            "notifications",
            "--format",
            "json",
        ],
        0,
    );
    let mut changes: Vec<(String, String, String)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let change = e["to_state"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}#{}", e["queue"].as_str().unwrap(), e["attempt"]));
            (
                e["key"].as_str().unwrap().to_string(),
                change,
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    changes.sort();
    let want: Vec<(String, String, String)> = [
        ("10", "resque#1", "stale_pending"),
        ("2", "resque#1", "stale_pending"),
        ("3", "resque#1", "stale_pending"),
        ("5", "sent", "delivered"),
        ("6", "sent", "delivered"),
        ("7", "sent", "delivered"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(changes, want, "{h:#}");
    let instances: std::collections::BTreeSet<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(instances.len(), 1, "only B acted: {instances:?}");
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["to_state"] == "sent")
            .all(|e| e["evidence"]
                .as_str()
                .unwrap()
                .starts_with("status: delivered")),
        "{h:#}"
    );
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}
