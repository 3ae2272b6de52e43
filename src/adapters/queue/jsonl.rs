//! JSON-lines sink: each job appended as one JSON object per line to a file
//! (for piping into anything else). A real, supported queue kind.
//!
//! Line: `{"queue","class","args","sweep","key","attempt","idempotency_key","enqueued_at"}`.
//! A batch is written with one `write_all` and synced before the push
//! counts as done.

use super::{JobRequest, QueueError};
use crate::core::model::Timestamp;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct JsonlSink {
    name: String,
    path: PathBuf,
}

pub fn line(job: &JobRequest<'_>, now: Timestamp) -> String {
    json!({
        "queue": job.queue,
        "class": job.class,
        "args": job.args,
        "sweep": job.sweep,
        "key": job.row_key,
        "attempt": job.attempt,
        "idempotency_key": job.idempotency_key(),
        "enqueued_at": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
    .to_string()
}

impl JsonlSink {
    pub fn new(name: &str, path: &Path) -> JsonlSink {
        JsonlSink {
            name: name.to_string(),
            path: path.to_path_buf(),
        }
    }

    fn io(&self, context: &str) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
        let context = format!("{context} {}", self.path.display());
        move |source| QueueError::Io {
            queue: self.name.clone(),
            context,
            source,
        }
    }

    pub async fn push(
        &mut self,
        jobs: &[JobRequest<'_>],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        let mut buf = String::new();
        for j in jobs {
            buf.push_str(&line(j, now));
            buf.push('\n');
        }
        let path = self.path.clone();
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(buf.as_bytes())?;
            f.sync_data()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        res.map_err(self.io("appending to"))
    }

    pub fn ping(&mut self) -> Result<String, QueueError> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let meta = std::fs::metadata(dir).map_err(self.io("checking the directory of"))?;
        if !meta.is_dir() {
            return Err(QueueError::Io {
                queue: self.name.clone(),
                context: format!("{} is not a directory", dir.display()),
                source: std::io::Error::other("not a directory"),
            });
        }
        Ok(format!("jsonl file {}", self.path.display()))
    }
}
