//! Requeueing into Sidekiq (a real Sidekiq consumes), RabbitMQ (a real
//! broker with publisher confirms) and an HTTP job API (a local server);
//! presence checks (held while queued or running, requeued after), the
//! no-workers brake and the storm brake.

use crate::sql_sweeps::{config, Backend, Ts};
use crate::support::*;
use serde_json::{json, Value};
use sqlx::Row;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The resque queue block `config()` writes (namespace `unused`).
fn resque_block() -> String {
    format!(
        "kind: resque\n    redis: \"{}\"\n    namespace: unused",
        redis_url()
    )
}

/// Pretend `after` has passed since the last requeues.
async fn age_ledger(b: &Backend) {
    b.exec(&format!(
        "UPDATE {} SET last_requeued_at = last_requeued_at - 3600",
        b.ledger
    ))
    .await;
}

fn edit(path: &Path, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in config");
    let out = path.with_file_name(format!("{}.yaml", unique("cfg")));
    std::fs::write(&out, text.replacen(from, to, 1)).unwrap();
    out
}

async fn llen(r: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("LLEN").arg(key).query_async(r).await.unwrap()
}

fn sorted_args(jobs: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = jobs.iter().map(|j| j["args"].to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn sidekiq_runs_requeued_jobs_holds_queued_ones_and_fails_none() {
    sidekiq_runs_requeued_jobs_holds_queued_ones_and_fails_none_on(Ts::PgTz).await;
}

#[tokio::test]
async fn sidekiq_runs_requeued_jobs_holds_queued_ones_and_fails_none_on_mariadb() {
    sidekiq_runs_requeued_jobs_holds_queued_ones_and_fails_none_on(Ts::MyDatetime).await;
}

async fn sidekiq_runs_requeued_jobs_holds_queued_ones_and_fails_none_on(ts: Ts) {
    assert!(
        Command::new("sidekiq").arg("--help").output().is_ok(),
        "sidekiq is required (run scripts/test, which installs ruby-sidekiq and ruby-redis-namespace)"
    );
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let ns = unique("sidekiq_it");
    let mut r = redis().await;
    let base = config(&b, dir.path(), &ns, 5);
    let cfg = edit(
        &base,
        "kind: resque",
        "kind: sidekiq\n    presence_check: true",
    );
    let key = format!("{ns}:queue:notify");

    let s = once_json(&cfg, 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(s["outcomes"]["applied"]["requeue"], 3, "{s:#}");
    assert_eq!(llen(&mut r, &key).await, 3);
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    for p in &raw {
        let v: Value = serde_json::from_str(p).unwrap();
        assert_eq!(v["class"], "NotifyUser");
        assert_eq!(v["queue"], "notify");
        assert_eq!(v["retry"], true);
        assert!(v["jid"].as_str().unwrap().len() == 24);
        assert!(v["created_at"].as_f64().unwrap() > 1.7e9);
    }

    // Still in the queue after `after`: held, not duplicated.
    age_ledger(&b).await;
    let held = once_json(&cfg, 0);
    let s = sweep_json(&held, "notifications");
    assert_eq!(reasons(s)["still_queued"], 3, "{s:#}");
    assert_eq!(llen(&mut r, &key).await, 3, "not duplicated");

    // A real Sidekiq (Debian's ruby-sidekiq) performs them.
    let out = dir.path().join("sidekiq.jsonl");
    let out_path = out.display().to_string();
    let env = [
        ("SIDEKIQ_NAMESPACE", ns.as_str()),
        ("SIDEKIQ_OUT", out_path.as_str()),
    ];
    let app = root().join("tests/consumers/sidekiq");
    let jobs = sidekiq_performs(&app, "worker.rb", "notify", &env, &out, 3);
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j["class"] == "NotifyUser"));
    assert_eq!(sorted_args(&jobs), ["[12,2]", "[20,10]", "[null,3]"]);
    for set in ["retry", "dead"] {
        let n: i64 = redis::cmd("ZCARD")
            .arg(format!("{ns}:{set}"))
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(n, 0, "nothing in Sidekiq's {set} set");
    }

    // Consumed, still pending past `after`: requeued again.
    age_ledger(&b).await;
    let again = once_json(&cfg, 0);
    let s = sweep_json(&again, "notifications");
    assert_eq!(keys_with(s, "requeue"), ["10", "2", "3"], "{s:#}");
    assert!(s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["decision"] == "requeue")
        .all(|r| r["attempt"] == 2));
    assert_eq!(llen(&mut r, &key).await, 3);
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

#[tokio::test]
async fn resque_presence_holds_queued_and_running_jobs_then_requeues() {
    resque_presence_holds_queued_and_running_jobs_then_requeues_on(Ts::PgTz).await;
}

#[tokio::test]
async fn resque_presence_holds_queued_and_running_jobs_then_requeues_on_mariadb() {
    resque_presence_holds_queued_and_running_jobs_then_requeues_on(Ts::MyDatetime).await;
}

async fn resque_presence_holds_queued_and_running_jobs_then_requeues_on(ts: Ts) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let ns = unique("resque_presence");
    let mut r = redis().await;
    let base = config(&b, dir.path(), &ns, 5);
    let cfg = edit(
        &base,
        &format!("namespace: {ns}"),
        &format!("namespace: {ns}\n    presence_check: {{max_entries: 1000}}"),
    );
    let key = format!("{ns}:queue:notify");

    assert_eq!(
        sweep_json(&once_json(&cfg, 0), "notifications")["outcomes"]["applied"]["requeue"],
        3
    );
    age_ledger(&b).await;
    let s = report_json(&cfg);
    assert_eq!(
        reasons(sweep_json(&s, "notifications"))["still_queued"],
        3,
        "{s:#}"
    );
    // The report shows it too, and explain says why.
    let o = explain(&cfg, "notifications", "2");
    assert!(
        stdout(&o).contains("decision    hold because still_queued"),
        "{}",
        stdout(&o)
    );

    // A worker takes one job and holds it until released: that one is
    // running, however long the pass below takes.
    let release = dir.path().join("release");
    let (mut worker, out) = resque_spawn(
        &ns,
        "notify",
        &["NotifyUser"],
        &["--hold-until", release.to_str().unwrap(), "--expect", "3"],
    );
    wait_until("a job in flight", Duration::from_secs(15), || {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{ns}:worker:*"))
            .query(&mut redis::Client::open(redis_url().as_str()).unwrap())
            .ok()?;
        keys.iter()
            .any(|k| !k.contains(":ping:") && !k.ends_with(":started"))
            .then_some(())
    });
    let s = once_json(&cfg, 0);
    let s = sweep_json(&s, "notifications");
    let rs = reasons(s);
    assert_eq!(
        (rs.get("running"), rs.get("still_queued")),
        (Some(&1), Some(&2)),
        "{s:#}"
    );
    assert_eq!(
        s["outcomes"]["applied"],
        json!({}),
        "nothing pushed while queued or running"
    );
    std::fs::write(&release, "").unwrap();
    let status = worker.wait().unwrap();
    assert!(status.success());
    assert_eq!(read_jsonl(out.path()).len(), 3);
    assert_eq!(llen(&mut r, &key).await, 0);

    age_ledger(&b).await;
    let s = once_json(&cfg, 0);
    assert_eq!(
        keys_with(sweep_json(&s, "notifications"), "requeue"),
        ["10", "2", "3"]
    );
    assert_eq!(llen(&mut r, &key).await, 3);
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

#[tokio::test]
async fn no_live_workers_holds_requeues_until_a_worker_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("resque_workers");
    let mut r = redis().await;
    let base = config(&b, dir.path(), &ns, 5);
    let cfg = edit(
        &base,
        &format!("namespace: {ns}"),
        &format!("namespace: {ns}\n    require_workers: true"),
    );
    let key = format!("{ns}:queue:notify");

    let s = once_json(&cfg, 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(reasons(s)["no_workers"], 3, "{s:#}");
    assert_eq!(
        llen(&mut r, &key).await,
        0,
        "nothing pushed into a dead fleet"
    );
    // Evidence-backed marks are not held.
    assert_eq!(keys_with(s, "mark_sent"), ["5"]);

    // A node-resque worker registers and pings: requeues flow again, and it
    // performs them.
    let (mut worker, out) = resque_spawn(&ns, "notify", &["NotifyUser"], &["--expect", "3"]);
    wait_until(
        "the worker to register and ping",
        Duration::from_secs(15),
        || {
            let mut c = redis::Client::open(redis_url().as_str()).unwrap();
            let n: i64 = redis::cmd("SCARD")
                .arg(format!("{ns}:workers"))
                .query(&mut c)
                .ok()?;
            let pings: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{ns}:worker:ping:*"))
                .query(&mut c)
                .ok()?;
            (n > 0 && !pings.is_empty()).then_some(())
        },
    );
    let s = once_json(&cfg, 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(keys_with(s, "requeue"), ["10", "2", "3"], "{s:#}");
    assert!(worker.wait().unwrap().success());
    assert_eq!(
        sorted_args(&read_jsonl(out.path())),
        ["[12,2]", "[20,10]", "[null,3]"]
    );
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

#[tokio::test]
async fn storm_brake_holds_all_requeues_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::SqliteText, dir.path()).await;
    b.exec(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < 146) \
         INSERT INTO {} SELECT i, i, 'pending', datetime('now', '-1 hour'), NULL FROM n",
        b.table
    ))
    .await;
    let ns = unique("resque_storm");
    let mut r = redis().await;
    let base = config(&b, dir.path(), &ns, 5);
    let cfg = edit(
        &base,
        "      max_attempts: 5\n",
        "      max_attempts: 5\n    limits: {hold_above: 10}\n",
    );
    let s = report_json(&cfg);
    let s = sweep_json(&s, "notifications");
    assert_eq!(s["stuck"]["pending"], 50, "{s:#}");
    assert_eq!(reasons(s)["storm"], 50, "{s:#}");
    assert_eq!(s["decisions"].get("requeue"), None);
    let text = stdout(&run(&["report", "-c", cfg.to_str().unwrap()]));
    assert!(text.contains("hold") && text.contains("storm"), "{text}");
    let done = once_json(&cfg, 0);
    let s = sweep_json(&done, "notifications");
    assert_eq!(s["outcomes"]["applied"].get("requeue"), None, "{s:#}");
    assert!(
        redis_snapshot(&mut r, &ns).await.is_empty(),
        "nothing requeued"
    );
    b.cleanup().await;
}

pub async fn amqp() -> lapin::Channel {
    let conn = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap_or_else(|e| {
        panic!("RabbitMQ is required on 127.0.0.1:5672 (run scripts/test, which starts it): {e}")
    });
    conn.create_channel().await.unwrap()
}

pub async fn declare(ch: &lapin::Channel, name: &str, args: lapin::types::FieldTable) {
    ch.queue_declare(
        name.into(),
        lapin::options::QueueDeclareOptions {
            auto_delete: false,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
}

/// Drain a queue with basic.get (a real consumer, acking each message).
pub async fn drain(ch: &lapin::Channel, name: &str) -> Vec<lapin::message::BasicGetMessage> {
    let mut out = Vec::new();
    loop {
        let m = ch
            .basic_get(name.into(), lapin::options::BasicGetOptions::default())
            .await
            .unwrap();
        match m {
            Some(m) => {
                m.delivery
                    .ack(lapin::options::BasicAckOptions::default())
                    .await
                    .unwrap();
                out.push(m);
            }
            None => return out,
        }
    }
}

#[tokio::test]
async fn rabbitmq_gets_each_job_once_with_its_idempotency_key() {
    rabbitmq_gets_each_job_once_with_its_idempotency_key_on(Ts::PgTz).await;
}

#[tokio::test]
async fn rabbitmq_gets_each_job_once_with_its_idempotency_key_on_mariadb() {
    rabbitmq_gets_each_job_once_with_its_idempotency_key_on(Ts::MyDatetime).await;
}

async fn rabbitmq_gets_each_job_once_with_its_idempotency_key_on(ts: Ts) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let ch = amqp().await;
    let q = unique("sweeper_amqp");
    declare(&ch, &q, Default::default()).await;
    let base = config(&b, dir.path(), "unused", 5);
    let amqp_block = |port: u16| {
        format!(
            "kind: amqp\n    url: amqp://guest:guest@127.0.0.1:{port}/%2f\n    routing_key: \"{{{{queue}}}}\"\n    headers: {{x-sweeper-sweep: \"{{{{sweep}}}}\"}}\n    body: {{job: \"{{{{class}}}}\", args: \"{{{{args}}}}\", row: \"{{{{key}}}}\"}}\n    confirm_timeout: 5s"
        )
    };
    let with_queue = |p: &Path| edit(p, "job: {queue: notify,", &format!("job: {{queue: {q},"));
    // The broker is down (nothing listens there): the pass fails cleanly.
    let down = with_queue(&edit(&base, &resque_block(), &amqp_block(1)));
    let s = once_json(&down, 1);
    let s = sweep_json(&s, "notifications");
    assert_eq!(s["outcomes"]["failed"], 3, "{s:#}");
    assert!(
        s["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("connecting"),
        "{s:#}"
    );
    // The ledger table exists (it is created before the first push) and
    // holds nothing: a query error here is a failure, not a zero.
    let n: i64 = sqlx::query(&format!("SELECT count(*) FROM {}", b.ledger))
        .fetch_one(&b.pool)
        .await
        .map(|r| r.get(0))
        .expect("the ledger table exists");
    assert_eq!(n, 0, "nothing recorded as requeued");

    // The broker is back: a later pass requeues them, each exactly once.
    let up = with_queue(&edit(&base, &resque_block(), &amqp_block(5672)));
    let s = once_json(&up, 0);
    assert_eq!(
        sweep_json(&s, "notifications")["outcomes"]["applied"]["requeue"],
        3
    );
    let msgs = drain(&ch, &q).await;
    assert_eq!(msgs.len(), 3);
    let mut ids: Vec<String> = msgs
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "notifications:10:1",
            "notifications:2:1",
            "notifications:3:1"
        ]
    );
    for m in &msgs {
        let p = &m.delivery.properties;
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        let headers = p.headers().as_ref().unwrap();
        match headers.inner().get("x-sweeper-sweep") {
            Some(lapin::types::AMQPValue::LongString(v)) => {
                assert_eq!(v.as_bytes(), b"notifications")
            }
            other => panic!("header x-sweeper-sweep: {other:?}"),
        }
        let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
        assert_eq!(body["job"], "NotifyUser");
        let row = body["row"].as_str().unwrap();
        let want = match row {
            "2" => json!([12, 2]),
            "3" => json!([null, 3]),
            "10" => json!([20, 10]),
            other => panic!("unexpected row {other}"),
        };
        assert_eq!(body["args"], want);
    }
    // Right after: nothing published again.
    let s = once_json(&up, 0);
    assert_eq!(
        keys_with(sweep_json(&s, "notifications"), "requeue"),
        Vec::<String>::new()
    );
    assert!(drain(&ch, &q).await.is_empty());
    ch.queue_delete(q.as_str().into(), Default::default())
        .await
        .unwrap();
    b.cleanup().await;
}

#[tokio::test]
async fn rabbitmq_nacks_and_unroutable_messages_are_not_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ch = amqp().await;
    // A queue that refuses every message: the broker nacks the publish.
    let full = unique("sweeper_full");
    let mut args = lapin::types::FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    declare(&ch, &full, args).await;
    let base = config(&b, dir.path(), "unused", 5);
    let amqp_cfg = edit(
        &base,
        &resque_block(),
        "kind: amqp\n    url: amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    let nack = edit(
        &amqp_cfg,
        "job: {queue: notify,",
        &format!("job: {{queue: {full},"),
    );
    let s = once_json(&nack, 1);
    let s = sweep_json(&s, "notifications");
    assert_eq!(s["outcomes"]["failed"], 3, "{s:#}");
    assert!(
        s["rows"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("nacked")
            || s["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("nacked"),
        "{s:#}"
    );
    // No queue bound for the routing key: returned, counted as failed.
    let nowhere = edit(
        &amqp_cfg,
        "job: {queue: notify,",
        &format!("job: {{queue: {},", unique("no_such_queue")),
    );
    let s = once_json(&nowhere, 1);
    let s = sweep_json(&s, "notifications");
    assert_eq!(s["outcomes"]["failed"], 3, "{s:#}");
    assert!(
        s["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("unroutable"),
        "{s:#}"
    );
    ch.queue_delete(full.as_str().into(), Default::default())
        .await
        .unwrap();
    b.cleanup().await;
}

/// A local job API: 202 for most jobs, 400 for row 3's job, a 503 with
/// Retry-After before accepting row 10's job; it records every request.
#[derive(Default)]
struct Api {
    requests: std::sync::Mutex<Vec<(std::time::Instant, String, Value)>>,
}

async fn serve_api() -> (u16, std::sync::Arc<Api>) {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    let api = std::sync::Arc::new(Api::default());
    async fn jobs(
        State(api): State<std::sync::Arc<Api>>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, HeaderMap, String) {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let seen = {
            let mut r = api.requests.lock().unwrap();
            let seen = r.iter().filter(|(_, k, _)| *k == key).count();
            r.push((std::time::Instant::now(), key.clone(), body));
            seen
        };
        let mut h = HeaderMap::new();
        if key.ends_with(":3:1") {
            return (
                StatusCode::BAD_REQUEST,
                h,
                "{\"error\":\"unknown user\"}".into(),
            );
        }
        if key.ends_with(":10:1") && seen == 0 {
            h.insert("retry-after", "1".parse().unwrap());
            return (StatusCode::SERVICE_UNAVAILABLE, h, "busy".into());
        }
        (StatusCode::ACCEPTED, h, "{\"ok\":true}".into())
    }
    let app = axum::Router::new()
        .route("/v1/queues/{queue}/jobs", axum::routing::post(jobs))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_job_api_accepts_retries_5xx_and_fails_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::SqliteText, dir.path()).await;
    let (port, api) = serve_api().await;
    let base = config(&b, dir.path(), "unused", 5);
    std::env::set_var("SWEEPER_IT_API_TOKEN", "s3cret");
    let cfg = edit(
        &base,
        &resque_block(),
        &format!(
            "kind: http\n    url: http://127.0.0.1:{port}/v1/queues/{{{{queue}}}}/jobs\n    headers: {{Authorization: \"Bearer ${{SWEEPER_IT_API_TOKEN}}\"}}\n    timeout: 5s\n    max_retries: 3"
        ),
    );
    let o = sweeper()
        .args(["once", "-c", cfg.to_str().unwrap(), "--format", "json"])
        .env("SWEEPER_IT_API_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "one job was refused: {}",
        stderr(&o)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = sweep_json(&v, "notifications");
    assert_eq!(s["outcomes"]["applied"]["requeue"], 2, "{s:#}");
    assert_eq!(s["outcomes"]["failed"], 1);
    let row3 = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "3")
        .unwrap();
    assert_eq!(row3["outcome"], "failed");
    assert!(
        row3["error"].as_str().unwrap().contains("HTTP 400"),
        "{row3:#}"
    );
    let reqs = api.requests.lock().unwrap().clone();
    let count = |k: &str| reqs.iter().filter(|(_, key, _)| key == k).count();
    assert_eq!(count("notifications:2:1"), 1);
    assert_eq!(count("notifications:3:1"), 1, "a 4xx is not retried");
    assert_eq!(count("notifications:10:1"), 2, "a 503 is retried");
    let tries: Vec<&std::time::Instant> = reqs
        .iter()
        .filter(|(_, k, _)| k == "notifications:10:1")
        .map(|(t, _, _)| t)
        .collect();
    assert!(
        tries[1].duration_since(*tries[0]) >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    let body = &reqs
        .iter()
        .find(|(_, k, _)| k == "notifications:2:1")
        .unwrap()
        .2;
    assert_eq!(
        body,
        &json!({"class": "NotifyUser", "args": [12, 2], "queue": "notify"})
    );
    // The refused row is not in the ledger: the next pass tries it again.
    let s = once_json(&cfg, 1);
    let s = sweep_json(&s, "notifications");
    assert_eq!(keys_with(s, "requeue"), ["3"], "{s:#}");
    b.cleanup().await;
}

/// The app's own jobs for the stale rows 2, 3 and 10 wait at the far end of
/// a queue longer than the presence check looks: the rows are held
/// (`queue_backlog`) and nothing is pushed twice; a bound that covers the
/// queue finds them (`still_queued`).
async fn a_job_beyond_the_presence_bound_is_held_not_pushed_twice(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique(&format!("{kind}_backlog"));
    let mut r = redis().await;
    let base = config(&b, dir.path(), &ns, 5);
    let bounded = |n: u32| {
        edit(
            &base,
            "kind: resque",
            &format!("kind: {kind}\n    presence_check: {{max_entries: {n}}}"),
        )
    };
    let key = format!("{ns}:queue:notify");
    let _: () = redis::cmd("SADD")
        .arg(format!("{ns}:queues"))
        .arg("notify")
        .query_async(&mut r)
        .await
        .unwrap();
    for i in 0..10 {
        let filler =
            json!({"class": "NotifyUser", "args": [1000 + i, 5000 + i], "queue": "notify"});
        let _: () = redis::cmd("RPUSH")
            .arg(&key)
            .arg(filler.to_string())
            .query_async(&mut r)
            .await
            .unwrap();
    }
    for args in [json!([12, 2]), json!([null, 3]), json!([20, 10])] {
        let job = json!({"class": "NotifyUser", "args": args, "queue": "notify"});
        let _: () = redis::cmd("RPUSH")
            .arg(&key)
            .arg(job.to_string())
            .query_async(&mut r)
            .await
            .unwrap();
    }
    assert_eq!(llen(&mut r, &key).await, 13);

    let s = once_json(&bounded(5), 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(reasons(s).get("queue_backlog"), Some(&3), "{s:#}");
    assert_eq!(s["outcomes"]["applied"].get("requeue"), None, "{s:#}");
    assert_eq!(llen(&mut r, &key).await, 13, "nothing pushed twice");
    let o = explain(&bounded(5), "notifications", "10");
    assert!(
        stdout(&o).contains("decision    hold because queue_backlog"),
        "{}",
        stdout(&o)
    );

    let s = once_json(&bounded(1000), 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(reasons(s).get("still_queued"), Some(&3), "{s:#}");
    assert_eq!(llen(&mut r, &key).await, 13);
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

#[tokio::test]
async fn resque_holds_a_job_beyond_the_presence_bound() {
    a_job_beyond_the_presence_bound_is_held_not_pushed_twice("resque").await;
}

#[tokio::test]
async fn sidekiq_holds_a_job_beyond_the_presence_bound() {
    a_job_beyond_the_presence_bound_is_held_not_pushed_twice("sidekiq").await;
}
