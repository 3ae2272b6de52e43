//! Log files as an evidence source: glob expansion, rotation order, gzip,
//! and streaming every line of every file through a parser exactly once.
//!
//! Owns: file I/O. Does not own: what a line means (core::evidence parsers)
//! or what a verdict leads to (core::decide).
//!
//! Rotated sets are read oldest first (`mail.log.2.gz`, `mail.log.1`,
//! `mail.log`; or dated `mail.log-20261127.gz` before `mail.log`) through one
//! parser, so a message that starts in one file and ends in the next is
//! joined. `.gz` files (detected by magic bytes; multi-member) are read
//! transparently. Memory is bounded by the read buffer, not the log size.

use crate::config::{LogFormat, LogSourceConfig};
use crate::core::evidence::custom::CustomParser;
use crate::core::evidence::exim::EximParser;
use crate::core::evidence::jsonl::JsonlParser;
use crate::core::evidence::postfix::PostfixParser;
use crate::core::evidence::timestamp::TimestampParser;
use crate::core::evidence::{KeyFilter, LineParser, LineRef, TraceStore};
use crate::core::model::Timestamp;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("evidence {source_name}: invalid glob {pattern:?}: {message}")]
    Glob {
        source_name: String,
        pattern: String,
        message: String,
    },
    #[error("evidence {source_name}: no file matches {patterns}")]
    NoFiles {
        source_name: String,
        patterns: String,
    },
    #[error("evidence {source_name}: cannot read {path}: {error}")]
    Read {
        source_name: String,
        path: String,
        error: io::Error,
    },
    #[error(transparent)]
    Journal(#[from] super::journal::JournalError),
}

/// Build the parser for a log source's format.
pub fn parser_for(cfg: &LogSourceConfig, filter: KeyFilter, now: Timestamp) -> Box<dyn LineParser> {
    let ts = TimestampParser {
        offset: cfg.utc_offset,
        now,
    };
    match &cfg.format {
        LogFormat::Postfix => Box::new(PostfixParser::new(filter, ts)),
        LogFormat::Exim => Box::new(EximParser::new(filter, ts)),
        LogFormat::Custom(spec) => Box::new(CustomParser::new(spec.clone(), filter, ts)),
        LogFormat::Jsonl(spec) => Box::new(JsonlParser::new(spec.clone(), filter)),
    }
}

/// Where a file sits in its rotation set: older files sort first.
fn rotation_rank(path: &Path) -> (String, u8, i64) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    // mail.log.3 → older than mail.log.1
    if let Some((base, n)) = stem.rsplit_once('.') {
        if !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()) {
            let n: i64 = n.parse().unwrap_or(0);
            return (base.to_string(), 0, -n);
        }
    }
    // mail.log-20261127 (logrotate dateext) → by date
    if let Some((base, d)) = stem.rsplit_once('-') {
        if (8..=10).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) {
            let d: i64 = d.parse().unwrap_or(0);
            return (base.to_string(), 0, d - 10_000_000_000);
        }
    }
    (stem.to_string(), 1, 0)
}

/// Sort paths oldest-first within each rotation set.
pub fn rotation_order(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort_by_key(|p| {
        let (base, class, order) = rotation_rank(p);
        let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
        (dir, base, class, order)
    });
    paths.dedup();
    paths
}

/// Expand the source's globs into existing files, oldest first.
pub fn resolve(source_name: &str, patterns: &[String]) -> Result<Vec<PathBuf>, LogError> {
    let mut files = Vec::new();
    for pattern in patterns {
        let entries = glob::glob(pattern).map_err(|e| LogError::Glob {
            source_name: source_name.to_string(),
            pattern: pattern.clone(),
            message: e.msg.to_string(),
        })?;
        for entry in entries.flatten() {
            if entry.is_file() {
                files.push(entry);
            }
        }
    }
    if files.is_empty() {
        return Err(LogError::NoFiles {
            source_name: source_name.to_string(),
            patterns: patterns.join(", "),
        });
    }
    Ok(rotation_order(files))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub files: usize,
    pub bytes: u64,
    pub lines: u64,
}

const CHUNK: usize = 1 << 20;
/// Longer lines are cut here (their first MiB is parsed).
const MAX_LINE: usize = 1 << 20;

/// What a read consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Consumed {
    /// Bytes read from the reader.
    pub read: u64,
    /// Bytes fed as complete lines (tailing resumes here).
    pub consumed: u64,
    /// Lines fed.
    pub lines: u64,
}

/// Feed every line of `reader` to `parser`, numbering from `first_line`.
/// With `final_line` the unterminated tail is a line (a whole file); without
/// it the tail is left for the next read (a file still being written).
pub fn scan_reader(
    mut reader: impl Read,
    file: u32,
    first_line: u64,
    final_line: bool,
    parser: &mut dyn LineParser,
    store: &mut TraceStore,
) -> io::Result<Consumed> {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0usize;
    let mut line_no = first_line;
    let mut read = 0u64;
    let mut skipping = false; // inside an over-long line
    let feed = |parser: &mut dyn LineParser, store: &mut TraceStore, line: &[u8], n: u64| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        parser.feed(line, LineRef { file, line: n }, store);
    };
    loop {
        let n = match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        read += n as u64;
        filled += n;
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &buf[start..filled]) {
            let end = start + i;
            if !skipping {
                feed(parser, store, &buf[start..end], line_no);
            }
            skipping = false;
            line_no += 1;
            start = end + 1;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            // No newline in a whole buffer: parse its start, skip the rest.
            if !skipping {
                feed(parser, store, &buf[..MAX_LINE.min(filled)], line_no);
            }
            skipping = true;
            filled = 0;
        }
    }
    let mut consumed = read - filled as u64;
    if final_line && (filled > 0 || skipping) {
        if filled > 0 && !skipping {
            feed(parser, store, &buf[..filled], line_no);
        }
        line_no += 1;
        consumed = read;
    } else if skipping {
        // An over-long line still being written: it is skipped anyway.
        consumed = read;
    }
    Ok(Consumed {
        read,
        consumed,
        lines: line_no - first_line,
    })
}

/// Open a file, transparently decompressing gzip (by magic bytes).
pub fn open(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    open_counted(path, None)
}

/// Counts the bytes read from the file itself (compressed, for .gz).
struct Counted<R> {
    inner: R,
    counter: Option<Arc<AtomicU64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = &self.counter {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// `open`, adding the bytes read from disk to `counter` (progress).
pub fn open_counted(
    path: &Path,
    counter: Option<Arc<AtomicU64>>,
) -> io::Result<Box<dyn Read + Send>> {
    let mut f = File::open(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    let f = Counted { inner: f, counter };
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::new(f),
        )))
    } else {
        Ok(Box::new(f))
    }
}

/// Scan `files` in order through one parser (state carries across files).
pub fn scan_files(
    source_name: &str,
    files: &[PathBuf],
    parser: &mut dyn LineParser,
    store: &mut TraceStore,
) -> Result<ScanStats, LogError> {
    scan_files_counted(source_name, files, parser, store, None)
}

/// `scan_files`, adding bytes read from disk to `progress`.
pub fn scan_files_counted(
    source_name: &str,
    files: &[PathBuf],
    parser: &mut dyn LineParser,
    store: &mut TraceStore,
    progress: Option<Arc<AtomicU64>>,
) -> Result<ScanStats, LogError> {
    let mut stats = ScanStats::default();
    for (i, path) in files.iter().enumerate() {
        let read_err = |error| LogError::Read {
            source_name: source_name.to_string(),
            path: path.display().to_string(),
            error,
        };
        let reader = open_counted(path, progress.clone()).map_err(&read_err)?;
        let c = scan_reader(reader, i as u32, 1, true, parser, store).map_err(read_err)?;
        stats.files += 1;
        stats.bytes += c.read;
        stats.lines += c.lines;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_sets_are_read_oldest_first() {
        let input = [
            "/var/log/mail.log",
            "/var/log/mail.log.1",
            "/var/log/mail.log.10.gz",
            "/var/log/mail.log.2.gz",
            "/var/log/mail.log-20261127.gz",
            "/var/log/mail.log-20261126",
        ];
        let got = rotation_order(input.iter().map(PathBuf::from).collect());
        let got: Vec<String> = got.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            got,
            [
                "/var/log/mail.log-20261126",
                "/var/log/mail.log-20261127.gz",
                "/var/log/mail.log.10.gz",
                "/var/log/mail.log.2.gz",
                "/var/log/mail.log.1",
                "/var/log/mail.log",
            ]
        );
    }

    struct Collect(Vec<(u64, Vec<u8>)>);
    impl LineParser for Collect {
        fn feed(&mut self, line: &[u8], at: LineRef, _: &mut TraceStore) {
            self.0.push((at.line, line.to_vec()));
        }
    }

    #[test]
    fn splits_lines_across_reads_and_handles_odd_endings() {
        let data = b"one\r\ntwo\n\nthree-no-newline".to_vec();
        // A reader that returns one byte at a time.
        struct Slow(Vec<u8>, usize);
        impl Read for Slow {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.1 >= self.0.len() || out.is_empty() {
                    return Ok(0);
                }
                out[0] = self.0[self.1];
                self.1 += 1;
                Ok(1)
            }
        }
        let mut c = Collect(vec![]);
        let mut store = TraceStore::default();
        let got = scan_reader(Slow(data.clone(), 0), 0, 1, true, &mut c, &mut store).unwrap();
        assert_eq!(got.read, data.len() as u64);
        assert_eq!(got.consumed, data.len() as u64);
        assert_eq!(got.lines, 4);
        let got: Vec<(u64, &[u8])> = c.0.iter().map(|(n, l)| (*n, l.as_slice())).collect();
        assert_eq!(
            got,
            vec![
                (1, &b"one"[..]),
                (2, &b"two"[..]),
                (3, &b""[..]),
                (4, &b"three-no-newline"[..])
            ]
        );
    }

    #[test]
    fn multi_member_gzip_is_read_whole() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log.3.gz");
        let mut bytes = Vec::new();
        for part in ["first\nsec", "ond\nthird\n"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part.as_bytes()).unwrap();
            bytes.extend(e.finish().unwrap());
        }
        std::fs::write(&path, bytes).unwrap();
        let mut c = Collect(vec![]);
        let mut store = TraceStore::default();
        let stats = scan_files("t", &[path], &mut c, &mut store).unwrap();
        assert_eq!(stats.lines, 3);
        let lines: Vec<&[u8]> = c.0.iter().map(|(_, l)| l.as_slice()).collect();
        assert_eq!(lines, vec![&b"first"[..], &b"second"[..], &b"third"[..]]);
    }

    #[test]
    fn an_over_long_line_is_cut_not_fatal() {
        let mut data = vec![b'x'; CHUNK * 2 + 10];
        data.extend_from_slice(b"\nafter\n");
        let mut c = Collect(vec![]);
        let mut store = TraceStore::default();
        let got = scan_reader(&data[..], 0, 1, true, &mut c, &mut store).unwrap();
        assert_eq!(got.lines, 2);
        assert_eq!(c.0.last().unwrap(), &(2, b"after".to_vec()));
        assert_eq!(c.0[0].1.len(), MAX_LINE);
    }
}
