#!/usr/bin/env python3
"""Submit the capture's messages to Postfix (127.0.0.1:25) and write the manifest.

Each message gets its own Message-ID <own-N.RANDOM@app.example.test> (or
<ownlong-N.RANDOM@...> for the long-queue-ID run). The expected outcome is
derived from what is SENT -- the recipients' local parts and the sink's rules
(see sink.py) -- never from the Postfix log:

  ok*     -> sent
  retry*  -> sent (after one 450 deferral)
  alias*  -> rewritten by Postfix's virtual_alias_maps to ok-alias*, so sent
             (Postfix logs to=<ok-alias...>, orig_to=<alias...>)
  bounce* -> bounced (550 5.1.1)
  defer*  -> expired (450 on every attempt until maximal_queue_lifetime)

Per message: "sent" if every recipient is sent, "bounced" if every recipient
bounced, "expired" if every recipient expired, "mixed" if some recipient is
sent and some bounced or expired.

The queue ID is the one Postfix's smtpd returned in its reply to DATA
("250 2.0.0 Ok: queued as QID").
"""

import argparse
import datetime
import email.utils
import json
import random
import re
import secrets
import smtplib
import time
from email.message import EmailMessage

SENDER = "noreply@app.example.test"
DOMAIN = "dest.example.test"

# (pattern name, [recipient kinds], how many messages)
PLANS = {
    "main": [
        ("ok", ["ok"], 14),
        ("ok+ok", ["ok", "ok"], 5),
        ("ok+ok+ok", ["ok", "ok", "ok"], 3),
        ("bounce", ["bounce"], 6),
        ("bounce+bounce", ["bounce", "bounce"], 3),
        ("ok+bounce", ["ok", "bounce"], 6),
        ("defer", ["defer"], 5),
        ("defer+defer", ["defer", "defer"], 2),
        ("retry", ["retry"], 6),
        ("ok+retry", ["ok", "retry"], 3),
        ("ok+defer", ["ok", "defer"], 4),
        ("retry+bounce", ["retry", "bounce"], 1),
        ("alias", ["alias"], 2),
    ],
    "long": [
        ("ok", ["ok"], 5),
        ("ok+ok", ["ok", "ok"], 1),
        ("bounce", ["bounce"], 2),
        ("ok+bounce", ["ok", "bounce"], 2),
        ("defer", ["defer"], 2),
        ("retry", ["retry"], 2),
        ("ok+defer", ["ok", "defer"], 1),
        ("alias", ["alias"], 1),
    ],
}

OUTCOME = {"ok": "sent", "retry": "sent", "alias": "sent", "bounce": "bounced", "defer": "expired"}


def overall(per):
    vals = set(per.values())
    if len(vals) == 1:
        return vals.pop()
    if "sent" in vals:
        return "mixed"
    raise ValueError("plan has a message with no delivered recipient and mixed failures: %r" % per)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", choices=sorted(PLANS), default="main")
    ap.add_argument("--prefix", default="own")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--postfix-version", required=True)
    ap.add_argument("--long-queue-ids", action="store_true")
    ap.add_argument("--seed", type=int, default=20240601, help="seed for the order of the mix")
    ap.add_argument("--log-file", default="mail.log", help="name of the log this manifest describes")
    args = ap.parse_args()

    jobs = []
    for name, kinds, n in PLANS[args.plan]:
        jobs += [(name, kinds)] * n
    random.Random(args.seed).shuffle(jobs)

    messages = {}
    counts = {}
    pattern_counts = {}
    smtp = smtplib.SMTP("127.0.0.1", 25, local_hostname="app.example.test", timeout=30)
    smtp.ehlo()
    for i, (name, kinds) in enumerate(jobs):
        suffixes = "abcdefgh" if len(kinds) > 1 else [""]
        rcpts, per, rewritten = [], {}, {}
        for kind, suf in zip(kinds, suffixes):
            addr = "%s%d%s@%s" % (kind, i, suf, DOMAIN)
            rcpts.append(addr)
            per[addr] = OUTCOME[kind]
            if kind == "alias":
                rewritten[addr] = "ok-" + addr
        msgid = "<%s-%d.%s@app.example.test>" % (args.prefix, i, secrets.token_hex(4))
        msg = EmailMessage()
        msg["From"] = SENDER
        msg["To"] = ", ".join(rcpts)
        msg["Subject"] = "capture %s %d (%s)" % (args.prefix, i, name)
        msg["Date"] = email.utils.formatdate(localtime=True)
        msg["Message-ID"] = msgid
        msg.set_content("Capture message %d, pattern %s.\n" % (i, name))

        code, resp = smtp.mail(SENDER)
        assert code == 250, (code, resp)
        for r in rcpts:
            code, resp = smtp.rcpt(r)
            assert code == 250, (r, code, resp)
        code, resp = smtp.data(msg.as_bytes())
        assert code == 250, (code, resp)
        m = re.search(rb"queued as ([0-9A-Za-z]+)", resp)
        assert m, resp
        qid = m.group(1).decode()
        exp = overall(per)
        entry = {
            "expected": exp,
            "pattern": name,
            "recipients": rcpts,
            "expected_per_recipient": per,
            "queue_id": qid,
        }
        if rewritten:
            entry["rewritten_to"] = rewritten
        messages[msgid] = entry
        counts[exp] = counts.get(exp, 0) + 1
        pattern_counts[name] = pattern_counts.get(name, 0) + 1
        time.sleep(0.05)
    smtp.quit()

    manifest = {
        "meta": {
            "postfix_mail_version": args.postfix_version,
            "log_file": args.log_file,
            "long_queue_ids": args.long_queue_ids,
            "count": len(messages),
            "expected_counts": counts,
            "pattern_counts": pattern_counts,
            "sender": SENDER,
            "recipient_domain": DOMAIN,
            "submitted_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "how": "bash scripts/capture-postfix/capture.sh: Debian postfix with maillog_file, "
            "relayhost [127.0.0.1]:2525 (scripts/capture-postfix/sink.py: 250 ok*@, 550 5.1.1 bounce*@, "
            "450 4.2.0 defer*@ always, 450 then 250 retry*@, STARTTLS with a self-signed cert), "
            "maximal_queue_lifetime=60s so defer*@ recipients expire; alias*@ rewritten by "
            "virtual_alias_maps to ok-alias*@. Expected outcomes derived from the submitted "
            "recipients, queue IDs from smtpd's reply to DATA.",
        },
        "messages": messages,
    }
    with open(args.manifest, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print("submitted %d messages: %s" % (len(messages), counts))


if __name__ == "__main__":
    main()
