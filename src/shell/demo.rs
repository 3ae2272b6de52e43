//! `sweeper demo`: needs no server. Builds a throwaway SQLite app database
//! with rows in every state and age, a small Postfix log, and a config that
//! requeues into a `jsonl` queue file; then prints a dry-run report, a real
//! pass, the jobs written, and a second pass that finds nothing to do.

use super::cli::{EXIT_FAILED, EXIT_OK};
use super::pass::{run_pass, Connections, PassOptions};
use crate::core::report::render_text;
use anyhow::Context as _;
use chrono::{TimeDelta, Utc};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

/// (id, user_id, state, minutes ago, message-id)
const ROWS: &[(i64, i64, &str, i64, Option<&str>)] = &[
    (1, 101, "pending", 2, None),
    (2, 102, "pending", 45, None),
    (3, 103, "pending", 180, None),
    (4, 104, "sending", 5, Some("<c4.demo@app.example>")),
    (5, 105, "sending", 40, Some("<c5.demo@app.example>")),
    (6, 106, "sending", 50, Some("<c6.demo@app.example>")),
    (7, 107, "sending", 30, Some("<c7.demo@app.example>")),
    (
        8,
        108,
        "sending",
        2 * 24 * 60,
        Some("<c8.demo@app.example>"),
    ),
    (9, 109, "sent", 60, Some("<c9.demo@app.example>")),
    (10, 110, "error", 24 * 60, None),
];

fn mail_log(now: chrono::DateTime<Utc>) -> String {
    let at = |min: i64| {
        (now - TimeDelta::minutes(min))
            .format("%b %e %H:%M:%S")
            .to_string()
    };
    let mut out = String::new();
    let mut line = |min: i64, prog: &str, rest: &str| {
        out.push_str(&format!("{} mail postfix/{prog}: {rest}\n", at(min)));
    };
    // Row 5: delivered.
    line(
        39,
        "cleanup[2101]",
        "A1B2C3D4E5: message-id=<c5.demo@app.example>",
    );
    line(
        39,
        "qmgr[2049]",
        "A1B2C3D4E5: from=<noreply@app.example>, size=811, nrcpt=1 (queue active)",
    );
    line(39, "smtp[2102]", "A1B2C3D4E5: to=<ann@example.org>, relay=mx.example.org[192.0.2.10]:25, delay=0.4, delays=0.01/0.01/0.2/0.18, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4XyZ)");
    line(39, "qmgr[2049]", "A1B2C3D4E5: removed");
    // Row 6: bounced.
    line(
        49,
        "cleanup[2101]",
        "B2C3D4E5F6: message-id=<c6.demo@app.example>",
    );
    line(
        49,
        "qmgr[2049]",
        "B2C3D4E5F6: from=<noreply@app.example>, size=790, nrcpt=1 (queue active)",
    );
    line(49, "smtp[2103]", "B2C3D4E5F6: to=<nobody@example.net>, relay=mx.example.net[192.0.2.20]:25, delay=0.3, delays=0.01/0/0.2/0.09, dsn=5.1.1, status=bounced (host mx.example.net[192.0.2.20] said: 550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown (in reply to RCPT TO command))");
    line(49, "qmgr[2049]", "B2C3D4E5F6: removed");
    // Row 7: deferred, the MTA is still retrying.
    line(
        29,
        "cleanup[2101]",
        "C3D4E5F6A7: message-id=<c7.demo@app.example>",
    );
    line(
        29,
        "qmgr[2049]",
        "C3D4E5F6A7: from=<noreply@app.example>, size=802, nrcpt=1 (queue active)",
    );
    line(29, "smtp[2104]", "C3D4E5F6A7: to=<bob@example.com>, relay=mx.example.com[192.0.2.30]:25, delay=2, delays=0.01/0/1/1, dsn=4.2.0, status=deferred (host mx.example.com[192.0.2.30] said: 450 4.2.0 try again later (in reply to RCPT TO command))");
    out
}

fn config_yaml(dir: &Path) -> String {
    format!(
        r#"# Written by `sweeper demo`.
databases:
  app:
    url: "sqlite://{db}"
queues:
  jobs:
    kind: jsonl
    path: "{jobs}"
evidence:
  postfix:
    kind: log
    format: postfix
    paths: ["{log}"]
sweeps:
  comment_notifications:
    database: app
    table: comments
    key: id
    state_column: notification_state
    timestamp_column: updated_at
    pending:
      after: 10m
      queue: jobs
      job: {{queue: notify_user, class: NotifyUser, args: [user_id, id]}}
      max_attempts: 5
    sending:
      after: 15m
      evidence: [{{source: postfix, match: message_id}}]
      give_up_after: 24h
      on_no_evidence: error
"#,
        db = dir.join("app.db").display(),
        jobs = dir.join("jobs.jsonl").display(),
        log = dir.join("mail.log").display(),
    )
}

async fn build_app_db(path: &Path) -> anyhow::Result<()> {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::ConnectOptions as _;
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .connect()
        .await
        .context("creating the demo SQLite database")?;
    sqlx::query(
        "CREATE TABLE comments (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, \
         notification_state TEXT NOT NULL, updated_at TEXT NOT NULL, message_id TEXT)",
    )
    .execute(&mut conn)
    .await?;
    for (id, user, state, minutes, mid) in ROWS {
        sqlx::query("INSERT INTO comments VALUES (?1, ?2, ?3, datetime('now', ?4), ?5)")
            .bind(id)
            .bind(user)
            .bind(state)
            .bind(format!("-{minutes} minutes"))
            .bind(mid)
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}

pub async fn run(dir: Option<PathBuf>) -> anyhow::Result<u8> {
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            d
        }
        None => {
            let d = std::env::temp_dir().join(format!("sweeper-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            d
        }
    };
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let db = dir.join("app.db");
    for f in ["app.db", "jobs.jsonl", "mail.log", "sweeper.yaml"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    build_app_db(&db).await?;
    let now = Utc::now();
    std::fs::write(dir.join("mail.log"), mail_log(now)).context("writing the demo mail log")?;
    let yaml = config_yaml(&dir);
    let cfg_path = dir.join("sweeper.yaml");
    std::fs::write(&cfg_path, &yaml).context("writing the demo config")?;
    let cfg = crate::config::load(&cfg_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let color = std::io::stdout().is_terminal();

    println!(
        "sweeper demo: a SQLite app with 10 comment notifications, a Postfix log, a jsonl queue."
    );
    println!("files: {}\n", dir.display());
    println!(
        "== 1. sweeper report -c {} (dry run) ==\n",
        cfg_path.display()
    );
    let mut conns = Connections::new();
    let dry = PassOptions {
        dry_run: true,
        ..Default::default()
    };
    let r = run_pass(&cfg, &mut conns, &dry, now).await;
    print!("{}", render_text(&r.report, color));

    println!(
        "\n== 2. sweeper once -c {} (applies the plan) ==\n",
        cfg_path.display()
    );
    let real = PassOptions::default();
    let applied = run_pass(&cfg, &mut conns, &real, Utc::now()).await;
    print!("{}", render_text(&applied.report, color));

    println!(
        "\n== 3. {} (the requeued jobs, as a worker would receive them) ==\n",
        dir.join("jobs.jsonl").display()
    );
    let jobs = std::fs::read_to_string(dir.join("jobs.jsonl")).unwrap_or_default();
    print!("{jobs}");

    println!("\n== 4. sweeper once again, right after: nothing is requeued twice ==\n");
    let again = run_pass(&cfg, &mut conns, &real, Utc::now()).await;
    print!("{}", render_text(&again.report, color));
    conns.close().await;
    println!("\nTry: sqlite3 {} 'select * from comments'", db.display());
    Ok(if applied.failed() || again.failed() {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}
