//! Mail logs in a central store — Grafana Loki or Elasticsearch/OpenSearch —
//! searched for the lines a pass needs, which then go through the same
//! Postfix or Exim line parser as a file's lines.
//!
//! Two rounds, many keys per query (each query's key filter at most
//! `max_query_bytes`): first the lines naming the wanted Message-IDs, then
//! the lines naming the queue ids those lead to (Postfix's `message-id=`
//! line names the queue id its delivery lines carry; Exim's `<=` line its
//! message id). Lines of both rounds are merged (each once), ordered by
//! time, and parsed as one log.
//!
//! - Loki: `GET /loki/api/v1/query_range` with the source's stream selector
//!   and a regex line filter (`|~`), `direction=forward`, paged forward by
//!   time (the next page starts at the last line's nanosecond, lines already
//!   seen dropped), the range cut into pieces of at most `max_range`;
//!   `X-Scope-OrgID` for a tenant. A line's reference: its stream labels and
//!   nanosecond timestamp.
//! - Elasticsearch/OpenSearch: a point in time opened on the index (date
//!   patterns expanded day by day), `_search` with a time `range` and
//!   `terms` on a keyword field (or `match_phrase` on the message field),
//!   sorted by time with a tiebreaker and paged with `search_after`, the
//!   point in time closed after. A line's reference: index and `_id`.
//!
//! Politeness (rate limit, timeouts, retries, 429 waits, a per-pass circuit
//! breaker) is the provider client's; Loki batches run `concurrency` at a
//! time, Elasticsearch pages its point in time one request at a time. Any failure fails the whole source
//! for the pass: a partial search proves nothing about absence.

use super::provider::{Auth, Client};
use crate::config::{LogFormat, StoreApi, StoreAuth, StoreConfig};
use crate::core::evidence::{KeyFilter, LineRef, TraceStore};
use crate::core::model::Timestamp;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

/// Follow at most this many pages per query.
const MAX_PAGES: usize = 500;

/// One line found in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreLine {
    /// Nanoseconds since the epoch.
    pub at: i64,
    /// The store's own order among lines of one instant (Elasticsearch's
    /// `_shard_doc`), else 0.
    pub tiebreak: i64,
    pub text: String,
    /// Where it came from (stream labels + time, or index + `_id`).
    pub reference: String,
}

/// What a search of the store found.
#[derive(Debug, Default)]
pub struct StoreScan {
    pub store: TraceStore,
    /// Line references, indexed by the traces' `LineRef.line`.
    pub refs: Vec<String>,
    pub requests: u64,
    pub lines: u64,
}

/// A regex matching any of `terms` literally (RE2 syntax).
pub fn regex_any(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| {
            let mut out = String::with_capacity(t.len());
            for c in t.chars() {
                if "\\.+*?()|[]{}^$".contains(c) {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// A LogQL double-quoted string literal.
fn logql_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The LogQL query for lines naming any of `terms`.
pub fn loki_query(selector: &str, terms: &[String]) -> String {
    format!("{} |~ {}", selector.trim(), logql_string(&regex_any(terms)))
}

/// Cut `terms` into batches whose filter stays within `max_bytes`.
pub fn batches(terms: &[String], max_bytes: usize) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut size = 0;
    for t in terms {
        let cost = t.len() * 2 + 3;
        if out.is_empty() || (size + cost > max_bytes && !out.last().is_some_and(Vec::is_empty)) {
            out.push(Vec::new());
            size = 0;
        }
        size += cost;
        out.last_mut().expect("a batch").push(t.clone());
    }
    out
}

/// Index names for `pattern` over the days of `[since, now]`: `%Y`, `%m`,
/// `%d` expand per day; a pattern without them is used as it is.
pub fn indices(pattern: &str, since: Timestamp, now: Timestamp) -> String {
    if !pattern.contains('%') {
        return pattern.to_string();
    }
    let mut names: Vec<String> = Vec::new();
    let mut day = since.date_naive();
    while day <= now.date_naive() {
        let name = day.format(pattern).to_string();
        if !names.contains(&name) {
            names.push(name);
        }
        day = day.succ_opt().expect("a next day");
    }
    names.join(",")
}

/// Whether a line starts with its own timestamp (syslog `Nov 28 …`, RFC
/// 3339, or Exim's `2026-11-28 …`).
fn has_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    let iso = b.len() > 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-';
    let months = [
        "Jan ", "Feb ", "Mar ", "Apr ", "May ", "Jun ", "Jul ", "Aug ", "Sep ", "Oct ", "Nov ",
        "Dec ",
    ];
    iso || months.iter().any(|m| line.starts_with(m))
}

/// The line to parse: as stored, or with the entry's time in front when the
/// store keeps the message without it.
pub fn parse_line(format: &LogFormat, at_ns: i64, text: &str) -> String {
    if has_timestamp(text) {
        return text.to_string();
    }
    let at = chrono::DateTime::from_timestamp_nanos(at_ns);
    match format {
        LogFormat::Postfix => format!(
            "{} {text}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        ),
        _ => format!("{} {text}", at.format("%Y-%m-%d %H:%M:%S")),
    }
}

fn auth_of(cfg: &StoreConfig) -> Auth {
    match &cfg.auth {
        None => Auth::Headers(Vec::new()),
        Some(StoreAuth::Basic { username, password }) => {
            Auth::Basic(username.clone(), password.clone())
        }
        Some(StoreAuth::Bearer(t)) => Auth::Bearer(t.clone()),
        Some(StoreAuth::ApiKey(k)) => Auth::Header(
            "Authorization",
            crate::config::Secret::new(format!("ApiKey {}", k.expose())),
        ),
    }
}

fn nanos(t: Timestamp) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// Lines found, each once, in time order (then the store's own order).
type Found = BTreeMap<(i64, i64, String, String), ()>;

/// Parse `found` as one log into `store`; the references of its lines, by
/// `LineRef.line`.
fn parse_all(
    cfg: &StoreConfig,
    keys: &HashSet<String>,
    now: Timestamp,
    found: &Found,
    store: &mut TraceStore,
) -> Vec<String> {
    let mut parser = crate::adapters::logfile::parser_for(
        &crate::config::LogSourceConfig {
            format: cfg.format.clone(),
            journal: None,
            paths: Vec::new(),
            utc_offset: chrono::FixedOffset::east_opt(0).expect("zero"),
            slack: cfg.slack,
        },
        KeyFilter::Wanted(keys.clone()),
        now,
    );
    let mut refs = Vec::with_capacity(found.len());
    for (at, _, reference, text) in found.keys() {
        let line = parse_line(&cfg.format, *at, text);
        let i = refs.len() as u64;
        refs.push(reference.clone());
        parser.feed(line.as_bytes(), LineRef { file: 0, line: i }, store);
    }
    refs
}

/// Search the store for `keys` (normalised Message-IDs) in `[since, now]`
/// and parse what it holds of them.
pub async fn fetch(
    name: &str,
    cfg: &StoreConfig,
    keys: &HashSet<String>,
    since: Timestamp,
    now: Timestamp,
    keep_text: bool,
) -> Result<StoreScan, String> {
    let client = Client::with(name, cfg.timeout, cfg.rate_limit, cfg.retries, auth_of(cfg))?;
    let mut wanted: Vec<String> = keys.iter().cloned().collect();
    wanted.sort();
    let first = search(&client, cfg, Round::Keys, &wanted, since, now).await?;
    let mut found: Found = first
        .into_iter()
        .map(|l| ((l.at, l.tiebreak, l.reference, l.text), ()))
        .collect();
    // The queue ids the first round leads to.
    let mut probe = TraceStore::new(false);
    parse_all(cfg, keys, now, &found, &mut probe);
    let mut qids: Vec<String> = probe
        .messages()
        .map(|(_, m)| m.id.clone())
        .filter(|id| !id.is_empty())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    qids.sort();
    if !qids.is_empty() {
        for l in search(&client, cfg, Round::QueueIds, &qids, since, now).await? {
            found.insert((l.at, l.tiebreak, l.reference, l.text), ());
        }
    }
    // One log, in time order, each line once.
    let mut scan = StoreScan {
        store: TraceStore::new(keep_text),
        ..StoreScan::default()
    };
    scan.refs = parse_all(cfg, keys, now, &found, &mut scan.store);
    scan.lines = scan.refs.len() as u64;
    scan.requests = client.requests.load(Ordering::Relaxed);
    Ok(scan)
}

/// Reach the store (for `check`): Loki's label list, or a count of the
/// index's documents.
pub async fn probe(name: &str, cfg: &StoreConfig) -> Result<String, String> {
    let client = Client::with(name, cfg.timeout, cfg.rate_limit, 0, auth_of(cfg))?;
    match &cfg.api {
        StoreApi::Loki {
            tenant, selector, ..
        } => {
            let headers: Vec<(&str, String)> = tenant
                .as_deref()
                .map(|t| vec![("X-Scope-OrgID", t.to_string())])
                .unwrap_or_default();
            let url = format!("{}/loki/api/v1/labels", cfg.base_url);
            let doc = client
                .send(reqwest::Method::GET, &url, None, &headers)
                .await?;
            let n = doc
                .get("data")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            Ok(format!(
                "loki at {} answered ({n} label(s)); lines of {selector}",
                cfg.base_url
            ))
        }
        StoreApi::Elasticsearch { index, .. } => {
            let now = chrono::Utc::now();
            let targets = indices(index, now - chrono::TimeDelta::days(1), now);
            let url = format!(
                "{}/{}/_count?ignore_unavailable=true",
                cfg.base_url,
                super::provider::encode(&targets).replace("%2C", ",")
            );
            let doc = client.send(reqwest::Method::GET, &url, None, &[]).await?;
            let n = doc.get("count").and_then(Value::as_u64).unwrap_or(0);
            Ok(format!(
                "elasticsearch at {} answered: {n} document(s) in {targets}",
                cfg.base_url
            ))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    Keys,
    QueueIds,
}

async fn search(
    client: &Client,
    cfg: &StoreConfig,
    round: Round,
    terms: &[String],
    since: Timestamp,
    now: Timestamp,
) -> Result<Vec<StoreLine>, String> {
    match &cfg.api {
        StoreApi::Loki {
            selector,
            tenant,
            max_range,
        } => {
            let step = chrono::TimeDelta::from_std(*max_range).unwrap_or(chrono::TimeDelta::MAX);
            let all = batches(terms, cfg.max_query_bytes);
            let per_batch =
                super::provider::bounded(&all, cfg.concurrency as usize, |batch| async move {
                    let query = loki_query(selector, batch);
                    let mut out = Vec::new();
                    let mut from = since;
                    while from < now {
                        let to = (from + step).min(now);
                        out.extend(
                            loki_range(client, cfg, tenant.as_deref(), &query, from, to).await?,
                        );
                        from = to;
                    }
                    Ok::<_, String>(out)
                })
                .await;
            let mut out = Vec::new();
            for r in per_batch {
                out.extend(r?);
            }
            Ok(out)
        }
        StoreApi::Elasticsearch { .. } => es_search(client, cfg, round, terms, since, now).await,
    }
}

/// Stream labels as `{a="x",b="y"}`, sorted.
fn labels(stream: &Value) -> String {
    let mut parts: Vec<String> = stream
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", Value::from(v.as_str().unwrap_or_default())))
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    format!("{{{}}}", parts.join(","))
}

/// One Loki query over `[from, to]`, every page.
async fn loki_range(
    client: &Client,
    cfg: &StoreConfig,
    tenant: Option<&str>,
    query: &str,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<StoreLine>, String> {
    let mut out: Vec<StoreLine> = Vec::new();
    let mut seen: HashSet<(i64, String, String)> = HashSet::new();
    let mut start = nanos(from);
    let end = nanos(to);
    let headers: Vec<(&str, String)> = tenant
        .map(|t| vec![("X-Scope-OrgID", t.to_string())])
        .unwrap_or_default();
    for _ in 0..MAX_PAGES {
        let url = format!(
            "{}/loki/api/v1/query_range?query={}&start={start}&end={end}&limit={}&direction=forward",
            cfg.base_url,
            super::provider::encode(query),
            cfg.page_size
        );
        let doc = client
            .send(reqwest::Method::GET, &url, None, &headers)
            .await?;
        if doc.get("status").and_then(Value::as_str) != Some("success") {
            return Err(format!("loki: unexpected answer: {}", short(&doc)));
        }
        let streams = doc
            .pointer("/data/result")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("loki: no data.result in {}", short(&doc)))?;
        let mut count = 0usize;
        let mut last = start;
        for s in streams {
            let lab = labels(s.get("stream").unwrap_or(&Value::Null));
            for v in s
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                count += 1;
                let ts: i64 = v
                    .get(0)
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| format!("loki: bad entry {v}"))?;
                let text = v
                    .get(1)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                last = last.max(ts);
                let reference = format!("loki {lab} {ts}");
                if seen.insert((ts, reference.clone(), text.clone())) {
                    out.push(StoreLine {
                        at: ts,
                        tiebreak: 0,
                        text,
                        reference,
                    });
                }
            }
        }
        if count < cfg.page_size {
            return Ok(out);
        }
        if last == start {
            return Err(format!(
                "loki: more than page_size ({}) lines at one instant; raise page_size",
                cfg.page_size
            ));
        }
        // The next page starts at the last line's instant: lines sharing it
        // are fetched again and dropped as seen.
        start = last;
    }
    Err(format!(
        "loki: more than {MAX_PAGES} pages for one query; narrow the selector"
    ))
}

fn short(v: &Value) -> String {
    v.to_string().chars().take(200).collect()
}

/// A field of a document: a flat dotted key, or a path through objects.
fn field<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(v) = doc.get(name) {
        return Some(v);
    }
    name.split('.').try_fold(doc, |d, part| d.get(part))
}

/// The `_source` fields a search asks for.
fn source_fields(
    message: &str,
    time: &str,
    parsed: Option<&crate::config::ParsedFields>,
) -> Vec<String> {
    let mut f = vec![message.to_string(), time.to_string()];
    if let Some(p) = parsed {
        f.extend([&p.queue_id, &p.message_id, &p.recipient, &p.status].map(String::clone));
        f.extend(p.dsn.iter().chain(&p.detail).cloned());
    }
    f
}

fn text_field(doc: &Value, name: &str) -> Option<String> {
    match field(doc, name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_string),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The Postfix line an already-parsed document stands for: its `cleanup`
/// line (queue id + Message-ID) or a delivery line (queue id, recipient,
/// status, dsn, the server's answer). `None` for anything else.
pub fn line_of_fields(doc: &Value, f: &crate::config::ParsedFields) -> Option<String> {
    let qid = text_field(doc, &f.queue_id)?;
    if let Some(mid) = text_field(doc, &f.message_id) {
        let mid = crate::core::evidence::normalize_key(&mid).to_string();
        return Some(format!("- postfix/cleanup[0]: {qid}: message-id=<{mid}>"));
    }
    let rcpt = text_field(doc, &f.recipient)?;
    let status = text_field(doc, &f.status)?;
    let dsn = f
        .dsn
        .as_ref()
        .and_then(|d| text_field(doc, d))
        .map(|d| format!(", dsn={d}"))
        .unwrap_or_default();
    let detail = f
        .detail
        .as_ref()
        .and_then(|d| text_field(doc, d))
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    Some(format!(
        "- postfix/smtp[0]: {qid}: to=<{rcpt}>{dsn}, status={status}{detail}"
    ))
}

async fn es_search(
    client: &Client,
    cfg: &StoreConfig,
    round: Round,
    terms: &[String],
    since: Timestamp,
    now: Timestamp,
) -> Result<Vec<StoreLine>, String> {
    let StoreApi::Elasticsearch {
        index,
        opensearch,
        message_field,
        time_field,
        key_field,
        queue_id_field,
        parsed,
    } = &cfg.api
    else {
        unreachable!("an Elasticsearch source");
    };
    let targets = indices(index, since, now);
    let base = &cfg.base_url;
    let pit_url = if *opensearch {
        format!(
            "{base}/{}/_search/point_in_time?keep_alive=2m",
            super::provider::encode(&targets).replace("%2C", ",")
        )
    } else {
        format!(
            "{base}/{}/_pit?keep_alive=2m&ignore_unavailable=true",
            super::provider::encode(&targets).replace("%2C", ",")
        )
    };
    let opened = client
        .send(reqwest::Method::POST, &pit_url, None, &[])
        .await?;
    let mut pit = opened
        .get(if *opensearch { "pit_id" } else { "id" })
        .and_then(Value::as_str)
        .ok_or_else(|| format!("elasticsearch: no point-in-time id in {}", short(&opened)))?
        .to_string();
    let exact = match round {
        Round::Keys => key_field.as_deref(),
        Round::QueueIds => queue_id_field.as_deref(),
    };
    let tiebreak = if *opensearch {
        json!({"_id": "asc"})
    } else {
        json!({"_shard_doc": "asc"})
    };
    let mut out = Vec::new();
    let result: Result<(), String> = async {
        for batch in batches(terms, cfg.max_query_bytes) {
            let matcher = match exact {
                // Message-IDs are stored with or without their brackets.
                Some(f) if round == Round::Keys => {
                    let both: Vec<String> = batch
                        .iter()
                        .flat_map(|k| [k.clone(), format!("<{k}>")])
                        .collect();
                    json!({"terms": {f: both}})
                }
                Some(f) => json!({"terms": {f: batch}}),
                None => json!({"bool": {
                    "should": batch.iter().map(|t| json!({"match_phrase": {message_field.as_str(): t}})).collect::<Vec<_>>(),
                    "minimum_should_match": 1,
                }}),
            };
            let mut after: Option<Value> = None;
            for page in 0.. {
                if page >= MAX_PAGES {
                    return Err(format!("elasticsearch: more than {MAX_PAGES} pages for one query"));
                }
                let mut body = json!({
                    "size": cfg.page_size,
                    "query": {"bool": {"filter": [
                        {"range": {time_field.as_str(): {
                            "gte": since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            "lte": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            "format": "strict_date_optional_time",
                        }}},
                        matcher,
                    ]}},
                    "pit": {"id": pit, "keep_alive": "2m"},
                    "sort": [{time_field.as_str(): {"order": "asc"}}, tiebreak],
                    "_source": source_fields(message_field, time_field, parsed.as_deref()),
                    "track_total_hits": false,
                });
                if let Some(a) = &after {
                    body["search_after"] = a.clone();
                }
                let doc = client
                    .send(reqwest::Method::POST, &format!("{base}/_search"), Some(&body), &[])
                    .await?;
                if let Some(id) = doc.get("pit_id").and_then(Value::as_str) {
                    pit = id.to_string();
                }
                if doc.get("timed_out") == Some(&Value::Bool(true)) {
                    return Err("elasticsearch: the search timed out (partial results prove nothing)".into());
                }
                let failed = doc.pointer("/_shards/failed").and_then(Value::as_u64).unwrap_or(0);
                if failed > 0 {
                    return Err(format!("elasticsearch: {failed} shard(s) failed: partial results prove nothing"));
                }
                let hits = doc
                    .pointer("/hits/hits")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("elasticsearch: no hits.hits in {}", short(&doc)))?;
                for h in hits {
                    let src = h.get("_source").unwrap_or(&Value::Null);
                    let text = match field(src, message_field).and_then(Value::as_str) {
                        Some(t) => t.to_string(),
                        None => match parsed.as_ref().and_then(|p| line_of_fields(src, p)) {
                            Some(t) => t,
                            None => continue,
                        },
                    };
                    let at = field(src, time_field)
                        .and_then(Value::as_str)
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| nanos(t.with_timezone(&chrono::Utc)))
                        .ok_or_else(|| format!("elasticsearch: hit without a readable {time_field}: {}", short(h)))?;
                    out.push(StoreLine {
                        at,
                        tiebreak: h
                            .get("sort")
                            .and_then(|s| s.get(1))
                            .and_then(Value::as_i64)
                            .unwrap_or(0),
                        text,
                        reference: format!(
                            "{}/{}",
                            h.get("_index").and_then(Value::as_str).unwrap_or("?"),
                            h.get("_id").and_then(Value::as_str).unwrap_or("?")
                        ),
                    });
                }
                if hits.len() < cfg.page_size {
                    break;
                }
                after = hits.last().and_then(|h| h.get("sort")).cloned();
                if after.is_none() {
                    return Err("elasticsearch: a full page without sort values".into());
                }
            }
        }
        Ok(())
    }
    .await;
    // Close the point in time whatever happened.
    let (url, body) = if *opensearch {
        (
            format!("{base}/_search/point_in_time"),
            json!({"pit_id": [pit]}),
        )
    } else {
        (format!("{base}/_pit"), json!({"id": pit}))
    };
    if let Err(e) = client
        .send(reqwest::Method::DELETE, &url, Some(&body), &[])
        .await
    {
        tracing::debug!(error = %e, "closing the point in time failed");
    }
    result.map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_one_literal_regex_in_a_logql_string() {
        let terms = vec!["a.b@x.example".to_string(), "c+d\"q@y".to_string()];
        assert_eq!(regex_any(&terms), r#"a\.b@x\.example|c\+d"q@y"#);
        assert_eq!(
            loki_query("{job=\"postfix\"}", &terms),
            r#"{job="postfix"} |~ "a\\.b@x\\.example|c\\+d\"q@y""#
        );
    }

    #[test]
    fn batches_stay_within_the_query_budget() {
        let terms: Vec<String> = (0..100)
            .map(|i| format!("msg-{i:03}@app.example"))
            .collect();
        let b = batches(&terms, 400);
        assert!(b.len() > 1);
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 100);
        for batch in &b {
            assert!(regex_any(batch).len() <= 400, "{}", regex_any(batch).len());
        }
        // One term longer than the budget still goes, alone.
        let long = vec!["x".repeat(500)];
        assert_eq!(batches(&long, 400), vec![long.clone()]);
    }

    #[test]
    fn date_patterns_expand_to_each_day_searched() {
        let t = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        assert_eq!(
            indices(
                "mail-%Y.%m.%d",
                t("2026-11-27T23:00:00Z"),
                t("2026-11-29T01:00:00Z")
            ),
            "mail-2026.11.27,mail-2026.11.28,mail-2026.11.29"
        );
        assert_eq!(
            indices(
                "filebeat-*",
                t("2026-11-27T23:00:00Z"),
                t("2026-11-29T01:00:00Z")
            ),
            "filebeat-*"
        );
    }

    #[test]
    fn parsed_documents_become_the_lines_they_stand_for() {
        let f = crate::config::ParsedFields {
            queue_id: "postfix.queue_id".into(),
            message_id: "email.message_id".into(),
            recipient: "email.to.address".into(),
            status: "postfix.status".into(),
            dsn: Some("postfix.dsn".into()),
            detail: Some("postfix.response".into()),
        };
        let cleanup = json!({"postfix": {"queue_id": "ABC123"}, "email": {"message_id": "<m@x>"}});
        assert_eq!(
            line_of_fields(&cleanup, &f).unwrap(),
            "- postfix/cleanup[0]: ABC123: message-id=<m@x>"
        );
        let smtp = json!({"postfix.queue_id": "ABC123", "email": {"to": {"address": ["u@d"]}},
                          "postfix": {"status": "bounced", "dsn": "5.1.1", "response": "550 no"}});
        assert_eq!(
            line_of_fields(&smtp, &f).unwrap(),
            "- postfix/smtp[0]: ABC123: to=<u@d>, dsn=5.1.1, status=bounced (550 no)"
        );
        assert_eq!(
            line_of_fields(&json!({"postfix": {"queue_id": "A"}}), &f),
            None
        );
    }

    #[test]
    fn lines_without_their_time_get_the_entrys() {
        let at = 1_795_905_344_000_000_000;
        assert_eq!(
            parse_line(
                &LogFormat::Postfix,
                at,
                "mail postfix/qmgr[1]: ABC: removed"
            ),
            "2026-11-28T22:35:44.000000Z mail postfix/qmgr[1]: ABC: removed"
        );
        assert_eq!(
            parse_line(&LogFormat::Exim, at, "1xXRVo-0006uo-1l Completed"),
            "2026-11-28 22:35:44 1xXRVo-0006uo-1l Completed"
        );
        let full = "Nov 28 22:35:44 mail postfix/qmgr[1]: ABC: removed";
        assert_eq!(parse_line(&LogFormat::Postfix, at, full), full);
    }
}
