//! Queue adapters: push a job into the app's own queue in that queue's wire
//! format; look whether a job is still queued or running (presence); look
//! whether a queue has live workers.
//!
//! Owns: wire formats and the I/O of pushing. Does not own: deciding what to
//! push or when (core::decide), or bookkeeping (the ledger).
//!
//! `push` returns `Err` when the whole batch failed (connection lost: none
//! of it may count as requeued) and otherwise one result per job (HTTP and
//! AMQP accept or refuse jobs one by one).

pub mod activejob;
pub mod amqp;
pub mod bullmq;
pub mod celery;
pub mod http;
pub mod jsonl;
pub mod presence;
pub mod resque;
pub mod rq;
pub mod sidekiq;

use crate::config::{JobConfig, QueueConfig, QueueKind};
use crate::core::model::Timestamp;
use crate::core::template::JobFields;
use serde_json::{Map, Value};
use std::time::Duration;

/// A row's job, built from its column values before anything is written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BuiltJob {
    /// Positional arguments; for an ActiveJob job already serialized as
    /// ActiveJob writes them.
    pub args: Vec<Value>,
    /// Keyword arguments (Celery, RQ) or the data object's fields (BullMQ).
    pub kwargs: Map<String, Value>,
    /// RQ: the id of the job to requeue.
    pub job_id: Option<String>,
}

/// Build a row's job from its column values (`row`, in `job.args` order).
/// `Err` names why the values cannot become the job.
pub fn build(job: &JobConfig, row: &[Value]) -> Result<BuiltJob, String> {
    if let Some(aj) = &job.activejob {
        return Ok(BuiltJob {
            args: activejob::arguments(aj, row)?,
            ..BuiltJob::default()
        });
    }
    let col = |i: usize| row.get(i).cloned().unwrap_or(Value::Null);
    let job_id = match job.job_id {
        None => None,
        Some(i) => Some(match col(i) {
            Value::String(s) if !s.is_empty() => s,
            Value::Number(n) => n.to_string(),
            Value::Null => {
                return Err(format!(
                    "the job id column {} is NULL: no RQ job to requeue",
                    job.args.get(i).map_or("?", |c| c.name())
                ))
            }
            other => return Err(format!("{other} is not an RQ job id")),
        }),
    };
    Ok(BuiltJob {
        args: job.positional.iter().map(|i| col(*i)).collect(),
        kwargs: job
            .kwargs
            .iter()
            .map(|(k, i)| (k.clone(), col(*i)))
            .collect(),
        job_id,
    })
}

/// One job to push.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRequest<'a> {
    pub sweep: &'a str,
    pub row_key: &'a str,
    pub attempt: u32,
    /// Queue name inside the queue system.
    pub queue: &'a str,
    pub class: &'a str,
    /// The job's arguments; for an ActiveJob job already serialized as
    /// ActiveJob writes them (`activejob::arguments`).
    pub args: &'a [serde_json::Value],
    /// Keyword arguments (Celery, RQ) or data fields (BullMQ).
    pub kwargs: &'a Map<String, Value>,
    /// RQ: requeue this existing job.
    pub job_id: Option<&'a str>,
    /// `Some`: wrap the job in an ActiveJob envelope.
    pub activejob: Option<&'a crate::config::ActiveJobFormat>,
}

impl<'a> JobRequest<'a> {
    /// Deterministic per row and attempt: `sweep:key:attempt`.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.sweep, self.row_key, self.attempt)
    }

    /// The job as template fields.
    pub fn fields<'b>(&'b self, idempotency_key: &'b str) -> JobFields<'b> {
        JobFields {
            class: self.class,
            queue: self.queue,
            args: self.args,
            sweep: self.sweep,
            key: self.row_key,
            attempt: self.attempt,
            idempotency_key,
        }
    }
}

/// The message a worker will receive for a row's job, pushed as `attempt`
/// (for `explain`; ids generated at push are shown as placeholders). `None` for queue kinds
/// whose message is not one JSON document; `Some(Err)` when the row's
/// values cannot become the job.
pub fn preview(
    qcfg: &QueueConfig,
    job: &JobConfig,
    row_args: &[Value],
    (sweep, row_key, attempt): (&str, &str, u32),
    now: Timestamp,
) -> Option<Result<String, String>> {
    let built = match build(job, row_args) {
        Ok(b) => b,
        Err(e) => return Some(Err(e)),
    };
    let req = JobRequest {
        sweep,
        row_key,
        attempt,
        queue: &job.queue,
        class: &job.class,
        args: &built.args,
        kwargs: &built.kwargs,
        job_id: built.job_id.as_deref(),
        activejob: job.activejob.as_ref(),
    };
    let text = match &qcfg.kind {
        QueueKind::Resque(_) => resque::payload_of(&req, now),
        QueueKind::Sidekiq(s) => sidekiq::payload(s, &req, "<a new jid>", now),
        QueueKind::Celery(c) => celery::preview(c, &req),
        QueueKind::Bullmq(b) => bullmq::preview(b, &req, now),
        QueueKind::Rq(_) => rq::preview(&req, now),
        QueueKind::Jsonl { .. } | QueueKind::Amqp(_) | QueueKind::Http(_) => return None,
    };
    // The job id is new at every push.
    let text = match serde_json::from_str::<Value>(&text) {
        Ok(mut v) => {
            if let Some(h) = v
                .get_mut("args")
                .and_then(|a| a.get_mut(0))
                .filter(|h| h.get("job_id").is_some())
            {
                h["job_id"] = Value::from("<a new UUID>");
            }
            v.to_string()
        }
        Err(_) => text,
    };
    Some(Ok(text))
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
    #[error("queue {queue}: {context}: {message}")]
    Other {
        queue: String,
        context: String,
        message: String,
    },
}

/// A connected queue.
pub enum QueueClient {
    Resque(resque::Resque),
    Sidekiq(sidekiq::Sidekiq),
    Jsonl(jsonl::JsonlSink),
    Amqp(Box<amqp::Amqp>),
    Http(http::HttpQueue),
    Celery(Box<celery::Celery>),
    Bullmq(bullmq::Bullmq),
    Rq(rq::Rq),
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

/// Wrap a Redis error with the queue's name and what was being done.
pub(crate) fn redis_err(
    queue: &str,
    context: &str,
) -> impl FnOnce(redis::RedisError) -> QueueError {
    let (queue, context) = (queue.to_string(), context.to_string());
    move |source| QueueError::Redis {
        queue,
        context,
        source,
    }
}

/// Every job of the batch gets the same result.
fn all_ok(n: usize) -> Vec<Result<(), String>> {
    vec![Ok(()); n]
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
            QueueKind::Amqp(a) => {
                QueueClient::Amqp(Box::new(amqp::Amqp::connect(&cfg.name, a).await?))
            }
            QueueKind::Http(h) => QueueClient::Http(http::HttpQueue::new(&cfg.name, h)?),
            QueueKind::Celery(c) => {
                QueueClient::Celery(Box::new(celery::Celery::connect(&cfg.name, c).await?))
            }
            QueueKind::Bullmq(b) => {
                QueueClient::Bullmq(bullmq::Bullmq::connect(&cfg.name, b).await?)
            }
            QueueKind::Rq(r) => QueueClient::Rq(rq::Rq::connect(&cfg.name, r).await?),
        })
    }

    /// Push every job; one round trip per batch where the queue allows.
    pub async fn push(
        &mut self,
        jobs: &[JobRequest<'_>],
        now: Timestamp,
    ) -> Result<Vec<Result<(), String>>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            QueueClient::Resque(q) => q.push(jobs, now).await.map(|()| all_ok(jobs.len())),
            QueueClient::Sidekiq(q) => q.push(jobs, now).await.map(|()| all_ok(jobs.len())),
            QueueClient::Jsonl(q) => q.push(jobs, now).await.map(|()| all_ok(jobs.len())),
            QueueClient::Amqp(q) => q.push(jobs, now).await,
            QueueClient::Http(q) => q.push(jobs).await,
            QueueClient::Celery(q) => q.push(jobs).await,
            QueueClient::Bullmq(q) => q.push(jobs, now).await,
            QueueClient::Rq(q) => q.push(jobs, now).await,
        }
    }

    /// Check the queue is reachable; returns a description for `check`.
    pub async fn ping(&mut self) -> Result<String, QueueError> {
        match self {
            QueueClient::Resque(q) => q.ping().await,
            QueueClient::Sidekiq(q) => q.ping().await,
            QueueClient::Jsonl(q) => q.ping(),
            QueueClient::Amqp(q) => q.ping(),
            QueueClient::Http(q) => q.ping(),
            QueueClient::Celery(q) => q.ping().await,
            QueueClient::Bullmq(q) => q.ping().await,
            QueueClient::Rq(q) => q.ping().await,
        }
    }

    /// Jobs of `class` waiting in `queue` or running, looking at no more
    /// than `max_entries` entries. `None` for queues that cannot be looked
    /// into (jsonl, amqp, http).
    pub async fn presence(
        &mut self,
        queue: &str,
        max_entries: u64,
    ) -> Result<Option<presence::PresenceIndex>, QueueError> {
        match self {
            QueueClient::Resque(q) => q.presence(queue, max_entries).await.map(Some),
            QueueClient::Sidekiq(q) => q.presence(queue, max_entries).await.map(Some),
            QueueClient::Celery(q) => q.presence(queue, max_entries).await,
            QueueClient::Bullmq(q) => q.presence(queue, max_entries).await.map(Some),
            QueueClient::Rq(q) => q.presence(queue, max_entries).await.map(Some),
            QueueClient::Jsonl(_) | QueueClient::Amqp(_) | QueueClient::Http(_) => Ok(None),
        }
    }

    /// Whether some live worker serves `queue`. `None` when the queue kind
    /// has no worker registry.
    pub async fn workers_alive(&mut self, queue: &str) -> Result<Option<bool>, QueueError> {
        match self {
            QueueClient::Resque(q) => q.workers_alive(queue).await.map(Some),
            QueueClient::Sidekiq(q) => q.workers_alive(queue).await.map(Some),
            _ => Ok(None),
        }
    }
}
