//! Configuration: the YAML contract of DESIGN.md, read in two stages.
//!
//! 1. `yaml` + `raw`: text → nodes → serde structs mirroring the YAML
//!    (`deny_unknown_fields`), with `${VAR}` / `${VAR:-default}` expanded in
//!    string values.
//! 2. `validate`: a pure function from raw structs and an environment to the
//!    typed [`Config`] below — durations parsed, names resolved, identifiers
//!    checked and quoted, regexes compiled — or *every* problem found, each
//!    with its YAML path and line.
//!
//! Owns: what a valid config is. Does not own: connecting to anything
//! (`sweeper check` does that in the shell).

pub mod raw;
pub mod validate;
pub mod yaml;

use crate::core::decide::Rules;
use crate::core::evidence::custom::CustomSpec;
use crate::core::evidence::jsonl::JsonlSpec;
use chrono::FixedOffset;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use validate::validate;

/// A validated config.
#[derive(Clone, Debug)]
pub struct Config {
    pub databases: BTreeMap<String, DatabaseConfig>,
    pub metrics: MetricsConfig,
    pub queues: BTreeMap<String, QueueConfig>,
    pub evidence: BTreeMap<String, EvidenceConfig>,
    pub sweeps: Vec<SweepConfig>,
    pub history: HistoryConfig,
}

/// The audit history of applied decisions (one table per database).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Entries older than this are pruned (default 30 days).
    pub retention: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

impl Config {
    pub fn sweep(&self, name: &str) -> Option<&SweepConfig> {
        self.sweeps.iter().find(|s| s.name == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
    /// MySQL or MariaDB (`mysql://` or `mariadb://`).
    Mysql,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::Sqlite => "sqlite",
            Dialect::Mysql => "mysql",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    pub name: String,
    /// Connection URL; may hold a password: print `redacted_url()` instead.
    pub url: String,
    pub dialect: Dialect,
    pub ledger_table: Ident,
    pub history_table: Ident,
    pub max_connections: u32,
    pub connect_timeout: Duration,
    /// The zone naive timestamp columns (Postgres `timestamp`, MySQL
    /// `DATETIME`) are read in: `UTC`, an offset such as `+02:00`, or a
    /// zone name the database knows.
    pub timezone: String,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("name", &self.name)
            .field("url", &self.redacted_url())
            .field("dialect", &self.dialect)
            .field("ledger_table", &self.ledger_table)
            .finish()
    }
}

impl DatabaseConfig {
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// A value that must never be printed (an API key, a token, a header's
/// value): `Debug` and `Display` show `***`; `expose` is for the one place
/// that sends it.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A URL that may hold a password: `Debug` and `Display` show it with the
/// password replaced (`redact_url`); `expose` is for connecting.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(s: impl Into<String>) -> SecretUrl {
        SecretUrl(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
    /// Credentials for `/metrics`, the status pages and `/api/` (not
    /// `/healthz` or `/readyz`).
    pub auth: Option<HttpAuth>,
    /// Plan rows per sweep the daemon keeps for its status page.
    pub status_rows: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            auth: None,
            status_rows: 1000,
        }
    }
}

/// How HTTP clients of the daemon authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpAuth {
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic base64(<username>:<password>)`.
    Basic { username: String, password: Secret },
}

#[derive(Clone, Debug)]
pub struct QueueConfig {
    pub name: String,
    pub kind: QueueKind,
}

#[derive(Clone, Debug)]
pub enum QueueKind {
    Resque(ResqueConfig),
    Sidekiq(SidekiqConfig),
    Jsonl { path: std::path::PathBuf },
    Amqp(AmqpConfig),
    Http(HttpQueueConfig),
    Celery(CeleryConfig),
    Bullmq(BullmqConfig),
    Rq(RqConfig),
}

impl QueueKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            QueueKind::Resque(_) => "resque",
            QueueKind::Sidekiq(_) => "sidekiq",
            QueueKind::Jsonl { .. } => "jsonl",
            QueueKind::Amqp(_) => "amqp",
            QueueKind::Http(_) => "http",
            QueueKind::Celery(_) => "celery",
            QueueKind::Bullmq(_) => "bullmq",
            QueueKind::Rq(_) => "rq",
        }
    }

    /// The presence check and `require_workers` of kinds that have them.
    pub fn checks(&self) -> (Option<PresenceConfig>, bool) {
        match self {
            QueueKind::Resque(r) => (r.presence.clone(), r.require_workers),
            QueueKind::Sidekiq(s) => (s.presence.clone(), s.require_workers),
            QueueKind::Celery(c) => (c.presence.clone(), false),
            QueueKind::Bullmq(b) => (b.presence.clone(), false),
            QueueKind::Rq(r) => (r.presence.clone(), false),
            QueueKind::Jsonl { .. } | QueueKind::Amqp(_) | QueueKind::Http(_) => (None, false),
        }
    }
}

/// Celery (message protocol v2) through its broker.
#[derive(Clone, Debug, PartialEq)]
pub struct CeleryConfig {
    pub broker: CeleryBroker,
    /// 0–9; on Redis kombu files it under the nearest lower step of 0/3/6/9.
    pub priority: u8,
    pub presence: Option<PresenceConfig>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CeleryBroker {
    /// kombu's Redis transport; `global_keyprefix` prefixes every key.
    Redis {
        url: SecretUrl,
        global_keyprefix: String,
    },
    /// RabbitMQ: published to the default exchange with the queue's name as
    /// routing key, after a passive declare, with publisher confirms.
    Amqp {
        url: SecretUrl,
        confirm_timeout: Duration,
    },
}

impl CeleryBroker {
    pub fn url(&self) -> &SecretUrl {
        match self {
            CeleryBroker::Redis { url, .. } | CeleryBroker::Amqp { url, .. } => url,
        }
    }
}

/// BullMQ (v5+ key layout, with the `marker` set workers block on).
#[derive(Clone, Debug, PartialEq)]
pub struct BullmqConfig {
    pub redis: SecretUrl,
    pub prefix: String,
    /// Job options written into `opts`: `attempts`, `backoff`.
    pub attempts: Option<u32>,
    pub backoff: Option<BullBackoff>,
    pub presence: Option<PresenceConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BullBackoff {
    /// `fixed` or `exponential`.
    pub kind: String,
    pub delay_ms: u64,
}

/// Python RQ. New jobs are written only for workers using RQ's
/// `JSONSerializer`; requeue by id needs no serializer.
#[derive(Clone, Debug, PartialEq)]
pub struct RqConfig {
    pub redis: SecretUrl,
    /// The workers use `JSONSerializer`; `false`: RQ's default pickle, for
    /// which only requeue by id is possible.
    pub json: bool,
    /// New jobs' `timeout` in seconds.
    pub job_timeout: u64,
    pub presence: Option<PresenceConfig>,
}

/// Bounded presence check: how many queue entries to look at at most.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceConfig {
    pub max_entries: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResqueConfig {
    pub redis: SecretUrl,
    pub namespace: String,
    pub presence: Option<PresenceConfig>,
    pub require_workers: bool,
    /// A worker whose heartbeat is older than this is dead.
    pub heartbeat_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SidekiqConfig {
    pub redis: SecretUrl,
    /// Key prefix as redis-namespace writes it (`ns:queue:x`); none by default.
    pub namespace: Option<String>,
    pub retry: serde_json::Value,
    pub job_fields: BTreeMap<String, serde_json::Value>,
    pub presence: Option<PresenceConfig>,
    pub require_workers: bool,
    /// `created_at`/`enqueued_at` as integer epoch milliseconds (Sidekiq
    /// 8+) instead of float seconds (Sidekiq up to 7).
    pub epoch_millis: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AmqpConfig {
    pub url: SecretUrl,
    pub exchange: String,
    /// Routing key template; `{queue}` is the job's queue.
    pub routing_key: String,
    pub headers: BTreeMap<String, String>,
    pub content_type: String,
    /// JSON body template; see `core::template`.
    pub body: serde_json::Value,
    pub confirm_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpQueueConfig {
    pub url: String,
    pub method: String,
    /// Header name → value template (an `Authorization` value is a secret).
    pub headers: BTreeMap<String, Secret>,
    pub body: serde_json::Value,
    pub timeout: Duration,
    pub max_retries: u32,
}

#[derive(Clone, Debug)]
pub struct EvidenceConfig {
    pub name: String,
    pub kind: EvidenceKind,
}

#[derive(Clone, Debug)]
pub enum EvidenceKind {
    Log(LogSourceConfig),
    Provider(ProviderConfig),
    /// Mail logs in a central store (Loki, Elasticsearch/OpenSearch).
    Store(Box<StoreConfig>),
}

impl EvidenceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EvidenceKind::Log(_) => "log",
            EvidenceKind::Provider(p) => p.api.as_str(),
            EvidenceKind::Store(s) => s.api.as_str(),
        }
    }

    /// How long before the row's timestamp evidence still counts.
    pub fn slack(&self) -> Duration {
        match self {
            EvidenceKind::Log(l) => l.slack,
            EvidenceKind::Provider(p) => p.slack,
            EvidenceKind::Store(s) => s.slack,
        }
    }
}

/// A central log store searched for a source's mail-log lines, which go
/// through the same line parser as a file's.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub api: StoreApi,
    /// `Postfix` or `Exim`.
    pub format: LogFormat,
    pub base_url: String,
    pub auth: Option<StoreAuth>,
    /// Requests per second, at most.
    pub rate_limit: f64,
    /// Loki queries in flight, at most (Elasticsearch pages one point in
    /// time, one request at a time).
    pub concurrency: u32,
    pub timeout: Duration,
    pub retries: u32,
    /// How long the store keeps lines (`None`: unknown).
    pub retention: Option<Duration>,
    pub slack: Duration,
    /// Lines (hits) per request.
    pub page_size: usize,
    /// The longest key filter of one query, in bytes (many keys per query).
    pub max_query_bytes: usize,
}

#[derive(Clone, Debug)]
pub enum StoreAuth {
    Basic {
        username: String,
        password: Secret,
    },
    Bearer(Secret),
    /// Elasticsearch `Authorization: ApiKey <key>`.
    ApiKey(Secret),
}

#[derive(Clone, Debug)]
pub enum StoreApi {
    Loki {
        /// The stream selector, e.g. `{job="postfix"}`.
        selector: String,
        /// `X-Scope-OrgID`.
        tenant: Option<String>,
        /// The longest time range of one query (Loki's max_query_length).
        max_range: Duration,
    },
    Elasticsearch {
        /// Index or pattern; `%Y`, `%m`, `%d` expand to each day searched.
        index: String,
        /// OpenSearch's point-in-time API instead of Elasticsearch's.
        opensearch: bool,
        message_field: String,
        time_field: String,
        /// A keyword field holding the Message-ID (`terms`); without it a
        /// `match_phrase` on `message_field`.
        key_field: Option<String>,
        /// A keyword field holding the queue id, for the second round.
        queue_id_field: Option<String>,
        /// Documents that keep Postfix's fields instead of the line.
        parsed: Option<Box<ParsedFields>>,
    },
}

/// Where already-parsed Postfix documents keep each field (e.g. ECS
/// `email.message_id`, `email.to.address`). A document without the line
/// becomes the line those fields stand for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFields {
    pub queue_id: String,
    pub message_id: String,
    pub recipient: String,
    pub status: String,
    pub dsn: Option<String>,
    pub detail: Option<String>,
}

impl StoreApi {
    pub fn as_str(&self) -> &'static str {
        match self {
            StoreApi::Loki { .. } => "loki",
            StoreApi::Elasticsearch { .. } => "elasticsearch",
        }
    }
}

/// An email provider's event API (or a generic JSON status API).
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub api: ProviderApi,
    pub base_url: String,
    /// Requests per second, at most.
    pub rate_limit: f64,
    /// Requests in flight, at most.
    pub concurrency: u32,
    pub timeout: Duration,
    /// Retries of a request after a 5xx, 429, timeout or connection error.
    pub retries: u32,
    /// How long the provider keeps events (`None`: unknown).
    pub retention: Option<Duration>,
    /// Events may take this long to show up: absence means nothing before.
    pub visibility_lag: Duration,
    pub slack: Duration,
    /// Mailgun: with more stuck rows than this, scan one time range and
    /// match locally instead of one query per row.
    pub time_range_above: usize,
}

#[derive(Clone, Debug)]
pub enum ProviderApi {
    Mailgun {
        domain: String,
        api_key: Secret,
    },
    Sendgrid {
        api_key: Secret,
    },
    Postmark {
        token: Secret,
        /// Find messages by this metadata field (the row's lookup value)
        /// instead of by Postmark's MessageID.
        metadata_key: Option<String>,
    },
    /// `GET url` (template: `{key}` and `{column}`s of the row).
    Http {
        url: String,
        headers: BTreeMap<String, Secret>,
        status: String,
        events: Option<String>,
        recipient: Option<String>,
        statuses: crate::core::evidence::custom::StatusMap,
        /// Row columns the URL template uses (besides `{key}`).
        columns: Vec<Ident>,
    },
}

impl ProviderApi {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderApi::Mailgun { .. } => "mailgun",
            ProviderApi::Sendgrid { .. } => "sendgrid",
            ProviderApi::Postmark { .. } => "postmark",
            ProviderApi::Http { .. } => "http",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogSourceConfig {
    pub format: LogFormat,
    /// Read from the systemd journal instead of `paths` (`kind: journal`).
    pub journal: Option<JournalInput>,
    /// Glob patterns.
    pub paths: Vec<String>,
    pub utc_offset: FixedOffset,
    pub slack: Duration,
}

/// Where and which journal records a `kind: journal` source reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalInput {
    /// `--unit` filters (records of these systemd units).
    pub units: Vec<String>,
    /// `SYSLOG_IDENTIFIER=` matches (e.g. `postfix/smtp`, `exim`).
    pub identifiers: Vec<String>,
    /// `--directory`: a mounted or remote journal.
    pub directory: Option<std::path::PathBuf>,
    /// `--file` patterns.
    pub files: Vec<String>,
    /// The journalctl program.
    pub journalctl: String,
}

#[derive(Clone, Debug)]
pub enum LogFormat {
    Postfix,
    Exim,
    Custom(CustomSpec),
    Jsonl(JsonlSpec),
}

impl LogFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            LogFormat::Postfix => "postfix",
            LogFormat::Exim => "exim",
            LogFormat::Custom(_) => "custom",
            LogFormat::Jsonl(_) => "jsonl",
        }
    }
}

/// A SQL identifier checked to be `[A-Za-z_][A-Za-z0-9_]*`, optionally
/// `schema.name`; safe to quote into SQL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ident {
    parts: Vec<String>,
}

impl Ident {
    pub const MAX_LEN: usize = 63;

    /// Parse an identifier; `qualified` allows one `schema.` prefix.
    pub fn parse(s: &str, qualified: bool) -> Result<Ident, String> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() > if qualified { 2 } else { 1 } {
            return Err(format!(
                "{s:?} is not a valid SQL identifier (letters, digits and underscore{})",
                if qualified {
                    ", optionally schema.table"
                } else {
                    ""
                }
            ));
        }
        for p in &parts {
            let ok = !p.is_empty()
                && p.len() <= Self::MAX_LEN
                && !p.starts_with(|c: char| c.is_ascii_digit())
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!(
                    "{s:?} is not a valid SQL identifier (letters, digits and underscore, \
                     not starting with a digit, at most {} characters{})",
                    Self::MAX_LEN,
                    if qualified {
                        ", optionally schema.table"
                    } else {
                        ""
                    }
                ));
            }
        }
        Ok(Ident {
            parts: parts.into_iter().map(str::to_string).collect(),
        })
    }

    /// Quoted for `dialect`: backticks in MySQL, double quotes elsewhere.
    pub fn quoted_in(&self, dialect: Dialect) -> String {
        match dialect {
            Dialect::Mysql => self
                .parts
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join("."),
            Dialect::Postgres | Dialect::Sqlite => self.quoted(),
        }
    }

    /// Double-quoted for SQL (valid in Postgres, SQLite and ANSI MySQL).
    pub fn quoted(&self) -> String {
        self.parts
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The last part (a table's name without its schema).
    pub fn name(&self) -> &str {
        self.parts.last().map(String::as_str).unwrap_or_default()
    }

    pub fn schema(&self) -> Option<&str> {
        (self.parts.len() == 2).then(|| self.parts[0].as_str())
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

/// A configured state value: string or integer (Rails enums).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StateValue {
    Int(i64),
    Str(String),
}

impl StateValue {
    /// As a SQL literal. Strings are single-quoted with quotes doubled;
    /// validation rejects control characters.
    pub fn sql_literal(&self) -> String {
        match self {
            StateValue::Int(i) => i.to_string(),
            StateValue::Str(s) => format!("'{}'", s.replace('\'', "''")),
        }
    }

    /// As a SQL literal for `dialect`: MySQL also reads backslash escapes
    /// in strings, so backslashes are doubled there.
    pub fn sql_literal_in(&self, dialect: Dialect) -> String {
        match (self, dialect) {
            (StateValue::Str(s), Dialect::Mysql) => {
                format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
            }
            _ => self.sql_literal(),
        }
    }
}

impl fmt::Display for StateValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateValue::Int(i) => write!(f, "{i}"),
            StateValue::Str(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct States {
    pub pending: StateValue,
    pub sending: StateValue,
    pub sent: StateValue,
    pub error: StateValue,
}

/// The job a pending row's requeue pushes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobConfig {
    /// Name of the entry in `queues:`.
    pub queue_ref: String,
    /// The queue name inside that queue system.
    pub queue: String,
    pub class: String,
    /// Columns read for the job: for a plain job its arguments, in order;
    /// for ActiveJob every column its arguments use (`ActiveJobFormat`
    /// says how).
    pub args: Vec<Ident>,
    /// `Some` for `format: activejob`.
    pub activejob: Option<ActiveJobFormat>,
    /// Plain jobs: positional arguments, as indices into `args`.
    pub positional: Vec<usize>,
    /// Plain jobs: keyword arguments (Celery, RQ) or the fields of the job's
    /// data object (BullMQ), as indices into `args`.
    pub kwargs: Vec<(String, usize)>,
    /// RQ: requeue the job whose id is in this column (index into `args`).
    pub job_id: Option<usize>,
}

/// A Rails ActiveJob envelope around the job (`format: activejob`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveJobFormat {
    /// The class the app's queue adapter enqueues (its `JobWrapper`).
    pub wrapper: String,
    pub locale: String,
    pub timezone: Option<String>,
    pub priority: Option<i64>,
    /// GlobalID app name.
    pub app: Option<String>,
    /// Positional arguments, each from a column of `JobConfig::args`.
    pub args: Vec<AjArg>,
    /// Keyword arguments (`_aj_ruby2_keywords`), in order.
    pub kwargs: Vec<(String, AjArg)>,
}

/// One ActiveJob argument: which of `JobConfig::args` it reads, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AjArg {
    pub column: usize,
    pub kind: AjArgKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AjArgKind {
    /// The column's JSON value as it is.
    Value,
    /// A record reference: `{"_aj_globalid": "gid://<app>/<Model>/<value>"}`.
    GlobalId(String),
    /// A JSON object whose keys the job reads as symbols (`_aj_symbol_keys`).
    SymbolKeys,
}

/// Rails' own wrapper classes (Rails 6.1–8.1; Sidekiq 7.3+ keeps the
/// Sidekiq one as an alias of `Sidekiq::ActiveJob::Wrapper`).
pub const AJ_SIDEKIQ_WRAPPER: &str = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper";
pub const AJ_RESQUE_WRAPPER: &str = "ActiveJob::QueueAdapters::ResqueAdapter::JobWrapper";
/// Sidekiq 8's own name for its wrapper.
pub const AJ_SIDEKIQ8_WRAPPER: &str = "Sidekiq::ActiveJob::Wrapper";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvidenceRef {
    pub source: String,
    /// Column holding the lookup key (e.g. the Message-ID).
    pub column: Ident,
    /// Index of `column` in the sweep's `lookup_columns` (and in
    /// `StuckRow::lookups`).
    pub lookup: usize,
    /// Other row columns the source needs (an http URL template's
    /// `{column}`s): (name, index in `lookup_columns`).
    pub extra: Vec<(String, usize)>,
}

#[derive(Clone, Debug)]
pub struct SweepConfig {
    pub name: String,
    pub database: String,
    pub table: Ident,
    pub key: Ident,
    pub state_column: Ident,
    pub timestamp_column: Ident,
    pub states: States,
    pub every: Duration,
    pub rules: Rules,
    pub job: Option<JobConfig>,
    pub evidence: Vec<EvidenceRef>,
    /// Columns read as text for evidence lookups, without duplicates.
    pub lookup_columns: Vec<Ident>,
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path, e.g. `sweeps.comments.pending.after`.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} problem{} in config",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            match e.line {
                Some(l) => write!(f, "  {}:{l}: ", self.file)?,
                None => write!(f, "  {}: ", self.file)?,
            }
            if e.path.is_empty() {
                writeln!(f, "{}", e.message)?;
            } else {
                writeln!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read, parse and validate a config file with the process environment.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let env = |k: &str| std::env::var(k).ok();
    load_str(&text, &path.display().to_string(), &env).map_err(LoadError::Invalid)
}

/// Parse and validate config text; `file` names it in messages.
pub fn load_str(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    validate::validate_text(text, env).map_err(|errors| ConfigErrors {
        file: file.to_string(),
        errors,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(ConfigErrors),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_and_quoted() {
        let table: &[(&str, bool, Option<&str>)] = &[
            ("comments", false, Some("\"comments\"")),
            ("public.comments", true, Some("\"public\".\"comments\"")),
            ("public.comments", false, None),
            ("a.b.c", true, None),
            ("comments; drop table x", false, None),
            ("\"quoted\"", false, None),
            ("1abc", false, None),
            ("", false, None),
            ("naïve", false, None),
            ("notification_state", false, Some("\"notification_state\"")),
        ];
        for (input, qualified, want) in table {
            let got = Ident::parse(input, *qualified).ok().map(|i| i.quoted());
            assert_eq!(got.as_deref(), *want, "{input}");
        }
    }

    #[test]
    fn state_literals_escape_quotes() {
        assert_eq!(StateValue::Str("it's".into()).sql_literal(), "'it''s'");
        assert_eq!(StateValue::Int(-3).sql_literal(), "-3");
    }

    #[test]
    fn time_zones_are_utc_offsets_or_zone_names() {
        let table: [(&str, Option<&str>); 9] = [
            ("UTC", Some("UTC")),
            ("utc", Some("UTC")),
            ("+02:00", Some("+02:00")),
            ("-09:30", Some("-09:30")),
            ("Europe/Berlin", Some("Europe/Berlin")),
            ("+2", None),
            ("+15:00", None),
            ("", None),
            ("UTC'; DROP TABLE x; --", None),
        ];
        for (tz, want) in table {
            let yaml = format!(
                "databases:\n  app: {{url: \"mysql://u@h/db\", timezone: \"{tz}\"}}\n\
                 queues:\n  q: {{kind: jsonl, path: /dev/null}}\n\
                 sweeps:\n  s:\n    database: app\n    table: t\n    key: id\n    \
                 state_column: state\n    timestamp_column: updated_at\n    \
                 pending: {{after: 10m, queue: q, job: {{queue: q, class: C}}}}\n"
            );
            let got = load_str(&yaml, "tz.yaml", &|_| None)
                .ok()
                .map(|c| c.databases["app"].timezone.clone());
            assert_eq!(got.as_deref(), want, "{tz:?}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let yaml = r#"databases:
  app: {url: "postgres://u:DbSecret1@h/db"}
queues:
  r: {kind: resque, redis: "redis://:RedisSecret2@h:6379/0"}
  a: {kind: amqp, url: "amqp://g:AmqpSecret3@h:5672/%2f"}
  w: {kind: http, url: "http://h/jobs", headers: {Authorization: "Bearer HdrSecret4"}}
evidence:
  mg: {kind: mailgun, domain: d, api_key: MgSecret5}
  pm: {kind: postmark, token: PmSecret6}
  st: {kind: http, url: "http://h/{key}", headers: {X-Key: StSecret7}, status_pointer: /s, sent: [ok]}
sweeps:
  s:
    database: app
    table: t
    key: id
    state_column: state
    timestamp_column: updated_at
    pending: {after: 10m, queue: r, job: {queue: q, class: C}}
"#;
        let cfg = load_str(yaml, "t.yaml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{cfg:?}");
        for secret in [
            "DbSecret1",
            "RedisSecret2",
            "AmqpSecret3",
            "HdrSecret4",
            "MgSecret5",
            "PmSecret6",
            "StSecret7",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("redis://:***@h:6379/0"), "{shown}");
        assert_eq!(Secret::new("x").to_string(), "***");
        assert_eq!(
            SecretUrl::new("amqp://g:p@h/").to_string(),
            "amqp://g:***@h/"
        );
    }

    #[test]
    fn urls_are_redacted() {
        let table = [
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
            ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
            ("sqlite:app.db", "sqlite:app.db"),
        ];
        for (input, want) in table {
            assert_eq!(redact_url(input), want);
        }
    }
}
