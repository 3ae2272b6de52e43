//! Email-provider event APIs as evidence sources: Mailgun, SendGrid,
//! Postmark and a generic JSON status API.
//!
//! Owns: the requests — auth, paging, per-source rate limit (requests per
//! second) and concurrency bound, timeouts, retries with backoff on 5xx,
//! 429 honouring `Retry-After` (or SendGrid's `X-RateLimit-Reset`), and a
//! per-pass circuit breaker: once a request fails for good, the source
//! answers nothing more this pass (its rows get no verdict, never a guess).
//! Does not own: what payloads mean (core::evidence::provider).

use crate::config::{ProviderApi, ProviderConfig, Secret};
use crate::core::evidence::provider::{self, EventKind, ProviderEvent};
use crate::core::evidence::{normalize_key, TraceStore};
use crate::core::model::Timestamp;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A row the source is asked about.
#[derive(Clone, Debug)]
pub struct WantedRow {
    /// The normalised lookup value (Message-ID, X-Message-Id, MessageID…).
    pub key: String,
    /// Evidence from before this instant does not count.
    pub since: Timestamp,
    /// Other row columns (http URL templates).
    pub fields: BTreeMap<String, String>,
}

/// What a source answered in one pass.
#[derive(Debug, Default)]
pub struct ProviderScan {
    pub store: TraceStore,
    /// Event references, indexed by the traces' `LineRef.line`.
    pub refs: Vec<String>,
    /// Keys the source could not be asked about, and why.
    pub failed: HashMap<String, String>,
    pub requests: u64,
}

/// The longest wait a 429 may impose within a pass.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Follow at most this many `paging.next` links per query.
const MAX_PAGES: usize = 200;

/// How a source authenticates; the secret parts stay `Secret`s until the
/// request is built.
pub(crate) enum Auth {
    Basic(String, Secret),
    Bearer(Secret),
    Header(&'static str, Secret),
    Headers(Vec<(String, Secret)>),
}

/// An HTTP JSON client with a source's politeness: rate limit, timeouts,
/// retries with backoff, 429 waits, and a per-pass circuit breaker.
pub(crate) struct Client {
    http: reqwest::Client,
    name: String,
    auth: Auth,
    interval: Duration,
    next_slot: tokio::sync::Mutex<tokio::time::Instant>,
    retries: u32,
    broken: Mutex<Option<String>>,
    pub(crate) requests: AtomicU64,
}

/// Percent-encode one URL path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1u64 << attempt.min(6)))
}

/// How long a 429 asks us to wait: `Retry-After` (seconds or date), else
/// `X-RateLimit-Reset` (unix seconds).
fn wait_hint(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let now = chrono::Utc::now();
    if let Some(v) = h
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(d) = super::queue::http::retry_after(v, now) {
            return Some(d);
        }
    }
    let reset = h
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())?;
    Some(Duration::from_secs((reset - now.timestamp()).max(0) as u64).min(MAX_WAIT))
}

impl Client {
    fn new(name: &str, cfg: &ProviderConfig, auth: Auth) -> Result<Client, String> {
        Client::with(name, cfg.timeout, cfg.rate_limit, cfg.retries, auth)
    }

    pub(crate) fn with(
        name: &str,
        timeout: Duration,
        rate_limit: f64,
        retries: u32,
        auth: Auth,
    ) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("sweeper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let rps = if rate_limit > 0.0 { rate_limit } else { 1000.0 };
        Ok(Client {
            http,
            name: name.to_string(),
            auth,
            interval: Duration::from_secs_f64(1.0 / rps),
            next_slot: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            retries,
            broken: Mutex::new(None),
            requests: AtomicU64::new(0),
        })
    }

    /// Wait for this request's slot under the rate limit.
    async fn wait_turn(&self) {
        let slot = {
            let mut next = self.next_slot.lock().await;
            let now = tokio::time::Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    fn broken(&self) -> Option<String> {
        self.broken.lock().expect("breaker lock").clone()
    }

    fn trip(&self, why: &str) {
        let mut b = self.broken.lock().expect("breaker lock");
        if b.is_none() {
            *b = Some(why.to_string());
        }
    }

    /// GET a JSON document. With `per_item` (an endpoint about one message),
    /// `Ok(None)` when the provider says it does not know it (404,
    /// Postmark's 422 ErrorCode 701). On list and search endpoints a 404
    /// means a wrong domain, region or URL: an error, never "no events".
    async fn get(&self, url: &str, per_item: bool) -> Result<Option<Value>, String> {
        self.request(reqwest::Method::GET, url, None, &[], per_item)
            .await
    }

    /// Send a request with an optional JSON body and extra headers; the
    /// answer's JSON. Errors as for `get` (a 404 is an error).
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Value, String> {
        self.request(method, url, body, headers, false)
            .await?
            .ok_or_else(|| format!("{}: no answer from {url}", self.name))
    }

    async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        per_item: bool,
    ) -> Result<Option<Value>, String> {
        if let Some(why) = self.broken() {
            return Err(format!(
                "{}: not asked: the source failed earlier in this pass ({why})",
                self.name
            ));
        }
        let mut attempt = 0u32;
        loop {
            self.wait_turn().await;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .http
                .request(method.clone(), url)
                .header("Accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            req = match &self.auth {
                Auth::Basic(u, p) => req.basic_auth(u, Some(p.expose())),
                Auth::Bearer(t) => req.bearer_auth(t.expose()),
                Auth::Header(k, v) => req.header(*k, v.expose()),
                Auth::Headers(hs) => hs.iter().fold(req, |r, (k, v)| r.header(k, v.expose())),
            };
            let (retry, wait, why) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let hint = wait_hint(resp.headers());
                    let body = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return serde_json::from_str(&body).map(Some).map_err(|e| {
                            let why = format!("{}: malformed JSON from {url}: {e}", self.name);
                            self.trip(&why);
                            why
                        });
                    }
                    let postmark_701 = status.as_u16() == 422
                        && serde_json::from_str::<Value>(&body)
                            .ok()
                            .and_then(|v| v.get("ErrorCode").and_then(Value::as_i64))
                            == Some(701);
                    let not_found = status.as_u16() == 404 || postmark_701;
                    if not_found && per_item {
                        return Ok(None);
                    }
                    let short: String = body.chars().take(200).collect();
                    let why = format!("{}: HTTP {status} from {url}: {short}", self.name);
                    let retry = status.is_server_error() || status.as_u16() == 429;
                    (retry, hint, why)
                }
                Err(e) => {
                    let kind = if e.is_timeout() {
                        "timed out"
                    } else {
                        "request failed"
                    };
                    (true, None, format!("{}: {kind}: {url}: {e}", self.name))
                }
            };
            if !retry || attempt >= self.retries {
                self.trip(&why);
                return Err(why);
            }
            tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt)).min(MAX_WAIT)).await;
            attempt += 1;
        }
    }
}

/// Run `f` over `items`, at most `n` at a time, keeping order.
pub(crate) async fn bounded<'a, T, F, Fut, R>(items: &'a [T], n: usize, f: F) -> Vec<R>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(n.max(1)) {
        let futs: Vec<_> = chunk.iter().map(&f).collect();
        out.extend(join_all(futs).await);
    }
    out
}

async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("finished")).collect()
}

/// Follow Mailgun paging from `url` until a page has no items.
async fn mailgun_pages(c: &Client, url: String) -> Result<Vec<ProviderEvent>, String> {
    let mut events = Vec::new();
    let mut next = Some(url);
    let mut pages = 0;
    while let Some(u) = next.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(format!(
                "{}: more than {MAX_PAGES} pages; narrow the window",
                c.name
            ));
        }
        let Some(doc) = c.get(&u, false).await? else {
            break;
        };
        let (mut page, n) = provider::mailgun_page(&doc).map_err(|e| format!("{}: {e}", c.name))?;
        events.append(&mut page);
        next = n;
    }
    Ok(events)
}

/// One Postmark message's events (details, then each bounce's type),
/// recorded under `key`.
async fn postmark_message(
    c: &Client,
    base: &str,
    message_id: &str,
    key: &str,
) -> Result<Vec<ProviderEvent>, String> {
    let u = format!("{base}/messages/outbound/{}/details", encode(message_id));
    let Some(doc) = c.get(&u, true).await? else {
        return Ok(Vec::new());
    };
    let (mut ev, bounces) = provider::postmark_details(&doc, key);
    for (id, rcpt, at) in bounces {
        let u = format!("{base}/bounces/{}", encode(&id));
        let (kind, detail) = match c.get(&u, true).await? {
            Some(b) => provider::postmark_bounce(&b),
            // A bounce we cannot read: no verdict for it.
            None => (EventKind::Deferred, "bounce record not found".to_string()),
        };
        ev.push(ProviderEvent {
            key: key.to_string(),
            recipient: rcpt,
            kind,
            at,
            reference: format!("postmark bounce {id}"),
            detail,
        });
    }
    Ok(ev)
}

fn epoch(t: Timestamp) -> i64 {
    t.timestamp()
}

/// One provider source for the length of a pass: its client (rate limit,
/// concurrency, circuit breaker) lives across every page the pass asks it
/// about, so a source that failed for good stays quiet for the whole pass.
pub struct Source {
    name: String,
    cfg: ProviderConfig,
    client: Result<Client, String>,
}

impl Source {
    pub fn new(name: &str, cfg: &ProviderConfig) -> Source {
        let auth = match &cfg.api {
            ProviderApi::Mailgun { api_key, .. } => Auth::Basic("api".into(), api_key.clone()),
            ProviderApi::Sendgrid { api_key } => Auth::Bearer(api_key.clone()),
            ProviderApi::Postmark { token, .. } => {
                Auth::Header("X-Postmark-Server-Token", token.clone())
            }
            ProviderApi::Http { headers, .. } => Auth::Headers(
                headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        };
        Source {
            name: name.to_string(),
            cfg: cfg.clone(),
            client: Client::new(name, cfg, auth),
        }
    }

    /// Whether asking about `rows` at once is one time-range scan rather
    /// than one query per key (Mailgun above `time_range_above`): such a
    /// scan is made once per pass for every row, not once per page.
    pub fn scans_time_range(&self, rows: usize) -> bool {
        matches!(self.cfg.api, ProviderApi::Mailgun { .. }) && rows > self.cfg.time_range_above
    }

    /// Ask the source about `rows`.
    pub async fn fetch(&self, rows: &[WantedRow], keep_text: bool) -> ProviderScan {
        let mut scan = ProviderScan {
            store: TraceStore::new(keep_text),
            ..Default::default()
        };
        if rows.is_empty() {
            return scan;
        }
        let client = match &self.client {
            Ok(c) => c,
            Err(e) => {
                for r in rows {
                    scan.failed.insert(r.key.clone(), e.clone());
                }
                return scan;
            }
        };
        let before = client.requests.load(Ordering::Relaxed);
        fetch_with(&self.name, &self.cfg, client, rows, &mut scan).await;
        scan.requests = client.requests.load(Ordering::Relaxed) - before;
        scan
    }
}

/// Ask the source about `rows` (a one-off `Source`).
pub async fn fetch(
    name: &str,
    cfg: &ProviderConfig,
    rows: &[WantedRow],
    keep_text: bool,
) -> ProviderScan {
    Source::new(name, cfg).fetch(rows, keep_text).await
}

async fn fetch_with(
    name: &str,
    cfg: &ProviderConfig,
    client: &Client,
    rows: &[WantedRow],
    scan: &mut ProviderScan,
) {
    let base = cfg.base_url.trim_end_matches('/');
    let conc = cfg.concurrency.max(1) as usize;
    let failed = &mut scan.failed;
    let mut events = match &cfg.api {
        ProviderApi::Mailgun { domain, .. } => {
            let url = |extra: String| {
                format!(
                    "{base}/v3/{}/events?{extra}ascending=yes&limit=300",
                    encode(domain)
                )
            };
            if rows.len() > cfg.time_range_above {
                mailgun_time_range(client, rows, &url, failed).await
            } else {
                let results = bounded(rows, conc, |r| {
                    let u = url(format!(
                        "message-id={}&begin={}&",
                        encode(&r.key),
                        epoch(r.since)
                    ));
                    async move {
                        let res = mailgun_pages(client, u)
                            .await
                            .map(|ev| ev.into_iter().filter(|e| e.key == r.key).collect());
                        (r.key.clone(), res)
                    }
                })
                .await;
                keep_answered(results, failed)
            }
        }
        ProviderApi::Sendgrid { .. } => sendgrid_batches(client, base, rows, conc, failed).await,
        ProviderApi::Postmark { metadata_key, .. } => {
            let results = bounded(rows, conc, |r| {
                postmark_row(client, base, metadata_key.as_deref(), &r.key)
            })
            .await;
            keep_answered(results, failed)
        }
        ProviderApi::Http {
            url,
            status,
            events: events_ptr,
            recipient,
            statuses,
            ..
        } => {
            let results = bounded(rows, conc, |r| async move {
                let mut u = url.replace("{key}", &encode(&r.key));
                for (col, val) in &r.fields {
                    u = u.replace(&format!("{{{col}}}"), &encode(val));
                }
                let res = match client.get(&u, true).await {
                    Ok(Some(doc)) => provider::generic(
                        &doc,
                        &r.key,
                        events_ptr.as_deref(),
                        status,
                        recipient.as_deref(),
                        statuses,
                    )
                    .map_err(|e| format!("{name}: {u}: {e}")),
                    Ok(None) => Ok(Vec::new()),
                    Err(e) => Err(e),
                };
                (r.key.clone(), res)
            })
            .await;
            keep_answered(results, failed)
        }
    };
    for e in &mut events {
        e.key = normalize_key(&e.key).to_string();
    }
    provider::record(&mut scan.store, &mut events, &mut scan.refs);
}

/// One answer per key: its events, or why the source could not be asked.
type KeyedEvents = (String, Result<Vec<ProviderEvent>, String>);

/// The events of every key that was answered; each key that was not goes
/// into `failed` with its reason.
fn keep_answered(
    results: Vec<KeyedEvents>,
    failed: &mut HashMap<String, String>,
) -> Vec<ProviderEvent> {
    let mut events = Vec::new();
    for (key, res) in results {
        match res {
            Ok(mut ev) => events.append(&mut ev),
            Err(e) => {
                failed.insert(key, e);
            }
        }
    }
    events
}

/// Mailgun, many rows: one time-range scan from the oldest row, matched
/// locally. When it fails, every row fails with it.
async fn mailgun_time_range(
    client: &Client,
    rows: &[WantedRow],
    url: &impl Fn(String) -> String,
    failed: &mut HashMap<String, String>,
) -> Vec<ProviderEvent> {
    let wanted: HashSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let begin = rows.iter().map(|r| r.since).min().map(epoch).unwrap_or(0);
    match mailgun_pages(client, url(format!("begin={begin}&"))).await {
        Ok(ev) => ev
            .into_iter()
            .filter(|e| wanted.contains(e.key.as_str()))
            .collect(),
        Err(e) => {
            for r in rows {
                failed.insert(r.key.clone(), e.clone());
            }
            Vec::new()
        }
    }
}

/// SendGrid: ten message ids per query (`msg_id LIKE 'id%' OR …`); a
/// failed query fails each of its keys.
async fn sendgrid_batches(
    client: &Client,
    base: &str,
    rows: &[WantedRow],
    conc: usize,
    failed: &mut HashMap<String, String>,
) -> Vec<ProviderEvent> {
    let batches: Vec<Vec<String>> = rows
        .chunks(10)
        .map(|c| c.iter().map(|r| r.key.clone()).collect())
        .collect();
    let results = bounded(&batches, conc, |keys| async move {
        if let Some(bad) = keys.iter().find(|k| k.contains('\'') || k.contains('%')) {
            return (keys, Err(format!("sendgrid: cannot query msg_id {bad:?}")));
        }
        let query = keys
            .iter()
            .map(|k| format!("msg_id LIKE '{k}%'"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let u = format!("{base}/v3/messages?limit=1000&query={}", encode(&query));
        let res = match client.get(&u, false).await {
            Ok(Some(doc)) => provider::sendgrid_messages(&doc, keys),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        (keys, res)
    })
    .await;
    let mut events = Vec::new();
    for (keys, res) in results {
        match res {
            Ok(mut ev) => events.append(&mut ev),
            Err(e) => {
                for k in keys {
                    failed.insert(k.clone(), e.clone());
                }
            }
        }
    }
    events
}

/// Postmark, one row: its message ids (the key itself, or an outbound
/// search by one metadata field), then each message's details.
async fn postmark_row(
    client: &Client,
    base: &str,
    metadata_key: Option<&str>,
    key: &str,
) -> KeyedEvents {
    let ids = match metadata_key {
        None => vec![key.to_string()],
        Some(k) => {
            let u = format!(
                "{base}/messages/outbound?count=50&offset=0&metadata_{}={}",
                encode(k),
                encode(key)
            );
            match client.get(&u, false).await {
                Ok(Some(doc)) => provider::postmark_search_ids(&doc),
                Ok(None) => Vec::new(),
                Err(e) => return (key.to_string(), Err(e)),
            }
        }
    };
    let mut ev = Vec::new();
    for id in ids {
        match postmark_message(client, base, &id, key).await {
            Ok(mut e) => ev.append(&mut e),
            Err(e) => return (key.to_string(), Err(e)),
        }
    }
    (key.to_string(), Ok(ev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_url_parts() {
        assert_eq!(encode("a@b.c"), "a%40b.c");
        assert_eq!(encode("msg_id LIKE 'x%'"), "msg_id%20LIKE%20%27x%25%27");
        assert_eq!(encode("7c3f-9a21_~."), "7c3f-9a21_~.");
    }
}
