//! Python RQ (layout of RQ 1.x–3.x): the job hash `rq:job:<id>`, the queue
//! list `rq:queue:<name>` (workers pop from the left; RPUSH appends), the
//! set `rq:queues` of queue keys, and per-queue registries (sorted sets)
//! `rq:wip:`, `rq:failed:`, `rq:finished:`, `rq:scheduled:`,
//! `rq:deferred:`, `rq:canceled:`.
//!
//! Two ways to requeue:
//! - **By id** (the row stores the RQ job id): the job hash still holds the
//!   payload, so no serializer is involved. One Lua script does what RQ's
//!   own `registry.requeue` + `Queue._enqueue_job` do: take the id out of
//!   every registry, clear `started_at`/`ended_at`/`exc_info`, set
//!   `status=queued`, `origin`, `enqueued_at`, register the queue and
//!   RPUSH the id. A job whose hash is gone (expired) is refused, per job.
//! - **New job**, for workers run with RQ's `JSONSerializer`: the hash as
//!   `Job.to_dict` writes it, `data` = zlib of the JSON array
//!   `[function, null, args, kwargs]`, then SADD + RPUSH, in one MULTI.
//!   RQ's default pickle format is refused by validation.
//!
//! Presence: the ids in the queue list (queued), and in its intermediate
//! list and `wip` registry (taken by a worker, running); each queued or
//! running job also by function + arguments, read back from its `data`.

use super::presence::{python_key, rq_id_key, PresenceIndex};
use super::{redis_connect, JobRequest, QueueError};
use crate::config::RqConfig;
use crate::core::model::Timestamp;
use flate2::write::ZlibEncoder;
use serde_json::{json, Value};
use std::io::Write;

/// Registries a requeued job leaves.
const REGISTRIES: [&str; 6] = [
    "wip",
    "failed",
    "finished",
    "scheduled",
    "deferred",
    "canceled",
];

/// KEYS: job hash, queue list, `rq:queues`, then the six registries.
/// ARGV: job id, queue name, queue key, enqueued_at.
/// Returns 1 when requeued, 0 when the job hash does not exist.
const REQUEUE_BY_ID: &str = r#"
if redis.call("EXISTS", KEYS[1]) == 0 then
  return 0
end
for i = 4, #KEYS do
  -- `wip` entries are `<id>:<execution id>` in RQ 2+, the bare id before.
  for _, e in ipairs(redis.call("ZRANGE", KEYS[i], 0, -1)) do
    if e == ARGV[1] or string.sub(e, 1, #ARGV[1] + 1) == ARGV[1] .. ":" then
      redis.call("ZREM", KEYS[i], e)
    end
  end
end
redis.call("HSET", KEYS[1], "status", "queued", "origin", ARGV[2],
  "enqueued_at", ARGV[4], "started_at", "", "ended_at", "")
redis.call("HDEL", KEYS[1], "exc_info")
redis.call("SADD", KEYS[3], ARGV[3])
redis.call("RPUSH", KEYS[2], ARGV[1])
return 1
"#;

/// RQ's timestamp format (`utils.utcformat`): `%Y-%m-%dT%H:%M:%S.%fZ`.
pub fn utcformat(t: Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The JSON payload of a new job: `[function, instance, args, kwargs]`.
pub fn data_json(job: &JobRequest<'_>) -> String {
    json!([job.class, null, job.args, job.kwargs]).to_string()
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

/// `function(arg, key=value)`, RQ's `description` of a job.
fn description(job: &JobRequest<'_>) -> String {
    let args = job.args.iter().map(Value::to_string);
    let kwargs = job.kwargs.iter().map(|(k, v)| format!("{k}={v}"));
    format!(
        "{}({})",
        job.class,
        args.chain(kwargs).collect::<Vec<_>>().join(", ")
    )
}

/// The hash fields of a new job (`Job.to_dict`), `data` given separately.
fn new_job_fields(
    cfg: &RqConfig,
    job: &JobRequest<'_>,
    now: Timestamp,
) -> Vec<(&'static str, String)> {
    let at = utcformat(now);
    vec![
        ("created_at", at.clone()),
        ("enqueued_at", at),
        ("origin", job.queue.to_string()),
        ("description", description(job)),
        ("status", "queued".into()),
        ("timeout", cfg.job_timeout.to_string()),
        ("started_at", String::new()),
        ("ended_at", String::new()),
        ("last_heartbeat", String::new()),
        ("worker_name", String::new()),
        ("group_id", String::new()),
        ("success_callback_name", String::new()),
        ("failure_callback_name", String::new()),
        ("stopped_callback_name", String::new()),
    ]
}

/// What a push does, for `explain`.
pub fn preview(job: &JobRequest<'_>, now: Timestamp) -> String {
    match job.job_id {
        Some(id) => json!({
            "requeue": format!("rq:job:{id}"),
            "queue": format!("rq:queue:{}", job.queue),
            "status": "queued",
            "enqueued_at": utcformat(now),
        })
        .to_string(),
        None => json!({
            "job": "rq:job:<a new id>",
            "queue": format!("rq:queue:{}", job.queue),
            "data": serde_json::from_str::<Value>(&data_json(job)).unwrap_or_default(),
            "serializer": "rq.serializers.JSONSerializer",
        })
        .to_string(),
    }
}

pub struct Rq {
    name: String,
    cfg: RqConfig,
    conn: redis::aio::MultiplexedConnection,
    script: redis::Script,
}

impl Rq {
    pub async fn connect(name: &str, cfg: &RqConfig) -> Result<Rq, QueueError> {
        Ok(Rq {
            name: name.to_string(),
            cfg: cfg.clone(),
            conn: redis_connect(name, cfg.redis.expose()).await?,
            script: redis::Script::new(REQUEUE_BY_ID),
        })
    }

    /// Push every job in one pipeline: a lost connection fails the batch.
    pub async fn push(
        &mut self,
        jobs: &[JobRequest<'_>],
        now: Timestamp,
    ) -> Result<Vec<Result<(), String>>, QueueError> {
        if jobs.iter().all(|j| j.job_id.is_none()) {
            return self
                .enqueue(jobs, now)
                .await
                .map(|()| vec![Ok(()); jobs.len()]);
        }
        self.script
            .prepare_invoke()
            .load_async(&mut self.conn)
            .await
            .map_err(super::redis_err(&self.name, "loading the requeue script"))?;
        let mut pipe = redis::pipe();
        for j in jobs {
            let id = j.job_id.unwrap_or_default();
            let queue_key = format!("rq:queue:{}", j.queue);
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(3 + REGISTRIES.len())
                .arg(format!("rq:job:{id}"))
                .arg(&queue_key)
                .arg("rq:queues");
            for r in REGISTRIES {
                pipe.arg(format!("rq:{r}:{}", j.queue));
            }
            pipe.arg(id)
                .arg(j.queue)
                .arg(&queue_key)
                .arg(utcformat(now));
        }
        let done: Vec<i64> = pipe
            .query_async(&mut self.conn)
            .await
            .map_err(super::redis_err(
                &self.name,
                &format!("requeueing {} job(s) by id", jobs.len()),
            ))?;
        Ok(jobs
            .iter()
            .zip(done)
            .map(|(j, done)| {
                let id = j.job_id.unwrap_or_default();
                if done == 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "RQ job {id} no longer exists (rq:job:{id} expired or was deleted): nothing to requeue"
                    ))
                }
            })
            .collect())
    }

    /// New JSON-serialized jobs, all in one MULTI.
    async fn enqueue(&mut self, jobs: &[JobRequest<'_>], now: Timestamp) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for j in jobs {
            let id = super::activejob::new_job_id();
            let key = format!("rq:job:{id}");
            let queue_key = format!("rq:queue:{}", j.queue);
            let hset = pipe
                .cmd("HSET")
                .arg(&key)
                .arg("data")
                .arg(zlib(data_json(j).as_bytes()));
            for (f, v) in new_job_fields(&self.cfg, j, now) {
                hset.arg(f).arg(v);
            }
            hset.ignore();
            pipe.sadd("rq:queues", &queue_key).ignore();
            pipe.rpush(&queue_key, &id).ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(super::redis_err(
                &self.name,
                &format!("enqueueing {} job(s)", jobs.len()),
            ))
    }

    /// Jobs waiting in `queue` or taken by a worker, looking at no more than
    /// `max_entries` ids.
    pub async fn presence(
        &mut self,
        queue: &str,
        max_entries: u64,
    ) -> Result<PresenceIndex, QueueError> {
        let mut idx = PresenceIndex::default();
        let mut budget = max_entries;
        let queue_key = format!("rq:queue:{queue}");
        let sources = [
            (queue_key.clone(), "LLEN", "LRANGE", false),
            (format!("{queue_key}:intermediate"), "LLEN", "LRANGE", true),
            (format!("rq:wip:{queue}"), "ZCARD", "ZRANGE", true),
        ];
        let mut ids: Vec<(String, bool)> = Vec::new();
        for (key, len_cmd, range_cmd, running) in sources {
            let got = super::presence::read_bounded(
                &mut self.conn,
                &key,
                (len_cmd, range_cmd),
                budget,
                &mut idx,
            )
            .await
            .map_err(super::redis_err(&self.name, "reading the queue"))?;
            budget -= got.len() as u64;
            for e in got {
                // `wip` entries: `<id>:<execution id>` (RQ 2+).
                let id = match (running, e.split_once(':')) {
                    (true, Some((id, _))) => id.to_string(),
                    _ => e,
                };
                ids.push((id, running));
            }
        }
        for chunk in ids.chunks(500) {
            let mut pipe = redis::pipe();
            for (id, _) in chunk {
                pipe.cmd("HGET").arg(format!("rq:job:{id}")).arg("data");
            }
            let datas: Vec<Option<Vec<u8>>> = pipe
                .query_async(&mut self.conn)
                .await
                .map_err(super::redis_err(&self.name, "reading jobs"))?;
            for ((id, running), data) in chunk.iter().zip(datas) {
                idx.scanned += 1;
                idx.add_identity(rq_id_key(id), *running);
                if let Some((func, args, kwargs)) = data.as_deref().and_then(json_payload) {
                    idx.add_identity(python_key(&func, &args, &kwargs), *running);
                }
            }
        }
        Ok(idx)
    }

    pub async fn ping(&mut self) -> Result<String, QueueError> {
        let queues: Vec<String> = redis::cmd("SMEMBERS")
            .arg("rq:queues")
            .query_async(&mut self.conn)
            .await
            .map_err(super::redis_err(&self.name, "listing queues"))?;
        Ok(format!(
            "rq at {} ({} registered queue(s))",
            self.cfg.redis,
            queues.len()
        ))
    }
}

/// Function, args and kwargs of a JSON-serialized job's `data` (zlib or
/// plain); `None` for pickled or unreadable payloads.
pub fn json_payload(data: &[u8]) -> Option<(String, Value, Value)> {
    use std::io::Read;
    let mut plain = Vec::new();
    let bytes = match flate2::read::ZlibDecoder::new(data).read_to_end(&mut plain) {
        Ok(_) => plain.as_slice(),
        Err(_) => data,
    };
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let a = v.as_array()?;
    Some((
        a.first()?.as_str()?.to_string(),
        a.get(2).cloned().unwrap_or(Value::Array(vec![])),
        a.get(3).cloned().unwrap_or_else(super::presence::no_kwargs),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn a_new_job_payload_reads_back_as_function_args_and_kwargs() {
        let args = [json!(7), json!("x")];
        let kwargs: Map<String, Value> =
            [("urgent".to_string(), json!(true))].into_iter().collect();
        let job = JobRequest {
            sweep: "s",
            row_key: "7",
            attempt: 1,
            queue: "default",
            class: "shop.tasks.send_receipt",
            args: &args,
            kwargs: &kwargs,
            job_id: None,
            activejob: None,
        };
        let text = data_json(&job);
        assert_eq!(
            text,
            r#"["shop.tasks.send_receipt",null,[7,"x"],{"urgent":true}]"#
        );
        let got = json_payload(&zlib(text.as_bytes())).unwrap();
        assert_eq!(
            got,
            (
                "shop.tasks.send_receipt".to_string(),
                json!([7, "x"]),
                json!({"urgent": true})
            )
        );
        assert_eq!(
            json_payload(text.as_bytes()).unwrap().0,
            "shop.tasks.send_receipt"
        );
        assert_eq!(json_payload(b"\x80\x05pickle"), None);
        assert_eq!(
            description(&job),
            r#"shop.tasks.send_receipt(7, "x", urgent=true)"#
        );
    }

    #[test]
    fn timestamps_are_in_rqs_format() {
        let t = chrono::DateTime::from_timestamp(1_795_905_345, 250_000_000).unwrap();
        assert_eq!(utcformat(t), "2026-11-28T22:35:45.250000Z");
    }
}
