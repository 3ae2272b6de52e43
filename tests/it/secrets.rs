//! Known secrets in every URL, key and header of a config, against
//! services that are unreachable or refuse: `check`, `report`, `once` and
//! `run` (both log formats, `RUST_LOG=trace`) never print one — not in
//! output, errors, reports, logs or metrics.

use crate::sql_sweeps::{Backend, Ts};
use crate::support::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SECRETS: [&str; 8] = [
    "StatusS3cretToken",
    "PgS3cretPass",
    "RedisS3cret",
    "AmqpS3cret",
    "key-MgS3cret",
    "SG.S3cretKey",
    "PmS3cretToken",
    "HdrS3cretBearer",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(b: &Backend, dir: &std::path::Path, port: u16, dead: u16) -> std::path::PathBuf {
    // Postgres takes any password here (trust), so the database is reached
    // with a secret in its URL; everything else points at a closed port.
    let pg = pg_url().replacen(
        "postgres://postgres@",
        "postgres://postgres:PgS3cretPass@",
        1,
    );
    assert!(
        pg.contains("PgS3cretPass"),
        "expected a postgres://postgres@ URL: {pg}"
    );
    let yaml = format!(
        r#"metrics: {{listen: "127.0.0.1:{port}", auth: {{bearer_token: StatusS3cretToken}}}}
databases:
  app: {{url: "{pg}", ledger_table: {ledger}}}
queues:
  resque: {{kind: resque, redis: "redis://:RedisS3cret@127.0.0.1:{dead}/0", presence_check: true}}
  rabbit: {{kind: amqp, url: "amqp://guest:AmqpS3cret@127.0.0.1:{dead}/%2f"}}
evidence:
  mailgun: {{kind: mailgun, domain: mg.example.test, api_key: key-MgS3cret, base_url: "http://127.0.0.1:{dead}", retries: 0, timeout: 2s}}
  sendgrid: {{kind: sendgrid, api_key: SG.S3cretKey, base_url: "http://127.0.0.1:{dead}", retries: 0, timeout: 2s}}
  postmark: {{kind: postmark, token: PmS3cretToken, base_url: "http://127.0.0.1:{dead}", retries: 0, timeout: 2s}}
  status:
    kind: http
    url: "http://127.0.0.1:{dead}/status/{{key}}"
    headers: {{Authorization: "Bearer HdrS3cretBearer"}}
    status_pointer: /status
    sent: [delivered]
    retries: 0
    timeout: 2s
sweeps:
  notifications:
    database: app
    table: {table}
    key: id
    state_column: notification_state
    timestamp_column: updated_at
    every: 1h
    pending:
      after: 10m
      queue: resque
      job: {{queue: notify, class: NotifyUser, args: [user_id, id]}}
    sending:
      after: 15m
      evidence:
        - {{source: mailgun, match: message_id}}
        - {{source: sendgrid, match: message_id}}
        - {{source: postmark, match: message_id}}
        - {{source: status, match: message_id}}
      give_up_after: 24h
  to_rabbit:
    database: app
    table: {table}
    key: id
    state_column: notification_state
    timestamp_column: updated_at
    every: 1h
    pending:
      after: 10m
      queue: rabbit
      job: {{queue: notify, class: NotifyUser, args: [user_id, id]}}
"#,
        ledger = b.ledger,
        table = b.table,
    );
    write(dir, "secrets.yaml", &yaml)
}

fn leaks(what: &str, text: &str) -> Vec<String> {
    SECRETS
        .iter()
        .filter(|s| text.contains(**s))
        .map(|s| {
            let line = text.lines().find(|l| l.contains(*s)).unwrap_or_default();
            format!("{what}: {s} in: {}", &line[..line.len().min(300)])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_ever_printed_logged_reported_or_exported() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let port = free_port();
    let dead = free_port();
    let cfg = config(&b, dir.path(), port, dead);
    let cfg = cfg.to_str().unwrap();
    let mut found = Vec::new();
    let mut ran = 0;
    for format in ["pretty", "json"] {
        for args in [
            vec!["check", "-c", cfg],
            vec!["report", "-c", cfg, "--format", "json"],
            vec!["report", "-c", cfg, "--format", "markdown"],
            vec![
                "explain",
                "-c",
                cfg,
                "--sweep",
                "notifications",
                "--key",
                "5",
            ],
            vec!["once", "-c", cfg, "--format", "json"],
            vec!["once", "-c", cfg],
        ] {
            let o = sweeper()
                .args(&args)
                .args(["--log-format", format])
                .env("RUST_LOG", "trace")
                .output()
                .unwrap();
            let what = format!("{} ({format})", args.join(" "));
            found.extend(leaks(&format!("{what} stdout"), &stdout(&o)));
            found.extend(leaks(&format!("{what} stderr"), &stderr(&o)));
            // Each run met the dead services (and said so).
            assert!(
                !stdout(&o).is_empty() || !stderr(&o).is_empty(),
                "{what} printed nothing"
            );
            ran += 1;
        }
        // The daemon: logs and /metrics after a pass.
        let log = dir.path().join(format!("run-{format}.log"));
        let mut d = Guarded(
            sweeper()
                .args([
                    "run",
                    "-c",
                    cfg,
                    "--initial-delay",
                    "0s",
                    "--log-format",
                    format,
                ])
                .env("RUST_LOG", "trace")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(90);
        let fetch = |path: &str| {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .and_then(|mut s| {
                    use std::io::{Read, Write};
                    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
                    write!(
                        s,
                        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer StatusS3cretToken\r\nConnection: close\r\n\r\n"
                    )
                    .ok()?;
                    let mut t = String::new();
                    s.read_to_string(&mut t).ok()?;
                    Some(t)
                })
                .unwrap_or_default()
        };
        let metrics = loop {
            let body = fetch("/metrics");
            if body.contains("sweeper_pass_duration_seconds_count{sweep=\"to_rabbit\"} 1")
                && body.contains("sweeper_pass_duration_seconds_count{sweep=\"notifications\"} 1")
            {
                break body;
            }
            assert!(Instant::now() < deadline, "no pass within 90 s");
            std::thread::sleep(Duration::from_millis(200));
        };
        // The status pages and their JSON show errors, sources and rows:
        // none of it carries a secret.
        for path in [
            "/",
            "/sweeps/notifications",
            "/sweeps/to_rabbit",
            "/sweeps/notifications/rows/5",
            "/api/sweeps",
            "/api/sweeps/notifications",
            "/api/sweeps/notifications/rows/5",
        ] {
            let page = fetch(path);
            assert!(page.starts_with("HTTP/1.1 200"), "{path}: {page}");
            found.extend(leaks(&format!("run ({format}) {path}"), &page));
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &d.id().to_string()])
            .status();
        let _ = d.wait();
        found.extend(leaks(&format!("run ({format}) /metrics"), &metrics));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.len() > 1000,
            "trace logs were written: {} bytes",
            text.len()
        );
        found.extend(leaks(&format!("run ({format}) log"), &text));
        ran += 1;
    }
    assert_eq!(ran, 14);
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
    b.cleanup().await;
}
