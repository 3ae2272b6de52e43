//! Raw config: serde structs mirroring the YAML one to one, with
//! `deny_unknown_fields`. Nothing here is checked beyond its YAML type;
//! `validate` turns these into typed config.
//!
//! Sections with a `kind` (queues, evidence sources) are read in two steps:
//! the `kind` first, then the struct for that kind, so an option that belongs
//! to another kind is reported as unknown for this one.

use serde::Deserialize;
use std::collections::BTreeMap;

/// A state value: a string, or an integer (Rails enums).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RawStateValue {
    Int(i64),
    Str(String),
}

/// The top-level sections. Each is kept as an untyped YAML node and read
/// entry by entry, so one bad entry does not hide the problems of others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTop<N> {
    #[serde(default)]
    pub databases: Option<BTreeMap<String, N>>,
    #[serde(default)]
    pub metrics: Option<N>,
    #[serde(default)]
    pub queues: Option<BTreeMap<String, N>>,
    #[serde(default)]
    pub evidence: Option<BTreeMap<String, N>>,
    #[serde(default)]
    pub sweeps: Option<BTreeMap<String, N>>,
    #[serde(default)]
    pub history: Option<N>,
}

/// The audit history.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHistory {
    /// How long entries are kept (default 30d).
    #[serde(default)]
    pub retention: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: String,
    /// Sweeper's bookkeeping table in this database.
    #[serde(default)]
    pub ledger_table: Option<String>,
    /// Sweeper's audit history table in this database.
    #[serde(default)]
    pub history_table: Option<String>,
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Zone of naive timestamp columns (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub auth: Option<RawHttpAuth>,
    #[serde(default)]
    pub status_rows: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpAuth {
    #[serde(default)]
    pub bearer_token: Option<String>,
    #[serde(default)]
    pub basic: Option<RawBasicAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResque {
    pub kind: String,
    pub redis: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub presence_check: Option<RawPresence>,
    #[serde(default)]
    pub require_workers: Option<bool>,
    #[serde(default)]
    pub worker_heartbeat_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSidekiq {
    pub kind: String,
    pub redis: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// The job's `retry` field: true, false or a number of retries.
    #[serde(default)]
    pub retry: Option<serde_json::Value>,
    /// Extra fields merged into every job payload.
    #[serde(default)]
    pub job_fields: Option<BTreeMap<String, serde_json::Value>>,
    /// `float_seconds` (Sidekiq up to 7) or `epoch_millis` (Sidekiq 8+).
    #[serde(default)]
    pub timestamps: Option<String>,
    #[serde(default)]
    pub presence_check: Option<RawPresence>,
    #[serde(default)]
    pub require_workers: Option<bool>,
}

/// Presence check: `true`/`false`, or a map with the scan bound.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPresence {
    Enabled(bool),
    Options(RawPresenceOptions),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPresenceOptions {
    #[serde(default)]
    pub max_entries: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCelery {
    pub kind: String,
    /// `redis://…` (kombu's Redis transport) or `amqp://…` (RabbitMQ).
    pub broker: String,
    /// kombu's `global_keyprefix` (Redis brokers only).
    #[serde(default)]
    pub global_keyprefix: Option<String>,
    /// Message priority 0–9 (Redis: kombu's priority queues).
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub confirm_timeout: Option<String>,
    #[serde(default)]
    pub presence_check: Option<RawPresence>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBullmq {
    pub kind: String,
    pub redis: String,
    /// BullMQ's key prefix (default `bull`).
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<RawBullBackoff>,
    #[serde(default)]
    pub presence_check: Option<RawPresence>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBullBackoff {
    /// `fixed` or `exponential`.
    #[serde(rename = "type")]
    pub kind: String,
    pub delay: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRq {
    pub kind: String,
    pub redis: String,
    /// The workers' serializer: `pickle` (RQ's default) or `json`
    /// (rq.serializers.JSONSerializer). New jobs need `json`.
    #[serde(default)]
    pub serializer: Option<String>,
    /// RQ's job `timeout` for new jobs, in seconds (default 180, RQ's own).
    #[serde(default)]
    pub job_timeout: Option<u64>,
    #[serde(default)]
    pub presence_check: Option<RawPresence>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJsonl {
    pub kind: String,
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAmqp {
    pub kind: String,
    pub url: String,
    #[serde(default)]
    pub exchange: Option<String>,
    #[serde(default)]
    pub routing_key: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    #[serde(default)]
    pub confirm_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpQueue {
    pub kind: String,
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub max_retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogSource {
    pub kind: String,
    pub format: String,
    pub paths: Vec<String>,
    /// Zone of timestamps that carry none, e.g. `+01:00`; default UTC.
    #[serde(default)]
    pub utc_offset: Option<String>,
    /// Lines from this long before the row's timestamp still count (clock
    /// skew between the app and the mail host).
    #[serde(default)]
    pub slack: Option<String>,
    /// custom: regexes with named captures key / join / status / rcpt / time.
    #[serde(default)]
    pub patterns: Option<Vec<String>>,
    /// custom / jsonl: status values meaning delivered.
    #[serde(default)]
    pub sent: Option<Vec<String>>,
    /// custom / jsonl: status values meaning permanently failed.
    #[serde(default)]
    pub failed: Option<Vec<String>>,
    /// jsonl: JSON pointer (or dotted path) of the lookup key.
    #[serde(default)]
    pub key_field: Option<String>,
    #[serde(default)]
    pub status_field: Option<String>,
    #[serde(default)]
    pub recipient_field: Option<String>,
    #[serde(default)]
    pub time_field: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: String,
    /// `postfix` or `exim`.
    pub format: String,
    pub url: String,
    // Loki
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub max_range: Option<String>,
    // Elasticsearch / OpenSearch
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub flavor: Option<String>,
    #[serde(default)]
    pub message_field: Option<String>,
    #[serde(default)]
    pub time_field: Option<String>,
    #[serde(default)]
    pub key_field: Option<String>,
    #[serde(default)]
    pub queue_id_field: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub parsed: Option<RawParsedFields>,
    // Both
    #[serde(default)]
    pub basic: Option<RawBasicAuth>,
    #[serde(default)]
    pub bearer_token: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<f64>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub retention: Option<String>,
    #[serde(default)]
    pub slack: Option<String>,
    #[serde(default)]
    pub page_size: Option<usize>,
    #[serde(default)]
    pub max_query_bytes: Option<usize>,
    #[serde(default)]
    pub concurrency: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParsedFields {
    pub queue_id: String,
    pub message_id: String,
    pub recipient: String,
    pub status: String,
    #[serde(default)]
    pub dsn: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    pub kind: String,
    /// `postfix` or `exim`.
    pub format: String,
    #[serde(default)]
    pub units: Option<Vec<String>>,
    #[serde(default)]
    pub identifiers: Option<Vec<String>>,
    #[serde(default)]
    pub directory: Option<String>,
    #[serde(default)]
    pub files: Option<Vec<String>>,
    #[serde(default)]
    pub journalctl: Option<String>,
    #[serde(default)]
    pub slack: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub status_pointer: Option<String>,
    #[serde(default)]
    pub events_pointer: Option<String>,
    #[serde(default)]
    pub recipient_pointer: Option<String>,
    #[serde(default)]
    pub sent: Option<Vec<String>>,
    #[serde(default)]
    pub failed: Option<Vec<String>>,
    #[serde(default)]
    pub rate_limit: Option<f64>,
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub retention: Option<String>,
    #[serde(default)]
    pub visibility_lag: Option<String>,
    #[serde(default)]
    pub slack: Option<String>,
    /// Postmark: match rows by this metadata field instead of MessageID.
    #[serde(default)]
    pub metadata_key: Option<String>,
    /// Mailgun: above this many stuck rows, one time-range scan instead of
    /// a query per row.
    #[serde(default)]
    pub time_range_above: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSweep {
    pub database: String,
    pub table: String,
    pub key: String,
    pub state_column: String,
    pub timestamp_column: String,
    #[serde(default)]
    pub states: Option<RawStates>,
    #[serde(default)]
    pub every: Option<String>,
    #[serde(default)]
    pub pending: Option<RawPending>,
    #[serde(default)]
    pub sending: Option<RawSending>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStates {
    #[serde(default)]
    pub pending: Option<RawStateValue>,
    #[serde(default)]
    pub sending: Option<RawStateValue>,
    #[serde(default)]
    pub sent: Option<RawStateValue>,
    #[serde(default)]
    pub error: Option<RawStateValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPending {
    pub after: String,
    pub queue: String,
    pub job: RawJob,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<RawBackoff>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub factor: f64,
    pub max: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    pub queue: String,
    /// Job class, Celery task name, RQ function or BullMQ job name; not
    /// needed to requeue an RQ job by id.
    #[serde(default)]
    pub class: Option<String>,
    /// BullMQ: the job's data object, field name → column.
    #[serde(default)]
    pub data: Option<BTreeMap<String, RawArg>>,
    /// RQ: the column holding the id of the RQ job to requeue.
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub args: Vec<RawArg>,
    /// `plain` (default) or `activejob`.
    #[serde(default)]
    pub format: Option<String>,
    /// Keyword arguments: name → column (ActiveJob, Celery, RQ).
    #[serde(default)]
    pub kwargs: Option<BTreeMap<String, RawArg>>,
    /// ActiveJob: the wrapper class the app's adapter enqueues.
    #[serde(default)]
    pub wrapper: Option<String>,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub priority: Option<i64>,
    /// ActiveJob: the GlobalID app name (`gid://<app>/Model/id`).
    #[serde(default)]
    pub app: Option<String>,
}

/// A job argument: a column, or (ActiveJob) a column read as a record
/// reference or as a hash with symbol keys.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawArg {
    Column(String),
    Spec(RawArgSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArgSpec {
    pub column: String,
    /// The model of a GlobalID record reference.
    #[serde(default)]
    pub global_id: Option<String>,
    /// A JSON object whose keys the job expects as symbols.
    #[serde(default)]
    pub symbol_keys: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSending {
    pub after: String,
    #[serde(default)]
    pub evidence: Vec<RawEvidenceRef>,
    #[serde(default)]
    pub give_up_after: Option<String>,
    #[serde(default)]
    pub on_no_evidence: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvidenceRef {
    pub source: String,
    #[serde(rename = "match")]
    pub match_column: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default)]
    pub batch_size: Option<u32>,
    #[serde(default)]
    pub max_actions: Option<u32>,
    #[serde(default)]
    pub hold_above: Option<u64>,
}
