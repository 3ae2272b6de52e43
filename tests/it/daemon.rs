//! `sweeper run` end to end against Postgres + Redis: metrics before and
//! after a pass, promtool, readiness, SIGHUP reloads, SIGTERM mid-pass.

use crate::sql_sweeps::{config, Backend, Ts};
use crate::support::*;
use sqlx::Row;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP GET: (status, body).
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    // Bodies may be chunked; metrics lines never start with a hex length
    // followed by CRLF alone, so strip chunk-size lines.
    let body = if raw
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Some((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n.min(after.len())]);
        rest = after.get(n + 2..).unwrap_or("");
    }
    out
}

/// `name{a="x",b="y"}` with labels sorted, so keys compare as written.
pub fn canon(key: &str) -> String {
    match key.split_once('{') {
        None => key.to_string(),
        Some((name, rest)) => {
            let mut labels: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
            labels.sort();
            format!("{name}{{{}}}", labels.join(","))
        }
    }
}

/// `name{labels}` → value, from the text exposition.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((canon(k), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(&canon(key)).unwrap_or_else(|| {
        panic!(
            "no series {key} in metrics:\n{}",
            m.keys().cloned().collect::<Vec<_>>().join("\n")
        )
    })
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn daemon_config(base: &Path, port: u16, every: &str, extra_sweep: &str) -> String {
    let text = std::fs::read_to_string(base).unwrap();
    format!("metrics:\n  listen: 127.0.0.1:{port}\n{text}").replacen(
        "    timestamp_column: updated_at\n",
        &format!("    timestamp_column: updated_at\n    every: {every}\n{extra_sweep}"),
        1,
    )
}

/// A running daemon; its stderr goes to a file (a pipe nobody reads would
/// fill up with audit lines and block it).
pub struct Daemon {
    pub child: Child,
    pub log: tempfile::NamedTempFile,
}

/// A failing test must not leave its daemon running.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(cfg: &Path, initial_delay: &str) -> Daemon {
    spawn_with(cfg, &["--initial-delay", initial_delay])
}

pub fn spawn_with(cfg: &Path, args: &[&str]) -> Daemon {
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = sweeper()
        .args(["run", "-c", cfg.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "sweeper=info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.reopen().unwrap()))
        .spawn()
        .expect("sweeper run starts");
    Daemon { child, log }
}

fn signal(d: &Daemon, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &d.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// Wait for exit; returns (code, seconds it took, stderr).
fn wait_exit(mut d: Daemon, timeout: Duration) -> (Option<i32>, f64, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            let err = std::fs::read_to_string(d.log.path()).unwrap_or_default();
            return (status.code(), start.elapsed().as_secs_f64(), err);
        }
        if start.elapsed() > timeout {
            let _ = d.child.kill();
            let err = std::fs::read_to_string(d.log.path()).unwrap_or_default();
            let tail: String = err.lines().rev().take(30).collect::<Vec<_>>().join("\n");
            panic!("sweeper run did not exit within {timeout:?}; last log lines (newest first):\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn promtool_check_metrics(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("promtool is required (run scripts/test, which installs it): {e}")
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stale counts by the table's own truth, straight from SQL.
async fn true_stuck(b: &Backend) -> (i64, i64) {
    let q = |state: &str, mins: i64| {
        format!(
            "SELECT count(*) FROM {} WHERE notification_state = '{state}' AND updated_at < {}",
            b.table,
            b.ago(mins)
        )
    };
    let p: i64 = sqlx::query(&q("pending", 10))
        .fetch_one(&b.pool)
        .await
        .unwrap()
        .get(0);
    let s: i64 = sqlx::query(&q("sending", 15))
        .fetch_one(&b.pool)
        .await
        .unwrap()
        .get(0);
    (p, s)
}

#[tokio::test]
async fn run_exports_true_counts_reloads_and_stops_cleanly() {
    run_exports_true_counts_reloads_and_stops_cleanly_on(Ts::PgTz).await;
}

#[tokio::test]
async fn run_exports_true_counts_reloads_and_stops_cleanly_on_mariadb() {
    run_exports_true_counts_reloads_and_stops_cleanly_on(Ts::MyDatetime).await;
}

async fn run_exports_true_counts_reloads_and_stops_cleanly_on(ts: Ts) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let ns = unique("resque_run");
    let mut r = redis().await;
    let base = config(&b, dir.path(), &ns, 5);
    let port = free_port();
    let cfg_text = daemon_config(&base, port, "1h", "");
    let cfg = write(dir.path(), "run.yaml", &cfg_text);
    let (truth_pending, truth_sending) = true_stuck(&b).await;
    assert_eq!((truth_pending, truth_sending), (3, 3));

    // Before any pass — a daemon whose first pass is an hour away, so
    // reading /metrics in time does not depend on the machine's speed.
    let waiting = spawn(&cfg, "1h");
    wait_for("/healthz", Duration::from_secs(60), || {
        get(port, "/healthz").filter(|(c, _)| *c == 200)
    });
    let (code, body) = wait_for("/readyz", Duration::from_secs(10), || {
        get(port, "/readyz").filter(|(c, _)| *c == 200)
    });
    assert_eq!(code, 200);
    assert!(body.contains("database app: reachable"), "{body}");

    // Before the first pass: every series exists, at zero.
    let (_, before_text) = get(port, "/metrics").unwrap();
    let before = parse_metrics(&before_text);
    let s = "sweep=\"notifications\"";
    assert_eq!(
        metric(
            &before,
            &format!("sweeper_last_success_timestamp_seconds{{{s}}}")
        ),
        0.0
    );
    assert_eq!(
        metric(
            &before,
            &format!("sweeper_actions_total{{{s},action=\"requeue\"}}")
        ),
        0.0
    );
    assert_eq!(
        metric(
            &before,
            &format!("sweeper_stuck_rows{{{s},state=\"pending\"}}")
        ),
        0.0
    );
    assert_eq!(
        metric(&before, "sweeper_build_info{version=\"0.1.0\"}"),
        1.0
    );
    signal(&waiting, "TERM");
    let (code, _, err) = wait_exit(waiting, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");

    // The daemon that runs the pass.
    let child = spawn(&cfg, "0s");
    wait_for("/healthz", Duration::from_secs(60), || {
        get(port, "/healthz").filter(|(c, _)| *c == 200)
    });

    // After the pass.
    let after = wait_for("a successful pass", Duration::from_secs(20), || {
        let (_, t) = get(port, "/metrics")?;
        let m = parse_metrics(&t);
        (m.get(&canon(&format!(
            "sweeper_last_success_timestamp_seconds{{{s}}}"
        )))
        .copied()?
            > 0.0)
            .then_some((m, t))
    });
    let (m, text) = after;
    promtool_check_metrics(&text);
    assert_eq!(
        metric(&m, &format!("sweeper_stuck_rows{{{s},state=\"pending\"}}")),
        truth_pending as f64
    );
    assert_eq!(
        metric(&m, &format!("sweeper_stuck_rows{{{s},state=\"sending\"}}")),
        truth_sending as f64
    );
    assert_eq!(
        metric(&m, &format!("sweeper_rows{{{s},state=\"pending\"}}")),
        4.0
    );
    assert_eq!(
        metric(&m, &format!("sweeper_rows{{{s},state=\"sending\"}}")),
        4.0
    );
    assert_eq!(
        metric(&m, &format!("sweeper_rows{{{s},state=\"error\"}}")),
        1.0
    );
    let oldest = metric(
        &m,
        &format!("sweeper_oldest_stuck_age_seconds{{{s},state=\"pending\"}}"),
    );
    assert!((oldest - 48.0 * 3600.0).abs() < 120.0, "{oldest}");
    for (action, want) in [
        ("requeue", 3.0),
        ("mark_sent", 1.0),
        ("mark_error", 1.0),
        ("leave", 1.0),
        ("hold", 0.0),
        ("already_moved", 0.0),
    ] {
        let got = metric(
            &m,
            &format!("sweeper_actions_total{{{s},action=\"{action}\"}}"),
        );
        let before = metric(
            &before,
            &format!("sweeper_actions_total{{{s},action=\"{action}\"}}"),
        );
        assert_eq!(got - before, want, "{action}");
    }
    for (result, want) in [
        ("delivered", 1.0),
        ("failed", 1.0),
        ("not_found", 1.0),
        ("unavailable", 0.0),
    ] {
        let key =
            format!("sweeper_evidence_lookups_total{{source=\"postfix\",result=\"{result}\"}}");
        assert_eq!(metric(&m, &key), want, "{result}");
    }
    assert_eq!(
        metric(&m, "sweeper_evidence_source_up{source=\"postfix\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, &format!("sweeper_errors_total{{{s},stage=\"update\"}}")),
        0.0
    );
    assert_eq!(
        metric(&m, &format!("sweeper_pass_duration_seconds_count{{{s}}}")),
        1.0
    );
    // What the pass did is really there.
    let queued: i64 = redis::cmd("LLEN")
        .arg(format!("{ns}:queue:notify"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(queued, 3);
    assert_eq!(b.state(5).await, "sent");

    // SIGHUP with a broken config keeps the old one and says so.
    std::fs::write(&cfg, "sweeps: [this is not a sweep map]\n").unwrap();
    signal(&child, "HUP");
    let m = wait_for("failed reload counted", Duration::from_secs(10), || {
        let m = parse_metrics(&get(port, "/metrics")?.1);
        (m.get("sweeper_config_reloads_total{result=\"error\"}")
            .copied()?
            == 1.0)
            .then_some(m)
    });
    assert_eq!(metric(&m, "sweeper_config_last_reload_successful"), 0.0);
    assert_eq!(get(port, "/healthz").unwrap().0, 200, "still serving");
    // A valid config reloads (here: the same sweep under a new name).
    std::fs::write(&cfg, cfg_text.replace("  notifications:\n", "  renamed:\n")).unwrap();
    signal(&child, "HUP");
    let m = wait_for("successful reload", Duration::from_secs(30), || {
        let m = parse_metrics(&get(port, "/metrics")?.1);
        let done = m.get("sweeper_config_reloads_total{result=\"success\"}") == Some(&1.0)
            && m.get("sweeper_config_last_reload_successful") == Some(&1.0);
        done.then_some(m)
    });
    assert_eq!(
        metric(&m, "sweeper_config_reloads_total{result=\"error\"}"),
        1.0,
        "no other reload happened"
    );
    assert!(m.contains_key(&canon(
        "sweeper_stuck_rows{sweep=\"renamed\",state=\"pending\"}"
    )));
    assert!(
        !m.contains_key(&canon(&format!(
            "sweeper_stuck_rows{{{s},state=\"pending\"}}"
        ))),
        "removed sweep's gauges are dropped"
    );

    signal(&child, "TERM");
    let (code, secs, err) = wait_exit(child, Duration::from_secs(12));
    assert_eq!(code, Some(0), "{err}");
    assert!(secs < 10.0, "took {secs}s");
    assert!(err.contains("stopped"), "{err}");
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

/// SIGTERM in the middle of a large pass: the batch in hand finishes, no
/// further batch starts, and every row is either fully requeued (pushed and
/// recorded in the ledger) or untouched.
#[tokio::test]
async fn sigterm_mid_pass_leaves_nothing_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    b.exec(&format!(
        "INSERT INTO {} SELECT g, g, 'pending', now() - interval '1 hour', NULL FROM generate_series(1000, 40999) g",
        b.table
    ))
    .await;
    let ns = unique("resque_term");
    let mut r = redis().await;
    let base = config(&b, dir.path(), &ns, 5);
    let port = free_port();
    let text = daemon_config(&base, port, "1h", "").replacen(
        "      max_attempts: 5\n",
        "      max_attempts: 5\n    limits: {batch_size: 50, max_actions: 100000}\n",
        1,
    );
    let cfg = write(dir.path(), "run.yaml", &text);
    // A shutdown deadline far beyond what finishing one batch takes, even
    // on a loaded machine: the test is that SIGTERM stops the pass at a
    // batch boundary, not how fast the machine is.
    let child = spawn_with(
        &cfg,
        &["--initial-delay", "0s", "--shutdown-timeout", "60s"],
    );
    let key = format!("{ns}:queue:notify");
    wait_for(
        "the pass to start pushing",
        Duration::from_secs(120),
        || {
            let n: i64 = redis::cmd("LLEN")
                .arg(&key)
                .query(&mut redis::Client::open(redis_url().as_str()).unwrap())
                .ok()?;
            (n > 0).then_some(())
        },
    );
    signal(&child, "TERM");
    let (code, secs, err) = wait_exit(child, Duration::from_secs(90));
    assert_eq!(code, Some(0), "exited before its deadline: {err}");
    assert!(secs < 60.0, "took {secs}s:\n{err}");
    let pushed: i64 = redis::cmd("LLEN")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    let recorded: i64 = sqlx::query(&format!("SELECT count(*) FROM {}", b.ledger))
        .fetch_one(&b.pool)
        .await
        .unwrap()
        .get(0);
    assert!(pushed > 0);
    assert!(pushed < 40_003, "the pass was cut short ({pushed} pushed)");
    assert_eq!(
        pushed, recorded,
        "every pushed job is recorded, nothing recorded is unpushed"
    );
    assert_eq!(
        pushed % 50,
        0,
        "whole batches only (batch_size 50): {pushed}"
    );
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

/// `sweeper_rows_examined_total` and the pass count of the sweep.
fn examined_and_passes(port: u16) -> Option<(f64, f64)> {
    let (_, t) = get(port, "/metrics")?;
    let m = parse_metrics(&t);
    let s = "sweep=\"notifications\"";
    Some((
        *m.get(&canon(&format!("sweeper_rows_examined_total{{{s}}}")))?,
        *m.get(&canon(&format!(
            "sweeper_pass_duration_seconds_count{{{s}}}"
        )))?,
    ))
}

#[tokio::test]
async fn a_daemon_at_rest_rereads_nothing_until_a_log_line_arrives() {
    a_daemon_at_rest_rereads_nothing_until_a_log_line_arrives_on(Ts::PgTz).await;
}

#[tokio::test]
async fn a_daemon_at_rest_rereads_nothing_until_a_log_line_arrives_on_mariadb() {
    a_daemon_at_rest_rereads_nothing_until_a_log_line_arrives_on(Ts::MyDatetime).await;
}

async fn a_daemon_at_rest_rereads_nothing_until_a_log_line_arrives_on(ts: Ts) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(ts, dir.path()).await;
    let ns = unique("resque_rest");
    let mut r = redis().await;
    let base = config(&b, dir.path(), &ns, 5);
    let port = free_port();
    let cfg = write(
        dir.path(),
        "run.yaml",
        &daemon_config(&base, port, "1s", ""),
    );
    let d = spawn(&cfg, "0s");
    // Pass 1 requeues and settles; pass 2 finds every row at rest (three
    // requeued rows wait out their interval, row 7 awaits evidence).
    let (examined, passes) = wait_for("three passes", Duration::from_secs(60), || {
        examined_and_passes(port).filter(|(_, p)| *p >= 3.0)
    });
    assert!(
        examined >= 6.0 + 4.0,
        "passes 1 and 2 read the stale rows: {examined}"
    );
    // Later passes find nothing changed and read no rows.
    let (later, _) = wait_for("three more passes", Duration::from_secs(60), || {
        examined_and_passes(port).filter(|(_, p)| *p >= passes + 3.0)
    });
    assert_eq!(later, examined, "passes at rest read no rows");
    assert_eq!(b.state(7).await, "sending");

    // A delivery line for row 7 arrives: the next pass reads and settles it.
    let at = (chrono::Utc::now() - chrono::TimeDelta::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("mail.log"))
        .unwrap();
    write!(
        log,
        "{at} mail postfix/cleanup[1]: AAAA000007: message-id=<m7@t.example>\n\
         {at} mail postfix/qmgr[2]: AAAA000007: from=<n@t.example>, size=500, nrcpt=1 (queue active)\n\
         {at} mail postfix/smtp[3]: AAAA000007: to=<u7@d.example>, relay=mx[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=2.0.0, status=sent (250 ok)\n\
         {at} mail postfix/qmgr[2]: AAAA000007: removed\n"
    )
    .unwrap();
    drop(log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.state(7).await != "sent" {
        assert!(Instant::now() < deadline, "row 7 was not settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The pass that settled it read rows again (its metrics follow the
    // pass's writes: wait for them).
    wait_for(
        "the pass after the new line to read rows again",
        Duration::from_secs(60),
        || examined_and_passes(port).filter(|(e, _)| *e > later),
    );

    signal(&d, "TERM");
    let (code, _, _) = wait_exit(d, Duration::from_secs(30));
    assert_eq!(code, Some(0));
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

#[tokio::test]
async fn readyz_says_which_table_or_column_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("resque_ready");
    let base = config(&b, dir.path(), &ns, 5);
    let port = free_port();
    let text = daemon_config(&base, port, "1h", "").replacen(
        &format!("table: {}", b.table),
        "table: no_such_table_here",
        1,
    );
    let cfg = write(dir.path(), "run.yaml", &text);
    let d = spawn(&cfg, "0s");
    let (code, body) = wait_for(
        "/readyz to report the pass",
        Duration::from_secs(60),
        || get(port, "/readyz").filter(|(_, body)| body.contains("sweep notifications")),
    );
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("database app: sweep notifications: table no_such_table_here not found"),
        "{body}"
    );
    assert!(!body.contains("unreachable"), "{body}");
    signal(&d, "TERM");
    let (code, _, err) = wait_exit(d, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    b.cleanup().await;
}

/// A pass that cannot finish its batch (a row lock held by the app) is
/// abandoned at the shutdown deadline, and the exit status says so.
#[tokio::test]
async fn a_pass_still_running_at_the_shutdown_deadline_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("resque_deadline");
    let base = config(&b, dir.path(), &ns, 5);
    let port = free_port();
    let cfg = write(
        dir.path(),
        "run.yaml",
        &daemon_config(&base, port, "1h", ""),
    );
    let pool = pg().await;
    // The app holds row 5 (delivered per the log): the guarded update that
    // would mark it sent waits for the lock.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT id FROM {} WHERE id = 5 FOR UPDATE",
        b.table
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let d = spawn_with(&cfg, &["--initial-delay", "0s", "--shutdown-timeout", "2s"]);
    let table = b.table.clone();
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE 'UPDATE %{table}%'"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query(&waiting).fetch_one(&pool).await.unwrap().get(0);
        if n > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pass never reached {table}'s locked row"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&d, "TERM");
    let (code, _, err) = wait_exit(d, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("shutdown deadline passed"), "{err}");
    tx.rollback().await.unwrap();
    assert_eq!(
        b.state(5).await,
        "sending",
        "the abandoned update rolled back"
    );
    b.cleanup().await;
}

/// ARCHITECTURE invariant 4: metric labels are config names and enum values
/// only — never a row key, a file name or an error's text, even when a
/// source fails and rows are acted on.
#[tokio::test]
async fn metric_labels_carry_no_keys_and_no_error_text() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("resque_labels");
    let base = config(&b, dir.path(), &ns, 5);
    let port = free_port();
    let log = dir.path().join("mail.log");
    let missing = dir.path().join("gone-mail.log");
    let text = daemon_config(&base, port, "1h", "").replace(
        &format!("paths: [\"{}\"]", log.display()),
        &format!("paths: [\"{}\"]", missing.display()),
    );
    assert!(text.contains("gone-mail.log"), "{text}");
    let cfg = write(dir.path(), "run.yaml", &text);
    let d = spawn(&cfg, "0s");
    let m = wait_for("a pass", Duration::from_secs(60), || {
        let (_, t) = get(port, "/metrics")?;
        t.contains("sweeper_pass_duration_seconds_count{sweep=\"notifications\"} 1")
            .then_some(t)
    });
    // The pass met an error and requeued rows 2, 3 and 10.
    let parsed = parse_metrics(&m);
    assert_eq!(
        metric(
            &parsed,
            "sweeper_errors_total{sweep=\"notifications\",stage=\"evidence\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &parsed,
            "sweeper_actions_total{sweep=\"notifications\",action=\"requeue\"}"
        ),
        3.0
    );
    let names = ["notifications", "postfix", "resque", "app"];
    let mut labels = 0;
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else {
            continue;
        };
        let inner = rest.rsplit_once('}').map(|(a, _)| a).unwrap_or_default();
        for pair in inner.split(',') {
            let (k, v) = pair.split_once('=').unwrap();
            let v = v.trim_matches('"');
            labels += 1;
            let enum_like = !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
                || (k == "version" && v == env!("CARGO_PKG_VERSION"))
                || (k == "le");
            assert!(
                enum_like || names.contains(&v),
                "label {k}={v:?} is neither a config name nor an enum value: {line}"
            );
            assert!(!v.contains("gone-mail") && !v.contains(' '), "{line}");
        }
    }
    assert!(labels > 50, "{labels} labels checked");
    signal(&d, "TERM");
    let (code, _, err) = wait_exit(d, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    b.cleanup().await;
}
