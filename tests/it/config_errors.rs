//! Invalid configs: each exits 78 with a message naming the YAML path and
//! the line; several problems are all reported at once.

use crate::support::*;

const VALID: &str = r#"databases:
  app:
    url: "sqlite:///tmp/sweeper-never-opened.db"
queues:
  resque:
    kind: resque
    redis: redis://127.0.0.1:6379/0
evidence:
  postfix:
    kind: log
    format: postfix
    paths: [/var/log/mail.log]
sweeps:
  comments:
    database: app
    table: comments
    key: id
    state_column: notification_state
    timestamp_column: updated_at
    pending:
      after: 10m
      queue: resque
      job: {queue: notify, class: NotifyUser, args: [user_id, id]}
    sending:
      after: 15m
      evidence: [{source: postfix, match: message_id}]
"#;

struct Case {
    name: &'static str,
    /// (find, replace) applied to VALID
    edit: (&'static str, &'static str),
    /// The path the message must name.
    path: &'static str,
    /// A fragment of the offending line (its line number must be reported).
    line_of: &'static str,
    /// A fragment of the message.
    says: &'static str,
}

const CASES: &[Case] = &[
    Case { name: "a TODO left from sweeper init", edit: ("class: NotifyUser", "class: TODO"), path: "sweeps.comments.pending.job.class", line_of: "class: TODO", says: "still a TODO (left by `sweeper init`)" },
    Case { name: "a record reference without activejob", edit: ("args: [user_id, id]", "args: [{global_id: User, column: user_id}, id]"), path: "sweeps.comments.pending.job.args[0]", line_of: "job: {queue: notify", says: "set `format: activejob`" },
    Case { name: "an unknown job format", edit: ("class: NotifyUser,", "class: NotifyUser, format: celery,"), path: "sweeps.comments.pending.job.format", line_of: "format: celery", says: "unknown job format \"celery\"" },
    Case { name: "unknown top-level key", edit: ("queues:\n", "queuess:\n"), path: "queuess", line_of: "queuess:", says: "unknown field `queuess`" },
    Case { name: "unknown sweep key", edit: ("    key: id\n", "    key: id\n    tabel: x\n"), path: "sweeps.comments.tabel", line_of: "tabel:", says: "unknown field `tabel`" },
    Case { name: "bad duration", edit: ("after: 10m", "after: 10 mins later"), path: "sweeps.comments.pending.after", line_of: "after: 10 mins later", says: "invalid duration \"10 mins later\"" },
    Case { name: "missing env var", edit: ("\"sqlite:///tmp/sweeper-never-opened.db\"", "${SWEEPER_IT_SURELY_UNSET_DB}"), path: "databases.app.url", line_of: "url:", says: "environment variable SWEEPER_IT_SURELY_UNSET_DB is not set" },
    Case { name: "unknown queue", edit: ("queue: resque", "queue: sidekiq"), path: "sweeps.comments.pending.queue", line_of: "queue: sidekiq", says: "unknown queue \"sidekiq\" (defined: resque)" },
    Case { name: "hostile table", edit: ("table: comments", "table: \"comments; DROP TABLE users\""), path: "sweeps.comments.table", line_of: "table:", says: "not a valid SQL identifier" },
    Case { name: "hostile key column", edit: ("key: id", "key: 'id\" OR 1=1 --'"), path: "sweeps.comments.key", line_of: "key: 'id", says: "not a valid SQL identifier" },
    Case { name: "hostile arg column", edit: ("args: [user_id, id]", "args: [user_id, \"id) FROM x;--\"]"), path: "sweeps.comments.pending.job.args[1]", line_of: "args:", says: "not a valid SQL identifier" },
    Case { name: "unknown database", edit: ("database: app", "database: main"), path: "sweeps.comments.database", line_of: "database: main", says: "unknown database \"main\" (defined: app)" },
    Case { name: "unknown evidence source", edit: ("source: postfix", "source: exim"), path: "sweeps.comments.sending.evidence[0].source", line_of: "source: exim", says: "unknown evidence source \"exim\"" },
    Case { name: "a malformed time zone", edit: ("    url: \"sqlite:///tmp/sweeper-never-opened.db\"\n", "    url: \"sqlite:///tmp/sweeper-never-opened.db\"\n    timezone: \"+2h\"\n"), path: "databases.app.timezone", line_of: "timezone:", says: "invalid timezone \"+2h\": expected UTC, an offset such as +02:00" },
    Case { name: "a history retention that is not a duration", edit: ("queues:\n", "history: {retention: forever}\nqueues:\n"), path: "history.retention", line_of: "history:", says: "invalid duration \"forever\"" },
    Case { name: "an unsupported database", edit: ("\"sqlite:///tmp/sweeper-never-opened.db\"", "\"oracle://db/app\""), path: "databases.app.url", line_of: "url:", says: "expected postgres://, postgresql://, mysql://, mariadb:// or sqlite:" },
    Case { name: "a new RQ job for pickle workers", edit: ("kind: resque\n    redis:", "kind: rq\n    redis:"), path: "sweeps.comments.pending.job", line_of: "job: {queue: notify", says: "a new RQ job needs workers that use RQ's JSONSerializer" },
    Case { name: "an RQ function that is not a dotted path", edit: ("kind: resque\n    redis:", "kind: rq\n    serializer: json\n    redis:"), path: "sweeps.comments.pending.job.class", line_of: "job: {queue: notify", says: "RQ imports the job's function by its dotted path" },
    Case { name: "kwargs on a resque queue", edit: ("args: [user_id, id]}", "args: [user_id], kwargs: {id: id}}"), path: "sweeps.comments.pending.job.kwargs", line_of: "job: {queue: notify", says: "`kwargs` does not apply to a resque queue" },
    Case { name: "positional args on a bullmq queue", edit: ("kind: resque\n    redis:", "kind: bullmq\n    redis:"), path: "sweeps.comments.pending.job.args", line_of: "job: {queue: notify", says: "a BullMQ job takes one `data` object" },
    Case { name: "a celery broker that is neither redis nor amqp", edit: ("kind: resque\n    redis: redis://127.0.0.1:6379/0", "kind: celery\n    broker: http://x"), path: "queues.resque.broker", line_of: "broker: http", says: "invalid broker \"http://x\"" },
    Case { name: "a presence check on a RabbitMQ celery broker", edit: ("kind: resque\n    redis: redis://127.0.0.1:6379/0", "kind: celery\n    broker: amqp://g:g@h//\n    presence_check: true"), path: "queues.resque.presence_check", line_of: "presence_check: true", says: "presence_check works with redis:// brokers only" },
    Case { name: "a celery priority above 9", edit: ("kind: resque\n    redis: redis://127.0.0.1:6379/0", "kind: celery\n    broker: redis://h:6379/0\n    priority: 12"), path: "queues.resque.priority", line_of: "priority: 12", says: "priority 12 is out of range" },
    Case { name: "a job without a class", edit: ("class: NotifyUser, ", ""), path: "sweeps.comments.pending.job", line_of: "job: {queue: notify", says: "missing `class`" },
    Case { name: "metrics auth with both schemes", edit: ("queues:\n", "metrics:\n  auth: {bearer_token: t, basic: {username: u, password: p}}\nqueues:\n"), path: "metrics.auth", line_of: "auth: {bearer_token", says: "set exactly one of `bearer_token` or `basic" },
    Case { name: "metrics basic auth with a colon in the user", edit: ("queues:\n", "metrics:\n  auth:\n    basic: {username: \"a:b\", password: p}\nqueues:\n"), path: "metrics.auth.basic.username", line_of: "username: \"a:b\"", says: "without `:`" },
    Case { name: "a journal source in a file-only format", edit: ("  postfix:\n    kind: log\n    format: postfix\n    paths: [/var/log/mail.log]", "  postfix:\n    kind: journal\n    format: custom"), path: "evidence.postfix.format", line_of: "format: custom", says: "unknown journal format \"custom\" (postfix, exim)" },
    Case { name: "a journal source with units and identifiers", edit: ("  postfix:\n    kind: log\n    format: postfix\n    paths: [/var/log/mail.log]", "  postfix:\n    kind: journal\n    format: postfix\n    units: [postfix.service]\n    identifiers: [postfix/smtp]"), path: "evidence.postfix.identifiers", line_of: "identifiers:", says: "set `units` or `identifiers`, not both" },
    Case { name: "a loki source without a stream selector", edit: ("  postfix:\n    kind: log\n    format: postfix\n    paths: [/var/log/mail.log]", "  postfix:\n    kind: loki\n    format: postfix\n    url: http://loki:3100\n    selector: job=postfix"), path: "evidence.postfix.selector", line_of: "selector: job=postfix", says: "expected a LogQL stream selector" },
    Case { name: "an elasticsearch option on a loki source", edit: ("  postfix:\n    kind: log\n    format: postfix\n    paths: [/var/log/mail.log]", "  postfix:\n    kind: loki\n    format: postfix\n    url: http://loki:3100\n    selector: '{job=\"x\"}'\n    index: mail-*"), path: "evidence.postfix.index", line_of: "index: mail-*", says: "`index` belongs to elasticsearch sources, not loki" },
    Case { name: "credentials in a log store url", edit: ("  postfix:\n    kind: log\n    format: postfix\n    paths: [/var/log/mail.log]", "  postfix:\n    kind: elasticsearch\n    format: postfix\n    url: https://elastic:pw@es:9200\n    index: mail-*"), path: "evidence.postfix.url", line_of: "url: https://elastic", says: "credentials in the url would be printed" },
    Case { name: "unknown queue kind", edit: ("kind: resque", "kind: beanstalk"), path: "queues.resque.kind", line_of: "kind: beanstalk", says: "unknown queue kind \"beanstalk\"" },
    Case { name: "missing queue kind", edit: ("    kind: resque\n", ""), path: "queues.resque", line_of: "  resque:", says: "missing `kind`" },
    Case { name: "unknown log format", edit: ("format: postfix", "format: sendmail"), path: "evidence.postfix.format", line_of: "format: sendmail", says: "unknown log format \"sendmail\"" },
    Case { name: "option of another kind", edit: ("    redis: redis://127.0.0.1:6379/0\n", "    redis: redis://127.0.0.1:6379/0\n    path: /tmp/jobs.jsonl\n"), path: "queues.resque.path", line_of: "path: /tmp/jobs.jsonl", says: "unknown field `path`" },
    Case { name: "unknown give-up policy", edit: ("      evidence: [{source: postfix, match: message_id}]\n", "      evidence: [{source: postfix, match: message_id}]\n      on_no_evidence: guess\n"), path: "sweeps.comments.sending.on_no_evidence", line_of: "on_no_evidence: guess", says: "unknown policy \"guess\"" },
    Case { name: "give up before threshold", edit: ("      evidence: [{source: postfix, match: message_id}]\n", "      evidence: [{source: postfix, match: message_id}]\n      give_up_after: 5m\n"), path: "sweeps.comments.sending.give_up_after", line_of: "give_up_after: 5m", says: "give_up_after must be at least `after`" },
    Case { name: "duplicate state values", edit: ("    timestamp_column: updated_at\n", "    timestamp_column: updated_at\n    states: {pending: 0, sending: 1, sent: 1, error: 3}\n"), path: "sweeps.comments.states", line_of: "states:", says: "must be different" },
    Case { name: "invalid redis url", edit: ("redis: redis://127.0.0.1:6379/0", "redis: 127.0.0.1:6379"), path: "queues.resque.redis", line_of: "redis: 127.0.0.1", says: "invalid redis url" },
    Case { name: "unsupported database", edit: ("\"sqlite:///tmp/sweeper-never-opened.db\"", "oracle://db/x"), path: "databases.app.url", line_of: "url:", says: "unsupported database url" },
    Case { name: "bad glob", edit: ("paths: [/var/log/mail.log]", "paths: [\"/var/log/[mail.log\"]"), path: "evidence.postfix.paths[0]", line_of: "paths:", says: "invalid glob" },
    Case { name: "invalid yaml", edit: ("    table: comments\n", "    table: [comments\n"), path: "", line_of: "", says: "invalid YAML" },
    Case { name: "no pending and no sending", edit: ("    pending:\n      after: 10m\n      queue: resque\n      job: {queue: notify, class: NotifyUser, args: [user_id, id]}\n    sending:\n      after: 15m\n      evidence: [{source: postfix, match: message_id}]\n", ""), path: "sweeps.comments", line_of: "  comments:", says: "needs a `pending` or a `sending` section" },
    Case { name: "bad sweep name", edit: ("  comments:\n", "  \"my comments\":\n"), path: "sweeps.my comments", line_of: "my comments", says: "invalid name" },
    Case { name: "bad listen address", edit: ("queues:\n", "metrics:\n  listen: localhost\nqueues:\n"), path: "metrics.listen", line_of: "listen: localhost", says: "invalid listen address" },
    Case { name: "unknown state key", edit: ("    timestamp_column: updated_at\n", "    timestamp_column: updated_at\n    states: {pending: queued, done: sent}\n"), path: "sweeps.comments.states.done", line_of: "states:", says: "unknown field `done`" },
    Case { name: "bad utc offset", edit: ("    format: postfix\n", "    format: postfix\n    utc_offset: CET\n"), path: "evidence.postfix.utc_offset", line_of: "utc_offset: CET", says: "invalid utc_offset \"CET\"" },
    Case { name: "zero max_attempts", edit: ("      job: {queue: notify, class: NotifyUser, args: [user_id, id]}\n", "      job: {queue: notify, class: NotifyUser, args: [user_id, id]}\n      max_attempts: 0\n"), path: "sweeps.comments.pending.max_attempts", line_of: "max_attempts: 0", says: "must be at least 1" },
];

fn line_number(text: &str, fragment: &str) -> usize {
    text.lines()
        .position(|l| l.contains(fragment))
        .unwrap_or_else(|| panic!("{fragment:?} not in config"))
        + 1
}

fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "sweeper.yaml", text);
    let o = run(&["check", "-c", path.to_str().unwrap()]);
    (
        o.status.code(),
        stderr(&o).replace(&format!("{}", path.display()), "FILE"),
    )
}

#[test]
fn the_base_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "sweeper.yaml", VALID);
    let cfg = sweeper::config::load(&path);
    assert!(cfg.is_ok(), "{:?}", cfg.err().map(|e| e.to_string()));
}

#[test]
fn each_invalid_config_exits_78_naming_path_and_line() {
    let mut checked = 0;
    for c in CASES {
        assert!(VALID.contains(c.edit.0), "{}: edit target missing", c.name);
        let text = VALID.replacen(c.edit.0, c.edit.1, 1);
        let (code, err) = check(&text);
        assert_eq!(code, Some(78), "{}: exit code; stderr:\n{err}", c.name);
        assert!(
            err.contains(c.says),
            "{}: message should say {:?}:\n{err}",
            c.name,
            c.says
        );
        if !c.path.is_empty() {
            let line = line_number(&text, c.line_of);
            let want = format!("FILE:{line}: {}: ", c.path);
            assert!(err.contains(&want), "{}: want {want:?} in:\n{err}", c.name);
        } else {
            assert!(err.contains("FILE:"), "{}: names the file:\n{err}", c.name);
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} cases ran");
}

#[test]
fn invalid_yaml_names_the_line() {
    let text = VALID.replacen("    table: comments\n", "    table: [comments\n", 1);
    let (code, err) = check(&text);
    assert_eq!(code, Some(78));
    assert!(err.contains("invalid YAML"), "{err}");
    assert!(
        err.contains("FILE:1") || err.contains("FILE:2"),
        "a line number: {err}"
    );
}

#[test]
fn wrong_types_are_named() {
    let text = VALID.replacen(
        "      job: {queue: notify, class: NotifyUser, args: [user_id, id]}\n",
        "      job: {queue: notify, class: NotifyUser, args: [user_id, id]}\n      max_attempts: lots\n",
        1,
    );
    let (code, err) = check(&text);
    assert_eq!(code, Some(78));
    let line = line_number(&text, "max_attempts: lots");
    assert!(
        err.contains(&format!("FILE:{line}: sweeps.comments.pending.max_attempts: invalid type: string \"lots\", expected u32")),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = VALID
        .replacen("after: 10m", "after: soon", 1)
        .replacen("queue: resque", "queue: nope", 1)
        .replacen("table: comments", "table: \"a b\"", 1)
        .replacen("format: postfix", "format: qmail", 1)
        .replacen("source: postfix", "source: qmail", 1);
    let (code, err) = check(&text);
    assert_eq!(code, Some(78));
    for want in [
        "sweeps.comments.pending.after",
        "sweeps.comments.pending.queue",
        "sweeps.comments.table",
        "evidence.postfix.format",
        "sweeps.comments.sending.evidence[0].source",
    ] {
        assert!(err.contains(want), "missing {want}:\n{err}");
    }
    assert!(err.contains("5 problems in config"), "{err}");
}

#[test]
fn requeue_give_up_needs_a_pending_section() {
    let text = VALID
        .replacen(
            "    pending:\n      after: 10m\n      queue: resque\n      job: {queue: notify, class: NotifyUser, args: [user_id, id]}\n",
            "",
            1,
        )
        .replacen(
            "      evidence: [{source: postfix, match: message_id}]\n",
            "      evidence: [{source: postfix, match: message_id}]\n      on_no_evidence: requeue\n",
            1,
        );
    let (code, err) = check(&text);
    assert_eq!(code, Some(78));
    assert!(err.contains("sweeps.comments.sending.on_no_evidence: on_no_evidence: requeue needs a `pending` section"), "{err}");
}

#[test]
fn an_unreadable_config_file_exits_78() {
    let o = run(&["check", "-c", "/nonexistent/sweeper.yaml"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("cannot read config /nonexistent/sweeper.yaml"));
}

#[test]
fn env_defaults_and_interpolation_work() {
    let text = VALID.replacen(
        "\"sqlite:///tmp/sweeper-never-opened.db\"",
        "\"${SWEEPER_IT_UNSET_VAR:-sqlite:///tmp/x.db}\"",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.yaml", &text);
    let cfg = sweeper::config::load(&path).unwrap();
    assert_eq!(cfg.databases["app"].url, "sqlite:///tmp/x.db");
}

#[test]
fn the_annotated_example_config_is_valid() {
    let path = root().join("config/example.yaml");
    let env = |_: &str| None;
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = sweeper::config::load_str(&text, "config/example.yaml", &env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.sweeps.len(), 6);
    assert_eq!(cfg.queues.len(), 8);
    assert_eq!(cfg.evidence.len(), 11);
    let receipts = cfg.sweep("receipts").unwrap();
    assert_eq!(receipts.states.sent, sweeper::config::StateValue::Int(2));
    assert_eq!(receipts.table.to_string(), "billing.receipts");
    let aj = cfg.sweep("user_notifications").unwrap();
    let job = aj.job.as_ref().unwrap();
    let fmt = job.activejob.as_ref().expect("an ActiveJob job");
    assert_eq!(fmt.wrapper, sweeper::config::AJ_SIDEKIQ_WRAPPER);
    assert_eq!(
        job.args.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        ["user_id", "id", "note"]
    );
    assert_eq!(fmt.kwargs.len(), 1);
    let celery = cfg.sweep("receipt_tasks").unwrap().job.as_ref().unwrap();
    assert_eq!(celery.positional, [0]);
    assert_eq!(celery.kwargs, [("notification_id".to_string(), 1)]);
    let bull = cfg.sweep("welcome_jobs").unwrap().job.as_ref().unwrap();
    assert_eq!(bull.kwargs.len(), 2);
    assert!(bull.positional.is_empty());
    let rq = cfg.sweep("exports").unwrap().job.as_ref().unwrap();
    assert_eq!(rq.job_id, Some(0));
    assert_eq!(rq.args[0].to_string(), "rq_job_id");
}

#[test]
fn provider_sources_report_every_missing_field_and_foreign_option() {
    let text = VALID.replacen(
        "evidence:\n",
        "evidence:\n  mg:\n    kind: mailgun\n    token: nope\n    rate_limit: -1\n    timeout: soon\n",
        1,
    );
    let (code, err) = check(&text);
    assert_eq!(code, Some(78));
    for want in [
        "evidence.mg.domain: kind mailgun needs `domain`",
        "evidence.mg.api_key: kind mailgun needs `api_key`",
        "evidence.mg.token: `token` does not apply to kind mailgun",
        "evidence.mg.rate_limit: rate_limit must be a positive number",
        "evidence.mg.timeout: invalid duration \"soon\"",
    ] {
        assert!(err.contains(want), "missing {want:?}:\n{err}");
    }
}

#[test]
fn an_unknown_key_does_not_hide_the_other_problems() {
    let text = VALID
        .replacen("    key: id\n", "    key: id\n    tabel: x\n", 1)
        .replacen("after: 10m", "after: soon", 1)
        .replacen("queue: resque", "queue: nope", 1)
        .replacen("queues:\n", "queuess: {}\nqueues:\n", 1);
    let (code, err) = check(&text);
    assert_eq!(code, Some(78), "{err}");
    for (path, line_of, says) in [
        ("sweeps.comments.tabel", "tabel:", "did you mean `table`?"),
        ("queuess", "queuess:", "did you mean `queues`?"),
        (
            "sweeps.comments.pending.after",
            "after: soon",
            "invalid duration",
        ),
        (
            "sweeps.comments.pending.queue",
            "queue: nope",
            "unknown queue \"nope\"",
        ),
    ] {
        let line = line_number(&text, line_of);
        let want = format!("FILE:{line}: {path}: ");
        assert!(err.contains(&want), "want {want:?} in:\n{err}");
        assert!(err.contains(says), "want {says:?} in:\n{err}");
    }
}

#[test]
fn activejob_envelopes_go_only_to_sidekiq_and_resque() {
    let text = VALID
        .replacen(
            "    kind: resque\n    redis: redis://127.0.0.1:6379/0\n",
            "    kind: jsonl\n    path: /tmp/jobs.jsonl\n",
            1,
        )
        .replacen(
            "class: NotifyUser,",
            "class: NotifyUser, format: activejob,",
            1,
        );
    let (code, err) = check(&text);
    assert_eq!(code, Some(78), "{err}");
    let line = line_number(&text, "format: activejob");
    assert!(
        err.contains(&format!("FILE:{line}: sweeps.comments.pending.job.format: ActiveJob envelopes are written to `sidekiq` and `resque` queues only")),
        "{err}"
    );
}

/// A generated corpus: every key of the base config misspelt, every scalar
/// given a value of the wrong shape, and hostile identifiers in every
/// identifier position — each exits 78 naming the file, the line and the
/// key, and the binary never panics.
#[test]
fn a_corpus_of_invalid_configs_each_names_file_line_and_key() {
    let lines: Vec<&str> = VALID.lines().collect();
    let named_sections = ["databases:", "queues:", "evidence:", "sweeps:"];
    let mut cases: Vec<(String, usize, String, String)> = Vec::new(); // text, line, key, says
    let mut section = "";
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') {
            section = line.trim();
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        if key.starts_with('-') || key.contains(' ') || key.contains('{') {
            continue;
        }
        // Entity names (databases.app, queues.resque, …) are the user's own.
        if indent == 2 && named_sections.contains(&section) {
            continue;
        }
        let replace = |new_line: String| -> String {
            let mut l = lines.clone();
            l[i] = &new_line;
            let mut t = l.join("\n");
            t.push('\n');
            t
        };
        let misspelt = format!("{}{key}zz:{value}", " ".repeat(indent));
        cases.push((
            replace(misspelt),
            i + 1,
            format!("{key}zz"),
            format!("unknown field `{key}zz`"),
        ));
        let value = value.trim();
        if !value.is_empty() && !value.starts_with('{') && !value.starts_with('[') {
            let wrong = format!("{}{key}: {{bad: [1, 2]}}", " ".repeat(indent));
            cases.push((replace(wrong), i + 1, key.to_string(), String::new()));
        }
    }
    let hostile = [
        "x\"; DROP TABLE users; --",
        "a b",
        "1abc",
        "naïve",
        "a.b.c",
        "`x`",
        "'x'",
        "x--",
        "x/*y*/",
        "x)",
        "x;y",
        "x\ty",
        "DROP TABLE x",
        "x'y",
        "x\\y",
    ];
    for h in hostile {
        let q = format!("\"{}\"", h.replace('\\', "\\\\").replace('"', "\\\""));
        for (find, key) in [
            ("    key: id", "key"),
            ("    state_column: notification_state", "state_column"),
            ("    timestamp_column: updated_at", "timestamp_column"),
        ] {
            let text = VALID.replacen(find, &format!("    {key}: {q}"), 1);
            let line = line_number(&text, &format!("    {key}: "));
            cases.push((
                text,
                line,
                key.to_string(),
                "not a valid SQL identifier".into(),
            ));
        }
        let text = VALID.replacen("match: message_id", &format!("match: {q}"), 1);
        let line = line_number(&text, "match: ");
        cases.push((
            text,
            line,
            "match".into(),
            "not a valid SQL identifier".into(),
        ));
        let text = VALID.replacen("args: [user_id, id]", &format!("args: [user_id, {q}]"), 1);
        let line = line_number(&text, "args: [user_id, ");
        cases.push((
            text,
            line,
            "args[1]".into(),
            "not a valid SQL identifier".into(),
        ));
    }
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (text, line, key, says) in &cases {
        let (code, err) = check(text);
        let names_it = err
            .lines()
            .any(|l| l.contains(&format!("FILE:{line}: ")) && l.contains(key.as_str()));
        if code != Some(78) || !names_it || !err.contains(says.as_str()) || err.contains("panicked")
        {
            failures.push(format!(
                "line {line} key {key} (exit {code:?}, want {says:?}):\n{err}\n---\n{}",
                text.lines().nth(line - 1).unwrap_or_default()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
