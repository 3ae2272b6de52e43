//! Resque: `SADD <ns>:queues <q>` + `RPUSH <ns>:queue:<q> {"class":…,"args":[…]}`,
//! as Resque's `push_to_queue` writes it (resque `lib/resque/data_store.rb`;
//! payload from `Job.create`: class first, no other fields), pipelined per
//! batch. node-resque reads the same layout.

use super::presence::PresenceIndex;
use super::{activejob, redis_connect, JobRequest, QueueError};
use crate::config::ResqueConfig;
use crate::core::model::Timestamp;

pub struct Resque {
    name: String,
    cfg: ResqueConfig,
    conn: redis::aio::MultiplexedConnection,
}

/// The payload exactly as Ruby Resque encodes it: `{"class":…,"args":[…]}`.
/// What `sweeper` pushes for a job: the plain payload, or Rails' Resque
/// adapter envelope `{"class": <JobWrapper>, "args": [<job hash>]}`.
pub fn payload_of(job: &JobRequest<'_>, now: Timestamp) -> String {
    match job.activejob {
        None => payload(job.class, job.args),
        Some(aj) => {
            let hash = activejob::job_hash(
                aj,
                job.class,
                job.queue,
                job.args.to_vec(),
                &activejob::new_job_id(),
                now,
            );
            payload(&aj.wrapper, &[hash])
        }
    }
}

pub fn payload(class: &str, args: &[serde_json::Value]) -> String {
    format!(
        "{{\"class\":{},\"args\":{}}}",
        serde_json::Value::from(class),
        serde_json::Value::from(args.to_vec())
    )
}

impl Resque {
    pub async fn connect(name: &str, cfg: &ResqueConfig) -> Result<Resque, QueueError> {
        Ok(Resque {
            name: name.to_string(),
            cfg: cfg.clone(),
            conn: redis_connect(name, cfg.redis.expose()).await?,
        })
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.cfg.namespace)
    }

    pub async fn push(
        &mut self,
        jobs: &[JobRequest<'_>],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        for j in jobs {
            pipe.sadd(self.key("queues"), j.queue).ignore();
            pipe.rpush(self.key(&format!("queue:{}", j.queue)), payload_of(j, now))
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(self.err(&format!("pushing {} job(s)", jobs.len())))
    }

    fn err(&self, context: &str) -> impl FnOnce(redis::RedisError) -> QueueError {
        super::redis_err(&self.name, context)
    }

    /// Jobs waiting in `queue` (first `max_entries`) and jobs workers are
    /// running (`<ns>:worker:<id>` = `{"queue","run_at","payload"}`, written
    /// by Ruby Resque and node-resque alike).
    pub async fn presence(
        &mut self,
        queue: &str,
        max_entries: u64,
    ) -> Result<PresenceIndex, QueueError> {
        let key = self.key(&format!("queue:{queue}"));
        let mut idx = PresenceIndex::default();
        let take = super::presence::scan_queued(
            &mut self.conn,
            &key,
            ("LLEN", "LRANGE"),
            max_entries,
            &mut idx,
        )
        .await
        .map_err(self.err("reading the queue"))?;
        let mut workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("workers"))
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("listing workers"))?;
        let budget = (max_entries - take) as usize;
        idx.truncated |= workers.len() > budget;
        workers.truncate(budget);
        if !workers.is_empty() {
            let mut pipe = redis::pipe();
            for w in &workers {
                pipe.get(self.key(&format!("worker:{w}")));
            }
            let working: Vec<Option<String>> = pipe
                .query_async(&mut self.conn)
                .await
                .map_err(self.err("reading what workers run"))?;
            for w in working.into_iter().flatten() {
                match serde_json::from_str::<serde_json::Value>(&w) {
                    Ok(v) => {
                        idx.add_payload(v.get("payload").unwrap_or(&serde_json::Value::Null), true)
                    }
                    Err(_) => idx.scanned += 1,
                }
            }
        }
        Ok(idx)
    }

    /// Whether a live worker serves `queue`: a registered worker (`<ns>:workers`,
    /// id `host:pid:queues`) listening to it or `*`, with a fresh heartbeat —
    /// Ruby Resque's `<ns>:workers:heartbeat` hash (ISO 8601) or node-resque's
    /// `<ns>:worker:ping:host:pid` (`{"time": unix seconds}`) — judged by
    /// Redis's own clock.
    pub async fn workers_alive(&mut self, queue: &str) -> Result<bool, QueueError> {
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("workers"))
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("listing workers"))?;
        let serving: Vec<(&str, String)> = workers
            .iter()
            .filter_map(|w| {
                let mut parts = w.rsplitn(3, ':');
                let queues = parts.next()?;
                let pid = parts.next()?;
                let host = parts.next()?;
                let serves = queues.split(',').any(|q| q == queue || q == "*");
                serves.then(|| (w.as_str(), format!("{host}:{pid}")))
            })
            .collect();
        if serving.is_empty() {
            return Ok(false);
        }
        let (secs, _micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("reading the Redis clock"))?;
        let now = secs as f64;
        let limit = self.cfg.heartbeat_timeout.as_secs_f64();
        let mut pipe = redis::pipe();
        for (id, name) in &serving {
            pipe.hget(self.key("workers:heartbeat"), *id);
            pipe.get(self.key(&format!("worker:ping:{name}")));
        }
        let beats: Vec<Option<String>> = pipe
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("reading worker heartbeats"))?;
        let fresh = |t: f64| now - t <= limit;
        Ok(beats.chunks(2).any(|pair| {
            let ruby = pair[0]
                .as_deref()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s.trim()).ok())
                .map(|t| t.timestamp() as f64);
            let node = pair[1]
                .as_deref()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .and_then(|v| v.get("time").and_then(serde_json::Value::as_f64));
            ruby.is_some_and(fresh) || node.is_some_and(fresh)
        }))
    }

    pub async fn ping(&mut self) -> Result<String, QueueError> {
        let queues: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("queues"))
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("listing queues"))?;
        Ok(format!(
            "resque at {} (namespace {}, {} known queue(s))",
            self.cfg.redis,
            self.cfg.namespace,
            queues.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_matches_ruby_resque() {
        let args = [
            json!(42),
            json!("hello"),
            json!(null),
            json!(1.5),
            json!({"k": [1]}),
        ];
        assert_eq!(
            payload("NotifyUser", &args),
            r#"{"class":"NotifyUser","args":[42,"hello",null,1.5,{"k":[1]}]}"#
        );
        assert_eq!(payload("A::B", &[]), r#"{"class":"A::B","args":[]}"#);
    }
}
