//! Celery: task messages in Celery's message protocol v2, on either of its
//! brokers.
//!
//! The message (celery `app/amqp.py` `as_task_v2`): headers `lang, task,
//! id, shadow, eta, expires, group, group_index, retries, timelimit,
//! root_id, parent_id, argsrepr, kwargsrepr, origin, ignore_result,
//! replaced_task_nesting, stamped_headers, stamps`; body the JSON array
//! `[args, kwargs, {callbacks, errbacks, chain, chord}]`.
//!
//! - Redis (kombu `transport/redis.py` `_put`): `LPUSH <prefix><queue>` of
//!   kombu's JSON envelope — the body base64-encoded, `properties` with
//!   `delivery_tag`, `delivery_info {exchange, routing_key}`, `priority`,
//!   `body_encoding`. A non-zero priority goes to kombu's priority list
//!   `<queue>\x06\x16<step>` (steps 0, 3, 6, 9; 0 is served first).
//! - RabbitMQ: the headers as AMQP application headers, the body as raw
//!   JSON, published to the default exchange with the queue's name as
//!   routing key, mandatory, with publisher confirms — after a passive
//!   declare, so a queue no worker has declared is an error, not a message
//!   dropped as unroutable.
//!
//! Presence (Redis only): the queue's lists and kombu's `unacked` hash
//! (messages a worker has taken and not acknowledged: running, or
//! prefetched).

use super::presence::{python_key, PresenceIndex};
use super::{redis_connect, JobRequest, QueueError};
use crate::config::{CeleryBroker, CeleryConfig};
use base64::Engine as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Map, Value};

/// kombu's separator between a queue's name and its priority step.
pub const PRIORITY_SEP: &str = "\x06\x16";
const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The priority step kombu files a message of priority `p` under.
pub fn priority_step(p: u8) -> u8 {
    PRIORITY_STEPS
        .iter()
        .copied()
        .filter(|s| *s <= p)
        .max()
        .unwrap_or(0)
}

/// The Redis list a message of priority `p` for `queue` is pushed to.
pub fn redis_key(prefix: &str, queue: &str, p: u8) -> String {
    match priority_step(p) {
        0 => format!("{prefix}{queue}"),
        s => format!("{prefix}{queue}{PRIORITY_SEP}{s}"),
    }
}

/// One task message, broker-independent.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskMessage {
    pub id: String,
    pub headers: Map<String, Value>,
    /// `[args, kwargs, embed]` as JSON text.
    pub body: String,
}

/// A Python literal for a JSON value (Celery's `argsrepr`/`kwargsrepr` are
/// for people and logs: `(7, 'a')`, `{'x': None}`).
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&Value::from(k.as_str())), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn args_repr(args: &[Value]) -> String {
    let inner: Vec<String> = args.iter().map(py_repr).collect();
    match inner.len() {
        1 => format!("({},)", inner[0]),
        _ => format!("({})", inner.join(", ")),
    }
}

/// The task message for a job, with task id `id`.
pub fn message(job: &JobRequest<'_>, id: &str) -> TaskMessage {
    let kwargs = Value::Object(job.kwargs.clone());
    let headers = json!({
        "lang": "py",
        "task": job.class,
        "id": id,
        "shadow": null,
        "eta": null,
        "expires": null,
        "group": null,
        "group_index": null,
        "retries": 0,
        "timelimit": [null, null],
        "root_id": id,
        "parent_id": null,
        "argsrepr": args_repr(job.args),
        "kwargsrepr": py_repr(&kwargs),
        "origin": format!("sweeper@{}", job.sweep),
        "ignore_result": false,
        "replaced_task_nesting": 0,
        "stamped_headers": null,
        "stamps": {},
    });
    let body = json!([
        job.args,
        kwargs,
        {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
    ]);
    TaskMessage {
        id: id.to_string(),
        headers: headers.as_object().cloned().unwrap_or_default(),
        body: body.to_string(),
    }
}

/// kombu's Redis envelope around a task message.
pub fn redis_envelope(m: &TaskMessage, queue: &str, priority: u8, delivery_tag: &str) -> String {
    json!({
        "body": base64::engine::general_purpose::STANDARD.encode(m.body.as_bytes()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": m.headers,
        "properties": {
            "correlation_id": m.id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag,
        },
    })
    .to_string()
}

/// The message as a worker receives it, for `explain`.
pub fn preview(cfg: &CeleryConfig, job: &JobRequest<'_>) -> String {
    let m = message(job, "<a new task id>");
    match &cfg.broker {
        CeleryBroker::Redis { .. } => {
            let mut env: Value = serde_json::from_str(&redis_envelope(
                &m,
                job.queue,
                cfg.priority,
                "<a new delivery tag>",
            ))
            .unwrap_or_default();
            // Shown decoded: the base64 body says nothing to a reader.
            env["body"] = serde_json::from_str(&m.body).unwrap_or_default();
            env.to_string()
        }
        CeleryBroker::Amqp { .. } => json!({
            "routing_key": job.queue,
            "headers": m.headers,
            "body": serde_json::from_str::<Value>(&m.body).unwrap_or_default(),
        })
        .to_string(),
    }
}

/// The task name, args and kwargs of a kombu Redis envelope (protocol v2;
/// a v1 body `{"task","args","kwargs"}` is read too).
pub fn task_of_envelope(env: &Value) -> Option<(String, Value, Value)> {
    let raw = env.get("body")?.as_str()?;
    let body = match env
        .pointer("/properties/body_encoding")
        .and_then(Value::as_str)
    {
        Some("base64") => base64::engine::general_purpose::STANDARD.decode(raw).ok()?,
        _ => raw.as_bytes().to_vec(),
    };
    let body: Value = serde_json::from_slice(&body).ok()?;
    if let Some(task) = env.pointer("/headers/task").and_then(Value::as_str) {
        let parts = body.as_array()?;
        return Some((
            task.to_string(),
            parts.first()?.clone(),
            parts
                .get(1)
                .cloned()
                .unwrap_or_else(super::presence::no_kwargs),
        ));
    }
    Some((
        body.get("task")?.as_str()?.to_string(),
        body.get("args").cloned().unwrap_or(Value::Array(vec![])),
        body.get("kwargs")
            .cloned()
            .unwrap_or_else(super::presence::no_kwargs),
    ))
}

fn add_envelope(idx: &mut PresenceIndex, text: &str, running: bool) {
    idx.scanned += 1;
    let env: Option<Value> = serde_json::from_str(text).ok();
    // kombu's unacked entries are `[envelope, exchange, routing_key]`.
    let env = match env {
        Some(Value::Array(a)) => a.into_iter().next(),
        other => other,
    };
    if let Some((task, args, kwargs)) = env.as_ref().and_then(task_of_envelope) {
        idx.add_identity(python_key(&task, &args, &kwargs), running);
    }
}

enum Broker {
    Redis {
        conn: redis::aio::MultiplexedConnection,
        prefix: String,
    },
    Amqp(Box<AmqpBroker>),
}

struct AmqpBroker {
    conn: Connection,
    channel: Channel,
    confirm_timeout: std::time::Duration,
}

pub struct Celery {
    name: String,
    cfg: CeleryConfig,
    broker: Broker,
}

fn amqp_err(queue: &str, context: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Other {
        queue: queue.to_string(),
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// A JSON value as an AMQP field value (what py-amqp decodes back).
fn amqp_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(amqp_value).collect::<Vec<_>>(),
        )),
        Value::Object(o) => AMQPValue::FieldTable(amqp_table(o)),
    }
}

fn amqp_table(o: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in o {
        t.insert(k.as_str().into(), amqp_value(v));
    }
    t
}

impl Celery {
    pub async fn connect(name: &str, cfg: &CeleryConfig) -> Result<Celery, QueueError> {
        let broker = match &cfg.broker {
            CeleryBroker::Redis {
                url,
                global_keyprefix,
            } => Broker::Redis {
                conn: redis_connect(name, url.expose()).await?,
                prefix: global_keyprefix.clone(),
            },
            CeleryBroker::Amqp {
                url,
                confirm_timeout,
            } => {
                let ctx = format!("connecting to {url}");
                let conn = tokio::time::timeout(
                    *confirm_timeout,
                    Connection::connect(url.expose(), ConnectionProperties::default()),
                )
                .await
                .map_err(|_| amqp_err(name, &ctx, "timed out"))?
                .map_err(|e| amqp_err(name, &ctx, e))?;
                let channel = Self::channel(name, &conn).await?;
                Broker::Amqp(Box::new(AmqpBroker {
                    conn,
                    channel,
                    confirm_timeout: *confirm_timeout,
                }))
            }
        };
        Ok(Celery {
            name: name.to_string(),
            cfg: cfg.clone(),
            broker,
        })
    }

    async fn channel(name: &str, conn: &Connection) -> Result<Channel, QueueError> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| amqp_err(name, "opening a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| amqp_err(name, "enabling publisher confirms", e))?;
        Ok(channel)
    }

    /// Push every job. Redis: one pipeline (all or nothing). RabbitMQ: per
    /// message, acked by the broker or not.
    pub async fn push(
        &mut self,
        jobs: &[JobRequest<'_>],
    ) -> Result<Vec<Result<(), String>>, QueueError> {
        let priority = self.cfg.priority;
        match &mut self.broker {
            Broker::Redis { conn, prefix } => {
                let mut pipe = redis::pipe();
                for j in jobs {
                    let id = super::activejob::new_job_id();
                    let m = message(j, &id);
                    let env =
                        redis_envelope(&m, j.queue, priority, &super::activejob::new_job_id());
                    pipe.lpush(redis_key(prefix, j.queue, priority), env)
                        .ignore();
                }
                pipe.query_async::<()>(conn)
                    .await
                    .map_err(super::redis_err(
                        &self.name,
                        &format!("pushing {} task(s)", jobs.len()),
                    ))?;
                Ok(vec![Ok(()); jobs.len()])
            }
            Broker::Amqp(a) => {
                if !a.channel.status().connected() {
                    a.channel = Self::channel(&self.name, &a.conn).await?;
                }
                Self::publish(&self.name, &a.channel, a.confirm_timeout, priority, jobs).await
            }
        }
    }

    async fn publish(
        name: &str,
        channel: &Channel,
        confirm_timeout: std::time::Duration,
        priority: u8,
        jobs: &[JobRequest<'_>],
    ) -> Result<Vec<Result<(), String>>, QueueError> {
        let mut declared: Vec<&str> = Vec::new();
        let mut pending = Vec::with_capacity(jobs.len());
        for j in jobs {
            if !declared.contains(&j.queue) {
                // Passive: fails (and closes the channel) when no worker has
                // declared the queue; a publish would be dropped unroutable.
                channel
                    .queue_declare(
                        j.queue.into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        amqp_err(name, &format!("queue {:?} (passive declare)", j.queue), e)
                    })?;
                declared.push(j.queue);
            }
            let id = super::activejob::new_job_id();
            let m = message(j, &id);
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_content_encoding("utf-8".into())
                .with_correlation_id(id.as_str().into())
                .with_delivery_mode(2)
                .with_priority(priority)
                .with_headers(amqp_table(&m.headers));
            let confirm = channel
                .basic_publish(
                    "".into(),
                    j.queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    m.body.as_bytes(),
                    props,
                )
                .await
                .map_err(|e| amqp_err(name, "publishing", e))?;
            pending.push(confirm);
        }
        super::amqp::await_confirms(name, pending, confirm_timeout).await
    }

    /// Tasks waiting in `queue` (every priority list) and taken but not
    /// acknowledged (`unacked`: running or prefetched), looking at no more
    /// than `max_entries` entries. `None` on RabbitMQ, which cannot be read
    /// without taking its messages.
    pub async fn presence(
        &mut self,
        queue: &str,
        max_entries: u64,
    ) -> Result<Option<PresenceIndex>, QueueError> {
        let Broker::Redis { conn, prefix } = &mut self.broker else {
            return Ok(None);
        };
        let mut idx = PresenceIndex::default();
        let mut budget = max_entries;
        for step in PRIORITY_STEPS {
            let key = redis_key(prefix, queue, step);
            let entries =
                super::presence::read_bounded(conn, &key, ("LLEN", "LRANGE"), budget, &mut idx)
                    .await
                    .map_err(super::redis_err(&self.name, "reading the queue"))?;
            budget -= entries.len() as u64;
            for e in &entries {
                add_envelope(&mut idx, e, false);
            }
        }
        let unacked = format!("{prefix}unacked");
        let len: u64 = redis::cmd("HLEN")
            .arg(&unacked)
            .query_async(conn)
            .await
            .map_err(super::redis_err(&self.name, "reading unacked tasks"))?;
        if len > budget {
            idx.truncated = true;
        } else if len > 0 {
            let entries: Vec<String> = redis::cmd("HVALS")
                .arg(&unacked)
                .query_async(conn)
                .await
                .map_err(super::redis_err(&self.name, "reading unacked tasks"))?;
            for e in &entries {
                add_envelope(&mut idx, e, true);
            }
        }
        Ok(Some(idx))
    }

    pub async fn ping(&mut self) -> Result<String, QueueError> {
        let url = self.cfg.broker.url().to_string();
        match &mut self.broker {
            Broker::Redis { conn, prefix } => {
                redis::cmd("PING")
                    .query_async::<String>(conn)
                    .await
                    .map_err(super::redis_err(&self.name, "PING"))?;
                Ok(format!(
                    "celery on redis at {url} (key prefix {prefix:?}, priority {})",
                    self.cfg.priority
                ))
            }
            Broker::Amqp(a) => {
                if !a.conn.status().connected() {
                    return Err(amqp_err(
                        &self.name,
                        "checking the connection",
                        "not connected",
                    ));
                }
                Ok(format!(
                    "celery on amqp at {url} (default exchange, publisher confirms on)"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job<'a>(args: &'a [Value], kwargs: &'a Map<String, Value>) -> JobRequest<'a> {
        JobRequest {
            sweep: "receipts",
            row_key: "7",
            attempt: 1,
            queue: "mail",
            class: "shop.tasks.send_receipt",
            args,
            kwargs,
            job_id: None,
            activejob: None,
        }
    }

    #[test]
    fn priorities_round_down_to_kombus_steps() {
        let table = [
            (0, 0),
            (1, 0),
            (2, 0),
            (3, 3),
            (5, 3),
            (6, 6),
            (8, 6),
            (9, 9),
        ];
        for (p, step) in table {
            assert_eq!(priority_step(p), step, "priority {p}");
        }
        assert_eq!(redis_key("", "mail", 0), "mail");
        assert_eq!(redis_key("app:", "mail", 7), "app:mail\x06\x166");
    }

    #[test]
    fn a_task_message_carries_name_id_args_and_kwargs() {
        let args = [json!(7), json!("a'b")];
        let kwargs: Map<String, Value> =
            [("urgent".to_string(), json!(true))].into_iter().collect();
        let m = message(&job(&args, &kwargs), "t-1");
        assert_eq!(m.headers["task"], json!("shop.tasks.send_receipt"));
        assert_eq!(m.headers["id"], json!("t-1"));
        assert_eq!(m.headers["root_id"], json!("t-1"));
        assert_eq!(m.headers["argsrepr"], json!("(7, 'a\\'b')"));
        assert_eq!(m.headers["kwargsrepr"], json!("{'urgent': True}"));
        let body: Value = serde_json::from_str(&m.body).unwrap();
        assert_eq!(body[0], json!([7, "a'b"]));
        assert_eq!(body[1], json!({"urgent": true}));
        assert_eq!(body[2]["chord"], Value::Null);
    }

    #[test]
    fn the_redis_envelope_is_read_back_by_presence() {
        let args = [json!(7)];
        let kwargs: Map<String, Value> = [("n".to_string(), json!(1))].into_iter().collect();
        let m = message(&job(&args, &kwargs), "t-1");
        let env = redis_envelope(&m, "mail", 0, "tag-1");
        let v: Value = serde_json::from_str(&env).unwrap();
        assert_eq!(v["properties"]["delivery_tag"], json!("tag-1"));
        assert_eq!(
            v["properties"]["delivery_info"],
            json!({"exchange": "", "routing_key": "mail"})
        );
        assert_eq!(v["properties"]["body_encoding"], json!("base64"));
        let (task, a, k) = task_of_envelope(&v).unwrap();
        assert_eq!(task, "shop.tasks.send_receipt");
        assert_eq!((a, k), (json!([7]), json!({"n": 1})));
        let mut idx = PresenceIndex::default();
        add_envelope(&mut idx, &json!([v, "", "mail"]).to_string(), true);
        add_envelope(&mut idx, "not json", false);
        assert_eq!(idx.scanned, 2);
        assert_eq!(
            idx.lookup_key(&python_key(
                "shop.tasks.send_receipt",
                &json!([7]),
                &json!({"n": 1})
            )),
            crate::core::model::Presence::Running
        );
    }
}
