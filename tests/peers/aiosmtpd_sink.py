#!/usr/bin/env python3
"""An independent SMTP receiver for delivery tests: Python's aiosmtpd.

usage: aiosmtpd_sink.py PORT OUTDIR

Listens on 127.0.0.1:PORT with aiosmtpd's defaults, which advertise SIZE,
8BITMIME, SMTPUTF8 and HELP but neither PIPELINING nor CHUNKING nor DSN.
For each accepted message it appends one line to OUTDIR/messages.txt:
  <X-Sluice-Id> <number of recipients> <dots> <mail options> | <rcpt options>
where <dots> is "dots-ok" when the body holds the line ".leading dot" (sent
as "..leading dot" by a correctly dot-stuffing client), else "dots-bad".
and for every command that arrived while the next one already sat in the
input buffer (the client pipelined without PIPELINING being offered) one
line to OUTDIR/pipelined.txt. Unknown verbs such as BDAT get aiosmtpd's
`500`. Writes OUTDIR/ready once listening; runs until SIGTERM/SIGINT.
"""
import os
import signal
import sys
import threading

from aiosmtpd.controller import Controller


class Recorder:
    def __init__(self, outdir):
        self.outdir = outdir
        self.lock = threading.Lock()

    def _append(self, name, line):
        with self.lock, open(os.path.join(self.outdir, name), "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def _check_pipelined(self, server, verb):
        reader = getattr(server, "_reader", None)
        buffered = getattr(reader, "_buffer", b"") if reader is not None else b""
        if len(buffered) > 0:
            self._append("pipelined.txt", f"{verb} followed by {bytes(buffered[:40])!r}")

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self._check_pipelined(server, "MAIL")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self._check_pipelined(server, "RCPT")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or b""
        msg_id = "-"
        for line in content.split(b"\r\n"):
            if not line:
                break
            if line.lower().startswith(b"x-sluice-id:"):
                msg_id = line.split(b":", 1)[1].strip().decode("utf-8", "replace")
        dots = "dots-ok" if b"\r\n.leading dot\r\n" in content else "dots-bad"
        self._append(
            "messages.txt",
            f"{msg_id} {len(envelope.rcpt_tos)} {dots} {' '.join(envelope.mail_options)} | "
            f"{' '.join(envelope.rcpt_options)}",
        )
        return "250 Message accepted for delivery"


def main():
    port, outdir = int(sys.argv[1]), sys.argv[2]
    controller = Controller(Recorder(outdir), hostname="127.0.0.1", port=port,
                            server_hostname="aiosmtpd.test", decode_data=False)
    controller.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    open(os.path.join(outdir, "ready"), "w").close()
    done.wait()
    controller.stop()


if __name__ == "__main__":
    main()
