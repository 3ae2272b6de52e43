//! Presence: is a row's job still waiting in its queue, or being run?
//!
//! Owns: the index of job identities (class + arguments, compared as JSON
//! values, not bytes: node-resque re-encodes payloads, turning `[]` into
//! `{}`, and Ruby may write `1.0` for `1`) built from one bounded scan per
//! pass. Does not own: the Redis reads (resque.rs, sidekiq.rs).

use super::BuiltJob;
use crate::config::QueueKind;
use crate::core::model::Presence;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Job identities seen in a bounded scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresenceIndex {
    queued: HashSet<String>,
    running: HashSet<String>,
    /// Entries looked at.
    pub scanned: u64,
    /// The scan stopped at `max_entries`: not found may still be there.
    pub truncated: bool,
}

/// A canonical text of a JSON value: object keys sorted, integral floats
/// as integers, an empty object equal to an empty array.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f)
                if f.fract() == 0.0
                    && f.abs() < 9.0e15
                    && n.as_i64().is_none()
                    && n.as_u64().is_none() =>
            {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        },
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        Value::Object(o) if o.is_empty() => "[]".to_string(),
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| {
                    // ActiveJob's key lists follow the caller's key order,
                    // which says nothing about the job.
                    let v = match &o[*k] {
                        Value::Array(items) if k.starts_with("_aj_") => {
                            let mut items: Vec<String> = items.iter().map(canonical).collect();
                            items.sort();
                            format!("[{}]", items.join(","))
                        }
                        v => canonical(v),
                    };
                    format!("{}:{v}", Value::from(k.as_str()))
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        other => other.to_string(),
    }
}

/// The job class and arguments of an ActiveJob envelope: a wrapper class
/// whose one argument is a serialized job (`job_class`, `arguments`).
fn activejob_inside<'v>(class: &str, args: &'v Value) -> Option<(&'v str, &'v Value)> {
    let wrapper = class.ends_with("::JobWrapper") || class == crate::config::AJ_SIDEKIQ8_WRAPPER;
    if !wrapper {
        return None;
    }
    let job = args.as_array()?.first()?;
    Some((job.get("job_class")?.as_str()?, job.get("arguments")?))
}

/// The identity of a job: class and arguments.
pub fn job_key(class: &str, args: &Value) -> String {
    format!("{class}\u{0}{}", canonical(args))
}

/// The identity of a Python job (Celery task, RQ function): its name, its
/// positional and its keyword arguments.
pub fn python_key(name: &str, args: &Value, kwargs: &Value) -> String {
    job_key(name, &Value::Array(vec![args.clone(), kwargs.clone()]))
}

/// The identity of an existing RQ job, by its id.
pub fn rq_id_key(id: &str) -> String {
    format!("\u{0}rq-id\u{0}{id}")
}

/// The identity a presence scan of `kind` files the row's job under.
pub fn identity(kind: &QueueKind, class: &str, job: &BuiltJob) -> String {
    let kwargs = || Value::Object(job.kwargs.clone());
    match (kind, &job.job_id) {
        (QueueKind::Rq(_), Some(id)) => rq_id_key(id),
        (QueueKind::Rq(_) | QueueKind::Celery(_), _) => {
            python_key(class, &Value::from(job.args.clone()), &kwargs())
        }
        (QueueKind::Bullmq(_), _) => job_key(class, &kwargs()),
        _ => job_key(class, &Value::from(job.args.clone())),
    }
}

/// An empty keyword-argument object.
pub fn no_kwargs() -> Value {
    Value::Object(Map::new())
}

/// The first `budget` entries of a list (`LLEN`/`LRANGE`) or sorted set
/// (`ZCARD`/`ZRANGE`); marks the index truncated when the structure holds
/// more.
pub(crate) async fn read_bounded(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    (len_cmd, range_cmd): (&str, &str),
    budget: u64,
    idx: &mut PresenceIndex,
) -> redis::RedisResult<Vec<String>> {
    let len: u64 = redis::cmd(len_cmd).arg(key).query_async(conn).await?;
    let take = len.min(budget);
    idx.truncated |= len > take;
    if take == 0 {
        return Ok(Vec::new());
    }
    redis::cmd(range_cmd)
        .arg(key)
        .arg(0)
        .arg(take as i64 - 1)
        .query_async(conn)
        .await
}

/// Add the first `budget` entries of a list or sorted set to the index as
/// queued jobs. Returns how many were read.
pub(crate) async fn scan_queued(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    cmds: (&str, &str),
    budget: u64,
    idx: &mut PresenceIndex,
) -> redis::RedisResult<u64> {
    let entries = read_bounded(conn, key, cmds, budget, idx).await?;
    for e in &entries {
        idx.add_text(e, false);
    }
    Ok(entries.len() as u64)
}

impl PresenceIndex {
    /// Record a payload (`{"class": …, "args": […], …}`); other JSON is ignored.
    pub fn add_payload(&mut self, payload: &Value, running: bool) {
        self.scanned += 1;
        let (Some(class), Some(args)) = (
            payload.get("class").and_then(Value::as_str),
            payload.get("args"),
        ) else {
            return;
        };
        // An ActiveJob envelope (Rails' Sidekiq or Resque JobWrapper,
        // Sidekiq 8's wrapper): the job is the serialized hash inside.
        let key = match activejob_inside(class, args) {
            Some((job_class, arguments)) => job_key(job_class, arguments),
            None => job_key(class, args),
        };
        if running {
            self.running.insert(key);
        } else {
            self.queued.insert(key);
        }
    }

    /// Record a payload given as JSON text.
    pub fn add_text(&mut self, text: &str, running: bool) {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => self.add_payload(&v, running),
            Err(_) => self.scanned += 1,
        }
    }

    /// Record a job by its identity (see `identity`).
    pub fn add_identity(&mut self, key: String, running: bool) {
        if running {
            self.running.insert(key);
        } else {
            self.queued.insert(key);
        }
    }

    pub fn lookup(&self, class: &str, args: &[Value]) -> Presence {
        self.lookup_key(&job_key(class, &Value::from(args.to_vec())))
    }

    /// Whether the job of this identity (see `identity`) was seen.
    pub fn lookup_key(&self, key: &str) -> Presence {
        if self.running.contains(key) {
            Presence::Running
        } else if self.queued.contains(key) {
            Presence::Queued
        } else if self.truncated {
            Presence::Backlog
        } else {
            Presence::Absent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identities_compare_as_values() {
        let table = [
            (json!([1, "a", null]), json!([1.0, "a", null]), true),
            (json!([]), json!({}), true),
            (json!([{"b": 1, "a": 2}]), json!([{"a": 2, "b": 1}]), true),
            (json!([1]), json!(["1"]), false),
            (json!([1, 2]), json!([2, 1]), false),
            (json!([1.5]), json!([1.5]), true),
        ];
        for (a, b, same) in table {
            assert_eq!(job_key("C", &a) == job_key("C", &b), same, "{a} vs {b}");
        }
    }

    #[test]
    fn finds_queued_and_running_jobs() {
        let mut idx = PresenceIndex::default();
        idx.add_text(r#"{"class":"NotifyUser","args":[12,2]}"#, false);
        idx.add_text(
            r#"{"retry":true,"queue":"q","class":"NotifyUser","args":[13,3],"jid":"x"}"#,
            false,
        );
        idx.add_payload(&json!({"class": "NotifyUser", "args": [14, 4]}), true);
        idx.add_text("not json", false);
        assert_eq!(
            idx.lookup("NotifyUser", &[json!(12), json!(2)]),
            Presence::Queued
        );
        assert_eq!(
            idx.lookup("NotifyUser", &[json!(13), json!(3)]),
            Presence::Queued
        );
        assert_eq!(
            idx.lookup("NotifyUser", &[json!(14), json!(4)]),
            Presence::Running
        );
        assert_eq!(
            idx.lookup("NotifyUser", &[json!(15), json!(5)]),
            Presence::Absent
        );
        assert_eq!(
            idx.lookup("Other", &[json!(12), json!(2)]),
            Presence::Absent
        );
        assert_eq!(idx.scanned, 4);
    }

    #[test]
    fn a_truncated_scan_never_reports_absence() {
        let mut idx = PresenceIndex::default();
        idx.add_text(r#"{"class":"NotifyUser","args":[12,2]}"#, false);
        idx.truncated = true;
        assert_eq!(
            idx.lookup("NotifyUser", &[json!(12), json!(2)]),
            Presence::Queued
        );
        assert_eq!(
            idx.lookup("NotifyUser", &[json!(15), json!(5)]),
            Presence::Backlog
        );
    }

    #[test]
    fn activejob_envelopes_are_found_by_the_job_inside() {
        let mut idx = PresenceIndex::default();
        idx.add_payload(
            &json!({"class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper",
                    "wrapped": "NotifyUserJob", "queue": "mailers",
                    "args": [{"job_class": "NotifyUserJob", "job_id": "x",
                              "arguments": [{"_aj_globalid": "gid://shop/User/7"}, 42,
                                            {"note": "hi", "urgent": true, "_aj_ruby2_keywords": ["urgent", "note"]}]}],
                    "jid": "abc"}),
            false,
        );
        idx.add_payload(
            &json!({"class": "Sidekiq::ActiveJob::Wrapper",
                    "args": [{"job_class": "OtherJob", "arguments": [1]}]}),
            false,
        );
        let ours = [
            json!({"_aj_globalid": "gid://shop/User/7"}),
            json!(42),
            json!({"note": "hi", "urgent": true, "_aj_ruby2_keywords": ["note", "urgent"]}),
        ];
        assert_eq!(idx.lookup("NotifyUserJob", &ours), Presence::Queued);
        assert_eq!(idx.lookup("OtherJob", &[json!(1)]), Presence::Queued);
        assert_eq!(idx.lookup("NotifyUserJob", &[json!(1)]), Presence::Absent);
    }
}
