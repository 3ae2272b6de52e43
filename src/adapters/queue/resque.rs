//! Resque: `SADD <ns>:queues <q>` + `RPUSH <ns>:queue:<q> {"class":…,"args":[…]}`,
//! as Resque's `push_to_queue` writes it (resque `lib/resque/data_store.rb`;
//! payload from `Job.create`: class first, no other fields), pipelined per
//! batch. node-resque reads the same layout.

use super::{redis_connect, JobRequest, QueueError};
use crate::config::ResqueConfig;

pub struct Resque {
    name: String,
    cfg: ResqueConfig,
    conn: redis::aio::MultiplexedConnection,
}

/// The payload exactly as Ruby Resque encodes it: `{"class":…,"args":[…]}`.
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
            conn: redis_connect(name, &cfg.redis).await?,
        })
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.cfg.namespace)
    }

    pub async fn push(&mut self, jobs: &[JobRequest<'_>]) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        for j in jobs {
            pipe.sadd(self.key("queues"), j.queue).ignore();
            pipe.rpush(
                self.key(&format!("queue:{}", j.queue)),
                payload(j.class, j.args),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|source| QueueError::Redis {
                queue: self.name.clone(),
                context: format!("pushing {} job(s)", jobs.len()),
                source,
            })
    }

    pub async fn ping(&mut self) -> Result<String, QueueError> {
        let queues: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("queues"))
            .query_async(&mut self.conn)
            .await
            .map_err(|source| QueueError::Redis {
                queue: self.name.clone(),
                context: "listing queues".into(),
                source,
            })?;
        Ok(format!(
            "resque at {} (namespace {}, {} known queue(s))",
            crate::config::redact_url(&self.cfg.redis),
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
