//! Redis behind a loopback TCP proxy the test controls — refusing, or
//! accepting and never answering: a pass ends within its timeouts, nothing
//! is half-applied (rows, ledger and queue agree), the error is counted,
//! and once Redis answers again the rows are requeued exactly once; the
//! daemon keeps running through it and recovers by itself.

use crate::queues::{amqp, declare, drain};
use crate::sql_sweeps::{config, Backend, Ts};
use crate::support::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

const PASS: u8 = 0;
const REFUSE: u8 = 1;
const STALL: u8 = 2;

/// A proxy to Redis on a port of its own; `mode` decides what new
/// connections get.
struct Proxy {
    port: u16,
    mode: Arc<AtomicU8>,
    /// Cuts every connection the proxy carries.
    cut: Arc<tokio::sync::Notify>,
}

impl Proxy {
    /// A proxy to Redis.
    async fn start() -> Proxy {
        let target = redis_url()
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        Proxy::to(target).await
    }

    /// A proxy to `target` (`host:port`).
    async fn to(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (m, c) = (mode.clone(), cut.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                match m.load(Ordering::SeqCst) {
                    REFUSE => drop(client),
                    STALL => held.push(client),
                    _ => {
                        let target = target.clone();
                        let c = c.clone();
                        tokio::spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(&target).await {
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                    _ = c.notified() => {}
                                }
                            }
                        });
                    }
                }
            }
        });
        Proxy { port, mode, cut }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

async fn llen(r: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("LLEN").arg(key).query_async(r).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_refusing_redis_changes_nothing_and_recovers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("outage");
    let mut r = redis().await;
    let proxy = Proxy::start().await;
    let text = std::fs::read_to_string(config(&b, dir.path(), &ns, 5))
        .unwrap()
        .replacen(&redis_url(), &proxy.url(), 1);
    let cfg = write(dir.path(), "outage.yaml", &text);
    let key = format!("{ns}:queue:notify");

    for mode in [STALL, REFUSE] {
        proxy.set(mode);
        let started = Instant::now();
        let report = tokio::task::spawn_blocking({
            let cfg = cfg.clone();
            move || once_json(&cfg, 1)
        })
        .await
        .unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "mode {mode}: the pass took {took:?}"
        );
        let s = sweep_json(&report, "notifications");
        assert_eq!(s["outcomes"]["failed"], 3, "mode {mode}: {s:#}");
        assert_eq!(s["outcomes"]["applied"].get("requeue"), None, "{s:#}");
        assert_eq!(s["errors"][0]["stage"], "enqueue", "{s:#}");
        // Nothing half-applied: no job, no ledger entry, pending rows as
        // they were (the sending rows settled from the log are another
        // matter, and marked only once).
        assert_eq!(llen(&mut r, &key).await, 0);
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", b.ledger))
            .fetch_one(&b.pool)
            .await
            .unwrap_or_else(|e| panic!("the ledger exists after a failed push: {e}"));
        assert_eq!(n, 0, "mode {mode}: nothing recorded as requeued");
        for id in [2, 3, 10] {
            assert_eq!(b.state(id).await, "pending");
        }
    }

    // Redis answers again: each row requeued exactly once.
    proxy.set(PASS);
    let report = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || once_json(&cfg, 0)
    })
    .await
    .unwrap();
    let s = sweep_json(&report, "notifications");
    assert_eq!(s["outcomes"]["applied"]["requeue"], 3, "{s:#}");
    assert_eq!(llen(&mut r, &key).await, 3);
    let again = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || once_json(&cfg, 0)
    })
    .await
    .unwrap();
    assert_eq!(
        sweep_json(&again, "notifications")["outcomes"]["applied"].get("requeue"),
        None
    );
    assert_eq!(llen(&mut r, &key).await, 3, "no duplicate");
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

fn metrics(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut t = String::new();
    s.read_to_string(&mut t).ok()?;
    Some(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rides_out_a_redis_outage_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("outage_run");
    let mut r = redis().await;
    let proxy = Proxy::start().await;
    proxy.set(REFUSE);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(config(&b, dir.path(), &ns, 5))
        .unwrap()
        .replacen(&redis_url(), &proxy.url(), 1);
    let text = format!("metrics: {{listen: \"127.0.0.1:{port}\"}}\n{text}").replacen(
        "    timestamp_column: updated_at\n",
        "    timestamp_column: updated_at\n    every: 1s\n",
        1,
    );
    let cfg = write(dir.path(), "run.yaml", &text);
    let mut d = Guarded(
        sweeper()
            .args(["run", "-c", cfg.to_str().unwrap(), "--initial-delay", "0s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let key = format!("{ns}:queue:notify");
    let wait = |what: &str, f: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let enqueue_errors = "sweeper_errors_total{stage=\"enqueue\",sweep=\"notifications\"}";
    wait("a failed push counted", &mut || {
        metrics(port).is_some_and(|m| {
            m.lines()
                .any(|l| l.starts_with(enqueue_errors) && !l.ends_with(" 0"))
        })
    });
    assert!(d.try_wait().unwrap().is_none(), "the daemon keeps running");
    assert_eq!(llen(&mut r, &key).await, 0);
    proxy.set(PASS);
    let deadline = Instant::now() + Duration::from_secs(60);
    while llen(&mut r, &key).await < 3 {
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more passes: still exactly once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(llen(&mut r, &key).await, 3);
    assert!(d.try_wait().unwrap().is_none(), "the daemon keeps running");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &d.id().to_string()])
        .status();
    let _ = d.wait();
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_refusing_rabbitmq_changes_nothing_and_recovers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ch = amqp().await;
    let q = unique("sweeper_outage");
    declare(&ch, &q, Default::default()).await;
    let proxy = Proxy::to("127.0.0.1:5672".into()).await;
    let text = std::fs::read_to_string(config(&b, dir.path(), "unused", 5))
        .unwrap()
        .replacen(&resque_block(), &amqp_block(proxy.port), 1)
        .replacen("job: {queue: notify,", &format!("job: {{queue: {q},"), 1);
    assert!(text.contains("kind: amqp"), "{text}");
    let cfg = write(dir.path(), "amqp-outage.yaml", &text);
    let once = |code: i32| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || once_json(&cfg, code))
    };
    for mode in [STALL, REFUSE] {
        proxy.set(mode);
        let started = Instant::now();
        let report = once(1).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(30), "mode {mode}");
        let s = sweep_json(&report, "notifications");
        assert_eq!(s["outcomes"]["failed"], 3, "mode {mode}: {s:#}");
        assert_eq!(s["errors"][0]["stage"], "enqueue", "{s:#}");
        assert!(
            drain(&ch, &q).await.is_empty(),
            "mode {mode}: nothing published"
        );
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", b.ledger))
            .fetch_one(&b.pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "mode {mode}: nothing recorded as requeued");
    }
    proxy.set(PASS);
    let s = once(0).await.unwrap();
    assert_eq!(
        sweep_json(&s, "notifications")["outcomes"]["applied"]["requeue"],
        3
    );
    assert_eq!(drain(&ch, &q).await.len(), 3);
    let again = once(0).await.unwrap();
    assert_eq!(
        sweep_json(&again, "notifications")["outcomes"]["applied"].get("requeue"),
        None
    );
    assert!(drain(&ch, &q).await.is_empty(), "no duplicate");
    b.cleanup().await;
}

/// A proxy to Postgres that can cut every connection it carries, as a
/// restart does.
struct CutProxy {
    port: u16,
    cut: Arc<tokio::sync::Notify>,
    /// While set, new connections are refused (the server is down).
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl CutProxy {
    async fn start() -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(tokio::sync::Notify::new());
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, d) = (cut.clone(), down.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };

                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = c.notified() => {} // both ends dropped: connection reset
                    }
                });
            }
        });
        CutProxy { port, cut, down }
    }
}

/// Postgres goes down (every connection cut, new ones refused) in the
/// middle of a pass requeueing 2,000 rows in pages of 20: the pass ends with
/// the error counted; every row is either fully requeued (pushed and in the ledger)
/// or untouched; the next pass finishes the rest, each job exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_mid_pass_leaves_nothing_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    pile(&b).await;
    let ns = unique("pg_cut");
    let mut r = redis().await;
    let proxy = CutProxy::start().await;
    let text = std::fs::read_to_string(config(&b, dir.path(), &ns, 5))
        .unwrap()
        .replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port), 1)
        .replacen("      max_attempts: 5\n", PAGES_OF_20, 1);
    assert!(
        text.contains(&format!("127.0.0.1:{}", proxy.port)),
        "{text}"
    );
    let cfg = write(dir.path(), "cut.yaml", &text);
    let key = format!("{ns}:queue:notify");
    let run = failing_once_in_background(&cfg);
    // Cut once the pass is well under way.
    wait_queued(&mut r, &key, 200).await;
    proxy.down.store(true, Ordering::SeqCst);
    proxy.cut.notify_waiters();
    let report = run.await.unwrap();
    let s = sweep_json(&report, "notifications");
    assert!(!s["errors"].as_array().unwrap().is_empty(), "{s:#}");
    let pushed = llen(&mut r, &key).await;
    assert!(pushed < 2003, "the pass was cut short ({pushed} pushed)");
    // Every job pushed is in the ledger, or the row was re-asserted and
    // pushed in the page whose ledger write the cut interrupted: at most one
    // page (20 rows) may be pushed without its ledger entries — the
    // documented at-least-once window.
    let ledger: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", b.ledger))
        .fetch_one(&b.pool)
        .await
        .unwrap();
    assert!(
        pushed - ledger >= 0 && pushed - ledger <= 20,
        "pushed {pushed}, recorded {ledger}"
    );
    // The next pass (Postgres back) finishes the rest.
    proxy.down.store(false, Ordering::SeqCst);
    let again = run_json(
        &["once", "-c", cfg.to_str().unwrap(), "--format", "json"],
        0,
    );
    let s = sweep_json(&again, "notifications");
    let requeued = s["outcomes"]["applied"]["requeue"].as_i64().unwrap_or(0);
    let total = llen(&mut r, &key).await;
    assert_eq!(total, pushed + requeued);
    let ids = queued_ids(&mut r, &key).await;
    each_row_once(ids);
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

/// Redis cut mid-stream (and then refusing) in the middle of a pass pushing
/// 2,000 jobs in pipelines of 20: jobs Redis may have taken without the
/// reply reaching sweeper are the documented duplicate window — at most the
/// page in hand; every other row is requeued exactly once by the next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_mid_push_duplicates_at_most_the_page_in_hand() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    pile(&b).await;
    let ns = unique("redis_cut");
    let mut r = redis().await;
    let proxy = Proxy::start().await;
    let text = std::fs::read_to_string(config(&b, dir.path(), &ns, 5))
        .unwrap()
        .replacen(&redis_url(), &proxy.url(), 1)
        .replacen("      max_attempts: 5\n", PAGES_OF_20, 1);
    let cfg = write(dir.path(), "cut.yaml", &text);
    let key = format!("{ns}:queue:notify");
    let run = failing_once_in_background(&cfg);
    wait_queued(&mut r, &key, 200).await;
    proxy.set(REFUSE);
    proxy.cut.notify_waiters();
    let report = run.await.unwrap();
    let s = sweep_json(&report, "notifications");
    assert_eq!(s["errors"][0]["stage"], "enqueue", "{s:#}");
    let pushed = llen(&mut r, &key).await;
    let ledger: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", b.ledger))
        .fetch_one(&b.pool)
        .await
        .unwrap();
    assert!(
        (0..=20).contains(&(pushed - ledger)),
        "pushed {pushed}, recorded {ledger}"
    );
    proxy.set(PASS);
    let again = run_json(
        &["once", "-c", cfg.to_str().unwrap(), "--format", "json"],
        0,
    );
    assert!(sweep_json(&again, "notifications")["errors"]
        .as_array()
        .unwrap()
        .is_empty());
    let ids = queued_ids(&mut r, &key).await;
    each_row_once(ids);
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

/// RabbitMQ cut mid-stream (then refusing) while a pass publishes 2,000
/// jobs in pages of 20 with publisher confirms: at most the page in hand
/// is published without being recorded; the next pass publishes every
/// other row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cut_mid_publish_duplicates_at_most_the_page_in_hand() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    pile(&b).await;
    let ch = amqp().await;
    let q = unique("sweeper_cut");
    declare(&ch, &q, Default::default()).await;
    let proxy = Proxy::to("127.0.0.1:5672".into()).await;
    let text = std::fs::read_to_string(config(&b, dir.path(), "unused", 5))
        .unwrap()
        .replacen(&resque_block(), &amqp_block(proxy.port), 1)
        .replacen("job: {queue: notify,", &format!("job: {{queue: {q},"), 1)
        .replacen("      max_attempts: 5\n", PAGES_OF_20, 1);
    let cfg = write(dir.path(), "amqp-cut.yaml", &text);
    let run = failing_once_in_background(&cfg);
    // Cut once a few hundred rows are recorded as requeued.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", b.ledger))
            .fetch_one(&b.pool)
            .await
            .unwrap_or(0);
        if n >= 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the pass never got going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.set(REFUSE);
    proxy.cut.notify_waiters();
    let report = run.await.unwrap();
    let s = sweep_json(&report, "notifications");
    assert_eq!(s["errors"][0]["stage"], "enqueue", "{s:#}");
    let ledger: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", b.ledger))
        .fetch_one(&b.pool)
        .await
        .unwrap();
    let first: Vec<i64> = drain(&ch, &q)
        .await
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
            v["args"][1].as_i64().unwrap()
        })
        .collect();
    let published = first.len() as i64;
    assert!(
        (0..=20).contains(&(published - ledger)),
        "published {published}, recorded {ledger}"
    );
    proxy.set(PASS);
    let again = run_json(
        &["once", "-c", cfg.to_str().unwrap(), "--format", "json"],
        0,
    );
    assert!(sweep_json(&again, "notifications")["errors"]
        .as_array()
        .unwrap()
        .is_empty());
    let mut ids: Vec<i64> = first;
    ids.extend(drain(&ch, &q).await.iter().map(|m| {
        let v: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
        v["args"][1].as_i64().unwrap()
    }));
    each_row_once(ids);
    b.cleanup().await;
}

/// The daemon through a Postgres outage: passes fail (counted), the daemon
/// keeps serving, and once Postgres is back it requeues the rows — once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rides_out_a_postgres_outage_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("pg_down");
    let mut r = redis().await;
    let proxy = CutProxy::start().await;
    proxy.down.store(true, Ordering::SeqCst);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(config(&b, dir.path(), &ns, 5))
        .unwrap()
        .replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port), 1);
    let text = format!("metrics: {{listen: \"127.0.0.1:{port}\"}}\n{text}").replacen(
        "    timestamp_column: updated_at\n",
        "    timestamp_column: updated_at\n    every: 1s\n",
        1,
    );
    let cfg = write(dir.path(), "run.yaml", &text);
    let mut d = Guarded(
        sweeper()
            .args(["run", "-c", cfg.to_str().unwrap(), "--initial-delay", "0s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let key = format!("{ns}:queue:notify");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let failing = metrics(port).is_some_and(|m| {
            m.lines().any(|l| {
                l.starts_with("sweeper_errors_total{stage=\"fetch\",sweep=\"notifications\"}")
                    && !l.ends_with(" 0")
            })
        });
        if failing {
            break;
        }
        assert!(Instant::now() < deadline, "no failed pass counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = metrics(port).expect("still serving /metrics");
    assert!(body.contains("sweeper_build_info"), "still serving");
    assert!(d.try_wait().unwrap().is_none(), "the daemon keeps running");
    proxy.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while llen(&mut r, &key).await < 3 {
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(llen(&mut r, &key).await, 3, "exactly once");
    assert!(d.try_wait().unwrap().is_none());
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &d.id().to_string()])
        .status();
    let _ = d.wait();
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

/// 2,000 more stale pending rows (3 more come with the base table).
async fn pile(b: &Backend) {
    b.exec(&format!(
        "INSERT INTO {} SELECT g, g, 'pending', now() - interval '1 hour', NULL FROM generate_series(1000, 2999) g",
        b.table
    ))
    .await;
}

/// Every one of the 2,003 stale rows' jobs is there, and duplicates stay
/// within the documented window: the one page of 20 in hand at the fault.
fn each_row_once(mut ids: Vec<i64>) {
    ids.sort_unstable();
    let total = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), 2003, "every stale row's job is there");
    assert!(total - ids.len() <= 20, "{} duplicates", total - ids.len());
}

/// The row ids (second argument) of the jobs in a Resque list.
async fn queued_ids(r: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<i64> {
    let jobs: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(r)
        .await
        .unwrap();
    jobs.iter()
        .map(|j| {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            v["args"][1].as_i64().unwrap()
        })
        .collect()
}

/// The resque queue block the base config has (namespace `unused`).
fn resque_block() -> String {
    format!(
        "kind: resque\n    redis: \"{}\"\n    namespace: unused",
        redis_url()
    )
}

/// An AMQP queue through the proxy at `port`.
fn amqp_block(port: u16) -> String {
    format!("kind: amqp\n    url: amqp://guest:guest@127.0.0.1:{port}/%2f\n    confirm_timeout: 3s")
}

/// Small pages, and a budget that does not stop the pass.
const PAGES_OF_20: &str =
    "      max_attempts: 5\n    limits: {batch_size: 20, max_actions: 100000}\n";

/// `once` on `cfg` in the background, expected to end with errors (exit 1).
fn failing_once_in_background(cfg: &std::path::Path) -> tokio::task::JoinHandle<serde_json::Value> {
    let cfg = cfg.to_path_buf();
    tokio::task::spawn_blocking(move || {
        run_json(
            &["once", "-c", cfg.to_str().unwrap(), "--format", "json"],
            1,
        )
    })
}

/// Wait until the pass has pushed `n` jobs to `key`.
async fn wait_queued(r: &mut redis::aio::MultiplexedConnection, key: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while llen(r, key).await < n {
        assert!(Instant::now() < deadline, "the pass never got going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
