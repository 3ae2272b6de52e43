#!/usr/bin/env python3
"""Per-row baseline for bench/pass_bench.py: the one-off script an engineer
would write by hand to do what one sweeper pass does.

  1. one SELECT of every stuck row (pending past --pending-after, sending past
     --sending-after);
  2. one read of the Postfix log into a dict Message-ID -> final status
     (bounced if any recipient bounced, else sent if one was delivered;
     deferred-only messages count as still in flight);
  3. per row, in autocommit:
       pending -> RPUSH one Resque job {"class": ..., "args": [user_id, id]}
                  and upsert a requeue counter in a small ledger table;
       sending with a delivered / bounced status -> one guarded
                  UPDATE ... SET state = 'sent' | 'error'
                  WHERE id = %s AND state = 'sending' AND updated_at = %s.

Prints one JSON line with the counts and the time of each phase.

  python3 bench/per_row.py --table t --log /var/log/mail.log --namespace resque \\
      --ledger t_per_row_ledger
"""

import argparse
import json
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Per-row reconciliation script (baseline for bench/pass_bench.py).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/test", help="PostgreSQL URL")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    p.add_argument("--table", required=True, help="the app table (id, user_id, state, updated_at, message_id)")
    p.add_argument("--log", required=True, help="Postfix log file")
    p.add_argument("--namespace", required=True, help="Resque namespace (keys <ns>:queue:<q>, <ns>:queues)")
    p.add_argument("--ledger", required=True, help="ledger table for requeue counters (created if missing)")
    p.add_argument("--queue", default="notify", help="Resque queue name")
    p.add_argument("--job-class", default="NotifyUser", help="Resque job class")
    p.add_argument("--pending-after", type=int, default=600, help="seconds (default 600)")
    p.add_argument("--sending-after", type=int, default=900, help="seconds (default 900)")
    return p.parse_args(argv)


def ident(name):
    """Quote a plain identifier (letters, digits, underscores; optional schema)."""
    parts = name.split(".")
    for part in parts:
        if not part or not all(c.isalnum() or c == "_" for c in part):
            raise SystemExit(f"per_row.py: not a plain identifier: {name!r}")
    return ".".join(f'"{part}"' for part in parts)


# A message's final status: a bounce anywhere wins, then a delivery.
RANK = {"deferred": 0, "sent": 1, "bounced": 2}


def final_statuses(path):
    """Message-ID (without angle brackets) -> 'sent' | 'bounced' | 'deferred'."""
    mid_of_qid = {}
    status_of_qid = {}
    with open(path, "r", encoding="utf-8", errors="replace", buffering=1 << 20) as f:
        for line in f:
            # "<ts> <host> postfix/<daemon>[pid]: <QID>: <rest>"
            i = line.find("]: ")
            if i < 0:
                continue
            rest = line[i + 3:]
            j = rest.find(": ")
            if j <= 0:
                continue
            qid = rest[:j]
            body = rest[j + 2:]
            if body.startswith("message-id=<"):
                mid_of_qid[qid] = body[12:body.find(">", 12)]
            elif "status=" in body:
                s = body[body.find("status=") + 7:]
                s = s.split(" ", 1)[0].strip()
                rank = RANK.get(s, 0)
                if rank >= RANK.get(status_of_qid.get(qid), -1):
                    status_of_qid[qid] = s
    out = {}
    for qid, mid in mid_of_qid.items():
        s = status_of_qid.get(qid)
        if s is not None:
            out[mid] = s
    return out


def main(argv=None):
    a = parse_args(argv)
    import psycopg2
    import redis

    t_start = time.monotonic()
    table = ident(a.table)
    ledger = ident(a.ledger)
    conn = psycopg2.connect(a.pg)
    conn.autocommit = True
    cur = conn.cursor()
    r = redis.Redis.from_url(a.redis)
    queue_key = f"{a.namespace}:queue:{a.queue}"
    r.sadd(f"{a.namespace}:queues", a.queue)
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {ledger} (row_id bigint PRIMARY KEY, "
        "attempts integer NOT NULL, last_requeued_at timestamptz NOT NULL)"
    )

    t0 = time.monotonic()
    cur.execute(
        f"SELECT id, user_id, state, updated_at, message_id FROM {table} "
        "WHERE state = 'pending' AND updated_at < now() - make_interval(secs => %s) "
        "UNION ALL "
        f"SELECT id, user_id, state, updated_at, message_id FROM {table} "
        "WHERE state = 'sending' AND updated_at < now() - make_interval(secs => %s)",
        (a.pending_after, a.sending_after),
    )
    rows = cur.fetchall()
    t1 = time.monotonic()
    statuses = final_statuses(a.log)
    t2 = time.monotonic()

    requeued = marked_sent = marked_error = moved = left = 0
    for row_id, user_id, state, updated_at, message_id in rows:
        if state == "pending":
            r.rpush(queue_key, json.dumps({"class": a.job_class, "args": [user_id, row_id]}))
            cur.execute(
                f"INSERT INTO {ledger} AS l (row_id, attempts, last_requeued_at) VALUES (%s, 1, now()) "
                "ON CONFLICT (row_id) DO UPDATE SET attempts = l.attempts + 1, last_requeued_at = now()",
                (row_id,),
            )
            requeued += 1
            continue
        status = statuses.get((message_id or "").strip().strip("<>"))
        if status == "sent":
            to = "sent"
        elif status == "bounced":
            to = "error"
        else:
            left += 1
            continue
        cur.execute(
            f"UPDATE {table} SET state = %s WHERE id = %s AND state = 'sending' AND updated_at = %s",
            (to, row_id, updated_at),
        )
        if cur.rowcount != 1:
            moved += 1
        elif to == "sent":
            marked_sent += 1
        else:
            marked_error += 1
    t3 = time.monotonic()
    cur.close()
    conn.close()
    print(json.dumps({
        "stuck_rows": len(rows),
        "requeued": requeued,
        "marked_sent": marked_sent,
        "marked_error": marked_error,
        "already_moved": moved,
        "left": left,
        "log_messages_with_status": len(statuses),
        "seconds": {
            "select": round(t1 - t0, 3),
            "log": round(t2 - t1, 3),
            "apply": round(t3 - t2, 3),
            "total": round(t3 - t_start, 3),
        },
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
