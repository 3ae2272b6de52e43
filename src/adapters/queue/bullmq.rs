//! BullMQ (v5+ layout): a job added the way BullMQ's own `addStandardJob`
//! script adds one, in one Lua script of sweeper's own so the add is
//! atomic (BullMQ's maintainers: adding "is too complex to be implemented
//! using a standard Redis multi").
//!
//! Keys under `<prefix>:<queue>:` — `<id>` (the job hash: `name`, `data`,
//! `opts`, `timestamp`, `delay`, `priority`), `wait` (LPUSH: workers take
//! from the right), `marker` (`ZADD 0 "0"` wakes workers blocked on it,
//! unless the queue is paused or at its concurrency limit), `events` (the
//! `added` and `waiting` stream entries, trimmed to `opts.maxLenEvents` of
//! `meta`), `id` (the counter BullMQ increments for every add).
//!
//! The job id is deterministic per row and attempt
//! (`sweeper.<sweep>.<key>.<attempt>`, `:` and `%` escaped: BullMQ refuses
//! custom ids with `:`), so a repeated push of the same attempt is one job:
//! the script finds the id and adds nothing, as BullMQ does for a
//! duplicated id.
//!
//! Presence: the ids in `wait`, `paused`, `prioritized`, `delayed` (queued)
//! and `active` (running), each job read back as name + data.

use super::presence::{job_key, PresenceIndex};
use super::{redis_connect, JobRequest, QueueError};
use crate::config::BullmqConfig;
use crate::core::model::Timestamp;
use serde_json::{json, Value};

/// KEYS: job hash, wait, meta, id, active, events, marker.
/// ARGV: job id, name, data, opts, timestamp (ms).
/// Returns 1 when added, 0 when a job of that id already exists.
const ADD_JOB: &str = r#"
local jobKey, waitKey, metaKey, idKey, activeKey, eventsKey, markerKey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local jobId = ARGV[1]
redis.call("INCR", idKey)
local maxEvents = redis.call("HGET", metaKey, "opts.maxLenEvents")
if not maxEvents then
  maxEvents = 10000
  redis.call("HSET", metaKey, "opts.maxLenEvents", maxEvents)
end
if redis.call("EXISTS", jobKey) == 1 then
  redis.call("XADD", eventsKey, "MAXLEN", "~", maxEvents, "*",
    "event", "duplicated", "jobId", jobId)
  return 0
end
redis.call("HSET", jobKey, "name", ARGV[2], "data", ARGV[3], "opts", ARGV[4],
  "timestamp", ARGV[5], "delay", 0, "priority", 0)
redis.call("XADD", eventsKey, "*", "event", "added", "jobId", jobId, "name", ARGV[2])
local meta = redis.call("HMGET", metaKey, "paused", "concurrency")
local held = meta[1] ~= false
if not held and meta[2] then
  held = redis.call("LLEN", activeKey) >= tonumber(meta[2])
end
redis.call("LPUSH", waitKey, jobId)
if not held then
  redis.call("ZADD", markerKey, 0, "0")
end
redis.call("XADD", eventsKey, "MAXLEN", "~", maxEvents, "*",
  "event", "waiting", "jobId", jobId)
return 1
"#;

/// The deterministic job id of a row's attempt.
pub fn job_id(sweep: &str, key: &str, attempt: u32) -> String {
    let key = key.replace('%', "%25").replace(':', "%3A");
    format!("sweeper.{sweep}.{key}.{attempt}")
}

/// The job's `opts` as BullMQ stores them (JSON).
pub fn opts(cfg: &BullmqConfig, id: &str) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("jobId".into(), Value::from(id));
    if let Some(a) = cfg.attempts {
        o.insert("attempts".into(), Value::from(a));
    }
    if let Some(b) = &cfg.backoff {
        o.insert(
            "backoff".into(),
            json!({"type": b.kind, "delay": b.delay_ms}),
        );
    }
    Value::Object(o)
}

/// The job's data object.
fn data(job: &JobRequest<'_>) -> Value {
    Value::Object(job.kwargs.clone())
}

/// The job hash as a worker reads it, for `explain`.
pub fn preview(cfg: &BullmqConfig, job: &JobRequest<'_>, now: Timestamp) -> String {
    let id = job_id(job.sweep, job.row_key, job.attempt);
    json!({
        "key": format!("{}:{}:{id}", cfg.prefix, job.queue),
        "name": job.class,
        "data": data(job),
        "opts": opts(cfg, &id),
        "timestamp": now.timestamp_millis(),
    })
    .to_string()
}

pub struct Bullmq {
    name: String,
    cfg: BullmqConfig,
    conn: redis::aio::MultiplexedConnection,
    script: redis::Script,
}

impl Bullmq {
    pub async fn connect(name: &str, cfg: &BullmqConfig) -> Result<Bullmq, QueueError> {
        Ok(Bullmq {
            name: name.to_string(),
            cfg: cfg.clone(),
            conn: redis_connect(name, cfg.redis.expose()).await?,
            script: redis::Script::new(ADD_JOB),
        })
    }

    fn key(&self, queue: &str, suffix: &str) -> String {
        format!("{}:{queue}:{suffix}", self.cfg.prefix)
    }

    /// Add every job, one script call each in one pipeline (each add is
    /// atomic; a lost connection fails the batch).
    pub async fn push(
        &mut self,
        jobs: &[JobRequest<'_>],
        now: Timestamp,
    ) -> Result<Vec<Result<(), String>>, QueueError> {
        // Load once, so the pipeline can EVALSHA.
        self.script
            .prepare_invoke()
            .load_async(&mut self.conn)
            .await
            .map_err(super::redis_err(&self.name, "loading the add script"))?;
        let mut pipe = redis::pipe();
        for j in jobs {
            let id = job_id(j.sweep, j.row_key, j.attempt);
            let q = j.queue;
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(7)
                .arg(self.key(q, &id))
                .arg(self.key(q, "wait"))
                .arg(self.key(q, "meta"))
                .arg(self.key(q, "id"))
                .arg(self.key(q, "active"))
                .arg(self.key(q, "events"))
                .arg(self.key(q, "marker"))
                .arg(&id)
                .arg(j.class)
                .arg(data(j).to_string())
                .arg(opts(&self.cfg, &id).to_string())
                .arg(now.timestamp_millis());
        }
        let added: Vec<i64> = pipe
            .query_async(&mut self.conn)
            .await
            .map_err(super::redis_err(
                &self.name,
                &format!("adding {} job(s)", jobs.len()),
            ))?;
        // 0: this attempt's job already exists — pushed before; one job.
        Ok(added.iter().map(|_| Ok(())).collect())
    }

    /// Jobs waiting (`wait`, `paused`, `prioritized`, `delayed`) or running
    /// (`active`) in `queue`, looking at no more than `max_entries` ids.
    pub async fn presence(
        &mut self,
        queue: &str,
        max_entries: u64,
    ) -> Result<PresenceIndex, QueueError> {
        let mut idx = PresenceIndex::default();
        let mut budget = max_entries;
        let mut ids: Vec<(String, bool)> = Vec::new();
        let sources = [
            ("wait", "LLEN", "LRANGE", false),
            ("paused", "LLEN", "LRANGE", false),
            ("prioritized", "ZCARD", "ZRANGE", false),
            ("delayed", "ZCARD", "ZRANGE", false),
            ("active", "LLEN", "LRANGE", true),
        ];
        for (suffix, len_cmd, range_cmd, running) in sources {
            let key = self.key(queue, suffix);
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
            ids.extend(got.into_iter().map(|id| (id, running)));
        }
        for chunk in ids.chunks(500) {
            let mut pipe = redis::pipe();
            for (id, _) in chunk {
                pipe.cmd("HMGET")
                    .arg(self.key(queue, id))
                    .arg("name")
                    .arg("data");
            }
            let jobs: Vec<(Option<String>, Option<String>)> = pipe
                .query_async(&mut self.conn)
                .await
                .map_err(super::redis_err(&self.name, "reading jobs"))?;
            for ((_, running), (name, data)) in chunk.iter().zip(jobs) {
                idx.scanned += 1;
                let data = data.and_then(|d| serde_json::from_str::<Value>(&d).ok());
                if let (Some(name), Some(data)) = (name, data) {
                    idx.add_identity(job_key(&name, &data), *running);
                }
            }
        }
        Ok(idx)
    }

    pub async fn ping(&mut self) -> Result<String, QueueError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn)
            .await
            .map_err(super::redis_err(&self.name, "PING"))?;
        Ok(format!(
            "bullmq at {} (prefix {:?})",
            self.cfg.redis, self.cfg.prefix
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_deterministic_and_free_of_colons() {
        assert_eq!(job_id("receipts", "42", 1), "sweeper.receipts.42.1");
        assert_eq!(
            job_id("receipts", "a:b%c", 2),
            "sweeper.receipts.a%3Ab%25c.2"
        );
        assert_ne!(job_id("s", "a:b", 1), job_id("s", "a%3Ab", 1));
        assert!(!job_id("s", "x:y:z", 3).contains(':'));
    }

    #[test]
    fn opts_carry_attempts_and_backoff() {
        let cfg = BullmqConfig {
            redis: crate::config::SecretUrl::new("redis://x"),
            prefix: "bull".into(),
            attempts: Some(3),
            backoff: Some(crate::config::BullBackoff {
                kind: "exponential".into(),
                delay_ms: 1000,
            }),
            presence: None,
        };
        assert_eq!(
            opts(&cfg, "sweeper.s.1.1"),
            json!({"jobId": "sweeper.s.1.1", "attempts": 3,
                   "backoff": {"type": "exponential", "delay": 1000}})
        );
    }
}
