//! Sidekiq: what `Sidekiq::Client.push` writes (Sidekiq 6.x `client.rb`
//! `atomic_push`, `job_util.rb` `normalize_item`): a pipeline of
//! `SADD queues <q>` then `LPUSH queue:<q> <payload>`, payload fields
//! `retry, queue, class, args, jid, created_at, enqueued_at` with `jid` 24
//! lowercase hex and times as float unix seconds (integer epoch
//! milliseconds with `timestamps: epoch_millis`, as Sidekiq 8 writes them;
//! its changelog: "stored as epoch milliseconds, rather than epoch floats").
//! Extra configured fields
//! follow. An optional namespace prefixes every key (`ns:queue:<q>`), as the
//! redis-namespace gem does.

use super::presence::PresenceIndex;
use super::{redis_connect, JobRequest, QueueError};
use crate::config::SidekiqConfig;
use crate::core::model::Timestamp;
use serde_json::{Map, Value};

pub struct Sidekiq {
    name: String,
    cfg: SidekiqConfig,
    conn: redis::aio::MultiplexedConnection,
}

/// 24 lowercase hex characters, like `SecureRandom.hex(12)`.
pub fn new_jid() -> String {
    format!("{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..))
}

fn epoch_float(t: Timestamp) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6
}

/// The job payload, fields in Sidekiq's own order.
pub fn payload(cfg: &SidekiqConfig, job: &JobRequest<'_>, jid: &str, now: Timestamp) -> String {
    let mut m = Map::new();
    m.insert("retry".into(), cfg.retry.clone());
    m.insert("queue".into(), Value::from(job.queue));
    match job.activejob {
        None => {
            m.insert("class".into(), Value::from(job.class));
            m.insert("args".into(), Value::from(job.args.to_vec()));
        }
        // Rails' Sidekiq adapter: the wrapper runs the job hash, and names
        // the job in `wrapped` (Sidekiq's UI, retries).
        Some(aj) => {
            m.insert("class".into(), Value::from(aj.wrapper.as_str()));
            m.insert("wrapped".into(), Value::from(job.class));
            let hash = super::activejob::job_hash(
                aj,
                job.class,
                job.queue,
                job.args.to_vec(),
                &super::activejob::new_job_id(),
                now,
            );
            m.insert("args".into(), Value::Array(vec![hash]));
        }
    }
    m.insert("jid".into(), Value::from(jid));
    let at = if cfg.epoch_millis {
        Value::from(now.timestamp_millis())
    } else {
        Value::from(epoch_float(now))
    };
    m.insert("created_at".into(), at.clone());
    m.insert("enqueued_at".into(), at);
    for (k, v) in &cfg.job_fields {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m).to_string()
}

impl Sidekiq {
    pub async fn connect(name: &str, cfg: &SidekiqConfig) -> Result<Sidekiq, QueueError> {
        Ok(Sidekiq {
            name: name.to_string(),
            cfg: cfg.clone(),
            conn: redis_connect(name, cfg.redis.expose()).await?,
        })
    }

    pub fn key(&self, suffix: &str) -> String {
        match &self.cfg.namespace {
            Some(ns) => format!("{ns}:{suffix}"),
            None => suffix.to_string(),
        }
    }

    pub async fn push(
        &mut self,
        jobs: &[JobRequest<'_>],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        for j in jobs {
            let body = payload(&self.cfg, j, &new_jid(), now);
            pipe.sadd(self.key("queues"), j.queue).ignore();
            pipe.lpush(self.key(&format!("queue:{}", j.queue)), body)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(self.err(&format!("pushing {} job(s)", jobs.len())))
    }

    fn err(&self, context: &str) -> impl FnOnce(redis::RedisError) -> QueueError {
        super::redis_err(&self.name, context)
    }

    /// Jobs waiting in `queue`, the `schedule` and `retry` sets, and jobs
    /// busy workers run (`<identity>:workers` in Sidekiq 6, `<identity>:work`
    /// in 7+: field = thread, value = `{"queue","payload":"<job JSON>","run_at"}`),
    /// looking at no more than `max_entries` entries in all.
    pub async fn presence(
        &mut self,
        queue: &str,
        max_entries: u64,
    ) -> Result<PresenceIndex, QueueError> {
        let mut idx = PresenceIndex::default();
        let mut budget = max_entries;
        let sources = [
            (self.key(&format!("queue:{queue}")), "LLEN", "LRANGE"),
            (self.key("schedule"), "ZCARD", "ZRANGE"),
            (self.key("retry"), "ZCARD", "ZRANGE"),
        ];
        for (key, len_cmd, range_cmd) in sources {
            budget -= super::presence::scan_queued(
                &mut self.conn,
                &key,
                (len_cmd, range_cmd),
                budget,
                &mut idx,
            )
            .await
            .map_err(self.err("reading the queue"))?;
        }
        let processes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("processes"))
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("listing processes"))?;
        if !processes.is_empty() {
            let mut pipe = redis::pipe();
            for p in &processes {
                pipe.hvals(self.key(&format!("{p}:workers")));
                pipe.hvals(self.key(&format!("{p}:work")));
            }
            let work: Vec<Vec<String>> = pipe
                .query_async(&mut self.conn)
                .await
                .map_err(self.err("reading busy workers"))?;
            for entry in work.into_iter().flatten() {
                if budget == 0 {
                    idx.truncated = true;
                    break;
                }
                budget -= 1;
                let Ok(v) = serde_json::from_str::<Value>(&entry) else {
                    idx.scanned += 1;
                    continue;
                };
                match v.get("payload") {
                    Some(Value::String(s)) => idx.add_text(s, true),
                    Some(p) => idx.add_payload(p, true),
                    None => idx.scanned += 1,
                }
            }
        }
        Ok(idx)
    }

    /// Whether a live Sidekiq process serves `queue`: a member of `processes`
    /// whose `<identity>` hash still exists (Sidekiq refreshes it every 5 s
    /// with a 60 s TTL), beat within 60 s of Redis's clock, and `queue` in
    /// its `info.queues`.
    pub async fn workers_alive(&mut self, queue: &str) -> Result<bool, QueueError> {
        let processes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("processes"))
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("listing processes"))?;
        if processes.is_empty() {
            return Ok(false);
        }
        let (secs, _micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("reading the Redis clock"))?;
        let mut pipe = redis::pipe();
        for p in &processes {
            pipe.cmd("HMGET").arg(self.key(p)).arg("beat").arg("info");
        }
        let rows: Vec<(Option<String>, Option<String>)> = pipe
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("reading process heartbeats"))?;
        Ok(rows.iter().any(|(beat, info)| {
            let fresh = beat
                .as_deref()
                .and_then(|b| b.parse::<f64>().ok())
                .is_some_and(|b| secs as f64 - b <= 60.0);
            let serves = info
                .as_deref()
                .and_then(|i| serde_json::from_str::<Value>(i).ok())
                .and_then(|i| i.get("queues").cloned())
                .and_then(|q| q.as_array().cloned())
                .is_some_and(|qs| qs.iter().any(|q| q.as_str() == Some(queue)));
            fresh && serves
        }))
    }

    pub async fn ping(&mut self) -> Result<String, QueueError> {
        let processes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("processes"))
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("listing processes"))?;
        Ok(format!(
            "sidekiq at {} ({} registered process(es))",
            self.cfg.redis,
            processes.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_has_sidekiq_fields_in_order() {
        let cfg = SidekiqConfig {
            redis: crate::config::SecretUrl::new("redis://x"),
            namespace: None,
            retry: json!(3),
            job_fields: [("tags".to_string(), json!(["sweeper"]))].into(),
            presence: None,
            require_workers: false,
            epoch_millis: false,
        };
        let args = [json!(7), json!(null)];
        let job = JobRequest {
            sweep: "s",
            row_key: "7",
            attempt: 1,
            queue: "notify",
            class: "NotifyUser",
            args: &args,
            kwargs: &serde_json::Map::new(),
            job_id: None,
            activejob: None,
        };
        let now = chrono::DateTime::from_timestamp(1_795_905_345, 250_000_000).unwrap();
        let got = payload(&cfg, &job, "0123456789abcdef01234567", now);
        assert_eq!(
            got,
            r#"{"retry":3,"queue":"notify","class":"NotifyUser","args":[7,null],"jid":"0123456789abcdef01234567","created_at":1795905345.25,"enqueued_at":1795905345.25,"tags":["sweeper"]}"#
        );
        let cfg8 = SidekiqConfig {
            epoch_millis: true,
            ..cfg
        };
        let v: serde_json::Value =
            serde_json::from_str(&payload(&cfg8, &job, "0123456789abcdef01234567", now)).unwrap();
        assert_eq!(v["created_at"], json!(1_795_905_345_250_i64));
        assert_eq!(v["enqueued_at"], json!(1_795_905_345_250_i64));
    }

    #[test]
    fn jids_are_24_lowercase_hex() {
        for _ in 0..100 {
            let j = new_jid();
            assert_eq!(j.len(), 24);
            assert!(j
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
    }
}
