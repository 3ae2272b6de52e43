#!/usr/bin/env python3
"""Minimal SMTP sink for the Postfix capture (stdlib only, asyncio).

Listens on 127.0.0.1:2525 (override with --port). It decides by the local part
of each RCPT TO address:

  ok*      250 2.1.5 (accepted)
  bounce*  550 5.1.1 (permanent failure -> Postfix logs status=bounced)
  defer*   450 4.2.0 (always temporary -> Postfix retries, then expires)
  retry*   450 4.2.0 on the first attempt for that address, 250 afterwards
  anything else (e.g. the sender address that receives Postfix's DSNs): 250

With --cert/--key it offers STARTTLS in its EHLO reply and upgrades the
connection when asked. Every decision is written as one line to --log.
Accepted message data is read and discarded.
"""

import argparse
import asyncio
import datetime
import re
import ssl
import sys

ATTEMPTS = {}  # rcpt address (lower-cased) -> number of RCPT TO commands seen
COUNTER = {"msg": 0}


def decide(addr):
    local = addr.split("@", 1)[0].lower()
    n = ATTEMPTS.get(addr.lower(), 0) + 1
    ATTEMPTS[addr.lower()] = n
    if local.startswith("ok"):
        return "250 2.1.5 Ok"
    if local.startswith("bounce"):
        return "550 5.1.1 <%s>: Recipient address rejected: User unknown (sink)" % addr
    if local.startswith("defer"):
        return "450 4.2.0 <%s>: Recipient address rejected: try again later (sink)" % addr
    if local.startswith("retry"):
        if n == 1:
            return "450 4.2.0 <%s>: Recipient address rejected: first attempt deferred (sink)" % addr
        return "250 2.1.5 Ok (attempt %d)" % n
    return "250 2.1.5 Ok"


class Session:
    def __init__(self, reader, writer, tls_ctx, log):
        self.reader = reader
        self.writer = writer
        self.tls_ctx = tls_ctx
        self.log = log
        self.tls = False
        self.reset()

    def reset(self):
        self.mail_from = None
        self.accepted = []

    def note(self, text):
        ts = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        self.log.write("%s %s\n" % (ts, text))
        self.log.flush()

    async def reply(self, line):
        self.writer.write((line + "\r\n").encode())
        await self.writer.drain()

    async def run(self):
        await self.reply("220 sink.example.test ESMTP capture sink")
        while True:
            raw = await self.reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            arg = line[len(verb):].strip()
            if verb == "EHLO":
                self.reset()
                caps = ["sink.example.test", "PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES"]
                if self.tls_ctx is not None and not self.tls:
                    caps.append("STARTTLS")
                for c in caps[:-1]:
                    await self.reply("250-" + c)
                await self.reply("250 " + caps[-1])
            elif verb == "HELO":
                self.reset()
                await self.reply("250 sink.example.test")
            elif verb == "STARTTLS" and self.tls_ctx is not None and not self.tls:
                await self.reply("220 2.0.0 Ready to start TLS")
                await self.writer.start_tls(self.tls_ctx)
                self.tls = True
                self.reset()
                obj = self.writer.get_extra_info("ssl_object")
                self.note("STARTTLS %s %s" % (obj.version() if obj else "?", obj.cipher()[0] if obj else "?"))
            elif verb == "MAIL":
                self.reset()
                m = re.search(r"<([^>]*)>", arg)
                self.mail_from = m.group(1) if m else ""
                await self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                m = re.search(r"<([^>]*)>", arg)
                addr = m.group(1) if m else ""
                if self.mail_from is None:
                    await self.reply("503 5.5.1 need MAIL first")
                    continue
                resp = decide(addr)
                self.note("RCPT from=<%s> to=<%s> tls=%s -> %s" % (self.mail_from, addr, "yes" if self.tls else "no", resp))
                if resp.startswith("2"):
                    self.accepted.append(addr)
                await self.reply(resp)
            elif verb == "DATA":
                if not self.accepted:
                    await self.reply("554 5.5.1 Error: no valid recipients")
                    continue
                await self.reply("354 End data with <CR><LF>.<CR><LF>")
                size = 0
                while True:
                    d = await self.reader.readline()
                    if not d or d in (b".\r\n", b".\n"):
                        break
                    size += len(d)
                COUNTER["msg"] += 1
                qid = "SINK%05d" % COUNTER["msg"]
                self.note("DATA from=<%s> rcpts=%s size=%d queued as %s" % (self.mail_from, ",".join(self.accepted), size, qid))
                await self.reply("250 2.0.0 Ok: queued as %s" % qid)
                self.reset()
            elif verb == "RSET":
                self.reset()
                await self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                await self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                await self.reply("221 2.0.0 Bye")
                return
            else:
                await self.reply("502 5.5.2 Error: command not recognized")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2525)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--log", default="-")
    a = ap.parse_args()

    tls_ctx = None
    if a.cert and a.key:
        tls_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_ctx.load_cert_chain(a.cert, a.key)
    log = sys.stdout if a.log == "-" else open(a.log, "a", buffering=1)

    async def handle(reader, writer):
        try:
            await Session(reader, writer, tls_ctx, log).run()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as e:
            log.write("connection error: %r\n" % (e,))
        finally:
            try:
                writer.close()
            except Exception:
                pass

    server = await asyncio.start_server(handle, a.host, a.port)
    log.write("listening on %s:%d tls=%s\n" % (a.host, a.port, "yes" if tls_ctx else "no"))
    log.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
