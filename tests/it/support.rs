//! Shared helpers for the integration tests: unique names, service
//! connections (which fail loudly when a service is missing), running the
//! sweeper binary and the real queue consumers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// A name unique to this test process and call: `prefix_<pid>_<n>_<nanos>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

pub fn pg_url() -> String {
    std::env::var("SWEEPER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn my_url() -> String {
    std::env::var("SWEEPER_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub fn redis_url() -> String {
    std::env::var("SWEEPER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A Postgres pool on the test database; panics with instructions when
/// Postgres is not there (tests never skip silently).
pub async fn pg() -> sqlx::PgPool {
    let url = pg_url();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Postgres is required at {url} (run scripts/test, which starts it; or set SWEEPER_TEST_PG_URL): {e}"
            )
        })
}

pub async fn redis() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("Redis is required at {url} (run scripts/test, which starts it): {e}")
        })
}

/// Delete every key under `prefix*`.
pub async fn redis_clear(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(conn).await.unwrap();
    }
}

/// Every key under `prefix*` with a dump of its value, sorted (to compare
/// before/after).
pub async fn redis_snapshot(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap();
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let v: Vec<u8> = redis::cmd("DUMP").arg(&k).query_async(conn).await.unwrap();
        out.push((k, v));
    }
    out
}

pub fn sweeper() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sweeper"));
    c.env_remove("SWEEPER_CONFIG")
        .env("RUST_LOG", "sweeper=warn");
    c
}

/// Run sweeper with args; returns the output.
pub fn run(args: &[&str]) -> Output {
    sweeper().args(args).output().expect("sweeper binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run sweeper and parse its JSON output; panics with the output on a
/// non-zero exit unless `code` says otherwise.
pub fn run_json(args: &[&str], want_code: i32) -> serde_json::Value {
    let o = run(args);
    assert_eq!(
        o.status.code(),
        Some(want_code),
        "sweeper {args:?}\nstdout:\n{}\nstderr:\n{}",
        stdout(&o),
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr:\n{}", stdout(&o), stderr(&o)))
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The node-resque consumer's directory; panics when its dependencies are
/// not installed.
pub fn consumers_dir() -> PathBuf {
    let d = root().join("tests/consumers");
    assert!(
        d.join("node_modules/node-resque").exists(),
        "node-resque is not installed: run scripts/test, which installs it (npm ci --prefix tests/consumers)"
    );
    d
}

/// Run a real node-resque worker until it has processed `expect` jobs (or
/// times out); returns the jobs it performed as JSON values.
pub fn resque_consume(
    namespace: &str,
    queue: &str,
    classes: &[&str],
    expect: usize,
) -> Vec<serde_json::Value> {
    let dir = consumers_dir();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut args: Vec<String> = vec![
        "resque_worker.js".into(),
        "--redis-url".into(),
        redis_url(),
        "--namespace".into(),
        namespace.into(),
        "--queues".into(),
        queue.into(),
        "--classes".into(),
        classes.join(","),
        "--out".into(),
        out.path().display().to_string(),
        "--poll-ms".into(),
        "100".into(),
        "--timeout-ms".into(),
        "20000".into(),
    ];
    if expect == 0 {
        args.extend(["--idle-ms".into(), "500".into()]);
    } else {
        args.extend(["--expect".into(), expect.to_string()]);
    }
    let o = Command::new("node")
        .args(&args)
        .current_dir(&dir)
        .output()
        .expect("node runs");
    assert!(
        o.status.success(),
        "node-resque worker failed ({:?}):\n{}\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    std::fs::read_to_string(out.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn sweep_json<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["sweeps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sweep {name} in {report:#}"))
}

/// Row keys of a sweep's report with the given decision.
pub fn keys_with(sweep: &serde_json::Value, decision: &str) -> Vec<String> {
    let mut v: Vec<String> = sweep["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["decision"] == decision)
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// A child process killed when the guard drops, so a failing test leaves
/// nothing running.
pub struct Guarded(pub std::process::Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Guarded {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Start a node-resque worker in the background; `extra` adds arguments
/// (e.g. `--work-ms`, `--hold-until`). Its output file is returned with the
/// child, which is killed if the test ends first.
pub fn resque_spawn(
    namespace: &str,
    queue: &str,
    classes: &[&str],
    extra: &[&str],
) -> (Guarded, tempfile::NamedTempFile) {
    let dir = consumers_dir();
    let out = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new("node")
        .arg("resque_worker.js")
        .args([
            "--redis-url",
            &redis_url(),
            "--namespace",
            namespace,
            "--queues",
            queue,
        ])
        .args([
            "--classes",
            &classes.join(","),
            "--out",
            &out.path().display().to_string(),
        ])
        .args(["--poll-ms", "100", "--timeout-ms", "30000"])
        .args(extra)
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    (Guarded(child), out)
}

/// Run a real Sidekiq (`sidekiq -r ./{require} -q {queue}` in `app`, with
/// `env` added to REDIS_URL) until it has written `n` jobs to the jsonl file
/// `out`, then stop it with TERM. What it wrote is returned.
pub fn sidekiq_performs(
    app: &Path,
    require: &str,
    queue: &str,
    env: &[(&str, &str)],
    out: &Path,
    n: usize,
) -> Vec<serde_json::Value> {
    let mut sk = Guarded(
        Command::new("sidekiq")
            .args([
                "-r",
                &format!("./{require}"),
                "-q",
                queue,
                "-c",
                "2",
                "-t",
                "1",
            ])
            .current_dir(app)
            .env("REDIS_URL", redis_url())
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sidekiq starts"),
    );
    let what = format!("sidekiq to perform {n} jobs");
    let jobs = wait_until(&what, std::time::Duration::from_secs(60), || {
        let j = read_jsonl(out);
        (j.len() >= n).then_some(j)
    });
    let _ = Command::new("kill")
        .args(["-TERM", &sk.id().to_string()])
        .status();
    let _ = sk.wait();
    jobs
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Poll `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn reasons(sweep: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    sweep["reasons"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// `sweeper report -c CFG --format json` (exit 0), parsed.
pub fn report_json(cfg: &Path) -> serde_json::Value {
    run_json(
        &["report", "-c", cfg.to_str().unwrap(), "--format", "json"],
        0,
    )
}

/// `sweeper once -c CFG --format json`, expecting exit `code`, parsed.
pub fn once_json(cfg: &Path, code: i32) -> serde_json::Value {
    run_json(
        &["once", "-c", cfg.to_str().unwrap(), "--format", "json"],
        code,
    )
}

/// `sweeper explain -c CFG --sweep SWEEP --key KEY`.
pub fn explain(cfg: &Path, sweep: &str, key: &str) -> Output {
    run(&[
        "explain",
        "-c",
        cfg.to_str().unwrap(),
        "--sweep",
        sweep,
        "--key",
        key,
    ])
}
