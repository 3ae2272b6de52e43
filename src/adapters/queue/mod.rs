//! Queue adapters: push a job into the app's own queue in that queue's wire
//! format, check connectivity.
//!
//! Owns: wire formats and the I/O of pushing. Does not own: deciding what to
//! push or when (core::decide), or bookkeeping (the ledger).
//!
//! A push is all-or-nothing per batch from the caller's point of view: an
//! error means none of the batch may be counted as requeued.

pub mod jsonl;
pub mod resque;
pub mod sidekiq;

use crate::config::{QueueConfig, QueueKind};
use crate::core::model::Timestamp;
use std::time::Duration;

/// One job to push.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRequest<'a> {
    pub sweep: &'a str,
    pub row_key: &'a str,
    pub attempt: u32,
    /// Queue name inside the queue system.
    pub queue: &'a str,
    pub class: &'a str,
    pub args: &'a [serde_json::Value],
}

impl JobRequest<'_> {
    /// Deterministic per row and attempt: `sweep:key:attempt`.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.sweep, self.row_key, self.attempt)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {queue}: cannot connect to {url}: {source}")]
    Connect {
        queue: String,
        url: String,
        source: redis::RedisError,
    },
    #[error("queue {queue}: {context}: {source}")]
    Redis {
        queue: String,
        context: String,
        source: redis::RedisError,
    },
    #[error("queue {queue}: {context}: {source}")]
    Io {
        queue: String,
        context: String,
        source: std::io::Error,
    },
}

/// A connected queue.
pub enum QueueClient {
    Resque(resque::Resque),
    Sidekiq(sidekiq::Sidekiq),
    Jsonl(jsonl::JsonlSink),
}

pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn redis_connect(
    queue: &str,
    url: &str,
) -> Result<redis::aio::MultiplexedConnection, QueueError> {
    let err = |source| QueueError::Connect {
        queue: queue.to_string(),
        url: crate::config::redact_url(url),
        source,
    };
    let client = redis::Client::open(url).map_err(err)?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(REDIS_TIMEOUT)
        .set_response_timeout(REDIS_TIMEOUT);
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(err)
}

impl QueueClient {
    pub async fn connect(cfg: &QueueConfig) -> Result<QueueClient, QueueError> {
        Ok(match &cfg.kind {
            QueueKind::Resque(r) => {
                QueueClient::Resque(resque::Resque::connect(&cfg.name, r).await?)
            }
            QueueKind::Sidekiq(s) => {
                QueueClient::Sidekiq(sidekiq::Sidekiq::connect(&cfg.name, s).await?)
            }
            QueueKind::Jsonl { path } => QueueClient::Jsonl(jsonl::JsonlSink::new(&cfg.name, path)),
            QueueKind::Amqp(_) | QueueKind::Http(_) => {
                unreachable!("validation rejects queue kinds this build cannot push to")
            }
        })
    }

    /// Push every job; one round trip per batch where the queue allows.
    pub async fn push(
        &mut self,
        jobs: &[JobRequest<'_>],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        match self {
            QueueClient::Resque(q) => q.push(jobs).await,
            QueueClient::Sidekiq(q) => q.push(jobs, now).await,
            QueueClient::Jsonl(q) => q.push(jobs, now).await,
        }
    }

    /// Check the queue is reachable; returns a description for `check`.
    pub async fn ping(&mut self) -> Result<String, QueueError> {
        match self {
            QueueClient::Resque(q) => q.ping().await,
            QueueClient::Sidekiq(q) => q.ping().await,
            QueueClient::Jsonl(q) => q.ping(),
        }
    }
}
