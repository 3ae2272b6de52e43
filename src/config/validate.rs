//! Validation: raw config → typed [`Config`], or every problem found.
//!
//! Pure: the environment is passed in as a lookup function; nothing is
//! read or connected. Each problem carries the YAML path it belongs to;
//! `validate_text` adds line numbers.

use super::raw::*;
use super::yaml::{self, Locator, Node};
use super::*;
use crate::core::decide::{Backoff, GiveUpPolicy, Limits, PendingRule, Rules, SendingRule};
use crate::core::evidence::custom::{CustomSpec, StatusMap};
use crate::core::evidence::jsonl::JsonlSpec;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};

/// Problems found so far, as (path, message).
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    /// Record a problem. One per path: a value that failed once (say, an
    /// unset variable) is not reported again by later checks.
    fn push(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        let path = path.into();
        if !self.0.iter().any(|(p, _)| *p == path) {
            self.0.push((path, msg.into()));
        }
    }

    /// Decode `node` at `path`, recording a failure.
    /// Decode `node`; an unknown key is reported (with the nearest known
    /// key when one is close) and dropped, and decoding goes on, so one
    /// misspelling does not hide every other problem of the file.
    fn decode<T: DeserializeOwned>(&mut self, mut node: Node, path: &str) -> Option<T> {
        for _ in 0..256 {
            match yaml::decode::<T>(node.clone()) {
                Ok(v) => return Some(v),
                Err((rel, msg)) => {
                    let p = if rel.is_empty() {
                        path.to_string()
                    } else {
                        yaml::join(path, &rel)
                    };
                    let unknown = yaml::unknown_field(&msg).is_some();
                    self.push(p, yaml::suggest(&msg));
                    if !(unknown && yaml::remove_at(&mut node, &rel)) {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// Record the error of `r` at `path`, keeping the value.
    fn check<T>(&mut self, path: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.push(path, e)).ok()
    }
}

/// Parse, interpolate and validate config text. Errors carry lines.
pub fn validate_text(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let locator = Locator::new(text);
    let root = yaml::parse(text).map_err(|e| {
        vec![ConfigError {
            path: String::new(),
            line: e.line,
            message: format!("invalid YAML: {}", e.message),
        }]
    })?;
    validate(root, env).map_err(|problems| {
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|(path, message)| ConfigError {
                line: locator.locate(&path).map(|(l, _)| l),
                path,
                message,
            })
            .collect();
        errors.sort_by_key(|e| e.line.unwrap_or(0));
        errors
    })
}

/// Validate a parsed document. `env` resolves `${VAR}`.
pub fn validate(
    mut root: Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<(String, String)>> {
    let mut p = Problems::default();
    let mut interp = Vec::new();
    yaml::interpolate(&mut root, "", env, &mut interp);
    yaml::todos(&root, "", &mut interp);
    for (path, msg) in interp {
        p.push(path, msg);
    }
    if !root.is_mapping() {
        p.push(
            "",
            format!(
                "expected a map at the top level, found {}",
                yaml::type_name(&root)
            ),
        );
        return Err(p.0);
    }
    let Some(top) = p.decode::<RawTop<Node>>(root, "") else {
        return Err(p.0);
    };

    let names = |m: &Option<BTreeMap<String, Node>>| -> BTreeSet<String> {
        m.iter().flat_map(|m| m.keys().cloned()).collect()
    };
    // References resolve against every defined name, valid or not, so one
    // bad entry does not cascade into "unknown …" errors elsewhere.
    let refs = Refs {
        databases: names(&top.databases),
        queues: names(&top.queues),
        evidence: names(&top.evidence),
    };
    let databases = section(&mut p, top.databases, "databases", database);
    let metrics = match top.metrics {
        None => Some(MetricsConfig::default()),
        Some(node) => p
            .decode::<RawMetrics>(node, "metrics")
            .and_then(|m| metrics_config(&mut p, m)),
    };
    let queues = section(&mut p, top.queues, "queues", queue);
    let evidence = section(&mut p, top.evidence, "evidence", evidence_source);
    let history = match top.history {
        None => Some(HistoryConfig::default()),
        Some(node) => p.decode::<RawHistory>(node, "history").and_then(|h| {
            duration_or(
                &mut p,
                "history.retention",
                h.retention.as_ref(),
                HistoryConfig::default().retention,
            )
            .map(|retention| HistoryConfig { retention })
        }),
    };
    let mut sweeps = Vec::new();
    match top.sweeps {
        None => p.push(
            "sweeps",
            "no sweeps defined: add at least one under `sweeps:`",
        ),
        Some(map) if map.is_empty() => p.push(
            "sweeps",
            "no sweeps defined: add at least one under `sweeps:`",
        ),
        Some(map) => {
            for (name, node) in map {
                let path = yaml::join("sweeps", &name);
                name_ok(&mut p, &path, &name);
                if let Some(raw) = p.decode::<RawSweep>(node, &path) {
                    if let Some(s) = sweep(&mut p, &path, &name, raw, &refs, &evidence, &queues) {
                        sweeps.push(s);
                    }
                }
            }
        }
    }
    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(Config {
        databases,
        metrics: metrics.expect("metrics validated"),
        queues,
        evidence,
        sweeps,
        history: history.expect("history validated"),
    })
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9187";

/// Validate every entry of a named section.
fn section<T>(
    p: &mut Problems,
    map: Option<BTreeMap<String, Node>>,
    name: &str,
    each: fn(&mut Problems, &str, &str, Node) -> Option<T>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    for (key, node) in map.unwrap_or_default() {
        let path = yaml::join(name, &key);
        name_ok(p, &path, &key);
        if let Some(v) = each(p, &path, &key, node) {
            out.insert(key, v);
        }
    }
    out
}

/// Names become metric labels and ledger keys: keep them plain.
fn name_ok(p: &mut Problems, path: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        p.push(
            path,
            format!("invalid name {name:?}: use letters, digits, `_` and `-` (at most 64)"),
        );
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|_| {
        format!("invalid duration {s:?}: expected a number and a unit, e.g. 90s, 10m, 1h30m, 2d")
    })
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    Ok(d)
}

fn duration_or(
    p: &mut Problems,
    path: &str,
    value: Option<&String>,
    default: Duration,
) -> Option<Duration> {
    match value {
        None => Some(default),
        Some(s) => p.check(path, positive_duration(s)),
    }
}

fn database(p: &mut Problems, path: &str, name: &str, node: Node) -> Option<DatabaseConfig> {
    let raw: RawDatabase = p.decode(node, path)?;
    let url_path = yaml::join(path, "url");
    let dialect = p.check(&url_path, dialect_of(&raw.url));
    let ledger_table = p.check(
        &yaml::join(path, "ledger_table"),
        Ident::parse(
            raw.ledger_table.as_deref().unwrap_or("sweeper_ledger"),
            true,
        ),
    );
    let history_table = p.check(
        &yaml::join(path, "history_table"),
        Ident::parse(
            raw.history_table.as_deref().unwrap_or("sweeper_history"),
            true,
        ),
    );
    let max_connections = raw.max_connections.unwrap_or(4);
    if max_connections == 0 {
        p.push(yaml::join(path, "max_connections"), "must be at least 1");
    }
    let connect_timeout = duration_or(
        p,
        &yaml::join(path, "connect_timeout"),
        raw.connect_timeout.as_ref(),
        Duration::from_secs(10),
    );
    let timezone = p.check(
        &yaml::join(path, "timezone"),
        timezone(raw.timezone.as_deref().unwrap_or("UTC")),
    );
    Some(DatabaseConfig {
        timezone: timezone?,
        name: name.to_string(),
        url: raw.url,
        dialect: dialect?,
        ledger_table: ledger_table?,
        history_table: history_table?,
        max_connections,
        connect_timeout: connect_timeout?,
    })
}

fn dialect_of(url: &str) -> Result<Dialect, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("database url is empty".into());
    }
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        Ok(Dialect::Postgres)
    } else if lower.starts_with("sqlite:") {
        Ok(Dialect::Sqlite)
    } else if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
        Ok(Dialect::Mysql)
    } else {
        Err(format!(
            "unsupported database url {:?}: expected postgres://, postgresql://, mysql://, mariadb:// or sqlite:",
            redact_url(url)
        ))
    }
}

/// A zone for naive timestamps: `UTC`, an offset `+HH:MM`/`-HH:MM`, or a
/// zone name (letters, digits, `/`, `_`, `+`, `-`; the database checks it
/// exists when sweeper connects).
fn timezone(s: &str) -> Result<String, String> {
    let s = s.trim();
    let b = s.as_bytes();
    let offset = b.len() == 6
        && (b[0] == b'+' || b[0] == b'-')
        && b[3] == b':'
        && [1, 2, 4, 5].iter().all(|i| b[*i].is_ascii_digit());
    let hours_ok = !offset || s[1..3].parse::<u32>().is_ok_and(|h| h <= 14);
    let name = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    if (offset && hours_ok) || name {
        Ok(if s.eq_ignore_ascii_case("utc") {
            "UTC".into()
        } else {
            s.to_string()
        })
    } else {
        Err(format!(
            "invalid timezone {s:?}: expected UTC, an offset such as +02:00, or a zone name such as Europe/Berlin"
        ))
    }
}

fn metrics_config(p: &mut Problems, raw: RawMetrics) -> Option<MetricsConfig> {
    let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = p.check(
        "metrics.listen",
        listen.parse().map_err(|_| {
            format!("invalid listen address {listen:?}: expected host:port, e.g. 127.0.0.1:9187")
        }),
    );
    let auth = raw.auth.and_then(|a| http_auth(p, a));
    let status_rows = raw.status_rows.unwrap_or(1000);
    Some(MetricsConfig {
        listen: listen?,
        auth,
        status_rows,
    })
}

fn http_auth(p: &mut Problems, a: RawHttpAuth) -> Option<HttpAuth> {
    match (a.bearer_token, a.basic) {
        (Some(t), None) => {
            if t.trim().is_empty() {
                p.push("metrics.auth.bearer_token", "the token is empty");
                return None;
            }
            Some(HttpAuth::Bearer(Secret::new(t)))
        }
        (None, Some(b)) => {
            if b.username.is_empty() || b.username.contains(':') {
                p.push(
                    "metrics.auth.basic.username",
                    "must be non-empty and without `:`",
                );
            }
            if b.password.is_empty() {
                p.push("metrics.auth.basic.password", "the password is empty");
            }
            Some(HttpAuth::Basic {
                username: b.username,
                password: Secret::new(b.password),
            })
        }
        _ => {
            p.push(
                "metrics.auth",
                "set exactly one of `bearer_token` or `basic: {username, password}`",
            );
            None
        }
    }
}

const QUEUE_KINDS: &str = "resque, sidekiq, jsonl, amqp, http, celery, bullmq, rq";

fn kind_of(p: &mut Problems, path: &str, node: &Node, kinds: &str) -> Option<String> {
    match node.get("kind") {
        None => {
            // A misspelt `kind` is named where it stands.
            let near = node.as_mapping().and_then(|m| {
                m.keys().filter_map(Node::as_str).find(|k| {
                    yaml::suggest(&format!("unknown field `{k}`, expected `kind`"))
                        .contains("did you mean")
                })
            });
            match near {
                Some(k) => p.push(
                    yaml::join(path, k),
                    format!(
                        "unknown field `{k}` (did you mean `kind`?): missing `kind` (one of {kinds})"
                    ),
                ),
                None => p.push(path, format!("missing `kind` (one of {kinds})")),
            }
            None
        }
        Some(k) => match k.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                p.push(
                    yaml::join(path, "kind"),
                    format!(
                        "expected a string (one of {kinds}), found {}",
                        yaml::type_name(k)
                    ),
                );
                None
            }
        },
    }
}

fn redis_url(p: &mut Problems, path: &str, url: &str) -> Option<String> {
    let ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| url.starts_with(s));
    if ok {
        Some(url.to_string())
    } else {
        p.push(
            path,
            format!(
                "invalid redis url {:?}: expected redis://host:port/db",
                redact_url(url)
            ),
        );
        None
    }
}

fn presence(p: &mut Problems, path: &str, raw: Option<RawPresence>) -> Option<PresenceConfig> {
    match raw {
        None | Some(RawPresence::Enabled(false)) => None,
        Some(RawPresence::Enabled(true)) => Some(PresenceConfig {
            max_entries: 10_000,
        }),
        Some(RawPresence::Options(o)) => {
            let max_entries = o.max_entries.unwrap_or(10_000);
            if max_entries == 0 {
                p.push(yaml::join(path, "max_entries"), "must be at least 1");
            }
            Some(PresenceConfig { max_entries })
        }
    }
}

fn namespace_ok(p: &mut Problems, path: &str, ns: &str) {
    if ns.is_empty() || ns.contains(char::is_whitespace) {
        p.push(
            path,
            format!("invalid namespace {ns:?}: must be non-empty, without spaces"),
        );
    }
}

fn queue(p: &mut Problems, path: &str, name: &str, node: Node) -> Option<QueueConfig> {
    let kind = kind_of(p, path, &node, QUEUE_KINDS)?;
    let kind = match kind.as_str() {
        "resque" => resque_queue(p, path, node)?,
        "sidekiq" => sidekiq_queue(p, path, node)?,
        "jsonl" => jsonl_queue(p, path, node)?,
        "amqp" => amqp_queue(p, path, node)?,
        "http" => http_queue(p, path, node)?,
        "celery" => celery_queue(p, path, node)?,
        "bullmq" => bullmq_queue(p, path, node)?,
        "rq" => rq_queue(p, path, node)?,
        other => {
            p.push(
                yaml::join(path, "kind"),
                format!("unknown queue kind {other:?} (one of {QUEUE_KINDS})"),
            );
            return None;
        }
    };
    Some(QueueConfig {
        name: name.to_string(),
        kind,
    })
}

fn resque_queue(p: &mut Problems, path: &str, node: Node) -> Option<QueueKind> {
    let raw: RawResque = p.decode(node, path)?;
    let namespace = raw.namespace.unwrap_or_else(|| "resque".into());
    namespace_ok(p, &yaml::join(path, "namespace"), &namespace);
    let redis = redis_url(p, &yaml::join(path, "redis"), &raw.redis);
    let heartbeat_timeout = duration_or(
        p,
        &yaml::join(path, "worker_heartbeat_timeout"),
        raw.worker_heartbeat_timeout.as_ref(),
        Duration::from_secs(300),
    );
    Some(QueueKind::Resque(ResqueConfig {
        redis: SecretUrl::new(redis?),
        namespace,
        presence: presence(p, &yaml::join(path, "presence_check"), raw.presence_check),
        require_workers: raw.require_workers.unwrap_or(false),
        heartbeat_timeout: heartbeat_timeout?,
    }))
}

fn sidekiq_queue(p: &mut Problems, path: &str, node: Node) -> Option<QueueKind> {
    let raw: RawSidekiq = p.decode(node, path)?;
    if let Some(ns) = &raw.namespace {
        namespace_ok(p, &yaml::join(path, "namespace"), ns);
    }
    let redis = redis_url(p, &yaml::join(path, "redis"), &raw.redis);
    let retry = raw.retry.unwrap_or(serde_json::Value::Bool(true));
    let retry_ok = retry.is_boolean() || retry.as_u64().is_some();
    if !retry_ok {
        p.push(
            yaml::join(path, "retry"),
            format!("expected true, false or a number of retries, found {retry}"),
        );
    }
    let job_fields = raw.job_fields.unwrap_or_default();
    for k in job_fields.keys() {
        if SIDEKIQ_RESERVED.contains(&k.as_str()) {
            p.push(
                yaml::join(&yaml::join(path, "job_fields"), k),
                format!("`{k}` is set by sweeper and cannot be overridden"),
            );
        }
    }
    let epoch_millis = match raw.timestamps.as_deref() {
        None | Some("float_seconds") => false,
        Some("epoch_millis") => true,
        Some(other) => {
            p.push(
                yaml::join(path, "timestamps"),
                format!(
                    "unknown timestamps {other:?}: float_seconds (Sidekiq up to 7) or epoch_millis (Sidekiq 8+)"
                ),
            );
            false
        }
    };
    Some(QueueKind::Sidekiq(SidekiqConfig {
        epoch_millis,
        redis: SecretUrl::new(redis?),
        namespace: raw.namespace,
        retry,
        job_fields,
        presence: presence(p, &yaml::join(path, "presence_check"), raw.presence_check),
        require_workers: raw.require_workers.unwrap_or(false),
    }))
}

fn celery_queue(p: &mut Problems, path: &str, node: Node) -> Option<QueueKind> {
    let raw: RawCelery = p.decode(node, path)?;
    let bp = yaml::join(path, "broker");
    let priority = raw.priority.unwrap_or(0);
    if priority > 9 {
        p.push(
            yaml::join(path, "priority"),
            format!("priority {priority} is out of range: 0 to 9"),
        );
    }
    let amqp = raw.broker.starts_with("amqp://") || raw.broker.starts_with("amqps://");
    let broker = if amqp {
        if raw.global_keyprefix.is_some() {
            p.push(
                yaml::join(path, "global_keyprefix"),
                "`global_keyprefix` is a Redis transport option; this broker is amqp://",
            );
        }
        let confirm_timeout = duration_or(
            p,
            &yaml::join(path, "confirm_timeout"),
            raw.confirm_timeout.as_ref(),
            Duration::from_secs(10),
        );
        CeleryBroker::Amqp {
            url: SecretUrl::new(raw.broker),
            confirm_timeout: confirm_timeout?,
        }
    } else if raw.broker.starts_with("redis://") || raw.broker.starts_with("rediss://") {
        if raw.confirm_timeout.is_some() {
            p.push(
                yaml::join(path, "confirm_timeout"),
                "`confirm_timeout` applies to amqp:// brokers; Redis has no publisher confirms",
            );
        }
        CeleryBroker::Redis {
            url: SecretUrl::new(redis_url(p, &bp, &raw.broker)?),
            global_keyprefix: raw.global_keyprefix.unwrap_or_default(),
        }
    } else {
        p.push(
            bp,
            format!(
                "invalid broker {:?}: expected redis://host:6379/0 or amqp://user:pass@host:5672/vhost",
                redact_url(&raw.broker)
            ),
        );
        return None;
    };
    if matches!(broker, CeleryBroker::Amqp { .. }) && raw.presence_check.is_some() {
        p.push(
            yaml::join(path, "presence_check"),
            "a RabbitMQ queue cannot be read without taking its messages: presence_check works with redis:// brokers only",
        );
    }
    Some(QueueKind::Celery(CeleryConfig {
        broker,
        priority,
        presence: presence(p, &yaml::join(path, "presence_check"), raw.presence_check),
    }))
}

fn bullmq_queue(p: &mut Problems, path: &str, node: Node) -> Option<QueueKind> {
    let raw: RawBullmq = p.decode(node, path)?;
    let redis = redis_url(p, &yaml::join(path, "redis"), &raw.redis);
    let prefix = raw.prefix.unwrap_or_else(|| "bull".into());
    namespace_ok(p, &yaml::join(path, "prefix"), &prefix);
    if raw.attempts == Some(0) {
        p.push(yaml::join(path, "attempts"), "must be at least 1");
    }
    let backoff = raw.backoff.and_then(|b| {
        let bp = yaml::join(path, "backoff");
        if !matches!(b.kind.as_str(), "fixed" | "exponential") {
            p.push(
                yaml::join(&bp, "type"),
                format!("unknown backoff type {:?} (fixed, exponential)", b.kind),
            );
        }
        let delay = p.check(&yaml::join(&bp, "delay"), parse_duration(&b.delay))?;
        Some(BullBackoff {
            kind: b.kind,
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        })
    });
    Some(QueueKind::Bullmq(BullmqConfig {
        redis: SecretUrl::new(redis?),
        prefix,
        attempts: raw.attempts,
        backoff,
        presence: presence(p, &yaml::join(path, "presence_check"), raw.presence_check),
    }))
}

fn rq_queue(p: &mut Problems, path: &str, node: Node) -> Option<QueueKind> {
    let raw: RawRq = p.decode(node, path)?;
    let redis = redis_url(p, &yaml::join(path, "redis"), &raw.redis);
    let json = match raw.serializer.as_deref() {
        Some("json") => true,
        Some("pickle") | None => false,
        Some(other) => {
            p.push(
                yaml::join(path, "serializer"),
                format!("unknown serializer {other:?} (pickle, json)"),
            );
            false
        }
    };
    if raw.job_timeout == Some(0) {
        p.push(yaml::join(path, "job_timeout"), "must be at least 1 second");
    }
    Some(QueueKind::Rq(RqConfig {
        redis: SecretUrl::new(redis?),
        json,
        job_timeout: raw.job_timeout.unwrap_or(180),
        presence: presence(p, &yaml::join(path, "presence_check"), raw.presence_check),
    }))
}

fn jsonl_queue(p: &mut Problems, path: &str, node: Node) -> Option<QueueKind> {
    let raw: RawJsonl = p.decode(node, path)?;
    if raw.path.trim().is_empty() {
        p.push(yaml::join(path, "path"), "path is empty");
        return None;
    }
    Some(QueueKind::Jsonl {
        path: raw.path.into(),
    })
}

fn amqp_queue(p: &mut Problems, path: &str, node: Node) -> Option<QueueKind> {
    let raw: RawAmqp = p.decode(node, path)?;
    let url_ok = raw.url.starts_with("amqp://") || raw.url.starts_with("amqps://");
    if !url_ok {
        p.push(
            yaml::join(path, "url"),
            format!(
                "invalid amqp url {:?}: expected amqp://user:pass@host:5672/vhost",
                redact_url(&raw.url)
            ),
        );
    }
    let routing_key = raw.routing_key.unwrap_or_else(|| "{{queue}}".into());
    templates_ok(
        p,
        &yaml::join(path, "routing_key"),
        &serde_json::Value::from(routing_key.clone()),
    );
    let (headers, body) = headers_and_body(p, path, raw.headers, raw.body);
    let confirm_timeout = duration_or(
        p,
        &yaml::join(path, "confirm_timeout"),
        raw.confirm_timeout.as_ref(),
        Duration::from_secs(10),
    );
    Some(QueueKind::Amqp(AmqpConfig {
        url: SecretUrl::new(raw.url),
        exchange: raw.exchange.unwrap_or_default(),
        routing_key,
        headers,
        content_type: raw
            .content_type
            .unwrap_or_else(|| "application/json".into()),
        body,
        confirm_timeout: confirm_timeout?,
    }))
}

fn http_queue(p: &mut Problems, path: &str, node: Node) -> Option<QueueKind> {
    let raw: RawHttpQueue = p.decode(node, path)?;
    if !(raw.url.starts_with("http://") || raw.url.starts_with("https://")) {
        p.push(
            yaml::join(path, "url"),
            format!("invalid url {:?}: expected http:// or https://", raw.url),
        );
    }
    templates_ok(
        p,
        &yaml::join(path, "url"),
        &serde_json::Value::from(raw.url.clone()),
    );
    let method = raw
        .method
        .unwrap_or_else(|| "POST".into())
        .to_ascii_uppercase();
    if !["POST", "PUT", "PATCH"].contains(&method.as_str()) {
        p.push(
            yaml::join(path, "method"),
            format!("method {method:?}: use POST, PUT or PATCH"),
        );
    }
    let (headers, body) = headers_and_body(p, path, raw.headers, raw.body);
    let timeout = duration_or(
        p,
        &yaml::join(path, "timeout"),
        raw.timeout.as_ref(),
        Duration::from_secs(10),
    );
    Some(QueueKind::Http(HttpQueueConfig {
        url: raw.url,
        method,
        headers: secrets(headers),
        body,
        timeout: timeout?,
        max_retries: raw.max_retries.unwrap_or(3),
    }))
}

/// The job body when none is configured (amqp, http).
pub fn default_body() -> serde_json::Value {
    serde_json::json!({"class": "{{class}}", "args": "{{args}}", "queue": "{{queue}}"})
}

/// Job headers and body template of an amqp/http queue, checked.
fn headers_and_body(
    p: &mut Problems,
    path: &str,
    headers: Option<BTreeMap<String, String>>,
    body: Option<serde_json::Value>,
) -> (BTreeMap<String, String>, serde_json::Value) {
    let headers = headers.unwrap_or_default();
    for (k, v) in &headers {
        templates_ok(
            p,
            &yaml::join(&yaml::join(path, "headers"), k),
            &serde_json::Value::from(v.clone()),
        );
    }
    let body = body.unwrap_or_else(default_body);
    templates_ok(p, &yaml::join(path, "body"), &body);
    (headers, body)
}

/// Every `{{placeholder}}` in a template must be known.
fn templates_ok(p: &mut Problems, path: &str, t: &serde_json::Value) {
    for name in crate::core::template::names_in_value(t) {
        if !crate::core::template::known(&name) {
            p.push(
                path,
                format!(
                    "unknown placeholder {{{{{name}}}}} (use {})",
                    crate::core::template::PLACEHOLDERS.join(", ")
                ),
            );
        }
    }
}

/// Payload fields sweeper writes itself for Sidekiq.
const SIDEKIQ_RESERVED: &[&str] = &[
    "class",
    "args",
    "jid",
    "queue",
    "created_at",
    "enqueued_at",
    "retry",
];

const EVIDENCE_KINDS: &str = "log, journal, loki, elasticsearch, mailgun, sendgrid, postmark, http";
const LOG_FORMATS: &str = "postfix, exim, custom, jsonl";

fn evidence_source(p: &mut Problems, path: &str, name: &str, node: Node) -> Option<EvidenceConfig> {
    let kind = kind_of(p, path, &node, EVIDENCE_KINDS)?;
    let kind = match kind.as_str() {
        "log" => {
            let raw: RawLogSource = p.decode(node, path)?;
            EvidenceKind::Log(log_source(p, path, raw)?)
        }
        "journal" => {
            let raw: RawJournal = p.decode(node, path)?;
            EvidenceKind::Log(journal_source(p, path, raw)?)
        }
        k @ ("loki" | "elasticsearch") => {
            let kind = k.to_string();
            let raw: RawStore = p.decode(node, path)?;
            EvidenceKind::Store(Box::new(store_source(p, path, &kind, raw)?))
        }
        k @ ("mailgun" | "sendgrid" | "postmark" | "http") => {
            let kind = k.to_string();
            let raw: RawProvider = p.decode(node, path)?;
            EvidenceKind::Provider(provider_source(p, path, &kind, raw)?)
        }
        other => {
            p.push(
                yaml::join(path, "kind"),
                format!("unknown evidence kind {other:?} (one of {EVIDENCE_KINDS})"),
            );
            return None;
        }
    };
    Some(EvidenceConfig {
        name: name.to_string(),
        kind,
    })
}

pub fn parse_offset(s: &str) -> Result<FixedOffset, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("utc") || t == "Z" {
        return Ok(FixedOffset::east_opt(0).expect("zero"));
    }
    let err = || format!("invalid utc_offset {s:?}: expected UTC or ±HH:MM, e.g. +01:00");
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(err()),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "00"));
    let h: i32 = h.parse().map_err(|_| err())?;
    let m: i32 = m.parse().map_err(|_| err())?;
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return Err(err());
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60)).ok_or_else(err)
}

/// A JSON pointer, or a dotted path turned into one.
fn pointer(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("field path is empty".into());
    }
    if s.starts_with('/') {
        return Ok(s.to_string());
    }
    Ok(s.split('.')
        .map(|seg| format!("/{}", seg.replace('~', "~0").replace('/', "~1")))
        .collect())
}

fn log_source(p: &mut Problems, path: &str, raw: RawLogSource) -> Option<LogSourceConfig> {
    let sub = |k: &str| yaml::join(path, k);
    if raw.paths.is_empty() {
        p.push(sub("paths"), "at least one path (glob) is needed");
    }
    for (i, g) in raw.paths.iter().enumerate() {
        if let Err(e) = glob::Pattern::new(g) {
            p.push(
                yaml::join(&sub("paths"), &format!("[{i}]")),
                format!("invalid glob {g:?}: {}", e.msg),
            );
        }
    }
    let utc_offset = match &raw.utc_offset {
        None => Some(FixedOffset::east_opt(0).expect("zero")),
        Some(s) => p.check(&sub("utc_offset"), parse_offset(s)),
    };
    let slack = match &raw.slack {
        None => Some(Duration::from_secs(600)),
        Some(s) => p.check(&sub("slack"), parse_duration(s)),
    };
    let format = match raw.format.as_str() {
        f @ ("postfix" | "exim") => {
            only_for(p, path, raw.patterns.is_some(), "patterns", "custom");
            only_for(p, path, raw.sent.is_some(), "sent", "custom or jsonl");
            only_for(p, path, raw.failed.is_some(), "failed", "custom or jsonl");
            jsonl_fields_only_for_jsonl(p, path, &raw);
            if f == "postfix" {
                LogFormat::Postfix
            } else {
                LogFormat::Exim
            }
        }
        "custom" => {
            jsonl_fields_only_for_jsonl(p, path, &raw);
            let patterns = custom_patterns(p, path, raw.patterns.as_deref().unwrap_or_default());
            LogFormat::Custom(CustomSpec {
                patterns,
                statuses: log_statuses(p, path, &raw)?,
            })
        }
        "jsonl" => {
            only_for(p, path, raw.patterns.is_some(), "patterns", "custom");
            LogFormat::Jsonl(jsonl_spec(p, path, &raw)?)
        }
        other => {
            p.push(
                sub("format"),
                format!("unknown log format {other:?} (one of {LOG_FORMATS})"),
            );
            return None;
        }
    };
    Some(LogSourceConfig {
        format,
        journal: None,
        paths: raw.paths,
        utc_offset: utc_offset?,
        slack: slack?,
    })
}

/// A Loki or Elasticsearch/OpenSearch source of Postfix or Exim lines.
fn store_source(p: &mut Problems, path: &str, kind: &str, raw: RawStore) -> Option<StoreConfig> {
    let sub = |k: &str| yaml::join(path, k);
    let format = match raw.format.as_str() {
        "postfix" => Some(LogFormat::Postfix),
        "exim" => Some(LogFormat::Exim),
        other => {
            p.push(
                sub("format"),
                format!("unknown format {other:?} for a {kind} source (postfix, exim)"),
            );
            None
        }
    };
    let url_ok = raw.url.starts_with("http://") || raw.url.starts_with("https://");
    if !url_ok {
        p.push(
            sub("url"),
            format!(
                "invalid url {:?}: expected http:// or https://",
                redact_url(&raw.url)
            ),
        );
    }
    let userinfo = raw
        .url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
        .unwrap_or(false);
    if userinfo {
        p.push(
            sub("url"),
            "credentials in the url would be printed with it: use `basic`, `bearer_token` or `api_key`",
        );
    }
    let loki_only = [
        ("selector", raw.selector.is_some()),
        ("tenant", raw.tenant.is_some()),
        ("max_range", raw.max_range.is_some()),
    ];
    let es_only = [
        ("index", raw.index.is_some()),
        ("flavor", raw.flavor.is_some()),
        ("message_field", raw.message_field.is_some()),
        ("time_field", raw.time_field.is_some()),
        ("key_field", raw.key_field.is_some()),
        ("queue_id_field", raw.queue_id_field.is_some()),
        ("api_key", raw.api_key.is_some()),
        ("parsed", raw.parsed.is_some()),
    ];
    let (other, foreign) = if kind == "loki" {
        ("elasticsearch", &es_only[..])
    } else {
        ("loki", &loki_only[..])
    };
    for (field, present) in foreign {
        if *present {
            p.push(
                sub(field),
                format!("`{field}` belongs to {other} sources, not {kind}"),
            );
        }
    }
    let api = if kind == "loki" {
        let selector = raw.selector.clone().unwrap_or_default();
        let sel = selector.trim();
        if !(sel.starts_with('{') && sel.ends_with('}')) || sel.len() < 3 {
            p.push(
                sub("selector"),
                format!("expected a LogQL stream selector such as {{job=\"postfix\"}}, found {selector:?}"),
            );
        }
        let max_range = duration_or(
            p,
            &sub("max_range"),
            raw.max_range.as_ref(),
            Duration::from_secs(721 * 3600),
        );
        StoreApi::Loki {
            selector,
            tenant: raw.tenant.clone(),
            max_range: max_range?,
        }
    } else {
        let opensearch = match raw.flavor.as_deref() {
            None | Some("elasticsearch") => false,
            Some("opensearch") => true,
            Some(other) => {
                p.push(
                    sub("flavor"),
                    format!("unknown flavor {other:?} (elasticsearch, opensearch)"),
                );
                false
            }
        };
        let index = raw.index.clone().unwrap_or_default();
        if index.trim().is_empty() || index.contains(['/', ' ', '?', '#']) {
            p.push(
                sub("index"),
                format!("expected an index name or pattern, e.g. filebeat-* or mail-%Y.%m.%d, found {index:?}"),
            );
        }
        let parsed = raw.parsed.as_ref().map(|f| {
            Box::new(ParsedFields {
                queue_id: f.queue_id.clone(),
                message_id: f.message_id.clone(),
                recipient: f.recipient.clone(),
                status: f.status.clone(),
                dsn: f.dsn.clone(),
                detail: f.detail.clone(),
            })
        });
        if parsed.is_some() && raw.format != "postfix" {
            p.push(
                sub("parsed"),
                "parsed fields are read for Postfix documents only",
            );
        }
        // Parsed documents are searched by their own keyword fields.
        let key_field = raw
            .key_field
            .clone()
            .or_else(|| parsed.as_ref().map(|f| f.message_id.clone()));
        let queue_id_field = raw
            .queue_id_field
            .clone()
            .or_else(|| parsed.as_ref().map(|f| f.queue_id.clone()));
        StoreApi::Elasticsearch {
            index,
            opensearch,
            message_field: raw
                .message_field
                .clone()
                .unwrap_or_else(|| "message".into()),
            time_field: raw
                .time_field
                .clone()
                .unwrap_or_else(|| "@timestamp".into()),
            key_field,
            queue_id_field,
            parsed,
        }
    };
    let auth = match (&raw.basic, &raw.bearer_token, &raw.api_key) {
        (None, None, None) => None,
        (Some(b), None, None) => Some(StoreAuth::Basic {
            username: b.username.clone(),
            password: Secret::new(b.password.clone()),
        }),
        (None, Some(t), None) => Some(StoreAuth::Bearer(Secret::new(t.clone()))),
        (None, None, Some(k)) => Some(StoreAuth::ApiKey(Secret::new(k.clone()))),
        _ => {
            p.push(path, "set one of `basic`, `bearer_token` or `api_key`");
            None
        }
    };
    let page_size = raw.page_size.unwrap_or(1000);
    if page_size == 0 {
        p.push(sub("page_size"), "must be at least 1");
    }
    let concurrency = raw.concurrency.unwrap_or(2);
    if concurrency == 0 {
        p.push(sub("concurrency"), "must be at least 1");
    }
    let max_query_bytes = raw.max_query_bytes.unwrap_or(4096);
    if max_query_bytes < 256 {
        p.push(sub("max_query_bytes"), "must be at least 256");
    }
    let timeout = duration_or(
        p,
        &sub("timeout"),
        raw.timeout.as_ref(),
        Duration::from_secs(30),
    );
    let slack = duration_or(
        p,
        &sub("slack"),
        raw.slack.as_ref(),
        Duration::from_secs(600),
    );
    let retention = match &raw.retention {
        None => None,
        Some(r) => p.check(&sub("retention"), positive_duration(r)),
    };
    Some(StoreConfig {
        api,
        format: format?,
        base_url: raw.url.trim_end_matches('/').to_string(),
        auth,
        rate_limit: raw.rate_limit.unwrap_or(10.0),
        concurrency,
        timeout: timeout?,
        retries: raw.retries.unwrap_or(3),
        retention,
        slack: slack?,
        page_size,
        max_query_bytes,
    })
}

/// A `kind: journal` source: Postfix or Exim records read through
/// journalctl, with their own (UTC) times.
fn journal_source(p: &mut Problems, path: &str, raw: RawJournal) -> Option<LogSourceConfig> {
    let format = match raw.format.as_str() {
        "postfix" => Some(LogFormat::Postfix),
        "exim" => Some(LogFormat::Exim),
        other => {
            p.push(
                yaml::join(path, "format"),
                format!("unknown journal format {other:?} (postfix, exim)"),
            );
            None
        }
    };
    let units = raw.units.unwrap_or_default();
    let identifiers = raw.identifiers.unwrap_or_default();
    if !units.is_empty() && !identifiers.is_empty() {
        p.push(
            yaml::join(path, "identifiers"),
            "set `units` or `identifiers`, not both (journalctl would require both to match)",
        );
    }
    for (field, values) in [("units", &units), ("identifiers", &identifiers)] {
        for (i, v) in values.iter().enumerate() {
            if v.trim().is_empty() || v.contains('\n') {
                p.push(
                    yaml::join(&yaml::join(path, field), &format!("[{i}]")),
                    format!("{v:?} is not a valid {field} value"),
                );
            }
        }
    }
    let slack = duration_or(
        p,
        &yaml::join(path, "slack"),
        raw.slack.as_ref(),
        Duration::from_secs(600),
    );
    Some(LogSourceConfig {
        format: format?,
        journal: Some(JournalInput {
            units,
            identifiers,
            directory: raw.directory.map(Into::into),
            files: raw.files.unwrap_or_default(),
            journalctl: raw.journalctl.unwrap_or_else(|| "journalctl".into()),
        }),
        paths: Vec::new(),
        utc_offset: FixedOffset::east_opt(0).expect("zero"),
        slack: slack?,
    })
}

/// Records a problem when an option is given to a log format it does not
/// apply to.
fn only_for(p: &mut Problems, path: &str, present: bool, key: &str, formats: &str) {
    if present {
        p.push(
            yaml::join(path, key),
            format!("`{key}` only applies to format {formats}"),
        );
    }
}

fn jsonl_fields_only_for_jsonl(p: &mut Problems, path: &str, raw: &RawLogSource) {
    for (k, v) in [
        ("key_field", &raw.key_field),
        ("status_field", &raw.status_field),
        ("recipient_field", &raw.recipient_field),
        ("time_field", &raw.time_field),
    ] {
        only_for(p, path, v.is_some(), k, "jsonl");
    }
}

/// The `sent`/`failed` status values of a custom or jsonl log.
fn log_statuses(p: &mut Problems, path: &str, raw: &RawLogSource) -> Option<StatusMap> {
    let sent = raw.sent.clone().unwrap_or_default();
    if sent.is_empty() {
        p.push(
            yaml::join(path, "sent"),
            "list the status values that mean delivered, e.g. sent: [delivered]",
        );
        return None;
    }
    Some(StatusMap {
        sent,
        failed: raw.failed.clone().unwrap_or_default(),
    })
}

/// A custom log's regexes, compiled, each with known named captures and
/// a `key` or `join`; together they must capture `key` and `status`.
fn custom_patterns(p: &mut Problems, path: &str, patterns: &[String]) -> Vec<regex::bytes::Regex> {
    let pp = yaml::join(path, "patterns");
    if patterns.is_empty() {
        p.push(
            &pp,
            "format custom needs `patterns`: regexes with named captures key, join, status",
        );
    }
    let mut compiled = Vec::new();
    let (mut has_key, mut has_status) = (false, false);
    for (i, pat) in patterns.iter().enumerate() {
        let ppath = yaml::join(&pp, &format!("[{i}]"));
        match regex::bytes::Regex::new(pat) {
            Err(e) => p.push(ppath, format!("invalid regex: {e}")),
            Ok(re) => {
                let names: Vec<&str> = re.capture_names().flatten().collect();
                let known = ["key", "join", "status", "rcpt", "time"];
                if let Some(bad) = names.iter().find(|n| !known.contains(n)) {
                    p.push(
                        &ppath,
                        format!(
                            "unknown capture group {bad:?} (use key, join, status, rcpt, time)"
                        ),
                    );
                }
                if !names.contains(&"key") && !names.contains(&"join") {
                    p.push(&ppath, "pattern needs a `key` or `join` named capture");
                }
                has_key |= names.contains(&"key");
                has_status |= names.contains(&"status");
                compiled.push(re);
            }
        }
    }
    if !patterns.is_empty() && compiled.len() == patterns.len() {
        if !has_key {
            p.push(&pp, "no pattern captures `key` (the lookup value)");
        }
        if !has_status {
            p.push(&pp, "no pattern captures `status`");
        }
    }
    compiled
}

/// A jsonl log's JSON pointers: `key_field` and `status_field` required,
/// `recipient_field` and `time_field` optional.
fn jsonl_spec(p: &mut Problems, path: &str, raw: &RawLogSource) -> Option<JsonlSpec> {
    let sub = |k: &str| yaml::join(path, k);
    let required = |p: &mut Problems, key: &str, v: &Option<String>| match v {
        None => {
            p.push(
                sub(key),
                format!("format jsonl needs `{key}` (a JSON pointer)"),
            );
            None
        }
        Some(s) => p.check(&sub(key), pointer(s)),
    };
    let optional = |p: &mut Problems, key: &str, v: &Option<String>| {
        v.as_ref().and_then(|s| p.check(&sub(key), pointer(s)))
    };
    let key = required(p, "key_field", &raw.key_field);
    let status = required(p, "status_field", &raw.status_field);
    let recipient = optional(p, "recipient_field", &raw.recipient_field);
    let time = optional(p, "time_field", &raw.time_field);
    Some(JsonlSpec {
        key: key?,
        status: status?,
        recipient,
        time,
        statuses: log_statuses(p, path, raw)?,
    })
}

fn provider_source(
    p: &mut Problems,
    path: &str,
    kind: &str,
    raw: RawProvider,
) -> Option<ProviderConfig> {
    let sub = |k: &str| yaml::join(path, k);
    options_apply_to_kind(p, path, kind, &raw);
    let required = |p: &mut Problems, k: &str, v: &Option<String>| -> Option<String> {
        match v {
            Some(s) if !s.trim().is_empty() => Some(s.clone()),
            Some(_) => {
                p.push(sub(k), format!("`{k}` is empty"));
                None
            }
            None => {
                p.push(sub(k), format!("kind {kind} needs `{k}`"));
                None
            }
        }
    };
    let (default_base, default_rate, default_retention, default_lag) = match kind {
        // Mailgun keeps events "at least 3 days" (plan-dependent) and its
        // event store lags: "half an hour" is its own threshold.
        "mailgun" => ("https://api.mailgun.net", 2.0, Some(3 * 86_400), 1800),
        // SendGrid's Email Activity API: 6 requests per minute, 30 days.
        "sendgrid" => ("https://api.sendgrid.com", 0.1, Some(30 * 86_400), 600),
        // Postmark keeps messages 45 days by default.
        "postmark" => ("https://api.postmarkapp.com", 5.0, Some(45 * 86_400), 300),
        _ => ("", 5.0, None, 0),
    };
    let api = provider_api(p, path, kind, &raw, &required);
    let base_url = raw
        .base_url
        .clone()
        .unwrap_or_else(|| default_base.to_string());
    let base_ok = base_url.starts_with("http://") || base_url.starts_with("https://");
    if kind != "http" && !base_ok {
        p.push(
            sub("base_url"),
            format!("invalid base_url {base_url:?}: expected http:// or https://"),
        );
    }
    let rate_limit = raw.rate_limit.unwrap_or(default_rate);
    if !(rate_limit.is_finite() && rate_limit > 0.0) {
        p.push(
            sub("rate_limit"),
            format!(
                "rate_limit must be a positive number of requests per second, found {rate_limit}"
            ),
        );
    }
    let concurrency = raw.concurrency.unwrap_or(4);
    if concurrency == 0 {
        p.push(sub("concurrency"), "concurrency must be at least 1");
    }
    let timeout = duration_or(
        p,
        &sub("timeout"),
        raw.timeout.as_ref(),
        Duration::from_secs(10),
    );
    let retention = match &raw.retention {
        Some(r) => p.check(&sub("retention"), positive_duration(r)).map(Some),
        None => Some(default_retention.map(Duration::from_secs)),
    };
    let visibility_lag = match &raw.visibility_lag {
        Some(r) => p.check(&sub("visibility_lag"), parse_duration(r)),
        None => Some(Duration::from_secs(default_lag)),
    };
    let slack = match &raw.slack {
        Some(r) => p.check(&sub("slack"), parse_duration(r)),
        None => Some(Duration::from_secs(600)),
    };
    Some(ProviderConfig {
        api: api?,
        base_url,
        rate_limit,
        concurrency,
        timeout: timeout?,
        retries: raw.retries.unwrap_or(2),
        retention: retention?,
        visibility_lag: visibility_lag?,
        slack: slack?,
        time_range_above: raw.time_range_above.unwrap_or(20),
    })
}

/// Records a problem for each option given that `kind` does not take.
fn options_apply_to_kind(p: &mut Problems, path: &str, kind: &str, raw: &RawProvider) {
    let allowed: &[&str] = match kind {
        "mailgun" => &["domain", "api_key", "base_url", "time_range_above"],
        "sendgrid" => &["api_key", "base_url"],
        "postmark" => &["token", "base_url", "metadata_key"],
        _ => &[
            "url",
            "headers",
            "status_pointer",
            "events_pointer",
            "recipient_pointer",
            "sent",
            "failed",
        ],
    };
    let given: [(&str, bool); 13] = [
        ("metadata_key", raw.metadata_key.is_some()),
        ("domain", raw.domain.is_some()),
        ("api_key", raw.api_key.is_some()),
        ("token", raw.token.is_some()),
        ("base_url", raw.base_url.is_some()),
        ("url", raw.url.is_some()),
        ("headers", raw.headers.is_some()),
        ("status_pointer", raw.status_pointer.is_some()),
        ("events_pointer", raw.events_pointer.is_some()),
        ("recipient_pointer", raw.recipient_pointer.is_some()),
        ("sent", raw.sent.is_some()),
        ("failed", raw.failed.is_some()),
        ("time_range_above", raw.time_range_above.is_some()),
    ];
    for (k, present) in given {
        if present && !allowed.contains(&k) {
            p.push(
                yaml::join(path, k),
                format!("`{k}` does not apply to kind {kind}"),
            );
        }
    }
}

/// The API a provider source calls, with its credentials.
fn provider_api(
    p: &mut Problems,
    path: &str,
    kind: &str,
    raw: &RawProvider,
    required: &Required<'_>,
) -> Option<ProviderApi> {
    // Every field is checked before anything is returned, so all problems
    // are reported together.
    match kind {
        "mailgun" => {
            let domain = required(p, "domain", &raw.domain);
            let api_key = required(p, "api_key", &raw.api_key);
            domain
                .zip(api_key)
                .map(|(domain, api_key)| ProviderApi::Mailgun {
                    domain,
                    api_key: Secret::new(api_key),
                })
        }
        "sendgrid" => required(p, "api_key", &raw.api_key).map(|api_key| ProviderApi::Sendgrid {
            api_key: Secret::new(api_key),
        }),
        "postmark" => {
            let metadata_key = raw.metadata_key.clone();
            if let Some(k) = &metadata_key {
                let ok = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !ok {
                    p.push(
                        yaml::join(path, "metadata_key"),
                        format!("invalid metadata_key {k:?}: letters, digits, `_`, `-`"),
                    );
                }
            }
            required(p, "token", &raw.token).map(|token| ProviderApi::Postmark {
                token: Secret::new(token),
                metadata_key,
            })
        }
        _ => http_status_api(p, path, raw, required),
    }
}

/// Reads a required option, recording a problem when it is missing.
type Required<'a> = dyn Fn(&mut Problems, &str, &Option<String>) -> Option<String> + 'a;

/// `kind: http` evidence: URL template, pointers, status value lists.
fn http_status_api(
    p: &mut Problems,
    path: &str,
    raw: &RawProvider,
    required: &Required<'_>,
) -> Option<ProviderApi> {
    let sub = |k: &str| yaml::join(path, k);
    let url = required(p, "url", &raw.url);
    let mut columns = Vec::new();
    if let Some(url) = &url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            p.push(
                sub("url"),
                format!("invalid url {url:?}: expected http:// or https://"),
            );
        }
        let mut rest = url.as_str();
        while let Some(i) = rest.find('{') {
            let after = &rest[i + 1..];
            let Some(j) = after.find('}') else { break };
            let name = &after[..j];
            if name != "key" {
                match Ident::parse(name, false) {
                    Ok(c) if !columns.contains(&c) => columns.push(c),
                    Ok(_) => {}
                    Err(e) => p.push(sub("url"), format!("placeholder {{{name}}}: {e}")),
                }
            }
            rest = &after[j + 1..];
        }
    }
    let status = required(p, "status_pointer", &raw.status_pointer)
        .and_then(|s| p.check(&sub("status_pointer"), pointer(&s)));
    let events = raw
        .events_pointer
        .as_ref()
        .and_then(|s| p.check(&sub("events_pointer"), pointer(s)));
    let recipient = raw
        .recipient_pointer
        .as_ref()
        .and_then(|s| p.check(&sub("recipient_pointer"), pointer(s)));
    let sent = raw.sent.clone().unwrap_or_default();
    if sent.is_empty() {
        p.push(
            sub("sent"),
            "list the status values that mean delivered, e.g. sent: [delivered]",
        );
    }
    url.zip(status).map(|(url, status)| ProviderApi::Http {
        url,
        headers: secrets(raw.headers.clone().unwrap_or_default()),
        status,
        events,
        recipient,
        statuses: StatusMap {
            sent,
            failed: raw.failed.clone().unwrap_or_default(),
        },
        columns,
    })
}

struct Refs {
    databases: BTreeSet<String>,
    queues: BTreeSet<String>,
    evidence: BTreeSet<String>,
}

fn known(names: impl Iterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = names.map(|n| n.as_ref().to_string()).collect();
    if v.is_empty() {
        "none are defined".to_string()
    } else {
        format!("defined: {}", v.join(", "))
    }
}

fn state_value(
    p: &mut Problems,
    path: &str,
    raw: Option<RawStateValue>,
    default: &str,
) -> Option<StateValue> {
    match raw {
        None => Some(StateValue::Str(default.to_string())),
        Some(RawStateValue::Int(i)) => Some(StateValue::Int(i)),
        Some(RawStateValue::Str(s)) => {
            if s.is_empty() || s.chars().any(char::is_control) || s.len() > 100 {
                p.push(
                    path,
                    format!(
                        "invalid state value {s:?}: non-empty, printable, at most 100 characters"
                    ),
                );
                None
            } else {
                Some(StateValue::Str(s))
            }
        }
    }
}

/// The columns a job reads, in order of first use; `ok` is false once one
/// was not a valid identifier (reported).
struct ArgColumns {
    columns: Vec<Ident>,
    ok: bool,
}

impl ArgColumns {
    fn index(&mut self, p: &mut Problems, path: &str, name: &str) -> usize {
        match Ident::parse(name, false) {
            Ok(c) => match self.columns.iter().position(|x| *x == c) {
                Some(i) => i,
                None => {
                    self.columns.push(c);
                    self.columns.len() - 1
                }
            },
            Err(e) => {
                p.push(path, e);
                self.ok = false;
                0
            }
        }
    }
}

/// One job argument: a column, or (ActiveJob) a record reference or a hash
/// with symbol keys.
fn job_arg(p: &mut Problems, cols: &mut ArgColumns, path: &str, a: &RawArg, aj: bool) -> AjArg {
    let spec = match a {
        RawArg::Column(c) => {
            return AjArg {
                column: cols.index(p, path, c),
                kind: AjArgKind::Value,
            }
        }
        RawArg::Spec(spec) => spec,
    };
    let column = cols.index(p, &yaml::join(path, "column"), &spec.column);
    if !aj {
        p.push(
            path,
            "record references and symbol keys are ActiveJob arguments: set `format: activejob`",
        );
    }
    let kind = match (&spec.global_id, spec.symbol_keys) {
        (Some(model), None | Some(false)) => {
            if !ruby_constant(model) {
                p.push(
                    yaml::join(path, "global_id"),
                    format!("{model:?} is not a Ruby class name"),
                );
            }
            AjArgKind::GlobalId(model.clone())
        }
        (None, Some(true)) => AjArgKind::SymbolKeys,
        (None, None | Some(false)) => AjArgKind::Value,
        (Some(_), Some(true)) => {
            p.push(
                path,
                "an argument is a record reference or a hash, not both",
            );
            AjArgKind::Value
        }
    };
    AjArg { column, kind }
}

/// What `job_args` found: the columns a job reads, the ActiveJob envelope,
/// and for plain jobs how the columns become its arguments.
struct JobShape {
    /// `None` when a column was invalid (reported).
    columns: Option<Vec<Ident>>,
    activejob: Option<ActiveJobFormat>,
    positional: Vec<usize>,
    kwargs: Vec<(String, usize)>,
    job_id: Option<usize>,
}

/// A job's argument columns and, for `format: activejob`, how each becomes
/// an ActiveJob argument; for plain jobs, the positional and keyword
/// arguments (BullMQ: the data fields) and an RQ job id column.
fn job_args(p: &mut Problems, jp: &str, raw: &RawJob, kind: Option<&QueueKind>) -> JobShape {
    let aj = match raw.format.as_deref().unwrap_or("plain") {
        "plain" => false,
        "activejob" => true,
        other => {
            p.push(
                yaml::join(jp, "format"),
                format!("unknown job format {other:?} (plain, activejob)"),
            );
            false
        }
    };
    let mut cols = ArgColumns {
        columns: Vec::new(),
        ok: true,
    };
    let positional: Vec<AjArg> = raw
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let path = yaml::join(&yaml::join(jp, "args"), &format!("[{i}]"));
            job_arg(p, &mut cols, &path, a, aj)
        })
        .collect();
    let named: Vec<(String, String, &RawArg)> = [("kwargs", &raw.kwargs), ("data", &raw.data)]
        .into_iter()
        .flat_map(|(field, map)| {
            map.iter()
                .flatten()
                .map(move |(k, a)| (format!("{field}.{k}"), k.clone(), a))
        })
        .collect();
    let kwargs: Vec<(String, AjArg)> = named
        .into_iter()
        .map(|(sub, k, a)| {
            let kp = yaml::join(jp, &sub);
            if k.is_empty() || (aj && k.starts_with("_aj_")) {
                p.push(
                    kp.clone(),
                    format!("{k:?} cannot be a keyword argument name"),
                );
            }
            (k, job_arg(p, &mut cols, &kp, a, aj))
        })
        .collect();
    let job_id = raw
        .job_id
        .as_ref()
        .map(|c| cols.index(p, &yaml::join(jp, "job_id"), c));
    let columns = cols.ok.then_some(cols.columns);
    if aj {
        for (field, present) in [
            ("data", raw.data.is_some()),
            ("job_id", raw.job_id.is_some()),
        ] {
            if present {
                p.push(
                    yaml::join(jp, field),
                    format!("`{field}` does not apply to ActiveJob jobs"),
                );
            }
        }
        let fmt = activejob_format(p, jp, raw, kind, positional, kwargs);
        return JobShape {
            columns,
            activejob: Some(fmt),
            positional: Vec::new(),
            kwargs: Vec::new(),
            job_id: None,
        };
    }
    plain_job_has_no_activejob_options(p, jp, raw);
    plain_job_fits_its_queue(p, jp, raw, kind);
    JobShape {
        columns,
        activejob: None,
        positional: positional.iter().map(|a| a.column).collect(),
        kwargs: kwargs.into_iter().map(|(k, a)| (k, a.column)).collect(),
        job_id,
    }
}

/// Each queue kind takes the job fields its system has: keyword arguments
/// for Celery and RQ, one data object for BullMQ, a job id for RQ.
fn plain_job_fits_its_queue(p: &mut Problems, jp: &str, raw: &RawJob, kind: Option<&QueueKind>) {
    let Some(kind) = kind else { return };
    let name = kind.as_str();
    let not_for = |p: &mut Problems, field: &str, present: bool, takes: &str| {
        if present {
            p.push(
                yaml::join(jp, field),
                format!("`{field}` does not apply to a {name} queue ({takes})"),
            );
        }
    };
    match kind {
        QueueKind::Celery(_) => {
            not_for(
                p,
                "data",
                raw.data.is_some(),
                "a Celery task takes args and kwargs",
            );
            not_for(
                p,
                "job_id",
                raw.job_id.is_some(),
                "Celery tasks are published anew",
            );
        }
        QueueKind::Rq(rq) => {
            not_for(
                p,
                "data",
                raw.data.is_some(),
                "an RQ job takes args and kwargs",
            );
            if raw.job_id.is_none() && !rq.json {
                p.push(
                    jp.to_string(),
                    "a new RQ job needs workers that use RQ's JSONSerializer: RQ's default pickle \
                     cannot be written safely from outside Python. Set `serializer: json` on the \
                     queue if its workers run with `--serializer rq.serializers.JSONSerializer`, \
                     or requeue the row's existing job with `job_id: <column>`",
                );
            }
            if raw.job_id.is_some() {
                let by_id = "requeueing by job_id reuses the job's stored payload";
                not_for(p, "args", !raw.args.is_empty(), by_id);
                not_for(p, "kwargs", raw.kwargs.is_some(), by_id);
            }
        }
        QueueKind::Bullmq(_) => {
            let one = "a BullMQ job takes one `data` object";
            not_for(p, "args", !raw.args.is_empty(), one);
            not_for(p, "kwargs", raw.kwargs.is_some(), one);
            not_for(
                p,
                "job_id",
                raw.job_id.is_some(),
                "BullMQ jobs are added anew",
            );
        }
        _ => {
            let plain = "its jobs take positional args";
            not_for(p, "kwargs", raw.kwargs.is_some(), plain);
            not_for(p, "data", raw.data.is_some(), plain);
            not_for(p, "job_id", raw.job_id.is_some(), plain);
        }
    }
    let class = raw.class.as_deref().unwrap_or("");
    match kind {
        QueueKind::Rq(_) if raw.job_id.is_none() && !class.is_empty() && !class.contains('.') => p
            .push(
                yaml::join(jp, "class"),
                format!("RQ imports the job's function by its dotted path, e.g. app.tasks.{class}"),
            ),
        _ => {}
    }
}

/// ActiveJob's own options on a plain job are mistakes.
fn plain_job_has_no_activejob_options(p: &mut Problems, jp: &str, raw: &RawJob) {
    for (field, present) in [
        ("wrapper", raw.wrapper.is_some()),
        ("locale", raw.locale.is_some()),
        ("timezone", raw.timezone.is_some()),
        ("priority", raw.priority.is_some()),
        ("app", raw.app.is_some()),
    ] {
        if present {
            p.push(
                yaml::join(jp, field),
                format!("`{field}` belongs to ActiveJob jobs: set `format: activejob`"),
            );
        }
    }
}

/// The ActiveJob envelope of a job: the wrapper its queue kind's adapter
/// enqueues, class names Ruby can resolve, and a GlobalID app when a record
/// is referenced.
fn activejob_format(
    p: &mut Problems,
    jp: &str,
    raw: &RawJob,
    kind: Option<&QueueKind>,
    args: Vec<AjArg>,
    kwargs: Vec<(String, AjArg)>,
) -> ActiveJobFormat {
    let default_wrapper = match kind {
        Some(QueueKind::Sidekiq(_)) => Some(AJ_SIDEKIQ_WRAPPER),
        Some(QueueKind::Resque(_)) => Some(AJ_RESQUE_WRAPPER),
        Some(_) => {
            p.push(
                yaml::join(jp, "format"),
                "ActiveJob envelopes are written to `sidekiq` and `resque` queues only",
            );
            None
        }
        None => None,
    };
    let wrapper = raw
        .wrapper
        .clone()
        .or(default_wrapper.map(str::to_string))
        .unwrap_or_default();
    if !wrapper.is_empty() && !ruby_constant(&wrapper) {
        p.push(
            yaml::join(jp, "wrapper"),
            format!("{wrapper:?} is not a Ruby class name"),
        );
    }
    let class = raw.class.as_deref().unwrap_or("");
    if !class.is_empty() && !ruby_constant(class) {
        p.push(
            yaml::join(jp, "class"),
            format!("{class:?} is not a Ruby class name (ActiveJob looks it up)"),
        );
    }
    let uses_gid = args
        .iter()
        .chain(kwargs.iter().map(|(_, a)| a))
        .any(|a| matches!(a.kind, AjArgKind::GlobalId(_)));
    if uses_gid && raw.app.as_deref().is_none_or(str::is_empty) {
        p.push(
            yaml::join(jp, "app"),
            "record references need the GlobalID app name (`app`, as in gid://<app>/User/1)",
        );
    }
    ActiveJobFormat {
        wrapper,
        locale: raw.locale.clone().unwrap_or_else(|| "en".into()),
        timezone: Some(raw.timezone.clone().unwrap_or_else(|| "UTC".into())),
        priority: raw.priority,
        app: raw.app.clone(),
        args,
        kwargs,
    }
}

/// Header values, which may carry credentials.
fn secrets(headers: BTreeMap<String, String>) -> BTreeMap<String, Secret> {
    headers
        .into_iter()
        .map(|(k, v)| (k, Secret::new(v)))
        .collect()
}

/// `Foo`, `Foo::Bar_2`: a Ruby constant path.
fn ruby_constant(s: &str) -> bool {
    !s.is_empty()
        && s.split("::").all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn sweep(
    p: &mut Problems,
    path: &str,
    name: &str,
    raw: RawSweep,
    refs: &Refs,
    sources: &BTreeMap<String, EvidenceConfig>,
    queues: &BTreeMap<String, QueueConfig>,
) -> Option<SweepConfig> {
    let sub = |k: &str| yaml::join(path, k);
    if !refs.databases.contains(&raw.database) {
        p.push(
            sub("database"),
            format!(
                "unknown database {:?} ({})",
                raw.database,
                known(refs.databases.iter())
            ),
        );
    }
    let table = p.check(&sub("table"), Ident::parse(&raw.table, true));
    let key = p.check(&sub("key"), Ident::parse(&raw.key, false));
    let state_column = p.check(&sub("state_column"), Ident::parse(&raw.state_column, false));
    let timestamp_column = p.check(
        &sub("timestamp_column"),
        Ident::parse(&raw.timestamp_column, false),
    );
    let states = sweep_states(p, &sub("states"), raw.states);
    let every = duration_or(
        p,
        &sub("every"),
        raw.every.as_ref(),
        Duration::from_secs(60),
    );
    let (pending, job) = match raw.pending {
        Some(rp) => pending_rule(p, &sub("pending"), rp, refs, queues),
        None => (None, None),
    };
    let mut evidence = Vec::new();
    let mut lookups = LookupColumns::default();
    let sending = raw.sending.and_then(|rs| {
        sending_rule(
            p,
            &sub("sending"),
            rs,
            refs,
            sources,
            &mut evidence,
            &mut lookups,
        )
    });
    if let Some(s) = &sending {
        if s.on_no_evidence == GiveUpPolicy::Requeue && job.is_none() {
            p.push(
                sub("sending.on_no_evidence"),
                "on_no_evidence: requeue needs a `pending` section (its queue and job)",
            );
        }
    }
    let limits = raw
        .limits
        .map_or_else(Limits::default, |l| sweep_limits(p, &sub("limits"), l));

    if pending.is_none() && sending.is_none() && !p.0.iter().any(|(pp, _)| pp.starts_with(path)) {
        p.push(
            path,
            "a sweep needs a `pending` or a `sending` section (or both)",
        );
    }

    Some(SweepConfig {
        name: name.to_string(),
        database: raw.database,
        table: table?,
        key: key?,
        state_column: state_column?,
        timestamp_column: timestamp_column?,
        states: states?,
        every: every?,
        rules: Rules {
            pending,
            sending,
            limits,
        },
        job,
        evidence,
        lookup_columns: lookups.0,
    })
}

/// The four state values: each present, and all different from each other.
fn sweep_states(p: &mut Problems, spath: &str, raw: Option<RawStates>) -> Option<States> {
    let s = raw.unwrap_or(RawStates {
        pending: None,
        sending: None,
        sent: None,
        error: None,
    });
    let states = (
        state_value(p, &yaml::join(spath, "pending"), s.pending, "pending"),
        state_value(p, &yaml::join(spath, "sending"), s.sending, "sending"),
        state_value(p, &yaml::join(spath, "sent"), s.sent, "sent"),
        state_value(p, &yaml::join(spath, "error"), s.error, "error"),
    );
    let (Some(pending), Some(sending), Some(sent), Some(error)) = states else {
        return None;
    };
    let all = [&pending, &sending, &sent, &error];
    let distinct = all
        .iter()
        .enumerate()
        .all(|(i, a)| all[i + 1..].iter().all(|b| a != b));
    if !distinct {
        p.push(
            spath,
            "the four state values must be different from each other",
        );
    }
    Some(States {
        pending,
        sending,
        sent,
        error,
    })
}

/// The `pending` section: its rule and the job it enqueues. Either is
/// `None` when a problem was recorded for it.
fn pending_rule(
    p: &mut Problems,
    pp: &str,
    rp: RawPending,
    refs: &Refs,
    queues: &BTreeMap<String, QueueConfig>,
) -> (Option<PendingRule>, Option<JobConfig>) {
    let after = p.check(&yaml::join(pp, "after"), positive_duration(&rp.after));
    if !refs.queues.contains(&rp.queue) {
        p.push(
            yaml::join(pp, "queue"),
            format!(
                "unknown queue {:?} ({})",
                rp.queue,
                known(refs.queues.iter())
            ),
        );
    }
    let jp = yaml::join(pp, "job");
    if rp.job.queue.trim().is_empty() {
        p.push(yaml::join(&jp, "queue"), "job queue name is empty");
    }
    match rp.job.class.as_deref() {
        Some(c) if c.trim().is_empty() => p.push(yaml::join(&jp, "class"), "job class is empty"),
        None if rp.job.job_id.is_none() => p.push(
            jp.clone(),
            "missing `class` (the job class, Celery task, RQ function or BullMQ job name)",
        ),
        _ => {}
    }
    let kind = queues.get(&rp.queue).map(|q| &q.kind);
    let shape = job_args(p, &jp, &rp.job, kind);
    let max_attempts = rp.max_attempts.unwrap_or(5);
    if max_attempts == 0 {
        p.push(yaml::join(pp, "max_attempts"), "must be at least 1");
    }
    let backoff = rp
        .backoff
        .and_then(|b| backoff(p, &yaml::join(pp, "backoff"), b, after));
    let Some(args) = shape.columns else {
        return (None, None);
    };
    let job = JobConfig {
        queue_ref: rp.queue,
        queue: rp.job.queue,
        class: rp.job.class.unwrap_or_default(),
        args,
        activejob: shape.activejob,
        positional: shape.positional,
        kwargs: shape.kwargs,
        job_id: shape.job_id,
    };
    let rule = after.map(|after| PendingRule {
        after,
        max_attempts,
        backoff,
    });
    (rule, Some(job))
}

fn backoff(p: &mut Problems, bp: &str, b: RawBackoff, after: Option<Duration>) -> Option<Backoff> {
    if !(b.factor.is_finite() && b.factor >= 1.0) {
        p.push(
            yaml::join(bp, "factor"),
            format!("factor must be at least 1.0, found {}", b.factor),
        );
    }
    let max = p.check(&yaml::join(bp, "max"), positive_duration(&b.max))?;
    if let Some(a) = after {
        if max < a {
            p.push(
                yaml::join(bp, "max"),
                "backoff max must be at least `after`",
            );
        }
    }
    Some(Backoff {
        factor: b.factor,
        max,
    })
}

/// The row columns evidence lookups read, each listed once; an evidence
/// reference names its columns by their index here.
#[derive(Default)]
struct LookupColumns(Vec<Ident>);

impl LookupColumns {
    fn index(&mut self, c: &Ident) -> usize {
        match self.0.iter().position(|x| x == c) {
            Some(i) => i,
            None => {
                self.0.push(c.clone());
                self.0.len() - 1
            }
        }
    }
}

/// The `sending` section: its rule, with each evidence reference pushed
/// onto `evidence` and the columns it reads onto `lookups`.
fn sending_rule(
    p: &mut Problems,
    sp: &str,
    rs: RawSending,
    refs: &Refs,
    sources: &BTreeMap<String, EvidenceConfig>,
    evidence: &mut Vec<EvidenceRef>,
    lookups: &mut LookupColumns,
) -> Option<SendingRule> {
    let after = p.check(&yaml::join(sp, "after"), positive_duration(&rs.after));
    for (i, e) in rs.evidence.iter().enumerate() {
        let ep = yaml::join(&yaml::join(sp, "evidence"), &format!("[{i}]"));
        if !refs.evidence.contains(&e.source) {
            p.push(
                yaml::join(&ep, "source"),
                format!(
                    "unknown evidence source {:?} ({})",
                    e.source,
                    known(refs.evidence.iter())
                ),
            );
        }
        if let Some(column) = p.check(
            &yaml::join(&ep, "match"),
            Ident::parse(&e.match_column, false),
        ) {
            let lookup = lookups.index(&column);
            let extra = match sources.get(&e.source).map(|s| &s.kind) {
                Some(EvidenceKind::Provider(ProviderConfig {
                    api: ProviderApi::Http { columns, .. },
                    ..
                })) => columns
                    .iter()
                    .map(|c| (c.name().to_string(), lookups.index(c)))
                    .collect(),
                _ => Vec::new(),
            };
            evidence.push(EvidenceRef {
                source: e.source.clone(),
                column,
                lookup,
                extra,
            });
        }
    }
    let give_up_after = duration_or(
        p,
        &yaml::join(sp, "give_up_after"),
        rs.give_up_after.as_ref(),
        Duration::from_secs(24 * 3600),
    );
    if let (Some(a), Some(g)) = (after, give_up_after) {
        if g < a {
            p.push(
                yaml::join(sp, "give_up_after"),
                "give_up_after must be at least `after`",
            );
        }
    }
    let policy = match rs.on_no_evidence.as_deref().unwrap_or("leave") {
        "leave" => Some(GiveUpPolicy::Leave),
        "error" => Some(GiveUpPolicy::Error),
        "requeue" => Some(GiveUpPolicy::Requeue),
        other => {
            p.push(
                yaml::join(sp, "on_no_evidence"),
                format!("unknown policy {other:?} (one of leave, error, requeue)"),
            );
            None
        }
    };
    Some(SendingRule {
        after: after?,
        give_up_after: give_up_after?,
        on_no_evidence: policy?,
    })
}

fn sweep_limits(p: &mut Problems, lp: &str, l: RawLimits) -> Limits {
    let d = Limits::default();
    let batch_size = l.batch_size.unwrap_or(d.batch_size);
    if !(1..=10_000).contains(&batch_size) {
        p.push(
            yaml::join(lp, "batch_size"),
            format!("batch_size must be 1..=10000, found {batch_size}"),
        );
    }
    let max_actions = l.max_actions.unwrap_or(d.max_actions);
    if max_actions == 0 {
        p.push(
            yaml::join(lp, "max_actions"),
            "max_actions must be at least 1",
        );
    }
    Limits {
        batch_size,
        max_actions,
        hold_above: l.hold_above,
    }
}
