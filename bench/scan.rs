//! Log-scan benchmark: sweeper's Postfix scan for 50k wanted Message-IDs
//! against ripgrep on the same file with the equivalent fixed-string
//! pattern list, measured in the same run.
//!
//! ```sh
//! apt-get install -y ripgrep
//! cargo run --release --bin bench-scan -- [--dir /tmp/sweeper-bench] [--gib 1.0] [--wanted 50000]
//! ```
//!
//! It writes a Postfix log of the requested size (shaped on the genuine
//! capture in tests/fixtures/postfix: smtpd/cleanup/qmgr/smtp/removed lines
//! per message, plus connect/disconnect noise), picks the wanted IDs spread
//! over the file, then times each tool three times (page cache warm) and
//! reports the best. Memory: the scan runs in a child process whose peak
//! RSS (VmHWM) is reported for the full file and for a quarter of it.

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use sweeper::adapters::logfile;
use sweeper::config::{LogFormat, LogSourceConfig};
use sweeper::core::evidence::{KeyFilter, TraceStore};

struct Args {
    dir: PathBuf,
    gib: f64,
    wanted: usize,
}

fn args() -> Args {
    let mut a = Args {
        dir: PathBuf::from("/tmp/sweeper-bench"),
        gib: 1.0,
        wanted: 50_000,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--dir" => a.dir = PathBuf::from(v),
            "--gib" => a.gib = v.parse().expect("--gib takes a number"),
            "--wanted" => a.wanted = v.parse().expect("--wanted takes a number"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn qid(n: u64) -> String {
    // Postfix short queue IDs: upper-case hex, reused over time.
    format!("{:010X}", n.wrapping_mul(2_654_435_761) & 0xFF_FFFF_FFFF)
}

fn mid(n: u64) -> String {
    format!(
        "bench-{n}.{:08x}@app.example.test",
        n.wrapping_mul(0x9E37_79B9) as u32
    )
}

/// Write a log of at least `bytes`; returns the number of messages.
fn generate(path: &Path, bytes: u64) -> u64 {
    let f = std::fs::File::create(path).expect("create bench log");
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut written = 0u64;
    let mut n = 0u64;
    let (mut h, mut m, mut s) = (0u32, 0u32, 0u32);
    while written < bytes {
        s += 1;
        if s == 60 {
            s = 0;
            m += 1;
        }
        if m == 60 {
            m = 0;
            h = (h + 1) % 24;
        }
        let ts = format!("Nov 28 {h:02}:{m:02}:{s:02}");
        let q = qid(n);
        let id = mid(n);
        let pid = 20_000 + (n % 5000);
        let (dsn, status) = match n % 10 {
            0 | 1 => ("5.1.1", "bounced (host 192.0.2.7[192.0.2.7] said: 550 5.1.1 <user@dest.example.test>: Recipient address rejected: User unknown (in reply to RCPT TO command))"),
            2 => ("4.2.0", "deferred (host 192.0.2.7[192.0.2.7] said: 450 4.2.0 <user@dest.example.test>: Recipient address temporarily rejected: try again later (in reply to RCPT TO command))"),
            _ => ("2.0.0", "sent (250 2.0.0 Ok: queued as 4XyZ12)"),
        };
        let block = format!(
            "{ts} mail postfix/smtpd[{pid}]: connect from app01.example.test[10.0.0.{a}]\n\
             {ts} mail postfix/smtpd[{pid}]: {q}: client=app01.example.test[10.0.0.{a}]\n\
             {ts} mail postfix/cleanup[{c}]: {q}: message-id=<{id}>\n\
             {ts} mail postfix/qmgr[2049]: {q}: from=<noreply@app.example.test>, size={size}, nrcpt=1 (queue active)\n\
             {ts} mail postfix/smtpd[{pid}]: disconnect from app01.example.test[10.0.0.{a}] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5\n\
             {ts} mail postfix/smtp[{d}]: {q}: to=<user{n}@dest.example.test>, relay=mx.dest.example.test[192.0.2.7]:25, delay=0.{r}, delays=0.01/0.01/0.1/0.{r}, dsn={dsn}, status={status}\n\
             {ts} mail postfix/qmgr[2049]: {q}: removed\n",
            a = n % 250,
            c = 3000 + n % 100,
            d = 4000 + n % 100,
            size = 500 + n % 4000,
            r = n % 10,
        );
        w.write_all(block.as_bytes()).unwrap();
        written += block.len() as u64;
        n += 1;
    }
    w.flush().unwrap();
    n
}

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Child mode: scan `log` for the IDs in `wanted`; print seconds, matched, VmHWM.
fn child_scan(log: &Path, wanted: &Path) {
    let keys: HashSet<String> = std::fs::read_to_string(wanted)
        .unwrap()
        .lines()
        .map(|l| l.trim_matches(|c| c == '<' || c == '>').to_string())
        .collect();
    let cfg = LogSourceConfig {
        format: LogFormat::Postfix,
        journal: None,
        paths: vec![],
        utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
        slack: std::time::Duration::from_secs(600),
    };
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let start = Instant::now();
    let mut parser = logfile::parser_for(&cfg, KeyFilter::Wanted(keys.clone()), now);
    let mut store = TraceStore::new(false);
    let stats =
        logfile::scan_files("bench", &[log.to_path_buf()], parser.as_mut(), &mut store).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let resolved = keys
        .iter()
        .filter(|k| {
            !matches!(
                store.verdict(k, None).verdict,
                sweeper::core::model::Verdict::NotFound
            )
        })
        .count();
    println!("{secs} {} {resolved} {}", stats.bytes, vm_hwm_kb());
}

fn best_of<F: FnMut() -> f64>(n: usize, mut f: F) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn run_child(log: &Path, wanted: &Path) -> (f64, u64, usize, u64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("SWEEPER_BENCH_CHILD", "1")
        .arg(log)
        .arg(wanted)
        .output()
        .expect("child scan runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<&str> = text.split_whitespace().collect();
    (
        v[0].parse().unwrap(),
        v[1].parse().unwrap(),
        v[2].parse().unwrap(),
        v[3].parse().unwrap(),
    )
}

fn main() {
    if std::env::var_os("SWEEPER_BENCH_CHILD").is_some() {
        let a: Vec<String> = std::env::args().skip(1).collect();
        child_scan(Path::new(&a[0]), Path::new(&a[1]));
        return;
    }
    let a = args();
    std::fs::create_dir_all(&a.dir).unwrap();
    let target = (a.gib * (1u64 << 30) as f64) as u64;
    let log = a.dir.join("mail.log");
    let quarter = a.dir.join("mail-quarter.log");
    let have = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let messages = if have >= target && have < target + (1 << 20) {
        // Reuse: count messages from the size (blocks are ~1 KiB).
        let n = std::fs::read_to_string(a.dir.join("messages"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        n.unwrap_or_else(|| generate(&log, target))
    } else {
        eprintln!(
            "generating {:.2} GiB Postfix log at {} …",
            a.gib,
            log.display()
        );
        generate(&log, target)
    };
    std::fs::write(a.dir.join("messages"), messages.to_string()).unwrap();
    let quarter_messages = generate(&quarter, target / 4);

    // Wanted: spread over the file, in angle brackets as apps store them.
    let step = (messages / a.wanted as u64).max(1);
    let wanted: Vec<String> = (0..a.wanted as u64)
        .map(|i| format!("<{}>", mid(i * step)))
        .collect();
    let wanted_file = a.dir.join("wanted.txt");
    std::fs::write(&wanted_file, wanted.join("\n") + "\n").unwrap();
    // rg gets the same IDs, as fixed strings.
    let rg_patterns = a.dir.join("wanted-rg.txt");
    std::fs::write(
        &rg_patterns,
        wanted
            .iter()
            .map(|w| w.trim_matches(|c| c == '<' || c == '>'))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )
    .unwrap();
    let quarter_step = (quarter_messages / a.wanted as u64).max(1);
    let quarter_wanted = a.dir.join("wanted-quarter.txt");
    std::fs::write(
        &quarter_wanted,
        (0..a.wanted as u64)
            .map(|i| format!("<{}>", mid(i * quarter_step)))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )
    .unwrap();

    let size = std::fs::metadata(&log).unwrap().len();
    let mb = size as f64 / 1e6;
    println!(
        "log: {} ({:.0} MB, {messages} messages); wanted: {} Message-IDs",
        log.display(),
        mb,
        a.wanted
    );

    let rg = Command::new("rg").arg("--version").output();
    let rg_secs = match rg {
        Ok(o) if o.status.success() => {
            let version = String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let secs = best_of(3, || {
                let t = Instant::now();
                let out = Command::new("rg")
                    .args(["--no-mmap", "-c", "-F", "-f"])
                    .arg(&rg_patterns)
                    .arg(&log)
                    .output()
                    .unwrap();
                assert!(out.status.success() || out.status.code() == Some(1));
                t.elapsed().as_secs_f64()
            });
            println!("{version}: rg --no-mmap -c -F -f wanted-rg.txt mail.log");
            Some(secs)
        }
        _ => {
            println!("rg not found (apt-get install ripgrep): no baseline");
            None
        }
    };
    let mut resolved = 0;
    let mut rss_full = 0;
    let sweeper_secs = best_of(3, || {
        let (secs, _bytes, r, rss) = run_child(&log, &wanted_file);
        resolved = r;
        rss_full = rss;
        secs
    });
    let (_, _, _, rss_quarter) = run_child(&quarter, &quarter_wanted);

    println!();
    println!("| tool | seconds (best of 3) | MB/s |");
    println!("|---|---:|---:|");
    if let Some(r) = rg_secs {
        println!("| rg -F -f (50k fixed strings) | {r:.3} | {:.0} |", mb / r);
    }
    println!(
        "| sweeper postfix scan | {sweeper_secs:.3} | {:.0} |",
        mb / sweeper_secs
    );
    if let Some(r) = rg_secs {
        println!(
            "\nsweeper / rg throughput: {:.0}%",
            100.0 * r / sweeper_secs
        );
    }
    println!("resolved wanted IDs: {resolved} of {}", a.wanted);
    println!(
        "peak RSS of the scan: {:.1} MiB on {:.0} MB, {:.1} MiB on a quarter of that",
        rss_full as f64 / 1024.0,
        mb,
        rss_quarter as f64 / 1024.0
    );
}
