//! RabbitMQ (AMQP 0-9-1, via lapin): publisher confirms, persistent
//! delivery, exchange + routing key, headers, content type, a JSON body
//! template, and `message_id` = the deterministic idempotency key
//! (`sweep:key:attempt`). Publishes are `mandatory`: a message no queue is
//! bound for comes back and counts as failed. A job counts as requeued only
//! once the broker acked it.

use super::{JobRequest, QueueError};
use crate::config::AmqpConfig;
use crate::core::model::Timestamp;
use crate::core::template::{render, render_str, JobFields};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub struct Amqp {
    name: String,
    cfg: AmqpConfig,
    conn: Connection,
    channel: Channel,
}

fn amqp_err(queue: &str, context: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Other {
        queue: queue.to_string(),
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// The fields of one message: (routing key, body, headers).
pub fn message(cfg: &AmqpConfig, f: &JobFields<'_>) -> (String, Vec<u8>, Vec<(String, String)>) {
    let routing_key = render_str(&cfg.routing_key, f);
    let body = render(&cfg.body, f).to_string().into_bytes();
    let headers = cfg
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), render_str(v, f)))
        .collect();
    (routing_key, body, headers)
}

/// Wait for every publisher confirm, within `timeout` in all. Per message:
/// acked, or why not (returned as unroutable, nacked, no confirm).
pub(crate) async fn await_confirms<F>(
    queue: &str,
    pending: Vec<F>,
    timeout: std::time::Duration,
) -> Result<Vec<Result<(), String>>, QueueError>
where
    F: std::future::Future<Output = Result<Confirmation, lapin::Error>>,
{
    let waited = tokio::time::timeout(timeout, async {
        let mut out = Vec::with_capacity(pending.len());
        for c in pending {
            out.push(match c.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(_))) => {
                    Err("unroutable: no queue is bound for its routing key (returned)".to_string())
                }
                Ok(Confirmation::Nack(_)) => Err("the broker nacked the message".to_string()),
                Ok(Confirmation::NotRequested) => Err("no publisher confirm".to_string()),
                Err(e) => Err(format!("waiting for the confirm: {e}")),
            });
        }
        out
    })
    .await;
    waited.map_err(|_| {
        amqp_err(
            queue,
            "waiting for publisher confirms",
            format!("no confirm within {timeout:?}"),
        )
    })
}

impl Amqp {
    pub async fn connect(name: &str, cfg: &AmqpConfig) -> Result<Amqp, QueueError> {
        let url = cfg.url.to_string();
        let conn = tokio::time::timeout(
            cfg.confirm_timeout,
            Connection::connect(cfg.url.expose(), ConnectionProperties::default()),
        )
        .await
        .map_err(|_| amqp_err(name, &format!("connecting to {url}"), "timed out"))?
        .map_err(|e| amqp_err(name, &format!("connecting to {url}"), e))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| amqp_err(name, "opening a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| amqp_err(name, "enabling publisher confirms", e))?;
        Ok(Amqp {
            name: name.to_string(),
            cfg: cfg.clone(),
            conn,
            channel,
        })
    }

    /// Publish every job, then wait for every confirm (bounded by
    /// `confirm_timeout`). Per-job result: acked, or why not.
    pub async fn push(
        &mut self,
        jobs: &[JobRequest<'_>],
        now: Timestamp,
    ) -> Result<Vec<Result<(), String>>, QueueError> {
        let mut pending = Vec::with_capacity(jobs.len());
        for j in jobs {
            let key = j.idempotency_key();
            let f = j.fields(&key);
            let (routing_key, body, headers) = message(&self.cfg, &f);
            let mut table = FieldTable::default();
            for (k, v) in headers {
                table.insert(k.into(), AMQPValue::LongString(v.into()));
            }
            let props = BasicProperties::default()
                .with_content_type(self.cfg.content_type.clone().into())
                .with_delivery_mode(2)
                .with_message_id(key.clone().into())
                .with_app_id("sweeper".into())
                .with_type(j.class.to_string().into())
                .with_timestamp(u64::try_from(now.timestamp()).unwrap_or(0))
                .with_headers(table);
            let confirm = self
                .channel
                .basic_publish(
                    self.cfg.exchange.clone().into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props,
                )
                .await
                .map_err(|e| amqp_err(&self.name, "publishing", e))?;
            pending.push(confirm);
        }
        await_confirms(&self.name, pending, self.cfg.confirm_timeout).await
    }

    pub fn ping(&self) -> Result<String, QueueError> {
        if !self.conn.status().connected() {
            return Err(amqp_err(
                &self.name,
                "checking the connection",
                "not connected",
            ));
        }
        Ok(format!(
            "amqp at {} (exchange {:?}, routing key {:?}, publisher confirms on)",
            self.cfg.url, self.cfg.exchange, self.cfg.routing_key
        ))
    }
}
