//! The systemd journal as a mail log: records read through the machine's own
//! `journalctl -o json`, each turned back into the syslog line its program
//! would have written, and fed to the same Postfix or Exim line parser as a
//! file's lines.
//!
//! Owns: the `journalctl` command line (filters, `--directory`/`--file`,
//! `--since`, `--after-cursor`), decoding its JSON records (a `MESSAGE` may
//! be text or a byte array), the line each record becomes, and the cursor of
//! every record that became evidence (its source reference). Does not own:
//! what a line means (core::evidence).
//!
//! A record becomes, for Postfix, `<RFC 3339 time> <host> <identifier>[<pid>]:
//! <MESSAGE>`; for Exim, `<YYYY-MM-DD HH:MM:SS> <MESSAGE>` in UTC — the time
//! is always the record's own `__REALTIME_TIMESTAMP`.

use super::logfile::ScanStats;
use crate::config::{JournalInput, LogFormat};
use crate::core::evidence::{LineParser, LineRef, TraceStore};
use crate::core::model::Timestamp;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("evidence {source_name}: cannot run {program}: {error}")]
    Spawn {
        source_name: String,
        program: String,
        error: std::io::Error,
    },
    #[error("evidence {source_name}: journalctl failed ({status}): {stderr}")]
    Failed {
        source_name: String,
        status: String,
        stderr: String,
    },
    #[error("evidence {source_name}: reading journalctl's output: {error}")]
    Read {
        source_name: String,
        error: std::io::Error,
    },
    #[error("evidence {source_name}: journal record {line} is not JSON: {error}")]
    Record {
        source_name: String,
        line: u64,
        error: String,
    },
}

/// Where a read starts.
#[derive(Clone, Debug)]
pub enum From {
    /// Every record.
    Start,
    /// Records at or after this time.
    Since(Timestamp),
    /// Records after this cursor.
    Cursor(String),
}

/// What one read did.
#[derive(Clone, Debug, Default)]
pub struct JournalRead {
    pub stats: ScanStats,
    /// The cursor of the last record read (resume after it).
    pub last_cursor: Option<String>,
}

/// The journalctl arguments for a read.
pub fn arguments(input: &JournalInput, from: &From) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--output=json".into(),
        "--no-pager".into(),
        "--quiet".into(),
        "--output-fields=MESSAGE,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_HOSTNAME".into(),
    ];
    if let Some(d) = &input.directory {
        a.push(format!("--directory={}", d.display()));
    }
    for f in &input.files {
        a.push(format!("--file={f}"));
    }
    match from {
        From::Start => {}
        From::Since(t) => a.push(format!("--since=@{}", t.timestamp())),
        From::Cursor(c) => a.push(format!("--after-cursor={c}")),
    }
    for u in &input.units {
        a.push(format!("--unit={u}"));
    }
    for i in &input.identifiers {
        a.push(format!("SYSLOG_IDENTIFIER={i}"));
    }
    a
}

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        // Non-UTF-8 messages come as byte arrays.
        Value::Array(bytes) => {
            let b: Vec<u8> = bytes
                .iter()
                .filter_map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect();
            Some(String::from_utf8_lossy(&b).into_owned())
        }
        _ => None,
    }
}

/// The syslog line a journal record stands for, or `None` for a record
/// without a message or time.
pub fn line_of(format: &LogFormat, rec: &Value) -> Option<String> {
    let msg = text_of(rec.get("MESSAGE"))?;
    let micros: i64 = rec.get("__REALTIME_TIMESTAMP")?.as_str()?.parse().ok()?;
    let at = chrono::DateTime::from_timestamp_micros(micros)?;
    Some(match format {
        LogFormat::Postfix => {
            let host = text_of(rec.get("_HOSTNAME")).unwrap_or_else(|| "localhost".into());
            let ident = text_of(rec.get("SYSLOG_IDENTIFIER")).unwrap_or_else(|| "journal".into());
            let pid = text_of(rec.get("SYSLOG_PID"))
                .or_else(|| text_of(rec.get("_PID")))
                .map(|p| format!("[{p}]"))
                .unwrap_or_default();
            format!(
                "{} {host} {ident}{pid}: {msg}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            )
        }
        // Exim (validation allows no other format here).
        _ => format!("{} {msg}", at.format("%Y-%m-%d %H:%M:%S")),
    })
}

/// Feed records (JSON lines) from `reader` to `parser`, numbering them from
/// `first_line`; the cursor of every record that became evidence goes into
/// `cursors`.
pub fn feed_records(
    source_name: &str,
    reader: impl Read,
    format: &LogFormat,
    first_line: u64,
    parser: &mut dyn LineParser,
    store: &mut TraceStore,
    cursors: &mut HashMap<u64, String>,
) -> Result<JournalRead, JournalError> {
    let mut out = JournalRead::default();
    let mut line_no = first_line;
    for raw in BufReader::new(reader).split(b'\n') {
        let raw = raw.map_err(|error| JournalError::Read {
            source_name: source_name.to_string(),
            error,
        })?;
        if raw.is_empty() {
            continue;
        }
        out.stats.bytes += raw.len() as u64 + 1;
        out.stats.lines += 1;
        let rec: Value = serde_json::from_slice(&raw).map_err(|e| JournalError::Record {
            source_name: source_name.to_string(),
            line: line_no,
            error: e.to_string(),
        })?;
        let cursor = rec
            .get("__CURSOR")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(line) = line_of(format, &rec) {
            let before = store.touches();
            parser.feed(
                line.as_bytes(),
                LineRef {
                    file: 0,
                    line: line_no,
                },
                store,
            );
            if store.touches() != before {
                if let Some(c) = &cursor {
                    cursors.insert(line_no, c.clone());
                }
            }
        }
        if cursor.is_some() {
            out.last_cursor = cursor;
        }
        line_no += 1;
    }
    out.stats.files = 1;
    Ok(out)
}

/// Run journalctl from `from` and feed every record to `parser`.
#[allow(clippy::too_many_arguments)]
pub fn read(
    source_name: &str,
    input: &JournalInput,
    format: &LogFormat,
    from: &From,
    first_line: u64,
    parser: &mut dyn LineParser,
    store: &mut TraceStore,
    cursors: &mut HashMap<u64, String>,
) -> Result<JournalRead, JournalError> {
    let mut child = Command::new(&input.journalctl)
        .args(arguments(input, from))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| JournalError::Spawn {
            source_name: source_name.to_string(),
            program: input.journalctl.clone(),
            error,
        })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Drain stderr alongside, so a chatty journalctl cannot block.
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let fed = feed_records(
        source_name,
        stdout,
        format,
        first_line,
        parser,
        store,
        cursors,
    );
    if fed.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|error| JournalError::Read {
        source_name: source_name.to_string(),
        error,
    })?;
    let stderr = err_reader.join().unwrap_or_default();
    let fed = fed?;
    if !status.success() {
        return Err(JournalError::Failed {
            source_name: source_name.to_string(),
            status: status.to_string(),
            stderr: stderr.trim().chars().take(500).collect(),
        });
    }
    Ok(fed)
}

/// Reach the journal with the source's filters: the time of the newest
/// matching record, if any (for `check`).
pub fn probe(source_name: &str, input: &JournalInput) -> Result<Option<String>, JournalError> {
    let mut args = arguments(input, &From::Start);
    args.push("--lines=1".into());
    let o = Command::new(&input.journalctl)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| JournalError::Spawn {
            source_name: source_name.to_string(),
            program: input.journalctl.clone(),
            error,
        })?;
    if !o.status.success() {
        return Err(JournalError::Failed {
            source_name: source_name.to_string(),
            status: o.status.to_string(),
            stderr: String::from_utf8_lossy(&o.stderr)
                .trim()
                .chars()
                .take(500)
                .collect(),
        });
    }
    let last = o
        .stdout
        .split(|b| *b == b'\n')
        .rev()
        .find_map(|l| serde_json::from_slice::<Value>(l).ok());
    Ok(last.and_then(|r| {
        let micros: i64 = r.get("__REALTIME_TIMESTAMP")?.as_str()?.parse().ok()?;
        chrono::DateTime::from_timestamp_micros(micros)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_become_the_lines_their_programs_would_have_logged() {
        let rec = json!({"__REALTIME_TIMESTAMP": "1795905345250000", "MESSAGE": "ED054C8803: removed",
                         "SYSLOG_IDENTIFIER": "postfix/qmgr", "_PID": "22071", "_HOSTNAME": "mail",
                         "__CURSOR": "s=1;i=2"});
        assert_eq!(
            line_of(&LogFormat::Postfix, &rec).unwrap(),
            "2026-11-28T22:35:45.250000Z mail postfix/qmgr[22071]: ED054C8803: removed"
        );
        let exim = LogFormat::Exim;
        assert_eq!(
            line_of(&exim, &json!({"__REALTIME_TIMESTAMP": "1795905345250000", "MESSAGE": "1xXRVo-0006uo-1l Completed"})).unwrap(),
            "2026-11-28 22:35:45 1xXRVo-0006uo-1l Completed"
        );
        let bytes = json!({"__REALTIME_TIMESTAMP": "1795905345000000", "MESSAGE": [104, 105, 255], "SYSLOG_IDENTIFIER": "x"});
        assert!(line_of(&LogFormat::Postfix, &bytes)
            .unwrap()
            .ends_with("x: hi\u{fffd}"));
        assert_eq!(
            line_of(&LogFormat::Postfix, &json!({"MESSAGE": "no time"})),
            None
        );
        assert_eq!(
            line_of(&LogFormat::Postfix, &json!({"__REALTIME_TIMESTAMP": "1"})),
            None
        );
    }

    #[test]
    fn the_command_line_carries_filters_and_the_resume_point() {
        let input = JournalInput {
            units: vec!["postfix@-.service".into()],
            identifiers: vec![],
            directory: Some("/var/log/journal/remote".into()),
            files: vec![],
            journalctl: "journalctl".into(),
        };
        let a = arguments(&input, &From::Cursor("s=abc;i=9".into()));
        assert!(a.contains(&"--directory=/var/log/journal/remote".to_string()));
        assert!(a.contains(&"--after-cursor=s=abc;i=9".to_string()));
        assert!(a.contains(&"--unit=postfix@-.service".to_string()));
        let t = chrono::DateTime::from_timestamp(1_795_905_345, 0).unwrap();
        assert!(arguments(&input, &From::Since(t)).contains(&"--since=@1795905345".to_string()));
    }
}
