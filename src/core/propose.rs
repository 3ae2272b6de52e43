//! `sweeper init`: from the shape of an app's tables and a sample of their
//! values, proposed sweeps — and, said plainly as `TODO`, whatever could not
//! be decided from the schema alone.
//!
//! Owns: recognising a state column (text, enum or integer, by its values
//! and name), the timestamp that moves with it, the key, likely lookup
//! (Message-ID) and job-argument columns, and rendering the commented YAML
//! draft with its report. Does not own: reading the schema (shell::init).
//! Nothing here guesses silently: a choice the data does not settle is a
//! `TODO` that `sweeper check` refuses until it is filled in.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One column as the database describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The database's type name, lower case (`text`, `integer`,
    /// `timestamp with time zone`, a Postgres enum's name, `datetime`, …).
    pub ty: String,
    /// A Postgres enum type (its values are sampled as text).
    pub is_enum: bool,
}

/// What the shell learned about one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// `schema.table` when not in the default schema.
    pub name: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    /// Per state-like column: every value seen (as text) with its count.
    pub samples: BTreeMap<String, Vec<(String, u64)>>,
}

/// The four roles sweeper knows, in the order the config lists them.
pub const ROLES: [&str; 4] = ["pending", "sending", "sent", "error"];

const PENDING: &[&str] = &[
    "pending",
    "queued",
    "enqueued",
    "new",
    "created",
    "scheduled",
    "waiting",
    "ready",
    "unsent",
    "to_send",
    "todo",
];
const SENDING: &[&str] = &[
    "sending",
    "processing",
    "in_progress",
    "inprogress",
    "running",
    "started",
    "working",
    "delivering",
    "dispatching",
    "in_flight",
    "submitting",
];
const SENT: &[&str] = &[
    "sent",
    "delivered",
    "done",
    "completed",
    "complete",
    "succeeded",
    "success",
    "finished",
    "processed",
];
const ERROR: &[&str] = &[
    "error", "errored", "failed", "failure", "bounced", "dead", "rejected",
];

/// The role a state value plays, from its name.
pub fn role_of(value: &str) -> Option<&'static str> {
    let v = value.trim().to_ascii_lowercase().replace(['-', ' '], "_");
    [
        ("pending", PENDING),
        ("sending", SENDING),
        ("sent", SENT),
        ("error", ERROR),
    ]
    .into_iter()
    .find(|(_, words)| words.contains(&v.as_str()))
    .map(|(role, _)| role)
}

fn is_integer(ty: &str) -> bool {
    [
        "smallint",
        "integer",
        "bigint",
        "int",
        "tinyint",
        "mediumint",
    ]
    .iter()
    .any(|t| ty == *t || ty.starts_with(&format!("{t}(")) || ty.starts_with(&format!("{t} ")))
}

fn is_text(c: &Column) -> bool {
    c.is_enum
        || [
            "text",
            "character varying",
            "varchar",
            "character",
            "char",
            "enum",
            "string",
        ]
        .iter()
        .any(|t| c.ty == *t || c.ty.starts_with(&format!("{t}(")) || c.ty.starts_with(t))
}

fn is_time(c: &Column) -> bool {
    c.ty.starts_with("timestamp") || c.ty.starts_with("datetime")
}

fn state_like_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "state" || n == "status" || n.ends_with("_state") || n.ends_with("_status")
}

/// Columns worth sampling for state values: text and enum columns, and
/// integer columns named like a state (`status`, `*_state`, …).
pub fn state_candidates(columns: &[Column]) -> Vec<&Column> {
    columns
        .iter()
        .filter(|c| is_text(c) || (is_integer(&c.ty) && state_like_name(&c.name)))
        .collect()
}

/// A column chosen for a role, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pick {
    Found(String),
    Todo(String),
}

impl Pick {
    fn yaml(&self) -> String {
        match self {
            Pick::Found(v) => v.clone(),
            Pick::Todo(_) => "TODO".into(),
        }
    }
}

/// A proposed sweep for one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub table: String,
    pub state_column: String,
    /// The state column holds integers (a Rails / Laravel enum): which
    /// number means what is not in the database.
    pub integer_states: bool,
    /// Per role: the value found, or `None` (a TODO).
    pub states: [Option<String>; 4],
    /// Every value seen, with counts.
    pub seen: Vec<(String, u64)>,
    pub key: Pick,
    pub timestamp: Pick,
    /// A column that looks like the sent message's Message-ID.
    pub message_id: Option<String>,
    /// How sure: roles recognised by value, then by name.
    pub score: u32,
}

impl Proposal {
    /// What could not be decided, one line each.
    pub fn todos(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.integer_states {
            out.push(format!(
                "{}.{} holds integers ({}): which number is pending, sending, sent and error lives in the app's code (a Rails `enum`, a Laravel cast)",
                self.table,
                self.state_column,
                seen_text(&self.seen)
            ));
        } else {
            for (role, v) in ROLES.iter().zip(&self.states) {
                if v.is_none() {
                    out.push(format!(
                        "no value of {}.{} reads as `{role}` (seen: {})",
                        self.table,
                        self.state_column,
                        seen_text(&self.seen)
                    ));
                }
            }
        }
        for (what, p) in [("key", &self.key), ("timestamp column", &self.timestamp)] {
            if let Pick::Todo(why) = p {
                out.push(format!("{}: {what}: {why}", self.table));
            }
        }
        out.push(format!(
            "{}: the job to requeue (queue, class, arguments) is the app's",
            self.table
        ));
        out
    }
}

fn seen_text(seen: &[(String, u64)]) -> String {
    seen.iter()
        .map(|(v, n)| format!("{v} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column whose name says it changes with the state, or the usual
/// update timestamp.
fn timestamp_for(t: &Table, state_column: &str) -> Pick {
    let times: Vec<&Column> = t
        .columns
        .iter()
        .filter(|c| is_time(c) || (is_integer(&c.ty) && c.name.ends_with("_at")))
        .collect();
    let stem = state_column
        .trim_end_matches("_state")
        .trim_end_matches("_status");
    let preferred = [
        format!("{state_column}_changed_at"),
        format!("{state_column}_updated_at"),
        format!("{stem}_changed_at"),
        format!("{stem}_at"),
        "state_changed_at".into(),
        "status_changed_at".into(),
        "updated_at".into(),
        "modified_at".into(),
        "modified".into(),
        "updated".into(),
        "last_modified".into(),
        "date_updated".into(),
    ];
    for want in &preferred {
        if let Some(c) = times.iter().find(|c| c.name.eq_ignore_ascii_case(want)) {
            return Pick::Found(c.name.clone());
        }
    }
    Pick::Todo(if times.is_empty() {
        "no timestamp column; sweeper needs the time the state last changed".into()
    } else {
        format!(
            "none of {} is named like the time the state changed",
            times
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn message_id_column(t: &Table) -> Option<String> {
    t.columns
        .iter()
        .filter(|c| is_text(c))
        .map(|c| c.name.as_str())
        .find(|n| {
            let n = n.to_ascii_lowercase();
            n == "message_id"
                || n.ends_with("_message_id")
                || n == "smtp_id"
                || n == "provider_id"
                || n == "x_message_id"
        })
        .map(str::to_string)
}

/// The best sweep for a table, if any column reads as a job state: text or
/// enum values that include a pending-like value and a sent- or
/// sending-like one, or an integer column named like a state with few
/// distinct values.
pub fn propose(t: &Table) -> Option<Proposal> {
    let mut best: Option<Proposal> = None;
    for c in state_candidates(&t.columns) {
        let Some(seen) = t.samples.get(&c.name) else {
            continue;
        };
        let integer = is_integer(&c.ty);
        let mut states: [Option<String>; 4] = Default::default();
        let score = if integer {
            let small = !seen.is_empty()
                && seen.len() <= 12
                && seen.iter().all(|(v, _)| v.parse::<i64>().is_ok());
            if !small {
                continue;
            }
            1
        } else {
            for (v, _) in seen {
                if let Some(role) = role_of(v) {
                    let i = ROLES.iter().position(|r| *r == role).expect("a role");
                    states[i].get_or_insert_with(|| v.clone());
                }
            }
            let has = |i: usize| states[i].is_some();
            if !(has(0) && (has(1) || has(2))) {
                continue;
            }
            states.iter().filter(|s| s.is_some()).count() as u32 * 2
                + u32::from(state_like_name(&c.name))
        };
        let key = match t.primary_key.as_slice() {
            [k] => Pick::Found(k.clone()),
            [] => Pick::Todo("no primary key; name a unique column".into()),
            many => Pick::Todo(format!(
                "the primary key has several columns ({}); name one unique column",
                many.join(", ")
            )),
        };
        let p = Proposal {
            table: t.name.clone(),
            state_column: c.name.clone(),
            integer_states: integer,
            states,
            seen: seen.clone(),
            key,
            timestamp: timestamp_for(t, &c.name),
            message_id: message_id_column(t),
            score,
        };
        if best.as_ref().is_none_or(|b| p.score > b.score) {
            best = Some(p);
        }
    }
    best
}

/// Per role: stale rows and the oldest stale age, for the report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateStats {
    pub rows: u64,
    pub oldest_age_secs: Option<f64>,
}

/// What the shell measured for a proposal.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// Rows per state value (as text).
    pub per_value: Vec<(String, u64, Option<f64>)>,
    /// The index that keeps the sweep fast, and whether one like it exists.
    pub index: Option<(String, bool)>,
}

/// A sweep name from a table name: lower case, `[a-z0-9_]`.
pub fn sweep_name(table: &str) -> String {
    let base = table.rsplit('.').next().unwrap_or(table);
    let mut s: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert_str(0, "t_");
    }
    s
}

fn yaml_str(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@".contains(c))
        && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "null" | "on" | "off" | "todo"
        );
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The commented YAML draft: the report as comments, then a config that
/// `sweeper check` accepts once every `TODO` is filled in. `url` is what to
/// write for the database (an env reference when it held a password).
pub fn render(
    db_label: &str,
    url: &str,
    proposals: &[(Proposal, Facts)],
    skipped: &[String],
) -> String {
    let mut o = String::new();
    render_report(&mut o, db_label, proposals, skipped);
    render_config(&mut o, url, proposals);
    o
}

/// The report, as comments: per proposed table its rows and oldest change
/// per state value, the index it needs, and its TODOs.
fn render_report(
    o: &mut String,
    db_label: &str,
    proposals: &[(Proposal, Facts)],
    skipped: &[String],
) {
    let _ = writeln!(
        o,
        "# sweeper init: a draft for {db_label} (read only; nothing was written)."
    );
    let _ = writeln!(
        o,
        "# Fill in every TODO, then: sweeper check -c THIS_FILE  (it refuses a TODO left in)."
    );
    let _ = writeln!(o, "#");
    if proposals.is_empty() {
        let _ = writeln!(
            o,
            "# No table has a column whose values read as a job state (pending / sending / sent / error)."
        );
    }
    for (p, f) in proposals {
        let _ = writeln!(
            o,
            "# {}: state column {}{}",
            p.table,
            p.state_column,
            if p.integer_states { " (integers)" } else { "" }
        );
        for (v, n, oldest) in &f.per_value {
            let role = if p.integer_states {
                String::new()
            } else {
                role_of(v).map(|r| format!(" ({r})")).unwrap_or_default()
            };
            let age = oldest
                .map(|a| format!(", oldest changed {} ago", crate::core::report::human_age(a)))
                .unwrap_or_default();
            let rows = if *n == 1 { "row" } else { "rows" };
            let _ = writeln!(o, "#   {v}{role}: {n} {rows}{age}");
        }
        match &f.index {
            Some((ddl, true)) => {
                let _ = writeln!(
                    o,
                    "#   index: an index on the state column exists; the recommended one is"
                );
                let _ = writeln!(o, "#     {ddl}");
            }
            Some((ddl, false)) => {
                let _ = writeln!(
                    o,
                    "#   index: MISSING — on a large table create it before the first pass:"
                );
                let _ = writeln!(o, "#     {ddl}");
            }
            None => {}
        }
        for t in p.todos() {
            let _ = writeln!(o, "#   TODO: {t}");
        }
    }
    for s in skipped {
        let _ = writeln!(o, "# skipped: {s}");
    }
}

/// The config itself: database, a queue and a log source to fill in, and
/// one sweep per proposal.
fn render_config(o: &mut String, url: &str, proposals: &[(Proposal, Facts)]) {
    let _ = writeln!(o);
    let _ = writeln!(o, "databases:\n  app:\n    url: {}", yaml_str(url));
    let _ = writeln!(o);
    let _ = writeln!(o, "queues:");
    let _ = writeln!(o, "  jobs:");
    let _ = writeln!(
        o,
        "    kind: TODO                        # where the app's workers take jobs: resque | sidekiq | amqp | http | jsonl"
    );
    let _ = writeln!(o, "    redis: ${{REDIS_URL:-redis://127.0.0.1:6379/0}}   # resque / sidekiq (see config/example.yaml for the others)");
    if proposals.iter().any(|(p, _)| p.message_id.is_some()) {
        let _ = writeln!(o);
        let _ = writeln!(o, "evidence:");
        let _ = writeln!(o, "  mail:");
        let _ = writeln!(o, "    kind: log");
        let _ = writeln!(o, "    format: postfix                   # postfix | exim (or a provider: see config/example.yaml)");
        let _ = writeln!(
            o,
            "    paths: [TODO]                     # e.g. /var/log/mail.log*"
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "sweeps:");
    if proposals.is_empty() {
        let _ = writeln!(
            o,
            "  TODO: {{}}                           # see config/example.yaml"
        );
    }
    for (p, _) in proposals {
        let _ = writeln!(o, "  {}:", sweep_name(&p.table));
        let _ = writeln!(o, "    database: app");
        let _ = writeln!(o, "    table: {}", yaml_str(&p.table));
        let _ = writeln!(o, "    key: {}", yaml_str(&p.key.yaml()));
        let _ = writeln!(o, "    state_column: {}", yaml_str(&p.state_column));
        let _ = writeln!(o, "    timestamp_column: {}", yaml_str(&p.timestamp.yaml()));
        let states: Vec<String> = ROLES
            .iter()
            .zip(&p.states)
            .map(|(role, v)| {
                let v = match v {
                    Some(v) => yaml_str(v),
                    None => "TODO".into(),
                };
                format!("{role}: {v}")
            })
            .collect();
        let note = if p.integer_states {
            format!("   # integers seen: {}", seen_text(&p.seen))
        } else {
            String::new()
        };
        let _ = writeln!(o, "    states: {{{}}}{note}", states.join(", "));
        let key = match &p.key {
            Pick::Found(k) => k.clone(),
            Pick::Todo(_) => "TODO".into(),
        };
        let _ = writeln!(o, "    pending:");
        let _ = writeln!(
            o,
            "      after: 10m                      # untouched this long = its job was lost"
        );
        let _ = writeln!(o, "      queue: jobs");
        let _ = writeln!(
            o,
            "      job: {{queue: TODO, class: TODO, args: [{}]}}   # args: column names, in the order the job takes them",
            yaml_str(&key)
        );
        let _ = writeln!(o, "    sending:");
        let _ = writeln!(o, "      after: 15m");
        match &p.message_id {
            Some(m) => {
                let _ = writeln!(
                    o,
                    "      evidence: [{{source: mail, match: {}}}]",
                    yaml_str(m)
                );
            }
            None => {
                let _ = writeln!(o, "      # no Message-ID column found: without evidence, sending rows are only counted");
                let _ = writeln!(o, "      evidence: []");
            }
        }
        let _ = writeln!(o, "      give_up_after: 24h");
        let _ = writeln!(o, "      on_no_evidence: leave");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            ty: ty.into(),
            is_enum: false,
        }
    }

    fn seen(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(a, n)| (a.to_string(), *n)).collect()
    }

    #[test]
    fn state_values_are_read_by_their_names() {
        let table = [
            ("pending", Some("pending")),
            ("Queued", Some("pending")),
            ("in-progress", Some("sending")),
            ("PROCESSING", Some("sending")),
            ("delivered", Some("sent")),
            ("failed", Some("error")),
            ("archived", None),
            ("", None),
        ];
        for (v, want) in table {
            assert_eq!(role_of(v), want, "{v:?}");
        }
    }

    #[test]
    fn a_django_choices_column_with_modified_is_proposed_whole() {
        let t = Table {
            name: "notifications_notification".into(),
            columns: vec![
                col("id", "bigint"),
                col("status", "character varying(20)"),
                col("created", "timestamp with time zone"),
                col("modified", "timestamp with time zone"),
                col("provider_message_id", "text"),
                col("body", "text"),
            ],
            primary_key: vec!["id".into()],
            samples: [
                (
                    "status".to_string(),
                    seen(&[("sent", 90), ("queued", 5), ("sending", 2), ("failed", 3)]),
                ),
                ("body".to_string(), seen(&[("hello", 1)])),
                ("provider_message_id".to_string(), seen(&[("<a@b>", 1)])),
            ]
            .into(),
        };
        let p = propose(&t).expect("a proposal");
        assert_eq!(p.state_column, "status");
        assert_eq!(
            p.states,
            [
                Some("queued".into()),
                Some("sending".into()),
                Some("sent".into()),
                Some("failed".into())
            ]
        );
        assert_eq!(p.key, Pick::Found("id".into()));
        assert_eq!(p.timestamp, Pick::Found("modified".into()));
        assert_eq!(p.message_id.as_deref(), Some("provider_message_id"));
        assert!(!p.integer_states);
        assert_eq!(p.todos().len(), 1, "only the job: {:?}", p.todos());
    }

    #[test]
    fn a_rails_integer_enum_is_proposed_with_its_mapping_left_as_todo() {
        let t = Table {
            name: "receipts".into(),
            columns: vec![
                col("id", "bigint"),
                col("user_id", "bigint"),
                col("delivery_status", "integer"),
                col("created_at", "timestamp(6) without time zone"),
                col("updated_at", "timestamp(6) without time zone"),
            ],
            primary_key: vec!["id".into()],
            samples: [(
                "delivery_status".to_string(),
                seen(&[("2", 400), ("0", 12), ("1", 3), ("3", 7)]),
            )]
            .into(),
        };
        let p = propose(&t).expect("a proposal");
        assert!(p.integer_states);
        assert_eq!(p.states, [None, None, None, None]);
        assert_eq!(p.timestamp, Pick::Found("updated_at".into()));
        assert!(p.todos()[0].contains("integers (2 ×400, 0 ×12, 1 ×3, 3 ×7)"));
    }

    #[test]
    fn a_state_changed_at_column_beats_updated_at() {
        let t = Table {
            name: "jobs".into(),
            columns: vec![
                col("uuid", "uuid"),
                col("state", "text"),
                col("updated_at", "timestamp with time zone"),
                col("state_changed_at", "timestamp with time zone"),
            ],
            primary_key: vec!["uuid".into()],
            samples: [("state".to_string(), seen(&[("pending", 1), ("done", 3)]))].into(),
        };
        let p = propose(&t).unwrap();
        assert_eq!(p.timestamp, Pick::Found("state_changed_at".into()));
        assert_eq!(p.key, Pick::Found("uuid".into()));
    }

    #[test]
    fn tables_without_a_state_are_not_proposed_and_gaps_are_todos() {
        let users = Table {
            name: "users".into(),
            columns: vec![col("id", "bigint"), col("email", "text")],
            primary_key: vec!["id".into()],
            samples: [("email".to_string(), seen(&[("a@b", 1)]))].into(),
        };
        assert_eq!(propose(&users), None);
        let t = Table {
            name: "outbox".into(),
            columns: vec![
                col("a", "integer"),
                col("b", "integer"),
                col("status", "text"),
            ],
            primary_key: vec!["a".into(), "b".into()],
            samples: [("status".to_string(), seen(&[("new", 1), ("sent", 2)]))].into(),
        };
        let p = propose(&t).unwrap();
        assert!(matches!(p.key, Pick::Todo(_)));
        assert!(matches!(p.timestamp, Pick::Todo(_)));
        let todos = p.todos();
        assert!(todos.iter().any(|t| t.contains("`sending`")), "{todos:?}");
        assert!(
            todos.iter().any(|t| t.contains("several columns (a, b)")),
            "{todos:?}"
        );
    }

    #[test]
    fn sweep_names_and_yaml_strings_are_safe() {
        assert_eq!(sweep_name("billing.Receipts"), "receipts");
        assert_eq!(sweep_name("2fa-codes"), "t_2fa_codes");
        assert_eq!(yaml_str("pending"), "pending");
        assert_eq!(yaml_str("in progress"), "\"in progress\"");
        assert_eq!(yaml_str("yes"), "\"yes\"");
        assert_eq!(yaml_str("1"), "\"1\"");
        assert_eq!(yaml_str("TODO"), "\"TODO\"");
    }
}
