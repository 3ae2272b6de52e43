//! The daemon's status pages, end to end: `sweeper run` against real
//! Postgres, Redis and a Postfix log, the pages opened in headless Chromium
//! (Debian's chromium + chromedriver): the numbers on `/` are `/metrics`'
//! numbers, a plan row's link opens its explain page with the evidence line,
//! and a `<script>` in a row key stays text. Screenshots of each page are
//! kept under `target/status-screenshots/`. With `metrics.auth`, every page,
//! `/api/` and `/metrics` answer 401 without credentials; `/healthz` stays
//! open.

use crate::browser::Browser;
use crate::daemon::{canon, free_port, get, parse_metrics, spawn_with, Daemon};
use crate::support::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const EVIL: &str = "<script>window.__pwned=1</script>";

/// A table with text keys: two stale pending rows (one key a script tag),
/// three stale sending rows (delivered, bounced, deferred in the log) and a
/// fresh pending row.
async fn seed(table: &str) -> sqlx::PgPool {
    let pg = pg().await;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id TEXT PRIMARY KEY, user_id BIGINT, state TEXT NOT NULL, \
         updated_at timestamptz NOT NULL, message_id TEXT)"
    ))
    .execute(&pg)
    .await
    .unwrap();
    let rows: [(&str, i64, &str, i64, Option<&str>); 6] = [
        ("n1", 11, "pending", 20, None),
        (EVIL, 12, "pending", 30, None),
        ("n5", 15, "sending", 30, Some("<m5@t.example>")),
        ("n6", 16, "sending", 40, Some("<m6@t.example>")),
        ("n7", 17, "sending", 50, Some("<m7@t.example>")),
        ("f1", 18, "pending", 1, None),
    ];
    for (id, user, state, mins, mid) in rows {
        sqlx::query(&format!(
            "INSERT INTO {table} VALUES ($1, $2, $3, now() - make_interval(mins => $4::int), $5)"
        ))
        .bind(id)
        .bind(user)
        .bind(state)
        .bind(mins as i32)
        .bind(mid)
        .execute(&pg)
        .await
        .unwrap();
    }
    pg
}

fn mail_log(dir: &Path) -> PathBuf {
    let at = |mins: i64| {
        (chrono::Utc::now() - chrono::TimeDelta::minutes(mins))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let text = format!(
        "{t5} mail postfix/cleanup[1]: BBBB000005: message-id=<m5@t.example>\n\
         {t5} mail postfix/smtp[3]: BBBB000005: to=<u5@d.example>, relay=mx[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=2.0.0, status=sent (250 ok)\n\
         {t6} mail postfix/cleanup[1]: BBBB000006: message-id=<m6@t.example>\n\
         {t6} mail postfix/smtp[3]: BBBB000006: to=<u6@d.example>, relay=mx[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=5.1.1, status=bounced (550 5.1.1 user unknown)\n\
         {t7} mail postfix/cleanup[1]: BBBB000007: message-id=<m7@t.example>\n\
         {t7} mail postfix/smtp[3]: BBBB000007: to=<u7@d.example>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to mx[192.0.2.1]:25: Connection timed out)\n",
        t5 = at(29),
        t6 = at(39),
        t7 = at(49),
    );
    write(dir, "mail.log", &text)
}

fn daemon_config(dir: &Path, table: &str, ns: &str, port: u16, auth: &str) -> PathBuf {
    let log = mail_log(dir);
    let yaml = format!(
        r#"metrics:
  listen: 127.0.0.1:{port}
{auth}databases:
  app:
    url: "{pg}"
    ledger_table: {table}_ledger
queues:
  resque:
    kind: resque
    redis: "{redis}"
    namespace: {ns}
evidence:
  postfix:
    kind: log
    format: postfix
    paths: ["{log}"]
sweeps:
  notifications:
    database: app
    table: {table}
    key: id
    state_column: state
    timestamp_column: updated_at
    every: 1h
    pending:
      after: 10m
      queue: resque
      job: {{queue: notify, class: NotifyUser, args: [user_id, id]}}
    sending:
      after: 15m
      evidence: [{{source: postfix, match: message_id}}]
      give_up_after: 24h
      on_no_evidence: leave
"#,
        pg = pg_url(),
        redis = redis_url(),
        log = log.display(),
    );
    write(dir, "sweeper.yaml", &yaml)
}

fn screenshots() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    target.join("status-screenshots")
}

async fn drop_tables(pg: &sqlx::PgPool, table: &str) {
    for t in [table.to_string(), format!("{table}_ledger")] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {t}"))
            .execute(pg)
            .await
            .unwrap();
    }
}

fn first_pass_done(port: u16) -> Option<()> {
    let (code, body) = get(port, "/metrics")?;
    let m = parse_metrics(&body);
    let done = m
        .get(&canon(
            "sweeper_rows_examined_total{sweep=\"notifications\"}",
        ))
        .is_some_and(|v| *v > 0.0);
    (code == 200 && done).then_some(())
}

#[tokio::test]
async fn the_status_pages_show_the_metrics_numbers_link_rows_to_explain_and_escape_keys() {
    let dir = tempfile::tempdir().unwrap();
    let table = unique("status_it");
    let ns = unique("status_ns");
    let pg = seed(&table).await;
    let port = free_port();
    let cfg = daemon_config(dir.path(), &table, &ns, port, "");
    let _daemon: Daemon = spawn_with(&cfg, &["--initial-delay", "0s"]);
    wait_until("the first pass", Duration::from_secs(60), || {
        first_pass_done(port)
    });
    let base = format!("http://127.0.0.1:{port}");
    let shots = screenshots();
    let b = Browser::start().await;

    // `/`: every number shown is the number /metrics exports.
    b.goto(&format!("{base}/")).await;
    b.screenshot(&shots.join("index.png")).await;
    let shown = b
        .eval(
            "return Array.from(document.querySelectorAll('[data-metric]'))\
             .map(e => [e.dataset.metric, e.dataset.value]);",
        )
        .await;
    let metrics = parse_metrics(&get(port, "/metrics").unwrap().1);
    let shown = shown.as_array().unwrap();
    assert!(shown.len() >= 16, "{shown:?}");
    for pair in shown {
        let (series, value) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        let want = metrics
            .get(&canon(series))
            .unwrap_or_else(|| panic!("{series} is shown but not exported"));
        assert_eq!(value.parse::<f64>().unwrap(), *want, "{series}");
    }
    let stuck = metrics[&canon("sweeper_stuck_rows{sweep=\"notifications\",state=\"sending\"}")];
    assert_eq!(stuck, 3.0, "the page was compared with real numbers");

    // The plan: a row's link opens its explain page with the evidence line.
    b.click("a[href='/sweeps/notifications']").await;
    b.screenshot(&shots.join("sweep.png")).await;
    let keys = b
        .eval("return Array.from(document.querySelectorAll('#plan td.key')).map(e => e.innerText);")
        .await;
    let keys: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(keys.contains(&EVIL), "the key is shown as text: {keys:?}");
    assert!(keys.contains(&"n7"), "{keys:?}");
    assert_eq!(b.eval("return window.__pwned === undefined;").await, true);
    b.click("a[href='/sweeps/notifications/rows/n7']").await;
    assert!(b.url().await.ends_with("/sweeps/notifications/rows/n7"));
    b.screenshot(&shots.join("row.png")).await;
    let text = b.eval("return document.body.innerText;").await;
    let text = text.as_str().unwrap();
    assert!(
        text.contains("mail.log:6"),
        "the evidence line with its file:line: {text}"
    );
    assert!(text.contains("status=deferred"), "{text}");

    // The script-keyed row's explain page: the key is text there too.
    b.goto(&format!("{base}/sweeps/notifications?state=pending"))
        .await;
    let href = b
        .eval("return Array.from(document.querySelectorAll('#plan td.key a')).map(a => a.getAttribute('href')).find(h => h.includes('script'));")
        .await;
    b.goto(&format!("{base}{}", href.as_str().unwrap())).await;
    let title = b
        .eval("return document.querySelector('h1 .key').innerText;")
        .await;
    assert_eq!(title, EVIL);
    assert_eq!(b.eval("return window.__pwned === undefined;").await, true);
    b.screenshot(&shots.join("row-script-key.png")).await;

    // The JSON twin carries the same counts.
    let api: serde_json::Value =
        serde_json::from_str(&get(port, "/api/sweeps/notifications").unwrap().1).unwrap();
    assert_eq!(api["sweep"]["counts"]["stuck"]["sending"], 3);
    assert!(api["plan"]["matching"].as_u64().unwrap() >= 4, "{api:#}");
    // On a phone: the page fits its width (tables scroll inside their box).
    b.window(390, 844).await;
    b.goto(&format!("{base}/")).await;
    let overflow = b
        .eval("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "no sideways scrolling: {overflow}"
    );
    b.screenshot(&shots.join("index-phone.png")).await;
    b.quit().await;
    drop_tables(&pg, &table).await;
    redis_clear(&mut redis().await, &ns).await;
}

/// A GET with an optional `Authorization` header: the status code.
async fn status_of(url: &str, auth: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().get(url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn with_auth_every_page_and_the_api_need_credentials_but_healthz_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let table = unique("status_auth");
    let pg = seed(&table).await;
    let port = free_port();
    let auth = "  auth:\n    basic: {username: oncall, password: \"s3cret pass\"}\n";
    let cfg = daemon_config(dir.path(), &table, &unique("status_auth_ns"), port, auth);
    let _daemon: Daemon = spawn_with(&cfg, &["--initial-delay", "1h"]);
    let base = format!("http://127.0.0.1:{port}");
    wait_until("the listener", Duration::from_secs(30), || {
        get(port, "/healthz").map(|_| ())
    });
    use base64::Engine as _;
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("oncall:s3cret pass")
    );
    let bad = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("oncall:wrong")
    );
    for path in [
        "/",
        "/sweeps/notifications",
        "/sweeps/notifications/rows/n7",
        "/api/sweeps",
        "/api/sweeps/notifications",
        "/api/sweeps/notifications/rows/n7",
        "/metrics",
    ] {
        let url = format!("{base}{path}");
        assert_eq!(
            status_of(&url, None).await,
            401,
            "{path} without credentials"
        );
        assert_eq!(
            status_of(&url, Some(&bad)).await,
            401,
            "{path} with a wrong password"
        );
        assert_eq!(
            status_of(&url, Some(&good)).await,
            200,
            "{path} with credentials"
        );
    }
    assert_eq!(status_of(&format!("{base}/healthz"), None).await, 200);
    drop_tables(&pg, &table).await;
}
