//! Mail logs in Loki and Elasticsearch, against a local server that holds
//! the genuine Postfix and Exim captures and answers as the official API
//! documentation shows (tests/fixtures/logstores, NOTES.md cites the pages;
//! every response is checked to have the documented shape). The server is a
//! small implementation of each search: it checks every request sweeper
//! sends (selector, query text, time bounds, limit and direction, paging
//! tokens, point-in-time ids, auth and tenant) and answers only what such a
//! query would find — so the verdicts prove the queries, and they must be
//! exactly the verdicts the files give.

use crate::evidence_fixtures::manifest;
use crate::sql_sweeps::{Backend, Ts};
use crate::support::*;
use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Value,
}

type Answer = (u16, Vec<(&'static str, String)>, Value);
type Handler = dyn Fn(&Seen, usize) -> Answer + Send + Sync;
type Shared = (Arc<Mutex<Vec<Seen>>>, Arc<Handler>);

struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Server {
    async fn start(handler: Arc<Handler>) -> Server {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        async fn any(State((seen, handler)): State<Shared>, req: Request) -> Response {
            let (parts, body) = req.into_parts();
            let bytes = to_bytes(body, 1 << 24).await.unwrap();
            let query = parts
                .uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect();
            let s = Seen {
                method: parts.method.to_string(),
                path: decode(parts.uri.path()),
                query,
                headers: parts.headers.clone(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let n = {
                let mut l = seen.lock().unwrap();
                l.push(s.clone());
                l.len() - 1
            };
            let (status, headers, body) = handler(&s, n);
            let mut b = Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(Body::from(body.to_string())).unwrap()
        }
        let app = axum::Router::new()
            .fallback(any)
            .with_state((seen.clone(), handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn param<'a>(s: &'a Seen, k: &str) -> &'a str {
    s.query
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {k} in {:?}", s.query))
}

/// The same keys, recursively, as a documented example.
fn same_shape(ours: &Value, doc: &Value, at: &str) {
    match (ours, doc) {
        (Value::Object(a), Value::Object(b)) => {
            let ka: Vec<&String> = a.keys().collect();
            let kb: Vec<&String> = b.keys().collect();
            let mut sa = ka.clone();
            let mut sb = kb.clone();
            sa.sort();
            sb.sort();
            // Labels and _source fields are the data's own.
            if !(at.ends_with(".stream") || at.ends_with("._source") || at.ends_with(".summary")) {
                assert_eq!(sa, sb, "keys at {at}");
            }
            for k in ka {
                if let Some(d) = b.get(k) {
                    same_shape(&a[k], d, &format!("{at}.{k}"));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if let (Some(x), Some(y)) = (a.first(), b.first()) {
                same_shape(x, y, &format!("{at}[]"));
            }
        }
        (a, b) => assert_eq!(
            std::mem::discriminant(a),
            std::mem::discriminant(b),
            "type at {at}: {a} vs {b}"
        ),
    }
}

fn doc_example(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("logstores").join(name)).unwrap())
        .unwrap()
}

/// A capture's lines with their UTC instants (nanoseconds), in file order.
fn capture(format: &str) -> Vec<(i64, String)> {
    let (path, postfix) = match format {
        "postfix" => (fixtures().join("postfix/mail.log"), true),
        _ => (fixtures().join("exim/mainlog"), false),
    };
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let at = if postfix {
                chrono::NaiveDateTime::parse_from_str(
                    &format!("2026 {}", l.get(..15)?),
                    "%Y %b %e %H:%M:%S",
                )
            } else {
                chrono::NaiveDateTime::parse_from_str(l.get(..19)?, "%Y-%m-%d %H:%M:%S")
            }
            .ok()?
            .and_utc();
            // Lines of one second keep their order.
            Some((at.timestamp_nanos_opt()? + i as i64, l.to_string()))
        })
        .collect()
}

/// A SQLite app with one stuck sending row per manifest message.
async fn app(dir: &Path, keys: &[String], at: &str) -> Backend {
    let b = Backend::new(Ts::SqliteText, dir).await;
    b.exec(&format!("DELETE FROM {}", b.table)).await;
    for (i, k) in keys.iter().enumerate() {
        b.exec(&format!(
            "INSERT INTO {} VALUES ({}, 1, 'sending', '{at}', '{}')",
            b.table,
            1000 + i,
            k.replace('\'', "''")
        ))
        .await;
    }
    b
}

fn config(b: &Backend, dir: &Path, source: &str) -> std::path::PathBuf {
    let yaml = format!(
        r#"databases:
  app:
    url: "{url}"
    ledger_table: {ledger}
evidence:
  mail:
{source}
sweeps:
  notifications:
    database: app
    table: {table}
    key: id
    state_column: notification_state
    timestamp_column: updated_at
    sending:
      after: 15m
      evidence: [{{source: mail, match: message_id}}]
      give_up_after: 24000h
      on_no_evidence: error
"#,
        url = b.url,
        ledger = b.ledger,
        table = b.table,
    );
    write(dir, &format!("{}.yaml", unique("store")), &yaml)
}

/// Per row: key, decision, reason, and the evidence verdict and detail
/// (references differ by source and are left out).
fn verdicts(report: &Value) -> Vec<Value> {
    let s = sweep_json(report, "notifications");
    let mut rows: Vec<Value> = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut ev = r["evidence"][0].clone();
            ev.as_object_mut().unwrap().remove("references");
            json!({"key": r["key"], "decision": r["decision"], "reason": r["reason"], "evidence": ev})
        })
        .collect();
    rows.sort_by_key(|r| r["key"].as_str().unwrap().to_string());
    rows
}

fn report(cfg: &Path) -> Value {
    let o = run(&[
        "report",
        "-c",
        cfg.to_str().unwrap(),
        "--format",
        "json",
        "--max-rows",
        "10000",
    ]);
    serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)))
}

// ---- Loki -------------------------------------------------------------------

const SELECTOR: &str = r#"{job="mail"}"#;

/// Unquote a LogQL double-quoted string.
fn logql_unquote(s: &str) -> String {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .expect("a quoted string");
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(chars.next().expect("an escaped char"));
        } else {
            out.push(c);
        }
    }
    out
}

/// A Loki holding `lines` in two streams (delivery agents, the rest).
fn fake_loki(lines: Vec<(i64, String)>, tenant: &'static str, fail_first: bool) -> Arc<Handler> {
    Arc::new(move |s: &Seen, n: usize| -> Answer {
        if fail_first && n == 0 {
            return (
                429,
                vec![("Retry-After", "1".into())],
                json!({"status": "error"}),
            );
        }
        assert_eq!(s.method, "GET");
        if s.headers.get("x-scope-orgid").and_then(|v| v.to_str().ok()) != Some(tenant) {
            return (401, vec![], json!("no org id"));
        }
        // basic: {username: loki, password: "pw 1"}
        if s.headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some("Basic bG9raTpwdyAx")
        {
            return (401, vec![], json!("unauthorized"));
        }
        assert_eq!(s.path, "/loki/api/v1/query_range", "{s:?}");
        let q = param(s, "query");
        let filter = q
            .strip_prefix(&format!("{SELECTOR} |~ "))
            .unwrap_or_else(|| panic!("the selector, then one regex line filter: {q}"));
        let re = regex::Regex::new(&logql_unquote(filter)).expect("the filter is RE2 regex");
        assert_eq!(param(s, "direction"), "forward");
        let limit: usize = param(s, "limit").parse().unwrap();
        let start: i64 = param(s, "start").parse().unwrap();
        let end: i64 = param(s, "end").parse().unwrap();
        assert!(start < end, "{start} < {end}");
        let mut hits: Vec<&(i64, String)> = lines
            .iter()
            .filter(|(t, l)| *t >= start && *t <= end && re.is_match(l))
            .collect();
        hits.sort();
        hits.truncate(limit);
        let mut streams: Vec<Value> = Vec::new();
        for (agent, label) in [(true, "delivery"), (false, "other")] {
            let values: Vec<Value> = hits
                .iter()
                .filter(|(_, l)| {
                    (l.contains("/smtp[") || l.contains(" => ") || l.contains(" -> ")) == agent
                })
                .map(|(t, l)| json!([t.to_string(), l]))
                .collect();
            if !values.is_empty() {
                streams.push(json!({"stream": {"job": "mail", "part": label}, "values": values}));
            }
        }
        let body = json!({"status": "success", "data": {"resultType": "streams", "result": streams,
            "stats": {"summary": {"bytesProcessedPerSecond": 0, "linesProcessedPerSecond": 0,
                "totalBytesProcessed": 0, "totalLinesProcessed": 0, "execTime": 0.001}}}});
        same_shape(&body, &doc_example("loki_query_range.json"), "loki");
        (200, vec![], body)
    })
}

fn loki_source(url: &str, format: &str) -> String {
    format!(
        "    kind: loki\n    format: {format}\n    url: \"{url}\"\n    selector: '{SELECTOR}'\n    tenant: mail-team\n    basic: {{username: loki, password: \"pw 1\"}}\n    page_size: 100\n    max_query_bytes: 1500\n    retries: 2\n"
    )
}

fn file_source(format: &str) -> String {
    let path = match format {
        "postfix" => fixtures().join("postfix/mail.log"),
        _ => fixtures().join("exim/mainlog"),
    };
    format!(
        "    kind: log\n    format: {format}\n    paths: [\"{}\"]\n",
        path.display()
    )
}

async fn same_as_files_through(format: &str, store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let fx = if format == "postfix" {
        "postfix"
    } else {
        "exim"
    };
    let messages = manifest(&fixtures().join(fx).join("manifest.json"));
    let keys: Vec<String> = messages.iter().map(|(k, _)| k.clone()).collect();
    let b = app(dir.path(), &keys, "2026-11-28 20:00:00").await;
    let from_files = report(&config(&b, dir.path(), &file_source(format)));
    let lines = capture(format);
    let server = match store {
        "loki" => Server::start(fake_loki(lines, "mail-team", true)).await,
        _ => Server::start(fake_es(lines, false)).await,
    };
    let source = match store {
        "loki" => loki_source(&server.url(), format),
        _ => es_source(&server.url(), format, false),
    };
    let from_store = report(&config(&b, dir.path(), &source));
    let want = verdicts(&from_files);
    let got = verdicts(&from_store);
    assert_eq!(got.len(), messages.len());
    let differ: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("file: {w}\nstore: {g}"))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} rows differ from the files' verdicts; first ones:\n{}",
        differ.len(),
        want.len(),
        differ
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let decided = want.iter().filter(|r| r["decision"] != "leave").count();
    assert!(
        decided * 2 > want.len(),
        "most rows settle: {decided} of {}",
        want.len()
    );
    // explain names the store's record of each line.
    let row = from_store["sweeps"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["decision"] == "mark_sent")
        .unwrap()
        .clone();
    let text = stdout(&explain(
        &config(&b, dir.path(), &source),
        "notifications",
        row["key"].as_str().unwrap(),
    ));
    let reference = if store == "loki" {
        "loki {job=\"mail\",part=\"delivery\"} "
    } else {
        "mail-2026.11.28/"
    };
    assert!(text.contains(reference), "{text}");
    check_requests(store, &server.seen(), format);
    b.cleanup().await;
}

fn check_requests(store: &str, seen: &[Seen], format: &str) {
    let queue_id = if format == "postfix" {
        "ED054C8803"
    } else {
        "1xXRVo-0006uo-1l"
    };
    match store {
        "loki" => {
            let queries: Vec<&Seen> = seen
                .iter()
                .filter(|s| s.path.ends_with("query_range"))
                .collect();
            assert!(
                queries.len() >= 4,
                "several batches and pages: {}",
                queries.len()
            );
            // Every filter within the budget; the second round asks for queue ids.
            for q in &queries {
                assert!(
                    param(q, "query").len() <= SELECTOR.len() + 8 + 1500 * 2,
                    "{}",
                    param(q, "query").len()
                );
            }
            assert!(
                queries.iter().any(|q| param(q, "query").contains(queue_id)),
                "a second round names the queue ids"
            );
            // Time bounds: from the rows' time less slack, to about now.
            let since =
                chrono::NaiveDateTime::parse_from_str("2026-11-28 19:50:00", "%Y-%m-%d %H:%M:%S")
                    .unwrap()
                    .and_utc()
                    .timestamp_nanos_opt()
                    .unwrap();
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
            for q in &queries {
                let start: i64 = param(q, "start").parse().unwrap();
                let end: i64 = param(q, "end").parse().unwrap();
                assert!(start >= since - 1_000_000_000, "start {start}");
                assert!((now - end).abs() < 600 * 1_000_000_000, "end {end}");
            }
            // Paging: a page that came back full is followed by one starting
            // at its last line's instant.
            assert!(
                queries
                    .windows(2)
                    .any(|w| param(w[0], "query") == param(w[1], "query")
                        && param(w[1], "start") > param(w[0], "start")),
                "paged forward by time"
            );
        }
        _ => {
            let opens = seen
                .iter()
                .filter(|s| s.path.ends_with("/_pit") && s.method == "POST")
                .count();
            let closes = seen
                .iter()
                .filter(|s| s.path == "/_pit" && s.method == "DELETE")
                .count();
            assert!(opens >= 2, "a point in time per round: {opens}");
            assert_eq!(opens, closes, "every point in time is closed");
            let searches: Vec<&Seen> = seen.iter().filter(|s| s.path == "/_search").collect();
            assert!(
                searches
                    .iter()
                    .any(|s| s.body.get("search_after").is_some()),
                "paged with search_after"
            );
            assert!(
                searches
                    .iter()
                    .any(|s| s.body.to_string().contains(queue_id)),
                "a second round names the queue ids"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postfix_capture_through_loki_gives_the_files_verdicts() {
    same_as_files_through("postfix", "loki").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exim_capture_through_loki_gives_the_files_verdicts() {
    same_as_files_through("exim", "loki").await;
}

// ---- Elasticsearch ----------------------------------------------------------

/// An Elasticsearch holding `lines` as documents in daily indices
/// `mail-YYYY.MM.DD`: `@timestamp` and the `message` without its own time
/// (as a log shipper stores it).
fn fake_es(lines: Vec<(i64, String)>, opensearch: bool) -> Arc<Handler> {
    fake_es_with(lines, opensearch, Docs::Lines)
}

/// The Postfix queue id and Message-ID a log shipper's pipeline would have
/// put in fields of their own.
fn parsed_fields(line: &str) -> (Option<String>, Option<String>) {
    static QID: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static MID: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let qid = QID
        .get_or_init(|| regex::Regex::new(r"\]: ([0-9A-F]{8,12}): ").unwrap())
        .captures(line)
        .map(|c| c[1].to_string());
    let mid = MID
        .get_or_init(|| regex::Regex::new(r"message-id=(<[^>]*>)").unwrap())
        .captures(line)
        .map(|c| c[1].to_string());
    (qid, mid)
}

/// How the fake Elasticsearch stores the capture.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Docs {
    /// The line (without its timestamp) in `message`, searched by phrase.
    Lines,
    /// The line plus `email.message_id` / `postfix.queue_id`, by terms.
    Fields,
    /// Only a pipeline's parsed fields, no line: message-id and delivery
    /// records, by terms.
    ParsedOnly,
}

fn delivery_fields(line: &str) -> Option<(String, String, String, String)> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let c = RE
        .get_or_init(|| {
            regex::Regex::new(r"to=<([^>]*)>,.* dsn=([0-9.]+), status=([a-z]+) \((.*)\)$").unwrap()
        })
        .captures(line)?;
    Some((
        c[1].to_string(),
        c[2].to_string(),
        c[3].to_string(),
        c[4].to_string(),
    ))
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |d, part| d.get(part))
}

fn fake_es_with(lines: Vec<(i64, String)>, opensearch: bool, mode: Docs) -> Arc<Handler> {
    let parsed = mode != Docs::Lines;
    let docs: Vec<(i64, usize, String, Value)> = lines
        .into_iter()
        .enumerate()
        .filter_map(|(i, (t, l))| {
            let cut = if l.as_bytes()[0].is_ascii_digit() { 20 } else { 16 };
            let index = chrono::DateTime::from_timestamp_nanos(t)
                .format("mail-%Y.%m.%d")
                .to_string();
            let m = l[cut..].to_string();
            let (qid, mid) = parsed_fields(&m);
            let source = match mode {
                Docs::Lines | Docs::Fields => json!({"message": m,
                    "email": {"message_id": mid}, "postfix": {"queue_id": qid}}),
                Docs::ParsedOnly => {
                    let qid = qid?;
                    match (mid, delivery_fields(&m)) {
                        (Some(mid), _) => json!({"email": {"message_id": mid}, "postfix": {"queue_id": qid}}),
                        (None, Some((rcpt, dsn, status, resp))) => json!({
                            "email": {"to": {"address": rcpt}},
                            "postfix": {"queue_id": qid, "status": status, "dsn": dsn, "response": resp}}),
                        (None, None) => return None,
                    }
                }
            };
            Some((t, i, index, source))
        })
        .collect();
    let pit = Arc::new(Mutex::new((0u64, Vec::<String>::new())));
    Arc::new(move |s: &Seen, _n: usize| -> Answer {
        let auth = s.headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some("ApiKey c2VjcmV0LWtleQ==") {
            return (
                401,
                vec![],
                json!({"error": "missing authentication credentials"}),
            );
        }
        let mut p = pit.lock().unwrap();
        match (s.method.as_str(), s.path.as_str()) {
            ("POST", path)
                if path.ends_with("/_pit") || path.ends_with("/_search/point_in_time") =>
            {
                assert_eq!(path.ends_with("/point_in_time"), opensearch, "{path}");
                let targets = path.trim_start_matches('/').split('/').next().unwrap();
                assert!(
                    targets.split(',').all(|t| t.starts_with("mail-2026.")),
                    "daily indices: {targets}"
                );
                assert!(targets.contains("mail-2026.11.28"), "{targets}");
                p.0 += 1;
                let id = format!("pit-{}", p.0);
                p.1.push(id.clone());
                let body = if opensearch {
                    json!({"pit_id": id, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}, "creation_time": 0})
                } else {
                    json!({"id": id, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}})
                };
                if !opensearch {
                    same_shape(&body, &doc_example("es_open_pit.json"), "open");
                }
                (200, vec![], body)
            }
            ("POST", "/_search") => {
                let b = &s.body;
                let id = b["pit"]["id"].as_str().expect("a pit id");
                assert_eq!(
                    Some(id),
                    p.1.last().map(String::as_str),
                    "the most recent pit id"
                );
                let size = b["size"].as_u64().unwrap() as usize;
                let filters = b["query"]["bool"]["filter"].as_array().unwrap();
                let range = &filters[0]["range"]["@timestamp"];
                let gte = chrono::DateTime::parse_from_rfc3339(range["gte"].as_str().unwrap())
                    .unwrap()
                    .timestamp_nanos_opt()
                    .unwrap();
                let lte = chrono::DateTime::parse_from_rfc3339(range["lte"].as_str().unwrap())
                    .unwrap()
                    .timestamp_nanos_opt()
                    .unwrap();
                // Either phrases in the message, or exact values of a field.
                let phrases: Vec<String> = if parsed {
                    Vec::new()
                } else {
                    filters[1]["bool"]["should"]
                        .as_array()
                        .expect("match_phrase on the message field")
                        .iter()
                        .map(|m| m["match_phrase"]["message"].as_str().unwrap().to_string())
                        .collect()
                };
                let terms: Option<(String, Vec<String>)> = parsed.then(|| {
                    let t = filters[1]["terms"]
                        .as_object()
                        .expect("terms on a keyword field");
                    let (f, v) = t.iter().next().unwrap();
                    (
                        f.clone(),
                        v.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_str().unwrap().to_string())
                            .collect(),
                    )
                });
                let matches = |src: &Value| match &terms {
                    None => src["message"]
                        .as_str()
                        .is_some_and(|m| phrases.iter().any(|ph| m.contains(ph.as_str()))),
                    Some((f, values)) => {
                        assert!(
                            f == "email.message_id" || f == "postfix.queue_id",
                            "unexpected field {f}"
                        );
                        lookup(src, f)
                            .and_then(Value::as_str)
                            .is_some_and(|v| values.iter().any(|x| x == v))
                    }
                };
                assert_eq!(b["sort"][0], json!({"@timestamp": {"order": "asc"}}));
                assert_eq!(
                    b["sort"][1],
                    if opensearch {
                        json!({"_id": "asc"})
                    } else {
                        json!({"_shard_doc": "asc"})
                    }
                );
                let after: Option<(i64, usize)> = b
                    .get("search_after")
                    .map(|a| (a[0].as_i64().unwrap(), a[1].as_u64().unwrap() as usize));
                let mut hits: Vec<&(i64, usize, String, Value)> = docs
                    .iter()
                    .filter(|(t, i, _, m)| {
                        *t >= gte
                            && *t <= lte + 999_999
                            && matches(m)
                            && after.is_none_or(|a| (*t / 1_000_000, *i) > a)
                    })
                    .collect();
                hits.sort_by_key(|(t, i, _, _)| (*t / 1_000_000, *i));
                hits.truncate(size);
                p.0 += 1;
                let next = format!("pit-{}", p.0);
                p.1.push(next.clone());
                let body = json!({
                    "pit_id": next, "took": 3, "timed_out": false,
                    "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                    "hits": {"max_score": null, "hits": hits.iter().map(|(t, i, index, src)| {
                        let mut src = src.clone();
                        src["@timestamp"] = json!(chrono::DateTime::from_timestamp_nanos(*t)
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                        json!({
                            "_index": index, "_id": format!("d{i:06}"), "_score": null,
                            "_source": src,
                            "sort": [t / 1_000_000, i],
                        })
                    }).collect::<Vec<_>>()},
                });
                same_shape(&body, &doc_example("es_search_pit.json"), "search");
                (200, vec![], body)
            }
            ("DELETE", "/_pit") | ("DELETE", "/_search/point_in_time") => {
                let id = if opensearch {
                    s.body["pit_id"][0].as_str()
                } else {
                    s.body["id"].as_str()
                };
                assert_eq!(
                    id,
                    p.1.last().map(String::as_str),
                    "closes the most recent pit id"
                );
                let body = json!({"succeeded": true, "num_freed": 1});
                same_shape(&body, &doc_example("es_close_pit.json"), "close");
                (200, vec![], body)
            }
            other => panic!("unexpected request {other:?}"),
        }
    })
}

fn es_source(url: &str, format: &str, opensearch: bool) -> String {
    let flavor = if opensearch {
        "opensearch"
    } else {
        "elasticsearch"
    };
    format!(
        "    kind: elasticsearch\n    flavor: {flavor}\n    format: {format}\n    url: \"{url}\"\n    index: \"mail-%Y.%m.%d\"\n    api_key: secret-key-NOT-BASE64\n    page_size: 100\n    max_query_bytes: 1500\n"
    )
    .replace("secret-key-NOT-BASE64", "c2VjcmV0LWtleQ==")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postfix_capture_through_elasticsearch_gives_the_files_verdicts() {
    same_as_files_through("postfix", "elasticsearch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exim_capture_through_elasticsearch_gives_the_files_verdicts() {
    same_as_files_through("exim", "elasticsearch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_fields_of_parsed_documents_are_searched_with_terms() {
    let dir = tempfile::tempdir().unwrap();
    let messages = manifest(&fixtures().join("postfix/manifest.json"));
    let keys: Vec<String> = messages.iter().map(|(k, _)| k.clone()).collect();
    let b = app(dir.path(), &keys, "2026-11-28 20:00:00").await;
    let want = verdicts(&report(&config(&b, dir.path(), &file_source("postfix"))));
    let server = Server::start(fake_es_with(capture("postfix"), false, Docs::Fields)).await;
    let source = es_source(&server.url(), "postfix", false)
        + "    key_field: email.message_id\n    queue_id_field: postfix.queue_id\n";
    let got = verdicts(&report(&config(&b, dir.path(), &source)));
    assert_eq!(got, want);
    let searches: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == "/_search")
        .collect();
    assert!(searches.iter().any(|s| s
        .body
        .to_string()
        .contains("\"terms\":{\"email.message_id\"")));
    assert!(searches.iter().any(|s| s
        .body
        .to_string()
        .contains("\"terms\":{\"postfix.queue_id\"")));
    b.cleanup().await;
}

/// Only decisions and verdicts: a pipeline that keeps parsed fields keeps
/// less than the line, so details differ.
fn decisions(rows: &[Value]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            json!([
                r["key"],
                r["decision"],
                r["reason"],
                r["evidence"]["verdict"],
                r["evidence"]["reason"]
            ])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_that_keep_only_parsed_fields_give_the_files_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let messages = manifest(&fixtures().join("postfix/manifest.json"));
    let keys: Vec<String> = messages.iter().map(|(k, _)| k.clone()).collect();
    let b = app(dir.path(), &keys, "2026-11-28 20:00:00").await;
    let want = verdicts(&report(&config(&b, dir.path(), &file_source("postfix"))));
    let server = Server::start(fake_es_with(capture("postfix"), false, Docs::ParsedOnly)).await;
    let source = es_source(&server.url(), "postfix", false)
        + "    parsed: {queue_id: postfix.queue_id, message_id: email.message_id, recipient: email.to.address, status: postfix.status, dsn: postfix.dsn, detail: postfix.response}\n";
    let got = verdicts(&report(&config(&b, dir.path(), &source)));
    assert_eq!(decisions(&got), decisions(&want));
    let settled = got.iter().filter(|r| r["decision"] != "leave").count();
    assert!(settled >= 150, "{settled} rows settled from parsed fields");
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_uses_its_own_point_in_time_api() {
    let dir = tempfile::tempdir().unwrap();
    let messages = manifest(&fixtures().join("exim/manifest.json"));
    let keys: Vec<String> = messages.iter().map(|(k, _)| k.clone()).collect();
    let b = app(dir.path(), &keys, "2026-11-28 20:00:00").await;
    let want = verdicts(&report(&config(&b, dir.path(), &file_source("exim"))));
    let server = Server::start(fake_es(capture("exim"), true)).await;
    let got = verdicts(&report(&config(
        &b,
        dir.path(),
        &es_source(&server.url(), "exim", true),
    )));
    assert_eq!(got, want);
    assert!(server
        .seen()
        .iter()
        .any(|s| s.path == "/_search/point_in_time" && s.method == "DELETE"));
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_or_hangs_gives_no_verdict_never_absence() {
    let dir = tempfile::tempdir().unwrap();
    let messages = manifest(&fixtures().join("exim/manifest.json"));
    let keys: Vec<String> = messages.iter().map(|(k, _)| k.clone()).collect();
    let b = app(dir.path(), &keys, "2026-11-28 20:00:00").await;
    for (status, delay) in [(500u16, 0u64), (200, 3)] {
        let handler: Arc<Handler> = Arc::new(move |_s: &Seen, _n| {
            if delay > 0 {
                std::thread::sleep(std::time::Duration::from_secs(delay));
            }
            (status, vec![], json!({"status": "error", "error": "boom"}))
        });
        let server = Server::start(handler).await;
        let source =
            loki_source(&server.url(), "exim").replace("retries: 2", "retries: 1\n    timeout: 1s");
        let r = report(&config(&b, dir.path(), &source));
        let s = sweep_json(&r, "notifications");
        assert_eq!(
            reasons(s).get("evidence_unavailable").copied(),
            Some(messages.len() as u64),
            "{status}/{delay}s: every row waits: {s:#}"
        );
        assert!(s["errors"].to_string().contains("mail"), "{s:#}");
    }
    b.cleanup().await;
}
