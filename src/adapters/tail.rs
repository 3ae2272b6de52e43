//! Incremental reading of a log source for the daemon: between passes only
//! new bytes are read.
//!
//! Owns: per-file cursors (device + inode → byte offset and line number),
//! rotation and truncation handling, and the source's long-lived trace
//! index (every message, not only wanted ones: a row becomes stuck after its
//! mail was logged). Does not own: line meaning (core::evidence).
//!
//! - rename rotation (`mail.log` → `mail.log.1`, new `mail.log`): the renamed
//!   file keeps its inode, so its cursor continues where it stopped; the new
//!   file is read from the start;
//! - copytruncate: a file shorter than its cursor was truncated and is read
//!   from the start (messages in flight stay tracked); the copy (a new inode
//!   with the same first bytes as a file already read) continues from that
//!   file's cursor;
//! - compressed rotations (`mail.log.2.gz`) whose head matches a file
//!   already read are read only past what was read of that file, once;
//! - only complete lines are consumed: a line being written is read next
//!   time.

use super::logfile::{open, parser_for, resolve, scan_reader, LogError, ScanStats};
use crate::config::LogSourceConfig;

/// How a journal source is named where a file name would stand.
pub fn journal_label(input: &crate::config::JournalInput) -> String {
    match (&input.directory, input.files.as_slice()) {
        (Some(d), _) => format!("journal {}", d.display()),
        (None, [f, ..]) => format!("journal {f}"),
        (None, []) => "journal".to_string(),
    }
}
use crate::core::evidence::{KeyFilter, LineParser, TraceStore};
use crate::core::model::Timestamp;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// First bytes of a file, to recognise a copy or a compressed rotation.
const HEAD: usize = 512;

#[derive(Clone, Debug)]
struct Cursor {
    /// Bytes of the (decompressed) file consumed.
    offset: u64,
    /// Next line number.
    line: u64,
    /// Index into `names` (LineRef.file).
    index: u32,
    head: Vec<u8>,
    /// A compressed file read to its end (it does not grow).
    finished: bool,
}

/// A log source read incrementally across passes.
pub struct Tailer {
    pub name: String,
    cfg: LogSourceConfig,
    parser: Box<dyn LineParser>,
    pub store: TraceStore,
    /// File names at the time they were read (LineRef.file indexes this).
    pub names: Vec<PathBuf>,
    cursors: HashMap<(u64, u64), Cursor>,
    /// Heads of files read earlier, newest last (bounded).
    seen_heads: VecDeque<(Vec<u8>, u64)>,
    primed: bool,
    /// Totals since start.
    pub stats: ScanStats,
    /// Journal sources: resume after this record.
    journal_cursor: Option<String>,
    /// Journal sources: the cursor of each record that became evidence.
    pub record_cursors: HashMap<u64, String>,
    /// Journal sources: the next record's number (LineRef.line).
    next_record: u64,
}

fn head_of(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut r = open(path)?;
    let mut buf = vec![0u8; HEAD];
    let mut n = 0;
    while n < HEAD {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

impl Tailer {
    pub fn new(name: &str, cfg: &LogSourceConfig, now: Timestamp) -> Tailer {
        Tailer {
            name: name.to_string(),
            cfg: cfg.clone(),
            parser: parser_for(cfg, KeyFilter::All, now),
            store: TraceStore::new(false),
            names: Vec::new(),
            cursors: HashMap::new(),
            seen_heads: VecDeque::new(),
            primed: false,
            stats: ScanStats::default(),
            journal_cursor: None,
            record_cursors: HashMap::new(),
            next_record: 1,
        }
    }

    /// A journal source: every record since the last one read (all records
    /// at the first poll, as a file is read whole).
    fn poll_journal(&mut self, input: &crate::config::JournalInput) -> Result<ScanStats, LogError> {
        let from = match &self.journal_cursor {
            Some(c) => super::journal::From::Cursor(c.clone()),
            None => super::journal::From::Start,
        };
        if self.names.is_empty() {
            self.names.push(PathBuf::from(journal_label(input)));
        }
        let read = super::journal::read(
            &self.name,
            input,
            &self.cfg.format,
            &from,
            self.next_record,
            self.parser.as_mut(),
            &mut self.store,
            &mut self.record_cursors,
        )?;
        self.next_record += read.stats.lines;
        if read.last_cursor.is_some() {
            self.journal_cursor = read.last_cursor;
        }
        self.stats.files = 1;
        self.stats.bytes += read.stats.bytes;
        self.stats.lines += read.stats.lines;
        Ok(read.stats)
    }

    pub fn slack(&self) -> Duration {
        self.cfg.slack
    }

    /// Whether `head` starts like a file already read; returns how far that
    /// file was read.
    fn known_head(&self, head: &[u8]) -> Option<u64> {
        if head.is_empty() {
            return None;
        }
        self.seen_heads
            .iter()
            .rev()
            .find(|(h, _)| head.len() >= h.len() && head.starts_with(h))
            .map(|(_, off)| *off)
    }

    fn remember_head(&mut self, head: Vec<u8>, offset: u64) {
        if head.is_empty() {
            return;
        }
        self.seen_heads.retain(|(h, _)| *h != head);
        self.seen_heads.push_back((head, offset));
        while self.seen_heads.len() > 64 {
            self.seen_heads.pop_front();
        }
    }

    /// Read everything new since the last poll. Returns what this poll read.
    /// `now` is the clock for inferring years of syslog timestamps.
    pub fn poll(&mut self, now: Timestamp) -> Result<ScanStats, LogError> {
        self.parser.set_now(now);
        if let Some(input) = self.cfg.journal.clone() {
            return self.poll_journal(&input);
        }
        let files = resolve(&self.name, &self.cfg.paths)?;
        let mut polled = ScanStats::default();
        let mut live = HashMap::new();
        let source_name = self.name.clone();
        for path in files {
            let read_err = |error| LogError::Read {
                source_name: source_name.clone(),
                path: path.display().to_string(),
                error,
            };
            let meta = std::fs::metadata(&path).map_err(read_err)?;
            let id = (meta.dev(), meta.ino());
            let gz = is_gz(&path).map_err(read_err)?;
            let head = head_of(&path).map_err(read_err)?;
            let mut cursor = match self.cursors.remove(&id) {
                Some(mut c) if !gz => {
                    // Truncated in place (copytruncate) or rewritten: the same
                    // stream continues from the start of the file; messages
                    // in flight stay tracked.
                    if meta.len() < c.offset || !head.starts_with(&c.head) {
                        c.offset = 0;
                        c.line = 1;
                    }
                    c
                }
                Some(c) => c,
                None => {
                    let index = self.names.len() as u32;
                    self.names.push(path.clone());
                    let mut c = Cursor {
                        offset: 0,
                        line: 1,
                        index,
                        head: head.clone(),
                        finished: false,
                    };
                    if self.primed {
                        if let Some(done) = self.known_head(&head) {
                            // A copy or a compressed rotation of a file read
                            // up to `done`: read only what came after.
                            c.offset = done;
                        }
                    }
                    c
                }
            };
            if !cursor.finished {
                let consumed = self.read_from(&path, gz, &mut cursor).map_err(read_err)?;
                polled.bytes += consumed.0;
                polled.lines += consumed.1;
                if consumed.0 > 0 {
                    polled.files += 1;
                }
                cursor.finished = gz;
            }
            if cursor.head.len() < HEAD {
                cursor.head = head;
            }
            let offset = if cursor.offset == u64::MAX {
                0
            } else {
                cursor.offset
            };
            self.remember_head(cursor.head.clone(), offset);
            live.insert(id, cursor);
        }
        // Cursors of files that vanished are dropped; their heads stay in
        // `seen_heads` to recognise their compressed copies.
        self.cursors = live;
        self.primed = true;
        self.stats.files = self.names.len();
        self.stats.bytes += polled.bytes;
        self.stats.lines += polled.lines;
        Ok(polled)
    }

    /// Read `path` from the cursor to its last complete line.
    fn read_from(
        &mut self,
        path: &std::path::Path,
        gz: bool,
        c: &mut Cursor,
    ) -> std::io::Result<(u64, u64)> {
        let mut reader = open(path)?;
        if c.offset > 0 {
            if gz {
                // Compressed files cannot seek: skip what was read.
                std::io::copy(&mut reader.by_ref().take(c.offset), &mut std::io::sink())?;
            } else {
                let mut f = std::fs::File::open(path)?;
                f.seek(SeekFrom::Start(c.offset))?;
                reader = Box::new(f);
            }
        }
        let got = scan_reader(
            reader,
            c.index,
            c.line,
            gz,
            self.parser.as_mut(),
            &mut self.store,
        )?;
        c.offset += got.consumed;
        c.line += got.lines;
        Ok((got.consumed, got.lines))
    }

    /// Forget messages first seen before `before`.
    pub fn prune(&mut self, before: Timestamp) {
        self.store.prune(before);
        if !self.record_cursors.is_empty() {
            let kept: std::collections::HashSet<u64> = self.store.lines().map(|l| l.line).collect();
            self.record_cursors.retain(|line, _| kept.contains(line));
        }
    }
}

fn is_gz(path: &std::path::Path) -> std::io::Result<bool> {
    let mut f = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;
    use crate::core::model::Verdict;
    use std::io::Write;

    fn cfg(dir: &std::path::Path) -> LogSourceConfig {
        LogSourceConfig {
            format: LogFormat::Postfix,
            journal: None,
            paths: vec![format!("{}/mail.log*", dir.display())],
            utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
            slack: Duration::from_secs(600),
        }
    }

    fn now() -> Timestamp {
        chrono::DateTime::parse_from_rfc3339("2026-11-29T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn msg(q: &str, id: &str, status: &str) -> String {
        format!(
            "Nov 28 10:00:00 mail postfix/cleanup[1]: {q}: message-id=<{id}>\n\
             Nov 28 10:00:00 mail postfix/qmgr[2]: {q}: from=<a@b>, size=1, nrcpt=1 (queue active)\n\
             Nov 28 10:00:01 mail postfix/smtp[3]: {q}: to=<r@d>, relay=x, delay=1, delays=0/0/0/0, dsn=2.0.0, status={status} (250)\n"
        )
    }

    #[test]
    fn reads_only_new_bytes_and_survives_rename_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mail.log");
        append(&log, &msg("AAAA000001", "one@x", "sent"));
        let mut t = Tailer::new("t", &cfg(dir.path()), now());
        let first = t.poll(now()).unwrap();
        assert_eq!(first.lines, 3);
        assert_eq!(t.store.verdict("one@x", None).verdict, Verdict::Delivered);
        assert_eq!(t.poll(now()).unwrap().lines, 0, "nothing new");

        // Half a line is not consumed until it is complete.
        append(
            &log,
            "Nov 28 10:00:02 mail postfix/cleanup[1]: BBBB000002: message-id=<two@",
        );
        assert_eq!(t.poll(now()).unwrap().lines, 0);
        append(&log, "x>\n");
        assert_eq!(t.poll(now()).unwrap().lines, 1);

        // Rotation mid-message: the rest of message two lands in the old
        // file (renamed) and a new file starts.
        append(&log, "Nov 28 10:00:02 mail postfix/qmgr[2]: BBBB000002: from=<a@b>, size=1, nrcpt=1 (queue active)\n");
        std::fs::rename(&log, dir.path().join("mail.log.1")).unwrap();
        append(&log, "Nov 28 10:00:03 mail postfix/smtp[3]: BBBB000002: to=<r@d>, relay=x, delay=1, delays=0/0/0/0, dsn=2.0.0, status=sent (250)\n");
        let p = t.poll(now()).unwrap();
        assert_eq!(p.lines, 2, "the old file's tail and the new file's line");
        assert_eq!(t.store.verdict("two@x", None).verdict, Verdict::Delivered);
        assert_eq!(
            t.store.instances("one@x", None).len(),
            1,
            "nothing read twice"
        );

        // The rotated file gets compressed: not read again.
        let gz = dir.path().join("mail.log.2.gz");
        let data = std::fs::read(dir.path().join("mail.log.1")).unwrap();
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&data).unwrap();
        enc.finish().unwrap();
        std::fs::remove_file(dir.path().join("mail.log.1")).unwrap();
        assert_eq!(t.poll(now()).unwrap().lines, 0);
        assert_eq!(t.store.instances("one@x", None).len(), 1);
    }

    #[test]
    fn a_compressed_rotation_is_read_past_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mail.log");
        append(&log, &msg("AAAA000001", "one@x", "sent"));
        let mut t = Tailer::new("t", &cfg(dir.path()), now());
        t.poll(now()).unwrap();
        // More lines, then rotate and compress before the next poll
        // (logrotate `compress` without `delaycompress`).
        append(&log, &msg("DDDD000004", "four@x", "sent"));
        let data = std::fs::read(&log).unwrap();
        let gz = dir.path().join("mail.log.1.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&data).unwrap();
        enc.finish().unwrap();
        std::fs::remove_file(&log).unwrap();
        append(
            &log,
            "Nov 28 10:00:09 mail postfix/qmgr[2]: DDDD000004: removed\n",
        );
        let p = t.poll(now()).unwrap();
        assert_eq!(
            p.lines, 4,
            "the unread tail of the compressed file and the new line"
        );
        assert_eq!(t.store.verdict("four@x", None).verdict, Verdict::Delivered);
        assert_eq!(
            t.store.instances("one@x", None).len(),
            1,
            "nothing read twice"
        );
        assert_eq!(
            t.poll(now()).unwrap().lines,
            0,
            "a finished .gz is not read again"
        );
    }

    #[test]
    fn copytruncate_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mail.log");
        append(&log, &msg("AAAA000001", "one@x", "sent"));
        let mut t = Tailer::new("t", &cfg(dir.path()), now());
        t.poll(now()).unwrap();
        // logrotate copytruncate: copy, then truncate in place.
        std::fs::copy(&log, dir.path().join("mail.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&log, &msg("CCCC000003", "three@x", "bounced"));
        let p = t.poll(now()).unwrap();
        assert_eq!(p.lines, 3, "only the new file content is read");
        assert_eq!(t.store.instances("one@x", None).len(), 1);
        assert!(matches!(
            t.store.verdict("three@x", None).verdict,
            Verdict::Failed { .. }
        ));
    }
}
