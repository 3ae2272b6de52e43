#!/usr/bin/env python3
"""End-to-end benchmark of whole sweeper passes against real Postgres, Redis and
a Postfix log, with baselines measured in the same run.

  python3 bench/pass_bench.py [--scale 10] [--skip-build] [--quick]

Workloads (see docs/benchmarks.md, "Whole passes"):

  storm      2M rows (400k stale pending, 100k stale sending) and 5M rows
             (1.6M + 400k), limits.max_actions 1000: peak RSS of `once`,
             `report --format json` and one daemon pass (`run`).
  realistic  1M rows, 5% stale pending, 5% stale sending, a Postfix log of
             >= 1M lines: wall time of `sweeper once`, against a per-row script
             (bench/per_row.py) and the raw limits of the work (the stuck-row
             select, one batched UPDATE, pipelined RPUSH, ripgrep over the log).
  scale      the same at 10x (10M rows, 10x log): time(10x) / time(1x).
  idle       `sweeper run` with every: 1s on the 1x data after `once`: CPU time
             per pass when nothing new arrives.

Markdown tables go to stdout, progress to stderr, then one line per target:
`TARGET <name>: PASS|FAIL (<measured> vs <limit>)`. The exit status is non-zero
only on errors (a service down, sweeper crashing or refusing its config), never
on a missed target. Everything the run creates (tables pb_*, Redis keys under
its own namespace, files under --workdir) is removed at the end, also on failure.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTED = time.monotonic()

# The targets (limits) this benchmark checks.
RSS_LIMIT_2M_MIB = 64
RSS_LIMIT_5M_MIB = 96
PER_ROW_MIN_SPEEDUP = 25.0
RAW_MAX_RATIO = 2.0
SCALE_MAX_RATIO = 11.0
IDLE_MAX_CPU_MS = 50.0

QUEUE = "notify"
JOB_CLASS = "NotifyUser"
PENDING_AFTER_S = 600
SENDING_AFTER_S = 900


class BenchError(Exception):
    """Something the benchmark cannot measure around: exit non-zero."""


def log(msg):
    print(f"[{time.monotonic() - STARTED:7.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="End-to-end benchmark of whole sweeper passes (see docs/benchmarks.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scale", type=int, default=10,
                   help="largest realistic scale: 1 runs only 1x; N > 1 runs 1x and Nx (default 10)")
    p.add_argument("--skip-build", action="store_true", help="do not run cargo build; use the existing binary")
    p.add_argument("--quick", action="store_true",
                   help="every workload 10x smaller and fewer idle passes (to try the script; targets not comparable)")
    p.add_argument("--only", default="storm,realistic,scale,idle",
                   help="comma-separated subset of storm,realistic,scale,idle (default: all)")
    p.add_argument("--bin", default=str(ROOT / "target/release/sweeper"), help="the sweeper binary")
    p.add_argument("--pg", default=os.environ.get("SWEEPER_BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test"))
    p.add_argument("--redis", default=os.environ.get("SWEEPER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--workdir", default="/tmp/sweeper-pass-bench", help="logs and configs go below this")
    p.add_argument("--keep", action="store_true", help="keep the run's files (tables and Redis keys are still removed)")
    p.add_argument("--idle-passes", type=int, default=None, help="idle passes to sample (default 20, --quick 5)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds any one measured command may take")
    a = p.parse_args(argv)
    a.only = {w.strip() for w in a.only.split(",") if w.strip()}
    unknown = a.only - {"storm", "realistic", "scale", "idle"}
    if unknown:
        p.error(f"unknown workload(s) in --only: {', '.join(sorted(unknown))}")
    if a.scale < 1:
        p.error("--scale must be at least 1")
    if a.idle_passes is None:
        a.idle_passes = 5 if a.quick else 20
    return a


# ---------------------------------------------------------------- setup

def sh(cmd, **kw):
    log("$ " + " ".join(cmd))
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {r.returncode}")
    return r


def ensure_tools(args):
    try:
        import psycopg2  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        sh([sys.executable, "-m", "pip", "install", "-q", "-r", str(ROOT / "bench/requirements.txt")])
    if not os.access("/usr/bin/time", os.X_OK):
        if os.geteuid() != 0:
            raise BenchError("GNU time missing: apt-get install -y time (as root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh(["apt-get", "install", "-y", "-qq", "time"], env=env)
    if not shutil.which("rg") or not shutil.which("redis-benchmark"):
        if os.geteuid() != 0:
            raise BenchError("rg or redis-benchmark missing: apt-get install -y ripgrep redis-tools (as root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh(["apt-get", "update", "-qq"], env=env)
        sh(["apt-get", "install", "-y", "-qq", "ripgrep", "redis-tools"], env=env)
    if not args.skip_build:
        sh(["cargo", "build", "--release", "--bin", "sweeper"], cwd=ROOT)
    if not os.access(args.bin, os.X_OK):
        raise BenchError(f"no sweeper binary at {args.bin} (build it or drop --skip-build)")


# ---------------------------------------------------------------- the run's resources

class Run:
    """Names everything this run creates and removes it all at the end."""

    def __init__(self, args):
        import psycopg2
        import redis

        self.args = args
        self.id = f"{os.getpid():x}{int(time.time()) % 1000000:x}"
        self.prefix = f"pb_{self.id}"          # tables
        self.ns = f"sweeper_pb_{self.id}"      # Redis keys
        self.dir = Path(args.workdir) / self.prefix
        self.children = []
        try:
            self.pg = psycopg2.connect(args.pg)
        except Exception as e:
            raise BenchError(f"PostgreSQL at {args.pg}: {e}") from e
        self.pg.autocommit = True
        self.redis = redis.Redis.from_url(args.redis)
        try:
            self.redis.ping()
        except Exception as e:
            raise BenchError(f"Redis at {args.redis}: {e}") from e
        self.dir.mkdir(parents=True, exist_ok=True)

    def sql(self, query, params=None, fetch=False):
        with self.pg.cursor() as cur:
            cur.execute(query, params)
            if fetch:
                return cur.fetchall()
            return cur.rowcount

    def spawn(self, cmd, stdout, stderr, env=None):
        p = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, cwd=self.dir)
        self.children.append(p)
        return p

    def drop_tables(self, *names):
        for n in names:
            self.sql(f'DROP TABLE IF EXISTS "{n}"')

    def redis_keys(self, prefix):
        return list(self.redis.scan_iter(match=prefix + "*", count=1000))

    def cleanup(self):
        for p in self.children:
            if p.returncode is None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        try:
            rows = self.sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND left(tablename, %s) = %s",
                (len(self.prefix) + 1, self.prefix + "_"), fetch=True)
            self.drop_tables(*(r[0] for r in rows))
        except Exception as e:  # keep cleaning the rest
            log(f"cleanup: dropping tables failed: {e}")
        try:
            keys = self.redis_keys(self.ns)
            for i in range(0, len(keys), 1000):
                self.redis.delete(*keys[i:i + 1000])
        except Exception as e:
            log(f"cleanup: deleting Redis keys failed: {e}")
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.pg.close()
        except Exception:
            pass


# ---------------------------------------------------------------- data

def h32(g):
    return (g * 2654435761) & 0xFFFFFFFF


def message_id(g):
    """A row's Message-ID exactly as the app stores it (and Postfix logs it)."""
    return f"<r{g}.{h32(g):08x}@app.example.test>"


class Shape:
    """Which rows are stuck: residues of id mod m. [0, p) pending, [p, p+s) sending;
    stuck rows were updated `base` + (h32(id) % spread) seconds before t0."""

    def __init__(self, n, m, p, s, base, spread):
        self.n, self.m, self.p, self.s, self.base, self.spread = n, m, p, s, base, spread

    def ids(self, lo, hi):
        for r in range(lo, hi):
            yield from range(r if r > 0 else self.m, self.n + 1, self.m)

    def pending_ids(self):
        return self.ids(0, self.p)

    def sending_ids(self):
        return self.ids(self.p, self.p + self.s)

    def count(self, lo, hi):
        return sum(len(range(r if r > 0 else self.m, self.n + 1, self.m)) for r in range(lo, hi))

    def updated_at(self, t0, g):
        return t0 - (self.base + h32(g) % self.spread) - (g % 1000) / 1000.0


def outcome(g):
    """What the log says about a stale sending row: 60% sent, 20% bounced, 20% absent."""
    r = (h32(g) >> 4) % 10
    return "sent" if r < 6 else "bounced" if r < 8 else None


def create_table(run, name, shape, t0):
    """One INSERT ... SELECT FROM generate_series, then the primary key, the index
    `sweeper check` recommends and ANALYZE. Returns seconds taken."""
    start = time.monotonic()
    m, p, s = shape.m, shape.p, shape.s
    h = "((g * 2654435761) % 4294967296)"
    run.sql(f'DROP TABLE IF EXISTS "{name}"')
    run.sql(f'CREATE TABLE "{name}" (id bigint NOT NULL, user_id bigint, state text NOT NULL, '
            'updated_at timestamptz NOT NULL, message_id text)')
    run.sql("SET maintenance_work_mem = '512MB'")
    run.sql(
        f'INSERT INTO "{name}" SELECT g, 1 + (g * 7919) % 250000, '
        f"CASE WHEN g % {m} < {p} THEN 'pending' WHEN g % {m} < {p + s} THEN 'sending' "
        "WHEN g % 50 = 7 THEN 'error' ELSE 'sent' END, "
        f"to_timestamp({t0!r} - (CASE WHEN g % {m} < {p + s} THEN {shape.base} + {h} % {shape.spread} "
        "ELSE (g * 40503) % 2592000 END) - (g % 1000) / 1000.0), "
        f"CASE WHEN g % {m} < {p} THEN NULL ELSE '<r' || g || '.' || lpad(to_hex({h}), 8, '0') "
        "|| '@app.example.test>' END "
        f"FROM generate_series(1, {shape.n}::bigint) g")
    run.sql(f'ALTER TABLE "{name}" ADD PRIMARY KEY (id)')
    run.sql(f'CREATE INDEX "{name}_sweeper_idx" ON "{name}" (state, id, updated_at) '
            "WHERE state IN ('pending', 'sending', 'error')")
    run.sql(f'ANALYZE "{name}"')
    return time.monotonic() - start


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
DOMAINS = ("dest.example.test", "mail.example.net", "inbox.example.org", "example.com")


def write_postfix_log(path, t0, relevant, unrelated, window):
    """Write a Postfix log (maillog_file format, UTC, year-less timestamps).

    relevant: [(row_time, message_id, 'sent'|'bounced')]: each logged 1-20 s
    after its row's updated_at. unrelated: how many other messages, spread
    evenly over the `window` seconds before t0 (85% sent, 8% bounced, 7%
    still deferred). A message's delivery lines follow the next message's
    head, as in a busy real log. Returns (lines, bytes, seconds)."""
    start = time.monotonic()
    origin = t0 - window - 3600
    shift = 25
    keys = []
    for i, (row_time, _mid, _st) in enumerate(relevant):
        t = row_time + 1 + (i * 7919 % 20)
        keys.append((int((t - origin) * 1000) << shift) | i)
    base = len(relevant)
    step = (window - 60) / max(unrelated, 1)
    for j in range(unrelated):
        t = t0 - window + j * step + (j * 37 % 1000) / 1000.0 * step
        keys.append((int((t - origin) * 1000) << shift) | (base + j))
    keys.sort()
    mask = (1 << shift) - 1
    origin_s = int(origin)

    ts_cache = {}

    def stamp(sec):
        s = ts_cache.get(sec)
        if s is None:
            tm = time.gmtime(sec)
            s = f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:02d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} mail "
            if len(ts_cache) > 4096:
                ts_cache.clear()
            ts_cache[sec] = s
        return s

    lines = 0
    size = 0
    buf = []
    buf_len = 0
    held = None  # (seconds, [bodies]) of the previous message's delivery lines
    with open(path, "w", encoding="ascii", buffering=1 << 22) as f:
        for n, key in enumerate(keys):
            code = key & mask
            sec = origin_s + (key >> shift) // 1000
            if code < base:
                _, mid, status = relevant[code]
            else:
                j = code - base
                mid = f"<n{j}.{h32(j + 7):08x}@app.example.test>"
                r = j % 100
                status = "sent" if r < 85 else "bounced" if r < 93 else "deferred"
            q = f"{((n + 40961) * 0x5DEECE66D + 0xB) & 0xFFFFFFFFFF:010X}"
            a = n % 7 + 1
            pid = 20000 + (n // 25) % 5000
            dom = DOMAINS[n % 4]
            rcpt = f"u{(n * 7919) % 900000}@{dom}"
            head = []
            if n % 25 == 0:
                head.append(f"postfix/smtpd[{pid}]: connect from app0{a}.example.test[10.0.0.{a}]")
            head.append(f"postfix/smtpd[{pid}]: {q}: client=app0{a}.example.test[10.0.0.{a}]")
            head.append(f"postfix/cleanup[{3000 + n % 97}]: {q}: message-id={mid}")
            head.append(f"postfix/qmgr[2049]: {q}: from=<noreply@app.example.test>, size={900 + n % 4000}, "
                        "nrcpt=1 (queue active)")
            if n % 25 == 24:
                head.append(f"postfix/smtpd[{pid}]: disconnect from app0{a}.example.test[10.0.0.{a}] "
                            "ehlo=1 mail=25 rcpt=25 data=25 quit=1 commands=77")
            smtp = (f"postfix/smtp[{4000 + n % 89}]: {q}: to=<{rcpt}>, relay=mx{n % 3}.{dom}[192.0.2.{n % 200 + 1}]:25, "
                    f"delay=0.{n % 90 + 10}, delays=0.01/0.01/0.0{n % 9}/0.{n % 80 + 10}, ")
            if status == "sent":
                tail = [smtp + f"dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {((n + 40961) * 2654435761) & 0xFFFFFFFFF:09X})",
                        f"postfix/qmgr[2049]: {q}: removed"]
            elif status == "bounced":
                tail = [smtp + f"dsn=5.1.1, status=bounced (host mx{n % 3}.{dom}[192.0.2.{n % 200 + 1}] said: "
                        f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table "
                        "(in reply to RCPT TO command))",
                        f"postfix/bounce[{5000 + n % 53}]: {q}: sender non-delivery notification: "
                        f"{((n + 40962) * 0x5DEECE66D + 0x3F) & 0xFFFFFFFFFF:010X}",
                        f"postfix/qmgr[2049]: {q}: removed"]
            else:
                tail = [smtp + f"dsn=4.2.0, status=deferred (host mx{n % 3}.{dom}[192.0.2.{n % 200 + 1}] said: "
                        f"450 4.2.0 <{rcpt}>: Recipient address temporarily rejected: try again later "
                        "(in reply to RCPT TO command))"]
            ts = stamp(sec)
            out = []
            if held is not None and sec - held[0] > 2:
                ht = stamp(held[0] + 1 if held[0] + 1 <= sec else sec)
                out.extend(ht + b for b in held[1])
                held = None
            out.extend(ts + b for b in head)
            if held is not None:
                out.extend(ts + b for b in held[1])
            held = (sec, tail)
            chunk = "\n".join(out) + "\n"
            buf.append(chunk)
            buf_len += len(chunk)
            lines += len(out)
            if buf_len > 1 << 22:
                f.write("".join(buf))
                size += buf_len
                buf, buf_len = [], 0
        if held is not None:
            ts = stamp(held[0] + 1)
            chunk = "".join(ts + b + "\n" for b in held[1])
            buf.append(chunk)
            buf_len += len(chunk)
            lines += len(held[1])
        f.write("".join(buf))
        size += buf_len
    return lines, size, time.monotonic() - start


# ---------------------------------------------------------------- config

def yaml_lines(obj, indent=0):
    """A small block-YAML emitter: scalars as JSON (valid YAML), lists of scalars in flow style."""
    pad = "  " * indent
    out = []
    for k, v in obj.items():
        if isinstance(v, dict):
            out.append(f"{pad}{k}:")
            out.extend(yaml_lines(v, indent + 1))
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
            out.append(f"{pad}{k}:")
            for x in v:
                inner = yaml_lines(x, indent + 2)
                out.append(f"{pad}  - " + inner[0].lstrip())
                out.extend(inner[1:])
        else:
            out.append(f"{pad}{k}: {json.dumps(v)}")
    return out


def write_config(run, path, table, log_path, port, every, limits):
    cfg = {
        "databases": {"app": {"url": run.args.pg, "ledger_table": f"{table}_ledger"}},
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "queues": {"resque": {"kind": "resque", "redis": run.args.redis, "namespace": f"{run.ns}_{table}"}},
        "evidence": {"postfix": {"kind": "log", "format": "postfix", "paths": [str(log_path)]}},
        "sweeps": {
            "bench": {
                "database": "app",
                "table": table,
                "key": "id",
                "state_column": "state",
                "timestamp_column": "updated_at",
                "every": every,
                "pending": {
                    "after": f"{PENDING_AFTER_S // 60}m",
                    "queue": "resque",
                    "job": {"queue": QUEUE, "class": JOB_CLASS, "args": ["user_id", "id"]},
                },
                "sending": {
                    "after": f"{SENDING_AFTER_S // 60}m",
                    "evidence": [{"source": "postfix", "match": "message_id"}],
                    "give_up_after": "24h",
                },
                "limits": limits,
            }
        },
    }
    Path(path).write_text("# generated by bench/pass_bench.py\n" + "\n".join(yaml_lines(cfg)) + "\n")
    return f"{run.ns}_{table}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- measuring

class OtherCpu:
    """CPU time used by processes that are not part of the measurement (a build,
    another benchmark): sampled from /proc every 0.25 s. The workload's own
    processes (sweeper, Python, PostgreSQL, Redis, rg, redis-benchmark) are not
    counted. A process first seen after the start counts from its birth."""

    OURS = {"sweeper", "python3", "python", "postgres", "redis-server", "rg", "redis-benchmark"}

    def __init__(self):
        self.lock = threading.Lock()
        self.prev = None
        self.total_ticks = 0
        self.tick = os.sysconf("SC_CLK_TCK")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop.wait(0.25):
            self.sample()

    def sample(self):
        now = {}
        me = os.getpid()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            comm = text[text.find("(") + 1:text.rfind(")")]
            if comm in self.OURS:
                continue
            fields = text[text.rfind(")") + 2:].split()
            now[(name, fields[19])] = int(fields[11]) + int(fields[12])  # key: pid + start time
        with self.lock:
            if self.prev is not None:
                for k, ticks in now.items():
                    self.total_ticks += max(0, ticks - self.prev.get(k, 0))
            self.prev = now

    def mark(self):
        self.sample()
        with self.lock:
            return self.total_ticks

    def since(self, mark):
        self.sample()
        with self.lock:
            return (self.total_ticks - mark) / self.tick


OTHERS = None

class Result:
    def __init__(self, cmd, rc, wall, rss_kib, timed_out=False, other_cpu=0.0):
        self.cmd, self.rc, self.wall, self.rss_kib, self.timed_out = cmd, rc, wall, rss_kib, timed_out
        self.other_cpu = other_cpu

    @property
    def rss_mib(self):
        return self.rss_kib / 1024.0


def reap(p, deadline):
    """wait4 the child until `deadline` (monotonic); kill it past that. Returns
    (rc, ru_maxrss KiB, timed_out); that ru_maxrss includes this Python
    process's RSS at the fork, so callers measure peak RSS otherwise."""
    timed_out = False
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            break
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            p.kill()
            _, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.02)
    rc = os.waitstatus_to_exitcode(status)
    p.returncode = rc
    return rc, ru.ru_maxrss, timed_out


def measure(run, cmd, out_path, err_path, env=None, ok=(0, 1)):
    """Run cmd to completion: wall time and peak RSS (GNU time's %M of that child)."""
    log("run: " + " ".join(map(str, cmd)))
    mark = OTHERS.mark()
    # Peak RSS comes from GNU time's wait4 of its own child: the ru_maxrss
    # this script would get from wait4 includes the RSS of this (large)
    # Python process at the fork, which Linux carries across exec.
    rss_file = Path(str(err_path) + ".maxrss")
    timed = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] + [str(c) for c in cmd]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.monotonic()
        p = run.spawn(timed, out, err, env)
        rc, _, timed_out = reap(p, start + run.args.timeout)
        wall = time.monotonic() - start
    try:
        rss = int(rss_file.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        rss = 0
    if not timed_out and rc not in ok:
        raise BenchError(f"{' '.join(map(str, cmd))} exited {rc}:\n{tail_of(err_path)}")
    if timed_out:
        log(f"  TIMEOUT after {wall:.0f} s")
    else:
        log(f"  exit {rc}, {wall:.3f} s, peak RSS {rss / 1024:.1f} MiB")
    return Result(short(cmd), rc, wall, rss, timed_out, OTHERS.since(mark))


def short(cmd):
    """A command line for the tables: the binary as `sweeper`, files by their name."""
    out = []
    for i, c in enumerate(map(str, cmd)):
        if i == 0 and c.endswith("/sweeper"):
            c = "sweeper"
        elif "/" in c and not c.startswith(("postgres://", "redis://")):
            c = Path(c).name
        out.append(c)
    return " ".join(out)


def tail_of(path, n=15):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Daemon:
    """`sweeper run` with debug logs on a file: counts "pass done" lines."""

    def __init__(self, run, cfg, err_path, port):
        self.run, self.err_path, self.port = run, err_path, port
        self.cmd = [run.args.bin, "run", "-c", str(cfg), "--initial-delay", "0s"]
        env = dict(os.environ, RUST_LOG="sweeper=debug")
        log("start: RUST_LOG=sweeper=debug " + " ".join(self.cmd))
        self.out = open(run.dir / (Path(err_path).stem + ".stdout"), "wb")
        self.err = open(err_path, "wb")
        self.started = time.monotonic()
        self.proc = run.spawn(self.cmd, self.out, self.err, env)
        self.offset = 0
        self.partial = b""
        self.passes = 0
        self.rc = None
        self.rss_kib = None

    def poll_log(self):
        with open(self.err_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        self.passes += data[:cut].count(b"pass done")
        return self.passes

    def alive(self):
        pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == self.proc.pid:
            self.rc = os.waitstatus_to_exitcode(status)
            self.proc.returncode = self.rc
            return False
        self.hwm()
        return True

    def hwm(self):
        """The process's own peak RSS (VmHWM, KiB) so far. Not ru_maxrss from
        wait4: Linux carries the RSS of this Python process at the fork into
        the child's ru_maxrss across exec."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.rss_kib = max(self.rss_kib or 0, int(line.split()[1]))
        except OSError:
            pass
        return self.rss_kib

    def wait_passes(self, n, timeout):
        """Wait until n "pass done" lines in all; returns False on timeout."""
        deadline = time.monotonic() + timeout
        while self.poll_log() < n:
            if not self.alive():
                raise BenchError(f"sweeper run exited {self.rc} before {n} pass(es):\n{tail_of(self.err_path)}")
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metric(self, name):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        total = None
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total = (total or 0) + float(line.rsplit(" ", 1)[1])
        return total

    def stop(self):
        """SIGTERM, wait for exit; returns (rc, peak RSS KiB as VmHWM just before)."""
        if self.rc is None and self.alive():
            self.hwm()
            self.proc.send_signal(signal.SIGTERM)
            rc, _, timed_out = reap(self.proc, time.monotonic() + 30)
            self.rc = rc if not timed_out else "killed"
        self.out.close()
        self.err.close()
        return self.rc, self.rss_kib


# ---------------------------------------------------------------- workloads

def storm(run, label, n, m, p, s, t0, results, setup):
    table = f"{run.prefix}_{label}"
    shape = Shape(n, m, p, s, base=7200, spread=600)
    log(f"storm {label}: {n:,} rows, {shape.count(0, p):,} stale pending, {shape.count(p, p + s):,} stale sending")
    setup.append((f"storm {label}: table ({n:,} rows, index, analyze)", create_table(run, table, shape, t0)))
    # A small log: 10k unrelated messages and ~0.2% of the stale sending rows delivered.
    relevant = [(shape.updated_at(t0, g), message_id(g), "sent") for g in shape.sending_ids() if h32(g) % 500 == 0]
    log_path = run.dir / f"{label}-mail.log"
    lines, size, secs = write_postfix_log(log_path, t0, relevant, 10000, 3 * 3600)
    setup.append((f"storm {label}: Postfix log ({lines:,} lines, {size / 1e6:.1f} MB)", secs))
    port = free_port()
    cfg = run.dir / f"{label}.yaml"
    write_config(run, cfg, table, log_path, port, "1h", {"max_actions": 1000})
    b = run.args.bin
    rows = []
    r = measure(run, [b, "report", "-c", cfg, "--format", "json"], "/dev/null", run.dir / f"{label}-report.err")
    rows.append(("report", r))
    r = measure(run, [b, "once", "-c", cfg], run.dir / f"{label}-once.out", run.dir / f"{label}-once.err")
    rows.append(("once", r))
    mark = OTHERS.mark()
    d = Daemon(run, cfg, run.dir / f"{label}-run.err", port)
    try:
        done = d.wait_passes(1, run.args.timeout)
        wall = time.monotonic() - d.started
        count = d.metric("sweeper_pass_duration_seconds_count")
    finally:
        rc, rss = d.stop()
    log(f"  daemon: pass done={done}, sweeper_pass_duration_seconds_count={count}, exit {rc}, "
        f"peak RSS {(rss or 0) / 1024:.1f} MiB")
    rows.append((f"run (one pass, then SIGTERM; /metrics pass count {count if count is None else int(count)})",
                 Result("RUST_LOG=sweeper=debug " + short(d.cmd), rc, wall, rss or 0, not done,
                        OTHERS.since(mark))))
    results["storm"].append((label, n, shape.count(0, p), shape.count(p, p + s), rows, count))
    run.drop_tables(table, f"{table}_ledger")
    log_path.unlink(missing_ok=True)


def counts_after(run, table, shape):
    got = dict(run.sql(
        f'SELECT state, count(*) FROM "{table}" WHERE id % {shape.m} >= {shape.p} AND id % {shape.m} < {shape.p + shape.s} '
        "GROUP BY state", fetch=True))
    return got


def realistic(run, scale, t0, results, setup, baselines, idle):
    args = run.args
    n = (100_000 if args.quick else 1_000_000) * scale
    table = f"{run.prefix}_real{scale}x"
    shape = Shape(n, 20, 1, 1, base=1200, spread=5 * 3600)
    n_pending, n_sending = shape.count(0, 1), shape.count(1, 2)
    log(f"realistic {scale}x: {n:,} rows, {n_pending:,} stale pending, {n_sending:,} stale sending")
    setup.append((f"realistic {scale}x: table ({n:,} rows, index, analyze)", create_table(run, table, shape, t0)))
    copy = f"{table}_copy"
    if baselines:
        setup.append((f"realistic {scale}x: baseline copy (same generator)", create_table(run, copy, shape, t0)))

    sending = list(shape.sending_ids())
    relevant = []
    expect = {"sent": 0, "bounced": 0}
    for g in sending:
        o = outcome(g)
        if o:
            relevant.append((shape.updated_at(t0, g), message_id(g), o))
            expect[o] += 1
    log_path = run.dir / f"real{scale}x-mail.log"
    lines, size, secs = write_postfix_log(log_path, t0, relevant, 4 * n_sending, 6 * 3600)
    setup.append((f"realistic {scale}x: Postfix log ({lines:,} lines, {size / 1e6:.0f} MB)", secs))
    log(f"  log: {lines:,} lines, {size / 1e6:.0f} MB in {secs:.1f} s")

    port = free_port()
    cfg = run.dir / f"real{scale}x.yaml"
    ns = write_config(run, cfg, table, log_path, port, "1m", {"max_actions": 10000000, "batch_size": 500})
    out = {"scale": scale, "rows": n, "pending": n_pending, "sending": n_sending, "expect": expect,
           "log_lines": lines, "log_bytes": size}

    if baselines:
        out["raw"], out["raw_other_cpu"] = raw_limits(run, copy, shape, log_path, n_pending, sending)
        run.sql(f'VACUUM ANALYZE "{copy}"')

    r = measure(run, [args.bin, "once", "-c", cfg], run.dir / f"real{scale}x-once.out",
                run.dir / f"real{scale}x-once.err")
    out["once"] = r
    out["jobs"] = run.redis.llen(f"{ns}:queue:{QUEUE}")
    out["after"] = counts_after(run, table, shape)
    log(f"  jobs in Resque: {out['jobs']:,}; stale sending rows now: {out['after']}")

    if idle:
        out["idle"] = idle_daemon(run, table, log_path)

    if baselines:
        ns_p = f"{run.ns}_{copy}"
        cmd = [sys.executable, str(ROOT / "bench/per_row.py"), "--pg", args.pg, "--redis", args.redis,
               "--table", copy, "--log", str(log_path), "--namespace", ns_p, "--ledger", f"{copy}_ledger",
               "--queue", QUEUE, "--job-class", JOB_CLASS]
        r = measure(run, cmd, run.dir / "per_row.out", run.dir / "per_row.err", ok=(0,))
        r.cmd = f"python3 bench/per_row.py --table {copy} --log {log_path.name} --namespace {ns_p} --ledger {copy}_ledger"
        out["per_row"] = r
        try:
            out["per_row_report"] = json.loads(Path(run.dir / "per_row.out").read_text().strip().splitlines()[-1])
        except (ValueError, IndexError):
            out["per_row_report"] = {}
        out["per_row_jobs"] = run.redis.llen(f"{ns_p}:queue:{QUEUE}")
        out["per_row_after"] = counts_after(run, copy, shape)
        run.drop_tables(copy, f"{copy}_ledger")
    run.drop_tables(table, f"{table}_ledger")
    log_path.unlink(missing_ok=True)
    results["realistic"].append(out)


def raw_limits(run, table, shape, log_path, n_pending, sending):
    """The floor under one pass: each piece of its I/O done alone, as fast as a tool does it."""
    raw = []
    mark = OTHERS.mark()
    # (i) the stuck-row select, fetched to the client.
    with run.pg.cursor() as cur:
        start = time.monotonic()
        cur.execute(
            f'SELECT id, user_id, state, updated_at, message_id FROM "{table}" '
            f"WHERE state = 'pending' AND updated_at < now() - interval '{PENDING_AFTER_S} seconds' UNION ALL "
            f'SELECT id, user_id, state, updated_at, message_id FROM "{table}" '
            f"WHERE state = 'sending' AND updated_at < now() - interval '{SENDING_AFTER_S} seconds'")
        got = len(cur.fetchall())
        raw.append(("(i) stuck-row select, psycopg2 fetchall", f"{got:,} rows", time.monotonic() - start))
    # (ii) one batched UPDATE of every stale sending row, rolled back.
    run.pg.autocommit = False
    try:
        with run.pg.cursor() as cur:
            start = time.monotonic()
            cur.execute(f"UPDATE \"{table}\" SET state = 'sent' WHERE id = ANY(%s)", (sending,))
            n = cur.rowcount
            run.pg.rollback()
            raw.append(("(ii) UPDATE ... WHERE id = ANY(%s), rolled back", f"{n:,} rows", time.monotonic() - start))
    finally:
        run.pg.rollback()
        run.pg.autocommit = True
    # (iii) pipelined RPUSH of the pending rows' jobs: redis-benchmark with a real job payload.
    u = urllib.parse.urlparse(run.args.redis)
    key = f"{run.ns}_raw:queue:{QUEUE}"
    payload = json.dumps({"class": JOB_CLASS, "args": [123456, shape.n]}, separators=(",", ":"))
    cmd = ["redis-benchmark", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379),
           "-n", str(n_pending), "-P", "1000", "-q"]
    db = (u.path or "/0").strip("/") or "0"
    if db != "0":
        cmd += ["--dbnum", db]
    cmd += ["RPUSH", key, payload]
    start = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.monotonic() - start
    if p.returncode != 0:
        raise BenchError(f"redis-benchmark exited {p.returncode}: {p.stderr}")
    pushed = run.redis.llen(key)
    run.redis.delete(key)
    raw.append((f"(iii) redis-benchmark -P 1000 RPUSH of a {len(payload)}-byte job", f"{pushed:,} jobs", secs))
    # (iv) ripgrep for the stale sending rows' Message-IDs in the log.
    ids = run.dir / "stale-sending-ids.txt"
    ids.write_text("".join(message_id(g) + "\n" for g in sending))
    start = time.monotonic()
    p = subprocess.run(["rg", "-F", "-c", "-f", str(ids), str(log_path)], capture_output=True, text=True)
    secs = time.monotonic() - start
    if p.returncode not in (0, 1):
        raise BenchError(f"rg exited {p.returncode}: {p.stderr}")
    raw.append((f"(iv) rg -F -c -f <{len(sending):,} Message-IDs> LOG", f"{p.stdout.strip() or 0} lines", secs))
    for name, what, secs in raw:
        log(f"  raw {name}: {what} in {secs:.3f} s")
    raw_other = OTHERS.since(mark)
    return raw, raw_other


def idle_daemon(run, table, log_path):
    """After `once`: the daemon with every: 1s on the same data; CPU per pass."""
    port = free_port()
    cfg = run.dir / f"{table}-idle.yaml"
    write_config(run, cfg, table, log_path, port, "1s", {"max_actions": 10000000, "batch_size": 500})
    d = Daemon(run, cfg, run.dir / "idle-run.err", port)
    want = run.args.idle_passes
    out = {"cmd": "RUST_LOG=sweeper=debug " + short(d.cmd) + "  (every: 1s)"}
    try:
        if not d.wait_passes(1, run.args.timeout):
            out["error"] = "no first pass"
            return out
        out["first_pass_s"] = time.monotonic() - d.started
        c0, p0, t0, mark = d.cpu_seconds(), d.passes, time.monotonic(), OTHERS.mark()
        out["first_pass_cpu_s"] = c0
        d.wait_passes(p0 + want, max(120.0, want * 30.0))
        c1, p1, t1 = d.cpu_seconds(), d.passes, time.monotonic()
        out["passes"] = p1 - p0
        out["cpu_s"] = c1 - c0
        out["wall_s"] = t1 - t0
        out["other_cpu"] = OTHERS.since(mark)
        out["pass_count_metric"] = d.metric("sweeper_pass_duration_seconds_count")
    finally:
        rc, rss = d.stop()
        out["rc"], out["rss_kib"] = rc, rss
    if out.get("passes"):
        log(f"  idle: {out['passes']} passes, {out['cpu_s'] * 1000 / out['passes']:.1f} ms CPU each")
    return out


# ---------------------------------------------------------------- report

def fmt_s(x):
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def report(args, setup, results, env):
    targets = []
    contended = []  # (what, other CPU s, wall s)

    def note(what, other, wall):
        if wall > 0 and other > 0.1 * wall:
            contended.append((what, other, wall))
        return f"{other:.1f}"

    p = print
    p("# sweeper whole-pass benchmark\n")
    p(f"- binary: `{args.bin}` ({env['version']}); PostgreSQL {env['pg']}; Redis {env['redis']}; {env['rg']}")
    p(f"- `sweeper` below is that binary; configs and logs are written to `{args.workdir}/pb_<run id>/` "
      "(removed at the end unless --keep)")
    p(f"- machine: {os.cpu_count()} cores; mode: {'QUICK (10x smaller: targets not comparable)' if args.quick else 'full'}\n")

    p("## Setup (not measured)\n")
    p("| step | seconds |")
    p("|---|---:|")
    for name, secs in setup:
        p(f"| {name} | {fmt_s(secs)} |")
    p(f"| **total setup** | **{fmt_s(sum(s for _, s in setup))}** |\n")

    if results["storm"]:
        p("## Storm: peak RSS (GNU time's %M for `report`/`once`; the daemon's VmHWM just before SIGTERM)\n")
        p("limits: {max_actions: 1000}; `report` writes its JSON to /dev/null; the daemon (every: 1h) runs "
          "until its stderr shows the first \"pass done\", then gets SIGTERM.\n")
        p("| table | stale pending | stale sending | command | peak RSS MiB | seconds | exit | limit MiB | other CPU s |")
        p("|---|---:|---:|---|---:|---:|---|---:|---:|")
        for label, n, np_, ns_, rows, _count in results["storm"]:
            limit = RSS_LIMIT_2M_MIB if n <= (200_000 if args.quick else 2_000_000) else RSS_LIMIT_5M_MIB
            for name, r in rows:
                p(f"| {n:,} rows | {np_:,} | {ns_:,} | {name}: `{r.cmd}` | {r.rss_mib:.1f} | {fmt_s(r.wall)} | "
                  f"{'timeout' if r.timed_out else r.rc} | {limit} | {note(f'storm {label} {name.split()[0]}', r.other_cpu, r.wall)} |")
                ok = not r.timed_out and r.rss_mib <= limit
                targets.append((f"storm-{label}-{name.split()[0]}-rss", ok, f"{r.rss_mib:.1f} MiB", f"{limit} MiB"))
        p("")

    by_scale = {o["scale"]: o for o in results["realistic"]}
    one = by_scale.get(1)
    for o in results["realistic"]:
        s = o["scale"]
        r = o["once"]
        p(f"## Realistic {s}x: `sweeper once`\n")
        p(f"{o['rows']:,} rows: {o['pending']:,} stale pending, {o['sending']:,} stale sending; Postfix log "
          f"{o['log_lines']:,} lines ({o['log_bytes'] / 1e6:.0f} MB). limits: {{max_actions: 10000000, batch_size: 500}}.\n")
        a = o["after"]
        changed = a.get("sent", 0) + a.get("error", 0)
        p("| command | seconds | peak RSS MiB | exit | Resque jobs (expected) | rows → sent (expected) | rows → error (expected) | changed | other CPU s |")
        p("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        p(f"| `{r.cmd}` | {'timeout' if r.timed_out else fmt_s(r.wall)} | {r.rss_mib:.1f} | {r.rc} | "
          f"{o['jobs']:,} ({o['pending']:,}) | {a.get('sent', 0):,} ({o['expect']['sent']:,}) | "
          f"{a.get('error', 0):,} ({o['expect']['bounced']:,}) | {changed:,} | "
          f"{note(f'realistic {s}x once', r.other_cpu, r.wall)} |\n")
        if "per_row" in o:
            pr = o["per_row"]
            rep = o.get("per_row_report", {})
            pa = o["per_row_after"]
            speedup = pr.wall / r.wall if r.wall > 0 else float("inf")
            p(f"### Baseline: per-row script ({s}x)\n")
            p("| command | seconds | select | log | apply | jobs | → sent | → error | sweeper speed-up | other CPU s |")
            p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            secs = rep.get("seconds", {})
            p(f"| `{pr.cmd}` | {fmt_s(pr.wall)} | {secs.get('select', '?')} | {secs.get('log', '?')} | "
              f"{secs.get('apply', '?')} | {o['per_row_jobs']:,} | {pa.get('sent', 0):,} | {pa.get('error', 0):,} | "
              f"{speedup:.1f}× | {note(f'per-row script {s}x', pr.other_cpu, pr.wall)} |\n")
            targets.append((f"per-row-speedup-{s}x", not r.timed_out and speedup >= PER_ROW_MIN_SPEEDUP,
                            f"{speedup:.1f}×", f"≥ {PER_ROW_MIN_SPEEDUP:.0f}×"))
        if "raw" in o:
            p(f"### Baseline: raw limits ({s}x), each timed alone\n")
            p("| piece | amount | seconds |")
            p("|---|---:|---:|")
            total = 0.0
            for name, what, secs in o["raw"]:
                p(f"| {name} | {what} | {secs:.3f} |")
                total += secs
            ratio = r.wall / total if total > 0 else float("inf")
            p(f"| **sum** | | **{total:.3f}** |")
            p(f"| sweeper once / sum | | {ratio:.2f}× |\n")
            p(f"other CPU during the raw limits: {note(f'raw limits {s}x', o['raw_other_cpu'], total)} s\n")
            targets.append((f"raw-limits-{s}x", not r.timed_out and ratio <= RAW_MAX_RATIO,
                            f"{ratio:.2f}× the sum ({fmt_s(r.wall)} s vs {total:.3f} s)", f"≤ {RAW_MAX_RATIO:.0f}×"))
        if "idle" in o:
            i = o["idle"]
            p(f"## Idle daemon pass ({s}x data, after `once`)\n")
            if i.get("passes"):
                per = i["cpu_s"] * 1000 / i["passes"]
                p("| command | first pass s | first pass CPU s | passes sampled | CPU s | CPU ms / pass | wall s / pass | peak RSS MiB | other CPU s |")
                p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
                p(f"| `{i['cmd']}` | {i['first_pass_s']:.2f} | {i['first_pass_cpu_s']:.2f} | {i['passes']} | "
                  f"{i['cpu_s']:.2f} | {per:.1f} | {i['wall_s'] / i['passes']:.2f} | {(i['rss_kib'] or 0) / 1024:.1f} | "
                  f"{note('idle daemon', i['other_cpu'], i['wall_s'])} |\n")
                targets.append(("idle-pass-cpu", per < IDLE_MAX_CPU_MS, f"{per:.1f} ms", f"< {IDLE_MAX_CPU_MS:.0f} ms"))
            else:
                p(f"no idle pass measured: {i.get('error', 'no pass after the first')}\n")
                targets.append(("idle-pass-cpu", False, "not measured", f"< {IDLE_MAX_CPU_MS:.0f} ms"))
    big = [o for o in results["realistic"] if o["scale"] > 1]
    if one and big:
        p("## Scale\n")
        p("| scale | rows | log lines | sweeper once seconds | ratio to 1x |")
        p("|---|---:|---:|---:|---:|")
        for o in [one] + big:
            ratio = o["once"].wall / one["once"].wall
            p(f"| {o['scale']}x | {o['rows']:,} | {o['log_lines']:,} | {fmt_s(o['once'].wall)} | {ratio:.2f} |")
        p("")
        for o in big:
            ratio = o["once"].wall / one["once"].wall
            limit = SCALE_MAX_RATIO * o["scale"] / 10
            targets.append((f"scale-{o['scale']}x", not o["once"].timed_out and ratio <= limit,
                            f"{ratio:.2f}", f"≤ {limit:g}"))
    p("\"other CPU s\": CPU time used meanwhile by processes outside the benchmark (not sweeper, Python, "
      "PostgreSQL, Redis, rg, redis-benchmark), e.g. a build.\n")
    if contended:
        p("**WARNING: the machine was busy during these measurements; their figures are not reliable "
          "(rerun on an idle machine):** " + "; ".join(f"{w} ({o:.1f} CPU-s of others in {t:.1f} s)"
                                                      for w, o, t in contended) + "\n")
    for name, ok, measured, limit in targets:
        print(f"TARGET {name}: {'PASS' if ok else 'FAIL'} ({measured} vs {limit})")


def versions(args, run):
    env = {}
    try:
        env["version"] = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        env["version"] = "?"
    env["pg"] = run.sql("SHOW server_version", fetch=True)[0][0]
    env["redis"] = run.redis.info("server").get("redis_version", "?")
    env["rg"] = subprocess.run(["rg", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return env


def on_sigterm(_signum, _frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    run = None
    try:
        ensure_tools(args)
        global OTHERS
        OTHERS = OtherCpu()
        run = Run(args)
        log(f"run {run.id}: tables {run.prefix}_*, Redis keys {run.ns}*, files in {run.dir}")
        env = versions(args, run)
        t0 = time.time()
        setup, results = [], {"storm": [], "realistic": []}
        k = 10 if args.quick else 1
        if "storm" in args.only:
            storm(run, "2m", 2_000_000 // k, 20, 4, 1, t0, results, setup)
            storm(run, "5m", 5_000_000 // k, 25, 8, 2, t0, results, setup)
        want_1x = bool({"realistic", "idle"} & args.only) or ("scale" in args.only and args.scale > 1)
        if want_1x:
            realistic(run, 1, time.time(), results, setup, baselines="realistic" in args.only,
                      idle="idle" in args.only)
        if "scale" in args.only and args.scale > 1:
            realistic(run, args.scale, time.time(), results, setup, baselines=False, idle=False)
        report(args, setup, results, env)
        return 0
    except BenchError as e:
        print(f"pass_bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pass_bench: interrupted", file=sys.stderr)
        return 130
    finally:
        if run is not None:
            log("cleaning up")
            run.cleanup()


if __name__ == "__main__":
    sys.exit(main())
