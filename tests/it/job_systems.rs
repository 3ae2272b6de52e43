//! Celery, BullMQ and RQ, each consumed by its real worker installed from
//! its registry (PyPI celery and rq, npm bullmq; `scripts/test` installs
//! them): every job sweeper requeued is run with its arguments intact, and
//! a job the app's own client enqueued is held as still queued.
//!
//! The stale pending rows of the shared table are 2 (user 12), 3 (user
//! NULL) and 10 (user 20).

use crate::sql_sweeps::{config, Backend, Ts};
use crate::support::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn python_dir() -> PathBuf {
    root().join("tests/consumers/python")
}

fn venv_bin(name: &str) -> PathBuf {
    python_dir().join(".venv/bin").join(name)
}

/// The base config with its queue and job replaced.
fn with_queue(base: &Path, queue_yaml: &str, job_yaml: &str) -> PathBuf {
    let text = std::fs::read_to_string(base).unwrap();
    let start = text.find("  resque:\n").unwrap();
    let end = text.find("evidence:").unwrap();
    let text = format!("{}{queue_yaml}{}", &text[..start], &text[end..]).replacen(
        "job: {queue: notify, class: NotifyUser, args: [user_id, id]}",
        job_yaml,
        1,
    );
    assert!(text.contains(job_yaml), "{text}");
    let out = base.with_file_name(format!("{}.yaml", unique("jobs")));
    std::fs::write(&out, text).unwrap();
    out
}

/// A Celery worker on `queue`, until dropped.
fn celery_worker(broker: &str, prefix: &str, queue: &str, out: &Path, log: &Path) -> Guarded {
    let log_file = std::fs::File::create(log).unwrap();
    let child = Command::new(venv_bin("celery"))
        .args([
            "-A",
            "probe",
            "worker",
            "-P",
            "solo",
            "-c",
            "1",
            "-Q",
            queue,
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "-l",
            "info",
            "-n",
            &format!("{}@%h", unique("w")),
        ])
        .current_dir(python_dir())
        .env("CELERY_BROKER", broker)
        .env("CELERY_KEYPREFIX", prefix)
        .env("PROBE_OUT", out)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("celery runs (run scripts/test, which installs it)");
    let g = Guarded(child);
    wait_until(
        "the celery worker to be ready",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains(" ready.")
                .then_some(())
        },
    );
    g
}

fn stop(mut g: Guarded) {
    let _ = Command::new("kill")
        .args(["-TERM", &g.id().to_string()])
        .status();
    let _ = g.wait();
}

/// The worker's log has no sign of a message it could not take.
fn worker_log_is_clean(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    for bad in [
        "unregistered",
        "Rejecting",
        "KeyError",
        "ERROR",
        "Traceback",
    ] {
        assert!(!text.contains(bad), "worker log has {bad:?}:\n{text}");
    }
}

fn by_user(runs: &[Value]) -> Vec<(Value, Value)> {
    let mut v: Vec<(Value, Value)> = runs
        .iter()
        .map(|r| (r["user_id"].clone(), r["id"].clone()))
        .collect();
    v.sort_by_key(|p| p.1.as_i64());
    v
}

fn python(code: &str, env: &[(&str, &str)]) -> String {
    let o = Command::new(venv_bin("python"))
        .args(["-c", code])
        .current_dir(python_dir())
        .env("REDIS_URL", redis_url())
        .envs(env.iter().copied())
        .output()
        .expect("python runs");
    assert!(
        o.status.success(),
        "python {code}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A config whose queue `resque` is a Celery queue on Redis (key prefix
/// `<ns>:`, `extra` options) and whose job is `probe.notify(user_id, id=id)`
/// on `<ns>_mail`.
fn celery_on_redis(b: &Backend, dir: &Path, ns: &str, extra: &str) -> PathBuf {
    with_queue(
        &config(b, dir, "unused", 5),
        &format!(
            "  resque:\n    kind: celery\n    broker: \"{}\"\n    global_keyprefix: \"{ns}:\"\n    presence_check: true\n{extra}",
            redis_url()
        ),
        &format!("job: {{queue: {ns}_mail, class: probe.notify, args: [user_id], kwargs: {{id: id}}}}"),
    )
}

async fn llen(r: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("LLEN").arg(key).query_async(r).await.unwrap()
}

#[tokio::test]
async fn a_celery_worker_on_redis_runs_every_task_sweeper_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("celery");
    let prefix = format!("{ns}:");
    let queue = format!("{ns}_mail");
    let mut r = redis().await;
    let cfg = celery_on_redis(&b, dir.path(), &ns, "    priority: 6\n");

    // check reaches the broker; explain shows the message as the worker
    // will receive it.
    let checked = stdout(&run(&["check", "-c", cfg.to_str().unwrap()]));
    assert!(checked.contains("celery on redis at redis://"), "{checked}");
    let text = stdout(&explain(&cfg, "notifications", "2"));
    assert!(text.contains("\"task\":\"probe.notify\""), "{text}");
    assert!(text.contains("\"body\":[[12],{\"id\":2}"), "{text}");

    let s = once_json(&cfg, 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(s["outcomes"]["applied"]["requeue"], 3, "{s:#}");
    // Priority 6 goes to kombu's priority list.
    let list = format!("{prefix}{queue}\x06\x166");
    assert_eq!(llen(&mut r, &list).await, 3);

    let out = dir.path().join("celery.jsonl");
    let log = dir.path().join("celery.log");
    let w = celery_worker(&redis_url(), &prefix, &queue, &out, &log);
    let runs = wait_until("celery to run 3 tasks", Duration::from_secs(60), || {
        let j = read_jsonl(&out);
        (j.len() >= 3).then_some(j)
    });
    stop(w);
    assert_eq!(
        by_user(&runs),
        [
            (json!(12), json!(2)),
            (Value::Null, json!(3)),
            (json!(20), json!(10))
        ]
    );
    for run in &runs {
        assert_eq!(run["kwargs"].as_object().unwrap().len(), 1, "{run}");
        assert_eq!(run["routing_key"], json!(queue));
    }
    worker_log_is_clean(&log);
    assert_eq!(llen(&mut r, &list).await, 0);
    let unacked: i64 = redis::cmd("HLEN")
        .arg(format!("{prefix}unacked"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(unacked, 0, "every task acknowledged");
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

#[tokio::test]
async fn a_task_celery_itself_enqueued_is_held_as_still_queued() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("celery_held");
    let prefix = format!("{ns}:");
    let queue = format!("{ns}_mail");
    let mut r = redis().await;
    let cfg = celery_on_redis(&b, dir.path(), &ns, "");
    // The app's own Celery client sends row 2's task.
    let broker = redis_url();
    python(
        &format!("import probe; probe.notify.apply_async(args=[12], kwargs={{'id': 2}}, queue='{queue}')"),
        &[("CELERY_BROKER", &broker), ("CELERY_KEYPREFIX", &prefix)],
    );
    assert_eq!(llen(&mut r, &format!("{prefix}{queue}")).await, 1);
    let s = once_json(&cfg, 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(reasons(s).get("still_queued"), Some(&1), "{s:#}");
    assert_eq!(s["outcomes"]["applied"]["requeue"], 2, "{s:#}");
    assert_eq!(llen(&mut r, &format!("{prefix}{queue}")).await, 3);
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

async fn amqp_delete_queue(queue: &str) {
    use lapin::options::QueueDeleteOptions;
    let conn = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ on 127.0.0.1:5672 (scripts/test starts it)");
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test]
async fn a_celery_worker_on_rabbitmq_runs_every_task_and_a_missing_queue_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let queue = unique("celery_amqp");
    let broker = "amqp://guest:guest@127.0.0.1:5672//";
    let cfg = with_queue(
        &config(&b, dir.path(), "unused", 5),
        &format!("  resque:\n    kind: celery\n    broker: \"{broker}\"\n"),
        &format!(
            "job: {{queue: {queue}, class: probe.notify, args: [user_id], kwargs: {{id: id}}}}"
        ),
    );
    // No worker has declared the queue: nothing is published into the void.
    let s = once_json(&cfg, 1);
    let s = sweep_json(&s, "notifications");
    assert_eq!(s["outcomes"]["applied"].get("requeue"), None, "{s:#}");
    let err = s["errors"].to_string();
    assert!(err.contains("passive declare"), "{err}");

    let out = dir.path().join("celery.jsonl");
    let log = dir.path().join("celery.log");
    let w = celery_worker(broker, "", &queue, &out, &log);
    let s = once_json(&cfg, 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(s["outcomes"]["applied"]["requeue"], 3, "{s:#}");
    let runs = wait_until("celery to run 3 tasks", Duration::from_secs(60), || {
        let j = read_jsonl(&out);
        (j.len() >= 3).then_some(j)
    });
    stop(w);
    assert_eq!(
        by_user(&runs),
        [
            (json!(12), json!(2)),
            (Value::Null, json!(3)),
            (json!(20), json!(10))
        ]
    );
    worker_log_is_clean(&log);
    amqp_delete_queue(&queue).await;
    b.cleanup().await;
}

fn node(script: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Child {
    Command::new("node")
        .arg(consumers_dir().join(script))
        .args(args)
        .current_dir(consumers_dir())
        .env("REDIS_URL", redis_url())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs")
}

fn bullmq_config(b: &Backend, dir: &Path, prefix: &str, presence: bool) -> PathBuf {
    with_queue(
        &config(b, dir, "unused", 5),
        &format!(
            "  resque:\n    kind: bullmq\n    redis: \"{}\"\n    prefix: {prefix}\n    attempts: 3\n    backoff: {{type: exponential, delay: 2s}}\n    presence_check: {presence}\n",
            redis_url()
        ),
        "job: {queue: mail, class: notify, data: {userId: user_id, id: id}}",
    )
}

#[tokio::test]
async fn a_bullmq_worker_completes_every_job_sweeper_added_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let prefix = unique("bull");
    let mut r = redis().await;
    let cfg = bullmq_config(&b, dir.path(), &prefix, false);
    let checked = stdout(&run(&["check", "-c", cfg.to_str().unwrap()]));
    assert!(
        checked.contains(&format!(
            "bullmq at redis://127.0.0.1:6379/0 (prefix \"{prefix}\")"
        )),
        "{checked}"
    );
    let text = stdout(&explain(&cfg, "notifications", "2"));
    assert!(text.contains(r#""data":{"id":2,"userId":12}"#), "{text}");
    assert!(text.contains("sweeper.notifications.2.1"), "{text}");
    let out = dir.path().join("bull.jsonl");
    let out_s = out.display().to_string();
    let env = [
        ("BULL_QUEUE", "mail"),
        ("BULL_PREFIX", prefix.as_str()),
        ("PROBE_OUT", out_s.as_str()),
        ("BULL_JOBS", "3"),
    ];
    // The worker waits first, as in production: it must be woken.
    let mut w = Guarded(node("bullmq_worker.js", &env, &[]));
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(w.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    let s = once_json(&cfg, 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(s["outcomes"]["applied"]["requeue"], 3, "{s:#}");
    let runs = wait_until("bullmq to run 3 jobs", Duration::from_secs(60), || {
        let j = read_jsonl(&out);
        (j.len() >= 3).then_some(j)
    });
    let status = w.wait().unwrap();
    assert!(status.success(), "the worker exits after 3 jobs");
    let mut got: Vec<(String, Value)> = runs
        .iter()
        .map(|j| {
            assert_eq!(j["name"], "notify");
            assert_eq!(j["opts"]["attempts"], 3);
            assert_eq!(
                j["opts"]["backoff"],
                json!({"type": "exponential", "delay": 2000})
            );
            assert_eq!(j["attemptsMade"], 0);
            let picked = j["processedOn"].as_i64().unwrap() - j["timestamp"].as_i64().unwrap();
            assert!(picked < 1000, "picked up {picked} ms after the push: {j}");
            (j["id"].as_str().unwrap().to_string(), j["data"].clone())
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            (
                "sweeper.notifications.10.1".to_string(),
                json!({"userId": 20, "id": 10})
            ),
            (
                "sweeper.notifications.2.1".to_string(),
                json!({"userId": 12, "id": 2})
            ),
            (
                "sweeper.notifications.3.1".to_string(),
                json!({"userId": null, "id": 3})
            ),
        ]
    );
    for (id, _) in &got {
        let finished: Option<i64> = redis::cmd("HGET")
            .arg(format!("{prefix}:mail:{id}"))
            .arg("finishedOn")
            .query_async(&mut r)
            .await
            .unwrap();
        assert!(finished.is_some(), "job {id} has finishedOn");
    }
    redis_clear(&mut r, &prefix).await;
    b.cleanup().await;
}

#[tokio::test]
async fn a_bullmq_job_pushed_twice_for_one_attempt_is_one_job_and_the_apps_own_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let prefix = unique("bull_held");
    let mut r = redis().await;
    let cfg_path = bullmq_config(&b, dir.path(), &prefix, true);
    // The app's own client adds row 2's job.
    let env = [("BULL_QUEUE", "mail"), ("BULL_PREFIX", prefix.as_str())];
    let o = node(
        "bullmq_add.js",
        &env,
        &["notify", r#"{"userId":12,"id":2}"#],
    )
    .wait_with_output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wait = format!("{prefix}:mail:wait");
    assert_eq!(llen(&mut r, &wait).await, 1);
    let s = once_json(&cfg_path, 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(reasons(s).get("still_queued"), Some(&1), "{s:#}");
    assert_eq!(s["outcomes"]["applied"]["requeue"], 2, "{s:#}");
    assert_eq!(llen(&mut r, &wait).await, 3);

    // The same attempt pushed again (a crash between push and ledger) is
    // the same BullMQ job: nothing new waits.
    let cfg = sweeper::config::load(&cfg_path).unwrap();
    let mut q = sweeper::adapters::queue::QueueClient::connect(&cfg.queues["resque"])
        .await
        .unwrap();
    let kwargs: serde_json::Map<String, Value> = [
        ("userId".to_string(), json!(20)),
        ("id".to_string(), json!(10)),
    ]
    .into_iter()
    .collect();
    let job = sweeper::adapters::queue::JobRequest {
        sweep: "notifications",
        row_key: "10",
        attempt: 1,
        queue: "mail",
        class: "notify",
        args: &[],
        kwargs: &kwargs,
        job_id: None,
        activejob: None,
    };
    let res = q.push(&[job], chrono::Utc::now()).await.unwrap();
    assert_eq!(res, [Ok(())]);
    assert_eq!(llen(&mut r, &wait).await, 3, "deduplicated by its job id");
    redis_clear(&mut r, &prefix).await;
    b.cleanup().await;
}

async fn rq_clear(r: &mut redis::aio::MultiplexedConnection, queue: &str, ids: &[String]) {
    let mut keys = vec![format!("rq:queue:{queue}")];
    for reg in [
        "wip",
        "failed",
        "finished",
        "scheduled",
        "deferred",
        "canceled",
    ] {
        keys.push(format!("rq:{reg}:{queue}"));
    }
    keys.extend(ids.iter().map(|i| format!("rq:job:{i}")));
    keys.extend(ids.iter().map(|i| format!("rq:results:{i}")));
    let _: () = redis::cmd("DEL").arg(&keys).query_async(r).await.unwrap();
    let _: () = redis::cmd("SREM")
        .arg("rq:queues")
        .arg(format!("rq:queue:{queue}"))
        .query_async(r)
        .await
        .unwrap();
}

fn rq_burst(queue: &str, out: &Path, json: bool) {
    let url = redis_url();
    let mut args = vec!["worker", "--burst", "-u", url.as_str()];
    if json {
        args.extend(["--serializer", "rq.serializers.JSONSerializer"]);
    }
    args.push(queue);
    let o = Command::new(venv_bin("rq"))
        .args(&args)
        .current_dir(python_dir())
        .env("PROBE_OUT", out)
        .output()
        .expect("rq runs (run scripts/test, which installs it)");
    let log = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "rq worker: {log}");
    assert!(!log.contains("Traceback"), "rq worker: {log}");
}

#[tokio::test]
async fn an_rq_worker_finishes_a_job_requeued_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let queue = unique("rq_byid");
    let mut r = redis().await;
    // The app enqueued row 2's job with RQ's default (pickle) serializer;
    // its worker died: the job sits in the failed registry, off the queue.
    let id = python(
        &format!(
            "import os; from redis import Redis; from rq import Queue; import probe\n\
             q = Queue('{queue}', connection=Redis.from_url(os.environ['REDIS_URL']))\n\
             j = q.enqueue(probe.rq_notify, 12, id=2)\n\
             c = Redis.from_url(os.environ['REDIS_URL']); c.lrem('rq:queue:{queue}', 0, j.id)\n\
             c.zadd('rq:failed:{queue}', {{j.id: 9999999999}}); c.hset(j.key, 'status', 'failed')\n\
             print(j.id)"
        ),
        &[],
    );
    b.exec(&format!(
        "UPDATE {} SET message_id = '{id}' WHERE id = 2",
        b.table
    ))
    .await;
    b.exec(&format!(
        "UPDATE {} SET message_id = 'gone-job' WHERE id = 10",
        b.table
    ))
    .await;
    let cfg = with_queue(
        &config(&b, dir.path(), "unused", 5),
        &format!(
            "  resque:\n    kind: rq\n    redis: \"{}\"\n    presence_check: true\n",
            redis_url()
        ),
        &format!("job: {{queue: {queue}, job_id: message_id}}"),
    );
    let checked = stdout(&run(&["check", "-c", cfg.to_str().unwrap()]));
    assert!(checked.contains("rq at redis://"), "{checked}");
    let text = stdout(&explain(&cfg, "notifications", "2"));
    assert!(
        text.contains(&format!(r#""requeue":"rq:job:{id}""#)),
        "{text}"
    );
    let s = once_json(&cfg, 1);
    let s = sweep_json(&s, "notifications");
    let row = |k: &str| {
        s["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(row("2")["outcome"], "applied", "{s:#}");
    let e3 = row("3")["error"].to_string();
    assert!(e3.contains("is NULL: no RQ job to requeue"), "{e3}");
    let e10 = row("10")["error"].to_string();
    assert!(e10.contains("RQ job gone-job no longer exists"), "{e10}");
    let failed: i64 = redis::cmd("ZCARD")
        .arg(format!("rq:failed:{queue}"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(failed, 0, "out of the failed registry");

    let out = dir.path().join("rq.jsonl");
    rq_burst(&queue, &out, false);
    let runs = read_jsonl(&out);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["job_id"], json!(id));
    assert_eq!(
        (runs[0]["user_id"].clone(), runs[0]["id"].clone()),
        (json!(12), json!(2))
    );
    let status = python(
        &format!("import os; from redis import Redis; from rq.job import Job; print(Job.fetch('{id}', connection=Redis.from_url(os.environ['REDIS_URL'])).get_status().value)"),
        &[],
    );
    assert_eq!(status, "finished");
    rq_clear(&mut r, &queue, &[id]).await;
    b.cleanup().await;
}

#[tokio::test]
async fn an_rq_worker_runs_new_json_jobs_and_the_apps_own_job_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let queue = unique("rq_json");
    let mut r = redis().await;
    let cfg = with_queue(
        &config(&b, dir.path(), "unused", 5),
        &format!(
            "  resque:\n    kind: rq\n    redis: \"{}\"\n    serializer: json\n    presence_check: true\n",
            redis_url()
        ),
        &format!("job: {{queue: {queue}, class: probe.rq_notify, args: [user_id], kwargs: {{id: id}}}}"),
    );
    // The app's own RQ client (JSONSerializer) enqueued row 2's job.
    let app_id = python(
        &format!(
            "import os; from redis import Redis; from rq import Queue; from rq.serializers import JSONSerializer\n\
             q = Queue('{queue}', connection=Redis.from_url(os.environ['REDIS_URL']), serializer=JSONSerializer)\n\
             print(q.enqueue('probe.rq_notify', 12, id=2).id)"
        ),
        &[],
    );
    let s = once_json(&cfg, 0);
    let s = sweep_json(&s, "notifications");
    assert_eq!(reasons(s).get("still_queued"), Some(&1), "{s:#}");
    assert_eq!(s["outcomes"]["applied"]["requeue"], 2, "{s:#}");
    let ids: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("rq:queue:{queue}"))
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);

    let out = dir.path().join("rq.jsonl");
    rq_burst(&queue, &out, true);
    let runs = read_jsonl(&out);
    assert_eq!(
        by_user(&runs),
        [
            (json!(12), json!(2)),
            (Value::Null, json!(3)),
            (json!(20), json!(10))
        ]
    );
    for id in &ids {
        let status: Option<String> = redis::cmd("HGET")
            .arg(format!("rq:job:{id}"))
            .arg("status")
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("finished"), "job {id}");
    }
    assert!(ids.contains(&app_id));
    rq_clear(&mut r, &queue, &ids).await;
    b.cleanup().await;
}
