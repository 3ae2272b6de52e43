//! HTTP job APIs: one request per job — method, URL, JSON body template,
//! headers (with `${ENV}` secrets resolved at config load), an
//! `Idempotency-Key` header (`sweep:key:attempt`) and a timeout.
//! 2xx → accepted; 5xx, 429 and connection errors → retried with
//! exponential backoff, honouring `Retry-After`; any other status → that
//! job failed (not retried forever).

use super::{JobRequest, QueueError};
use crate::config::HttpQueueConfig;
use crate::core::template::{render, render_str};
use std::time::Duration;

pub struct HttpQueue {
    name: String,
    cfg: HttpQueueConfig,
    client: reqwest::Client,
}

/// Longest wait we honour from a `Retry-After` header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let d = (at.with_timezone(&chrono::Utc) - now)
        .to_std()
        .unwrap_or_default();
    Some(d.min(MAX_RETRY_AFTER))
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1u64 << attempt.min(6)))
}

impl HttpQueue {
    pub fn new(name: &str, cfg: &HttpQueueConfig) -> Result<HttpQueue, QueueError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("sweeper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| QueueError::Other {
                queue: name.to_string(),
                context: "building the HTTP client".into(),
                message: e.to_string(),
            })?;
        Ok(HttpQueue {
            name: name.to_string(),
            cfg: cfg.clone(),
            client,
        })
    }

    async fn send_one(&self, job: &JobRequest<'_>) -> Result<(), String> {
        let key = job.idempotency_key();
        let f = job.fields(&key);
        let url = render_str(&self.cfg.url, &f);
        let body = render(&self.cfg.body, &f);
        let method =
            reqwest::Method::from_bytes(self.cfg.method.as_bytes()).map_err(|e| e.to_string())?;
        let mut attempt = 0u32;
        loop {
            let mut req = self
                .client
                .request(method.clone(), &url)
                .header("Idempotency-Key", &key)
                .json(&body);
            for (k, v) in &self.cfg.headers {
                req = req.header(k, render_str(v.expose(), &f));
            }
            let (retryable, wait, why) = match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let wait = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry_after(v, chrono::Utc::now()));
                    let text = resp.text().await.unwrap_or_default();
                    let why = format!(
                        "{method} {url}: HTTP {status}: {}",
                        text.chars().take(200).collect::<String>()
                    );
                    let retryable = status.is_server_error() || status.as_u16() == 429;
                    (retryable, wait, why)
                }
                Err(e) => (true, None, format!("{method} {url}: {e}")),
            };
            if !retryable || attempt >= self.cfg.max_retries {
                return Err(why);
            }
            tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt))).await;
            attempt += 1;
        }
    }

    /// One request per job (a few at a time); a result per job.
    pub async fn push(
        &mut self,
        jobs: &[JobRequest<'_>],
    ) -> Result<Vec<Result<(), String>>, QueueError> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(4) {
            let results = futures_join(chunk.iter().map(|j| self.send_one(j))).await;
            out.extend(results);
        }
        Ok(out)
    }

    pub fn ping(&self) -> Result<String, QueueError> {
        Ok(format!(
            "http {} {} (timeout {:?}, {} retries)",
            self.cfg.method, self.cfg.url, self.cfg.timeout, self.cfg.max_retries
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Await futures concurrently, keeping their order.
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    let mut remaining = set.len();
    std::future::poll_fn(|cx| {
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
                    out[i] = Some(v);
                    remaining -= 1;
                }
            }
        }
        if remaining == 0 {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates_and_caps() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("3600", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            retry_after("Sat, 28 Nov 2026 10:00:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after("Sat, 28 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
    }
}
