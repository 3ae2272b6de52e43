#!/usr/bin/env python3
"""Cross-check a capture: does the Postfix log agree with the manifest?

The manifest's expectations come from submit.py (what was sent); this script
only confirms, with a deliberately simple reading of the log, that Postfix did
what the sink's rules predict. Exits non-zero on any disagreement.

  verify.py mail.log manifest.json
"""
import json
import re
import sys
from collections import Counter, defaultdict

log_path, manifest_path = sys.argv[1], sys.argv[2]
lines = open(log_path).read().splitlines()
manifest = json.load(open(manifest_path))

LINE = re.compile(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ postfix/(\w+)\[\d+\]: ([0-9A-Za-z]+): (.*)$")
by_qid = defaultdict(list)
for ln in lines:
    m = LINE.match(ln)
    if m:
        by_qid[m.group(2)].append((m.group(1), m.group(3)))

problems = []
for msgid, e in manifest["messages"].items():
    qid = e["queue_id"]
    ev = by_qid.get(qid)
    if not ev:
        problems.append("%s: queue id %s not in log" % (msgid, qid))
        continue
    if ("cleanup", "message-id=%s" % msgid) not in ev:
        problems.append("%s: no cleanup message-id line for %s" % (msgid, qid))
    last = {}
    expired = False
    for prog, rest in ev:
        m = re.match(r"to=<([^>]*)>(?:, orig_to=<([^>]*)>)?, .*status=(\w+)", rest)
        if m and prog != "qmgr":
            last[m.group(2) or m.group(1)] = m.group(3)
        if prog == "qmgr" and "status=expired" in rest:
            expired = True
    for rcpt, want in e["expected_per_recipient"].items():
        got = last.get(rcpt)
        if got == "deferred" and expired:
            got = "expired"
        if got != want:
            problems.append("%s: %s expected %s, log says %s" % (msgid, rcpt, want, got))

text = "\n".join(lines)
stats = {
    "lines": len(lines),
    "queue_ids": len(by_qid),
    "status": dict(Counter(re.findall(r"status=(\w+)", text))),
    "conn_use_lines": len(re.findall(r"conn_use=", text)),
    "orig_to_lines": len(re.findall(r"orig_to=", text)),
    "tls_eq_fields": len(re.findall(r"\btls=", text)),
    "tls_connection_lines": len(re.findall(r"TLS connection established", text)),
}
print("%s: %d messages checked; %s" % (log_path, len(manifest["messages"]), json.dumps(stats)))
for p in problems:
    print("MISMATCH", p)
sys.exit(1 if problems else 0)
