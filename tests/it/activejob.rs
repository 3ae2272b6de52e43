//! Rails ActiveJob envelopes on Sidekiq and Resque, run by real Ruby:
//! Debian's ruby-activejob 6.1 with Debian's Sidekiq 6.4.1 as its backend
//! performs every job sweeper requeued (a GlobalID record, a positional and
//! a keyword argument); Rails' Resque wrapper path (`ActiveJob::Base.execute`
//! on the envelope's argument) runs the Resque envelope, and node-resque
//! receives it byte for byte; a job the real ActiveJob client enqueued is
//! found inside its envelope and not pushed twice.

use crate::sql_sweeps::{config, Backend, Ts};
use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn app_dir() -> PathBuf {
    root().join("tests/consumers/activejob")
}

fn ruby(ns: &str, out: &Path, code: &str, stdin: Option<&str>) {
    let mut child = Command::new("ruby")
        .args(["-r", "./app.rb", "-e", code])
        .current_dir(app_dir())
        .env("REDIS_URL", redis_url())
        .env("SIDEKIQ_NAMESPACE", ns)
        .env("AJ_OUT", out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ruby runs (run scripts/test, which installs ruby-activejob)");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "ruby {code}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The base config's job as an ActiveJob `NotifyUserJob(user, id, note:)`
/// on the `mailers` queue of a `kind` queue.
fn aj_config(base: &Path, kind: &str, presence: bool) -> PathBuf {
    let text = std::fs::read_to_string(base).unwrap();
    let presence = if presence {
        "\n    presence_check: true"
    } else {
        ""
    };
    let text = text
        .replacen("kind: resque", &format!("kind: {kind}{presence}"), 1)
        .replacen(
            "job: {queue: notify, class: NotifyUser, args: [user_id, id]}",
            "job: {format: activejob, queue: mailers, class: NotifyUserJob, app: sweeper-test, \
             args: [{global_id: User, column: user_id}, id], kwargs: {note: message_id}}",
            1,
        );
    assert!(text.contains("format: activejob"), "{text}");
    let out = base.with_file_name(format!("{}.yaml", unique("aj")));
    std::fs::write(&out, text).unwrap();
    out
}

async fn lrange(r: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(r)
        .await
        .unwrap()
}

#[tokio::test]
async fn sidekiq_runs_the_activejob_jobs_sweeper_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("aj_sidekiq");
    let mut r = redis().await;
    let cfg = aj_config(&config(&b, dir.path(), &ns, 5), "sidekiq", true);
    let out = dir.path().join("aj.jsonl");

    // explain shows the job as the worker will receive it.
    let o = explain(&cfg, "notifications", "2");
    let text = stdout(&o);
    assert!(
        text.contains("\"class\":\"ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper\""),
        "{text}"
    );
    assert!(
        text.contains("\"_aj_globalid\":\"gid://sweeper-test/User/12\""),
        "{text}"
    );

    // Rows 2 and 10 are requeued; row 3 has no user: a clear row error,
    // nothing pushed for it.
    let s = once_json(&cfg, 1);
    let s = sweep_json(&s, "notifications");
    assert_eq!(s["outcomes"]["applied"]["requeue"], 2, "{s:#}");
    let row3 = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "3")
        .unwrap();
    assert_eq!(row3["outcome"], "failed", "{s:#}");
    assert!(
        row3["error"]
            .as_str()
            .unwrap()
            .contains("a User reference is NULL"),
        "{s:#}"
    );
    let key = format!("{ns}:queue:mailers");
    let raw = lrange(&mut r, &key).await;
    assert_eq!(raw.len(), 2);
    let mut jids: Vec<String> = raw
        .iter()
        .map(|p| {
            let v: Value = serde_json::from_str(p).unwrap();
            assert_eq!(v["wrapped"], "NotifyUserJob");
            assert_eq!(v["args"][0]["executions"], 0);
            v["jid"].as_str().unwrap().to_string()
        })
        .collect();
    jids.sort();

    // A real ActiveJob worker performs both.
    let out_path = out.display().to_string();
    let env = [
        ("SIDEKIQ_NAMESPACE", ns.as_str()),
        ("AJ_OUT", out_path.as_str()),
    ];
    let runs = sidekiq_performs(&app_dir(), "app.rb", "mailers", &env, &out, 2);
    let mut got: Vec<(i64, i64, String)> = runs
        .iter()
        .map(|j| {
            assert_eq!(j["job_class"], "NotifyUserJob");
            assert_eq!(j["user_class"], "User", "a GlobalID located record");
            assert_eq!(j["note"], Value::Null, "the keyword argument arrived");
            assert_eq!(j["executions"], 1);
            assert_eq!(j["queue_name"], "mailers");
            (
                j["user_id"].as_i64().unwrap(),
                j["id"].as_i64().unwrap(),
                j["provider_job_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
        [(12, 2), (20, 10)]
    );
    let mut provider_ids: Vec<String> = got.into_iter().map(|g| g.2).collect();
    provider_ids.sort();
    assert_eq!(provider_ids, jids, "provider_job_id is the Sidekiq jid");
    for set in ["retry", "dead"] {
        let n: i64 = redis::cmd("ZCARD")
            .arg(format!("{ns}:{set}"))
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(n, 0, "nothing in Sidekiq's {set} set");
    }
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

#[tokio::test]
async fn a_job_the_app_enqueued_through_activejob_is_held_as_queued() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("aj_held");
    let mut r = redis().await;
    let cfg = aj_config(&config(&b, dir.path(), &ns, 5), "sidekiq", true);
    let out = dir.path().join("aj.jsonl");
    // The app's own client enqueues row 2's and row 10's jobs (note: nil,
    // as the rows' message_id is NULL).
    ruby(&ns, &out, "enqueue(12, 2); enqueue(20, 10)", None);
    let key = format!("{ns}:queue:mailers");
    assert_eq!(lrange(&mut r, &key).await.len(), 2);
    let s = once_json(&cfg, 1);
    let s = sweep_json(&s, "notifications");
    assert_eq!(reasons(s).get("still_queued"), Some(&2), "{s:#}");
    assert_eq!(s["outcomes"]["applied"].get("requeue"), None, "{s:#}");
    assert_eq!(lrange(&mut r, &key).await.len(), 2, "not pushed twice");
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}

#[tokio::test]
async fn resque_envelopes_run_through_activejob_and_reach_node_resque_intact() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::new(Ts::PgTz, dir.path()).await;
    let ns = unique("aj_resque");
    let mut r = redis().await;
    let cfg = aj_config(&config(&b, dir.path(), &ns, 5), "resque", false);
    let out = dir.path().join("aj.jsonl");
    let s = once_json(&cfg, 1);
    assert_eq!(
        sweep_json(&s, "notifications")["outcomes"]["applied"]["requeue"],
        2
    );
    let key = format!("{ns}:queue:mailers");
    let raw = lrange(&mut r, &key).await;
    assert_eq!(raw.len(), 2);
    for p in &raw {
        let v: Value = serde_json::from_str(p).unwrap();
        assert_eq!(
            v["class"],
            "ActiveJob::QueueAdapters::ResqueAdapter::JobWrapper"
        );
        assert_eq!(v.as_object().unwrap().len(), 2, "class and args only: {p}");
    }
    // Rails' Resque JobWrapper does `ActiveJob::Base.execute(args[0])`.
    ruby(&ns, &out, "execute_stdin", Some(&(raw.join("\n") + "\n")));
    let mut runs: Vec<(i64, i64)> = read_jsonl(&out)
        .iter()
        .map(|j| (j["user_id"].as_i64().unwrap(), j["id"].as_i64().unwrap()))
        .collect();
    runs.sort();
    assert_eq!(runs, [(12, 2), (20, 10)]);
    // node-resque takes the same envelopes off the queue unchanged.
    let jobs = resque_consume(
        &ns,
        "mailers",
        &["ActiveJob::QueueAdapters::ResqueAdapter::JobWrapper"],
        2,
    );
    let mut sent: Vec<Value> = raw
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let mut got: Vec<Value> = jobs
        .iter()
        .map(|j| serde_json::json!({"class": j["class"], "args": j["args"]}))
        .collect();
    let by_id = |v: &Value| v["args"][0]["job_id"].as_str().unwrap().to_string();
    sent.sort_by_key(by_id);
    got.sort_by_key(by_id);
    assert_eq!(got, sent);
    redis_clear(&mut r, &ns).await;
    b.cleanup().await;
}
