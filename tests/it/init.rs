//! `sweeper init` on schemas shaped like real Rails, Django and Laravel
//! apps: the right table, columns and state values are proposed, what the
//! schema cannot tell is a TODO that `check` refuses, and the draft with its
//! TODOs filled in validates and runs a dry pass.

use crate::support::*;
use std::path::Path;

async fn pg_exec(pool: &sqlx::PgPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn init(url: &str, tables: &[&str]) -> String {
    let mut args = vec!["init", "-d", url];
    for t in tables {
        args.extend(["--table", t]);
    }
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o)
}

/// Fill the TODOs the way a user would; `states` replaces an integer
/// enum's `{pending: TODO, …}`.
fn fill(draft: &str, dir: &Path, states: Option<&str>) -> String {
    let log = write(dir, "mail.log", "");
    let mut out = String::new();
    for line in draft.lines() {
        let l = if line.trim_start().starts_with("kind: TODO") {
            line.replacen("kind: TODO", "kind: resque", 1)
        } else if line.contains("states: {pending: TODO") {
            let indent = &line[..line.len() - line.trim_start().len()];
            format!(
                "{indent}states: {}",
                states.expect("integer states to fill")
            )
        } else {
            line.replace("queue: TODO", "queue: notify")
                .replace("class: TODO", "class: NotifyJob")
                .replace("paths: [TODO]", &format!("paths: [\"{}\"]", log.display()))
        };
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn todo_lines(draft: &str) -> usize {
    draft
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("TODO"))
        .count()
}

#[tokio::test]
async fn init_proposes_a_rails_integer_enum_and_a_django_choices_table() {
    let pool = pg().await;
    let dir = tempfile::tempdir().unwrap();
    let rails = unique("receipts");
    let django = unique("notifications_notification");
    let users = unique("users");
    // Rails: bigint auto-increment id, datetime(6), an integer enum.
    pg_exec(
        &pool,
        &format!(
            "CREATE TABLE {rails} (id bigserial PRIMARY KEY, user_id bigint NOT NULL, \
             delivery_status integer NOT NULL DEFAULT 0, created_at timestamp(6) NOT NULL, \
             updated_at timestamp(6) NOT NULL)"
        ),
    )
    .await;
    pg_exec(
        &pool,
        &format!(
            "INSERT INTO {rails} (user_id, delivery_status, created_at, updated_at) \
             SELECT g, CASE WHEN g <= 5 THEN 0 WHEN g <= 7 THEN 1 WHEN g <= 9 THEN 3 ELSE 2 END, \
             now() AT TIME ZONE 'UTC' - interval '2 hours', now() AT TIME ZONE 'UTC' - interval '1 hour' \
             FROM generate_series(1, 40) g"
        ),
    )
    .await;
    // Django: a CharField with choices, TimeStampedModel's `modified`.
    pg_exec(
        &pool,
        &format!(
            "CREATE TABLE {django} (id bigserial PRIMARY KEY, status varchar(16) NOT NULL, \
             created timestamptz NOT NULL, modified timestamptz NOT NULL, \
             provider_message_id varchar(255), body text)"
        ),
    )
    .await;
    pg_exec(
        &pool,
        &format!(
            "INSERT INTO {django} (status, created, modified, provider_message_id, body) \
             SELECT (ARRAY['queued','sending','sent','failed'])[1 + g % 4], now(), \
             now() - (g || ' minutes')::interval, '<m' || g || '@x>', 'hello' \
             FROM generate_series(1, 40) g"
        ),
    )
    .await;
    pg_exec(
        &pool,
        &format!("CREATE TABLE {users} (id bigserial PRIMARY KEY, email text, name text)"),
    )
    .await;
    pg_exec(
        &pool,
        &format!("INSERT INTO {users} (email, name) VALUES ('a@b', 'A')"),
    )
    .await;

    let draft = init(&pg_url(), &[&rails, &django, &users]);
    // Rails: the integer column is found, its mapping left to the user.
    assert!(draft.contains(&format!("table: {rails}")), "{draft}");
    assert!(draft.contains("state_column: delivery_status"), "{draft}");
    assert!(
        draft.contains("states: {pending: TODO, sending: TODO, sent: TODO, error: TODO}   # integers seen: 2 ×31, 0 ×5, 1 ×2, 3 ×2"),
        "{draft}"
    );
    assert!(draft.contains("timestamp_column: updated_at"), "{draft}");
    // Django: every state value recognised, `modified`, the Message-ID.
    assert!(draft.contains(&format!("table: {django}")), "{draft}");
    assert!(
        draft.contains("states: {pending: queued, sending: sending, sent: sent, error: failed}"),
        "{draft}"
    );
    assert!(draft.contains("timestamp_column: modified"), "{draft}");
    assert!(
        draft.contains("evidence: [{source: mail, match: provider_message_id}]"),
        "{draft}"
    );
    // The report: rows per state, the index and that it is missing.
    assert!(draft.contains("#   queued (pending): 10 rows"), "{draft}");
    assert!(draft.contains("index: MISSING"), "{draft}");
    assert!(
        draft.contains(&format!(
            "CREATE INDEX CONCURRENTLY {django}_sweeper_idx ON \"{django}\" (\"status\", \"id\", \"modified\") WHERE \"status\" IN ('queued', 'sending', 'failed');"
        )),
        "{draft}"
    );
    // A table without a state is not proposed.
    assert!(!draft.contains(&format!("table: {users}")), "{draft}");

    // Left as is, check refuses every TODO with its line.
    let raw = write(dir.path(), "draft.yaml", &draft);
    let o = run(&["check", "-c", raw.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("still a TODO"), "{err}");
    assert!(err.contains(".pending.job.class"), "{err}");
    assert!(todo_lines(&draft) >= 5);

    // Filled in, it validates and a dry run reads the tables.
    let filled = fill(
        &draft,
        dir.path(),
        Some("{pending: 0, sending: 1, sent: 2, error: 3}"),
    );
    assert_eq!(todo_lines(&filled), 0, "{filled}");
    let cfg = write(dir.path(), "sweeper.yaml", &filled);
    let report = run_json(
        &["report", "-c", cfg.to_str().unwrap(), "--format", "json"],
        0,
    );
    let rails_sweep = sweep_json(&report, &rails);
    assert_eq!(rails_sweep["stuck"]["pending"], 5, "{report:#}");
    assert_eq!(rails_sweep["stuck"]["sending"], 2, "{report:#}");
    let django_sweep = sweep_json(&report, &django);
    assert_eq!(django_sweep["totals"]["pending"], 10, "{report:#}");

    for t in [&rails, &django, &users] {
        pg_exec(&pool, &format!("DROP TABLE {t}")).await;
    }
}

#[tokio::test]
async fn init_proposes_a_laravel_table_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("laravel.sqlite");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    // Laravel's migration: $table->id(); string status; timestamps().
    for sql in [
        "CREATE TABLE \"email_messages\" (\"id\" integer primary key autoincrement not null, \
         \"user_id\" integer not null, \"status\" varchar not null default 'pending', \
         \"message_id\" varchar null, \"created_at\" datetime null, \"updated_at\" datetime null)",
        "CREATE TABLE \"password_resets\" (\"email\" varchar not null, \"token\" varchar not null, \
         \"created_at\" datetime null)",
        "INSERT INTO email_messages (user_id, status, message_id, created_at, updated_at) VALUES \
         (1, 'pending', NULL, datetime('now', '-2 hours'), datetime('now', '-2 hours')), \
         (2, 'processing', '<a@x>', datetime('now', '-3 hours'), datetime('now', '-3 hours')), \
         (3, 'sent', '<b@x>', datetime('now'), datetime('now')), \
         (4, 'failed', '<c@x>', datetime('now'), datetime('now'))",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let plain = format!("sqlite://{}", db.display());
    let draft = init(&plain, &[]);
    assert!(draft.contains("table: email_messages"), "{draft}");
    assert!(draft.contains("key: id"), "{draft}");
    assert!(draft.contains("state_column: status"), "{draft}");
    assert!(
        draft
            .contains("states: {pending: pending, sending: processing, sent: sent, error: failed}"),
        "{draft}"
    );
    assert!(draft.contains("timestamp_column: updated_at"), "{draft}");
    assert!(draft.contains("match: message_id"), "{draft}");
    assert!(!draft.contains("table: password_resets"), "{draft}");
    assert!(
        draft.contains("#   pending (pending): 1 row, oldest changed 2h"),
        "{draft}"
    );
    let filled = fill(&draft, dir.path(), None);
    let cfg = write(dir.path(), "sweeper.yaml", &filled);
    let report = run_json(
        &["report", "-c", cfg.to_str().unwrap(), "--format", "json"],
        0,
    );
    let s = sweep_json(&report, "email_messages");
    assert_eq!(s["stuck"]["pending"], 1, "{report:#}");
    assert_eq!(s["stuck"]["sending"], 1, "{report:#}");
}
