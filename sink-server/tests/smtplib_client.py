#!/usr/bin/env python3
"""An independent SMTP client for sluice-sink's interop test (Python smtplib).

usage: smtplib_client.py HOST PORT CAFILE

1. plain EHLO, three messages through smtplib.sendmail (two recipients each);
2. STARTTLS verified against CAFILE, EHLO again, then one pipelined DATA
   transaction (MAIL, RCPT, RCPT, DATA in one write; RFC 2920) and one BDAT
   transaction (MAIL, RCPT, BDAT chunk, BDAT LAST in one write; RFC 3030),
   each reply read and checked with smtplib's own reply parser.

Prints one JSON object: what was sent and accepted, for the test to compare
with the sink's summary. Exits non-zero on any unexpected reply.
"""
import json
import smtplib
import ssl
import sys


def expect(code, reply, what):
    if reply[0] != code:
        sys.exit(f"{what}: expected {code}, got {reply[0]} {reply[1]!r}")


def main():
    host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sent = {"messages": 0, "recipients": 0, "bytes": 0}

    body = (
        "From: py@client.test\r\nTo: a@py.test\r\nSubject: smtplib\r\n"
        "X-Sluice-Id: py-{n}\r\n\r\n.leading dot\r\nline two\r\n"
    )
    with smtplib.SMTP(host, port, timeout=20) as s:
        s.ehlo("py.client.test")
        for name in ("pipelining", "chunking", "8bitmime", "smtputf8", "size",
                     "enhancedstatuscodes", "dsn", "starttls"):
            if not s.has_extn(name):
                sys.exit(f"extension {name} not offered")
        for n in range(3):
            msg = body.format(n=n)
            refused = s.sendmail("py@client.test", ["a@py.test", "b@py.test"], msg)
            if refused:
                sys.exit(f"refused: {refused}")
            sent["messages"] += 1
            sent["recipients"] += 2
            sent["bytes"] += len(msg.encode())  # un-stuffed content, CRLF included

        ctx = ssl.create_default_context(cafile=cafile)
        ctx.check_hostname = False  # the generated certificate names localhost
        expect(220, s.starttls(context=ctx), "STARTTLS")
        s.ehlo("py.client.test")
        if s.has_extn("starttls"):
            sys.exit("STARTTLS offered again under TLS")

        # Pipelined DATA transaction: one write, then the replies in order.
        msg = body.format(n=3)
        s.send(b"MAIL FROM:<py@client.test>\r\nRCPT TO:<a@tls.test>\r\n"
               b"RCPT TO:<b@tls.test>\r\nDATA\r\n")
        for code, what in ((250, "MAIL"), (250, "RCPT 1"), (250, "RCPT 2"), (354, "DATA")):
            expect(code, s.getreply(), what)
        stuffed = msg.replace("\r\n.", "\r\n..")
        if stuffed.startswith("."):
            stuffed = "." + stuffed
        s.send(stuffed.encode() + b".\r\n")
        expect(250, s.getreply(), "end of data")
        sent["messages"] += 1
        sent["recipients"] += 2
        sent["bytes"] += len(msg.encode())

        # BDAT transaction, everything in one write (no dot-stuffing in BDAT).
        msg = body.format(n=4).encode()
        half = len(msg) // 2
        s.send(b"MAIL FROM:<py@client.test>\r\nRCPT TO:<c@tls.test>\r\n"
               + b"BDAT %d\r\n" % half + msg[:half]
               + b"BDAT %d LAST\r\n" % (len(msg) - half) + msg[half:])
        for code, what in ((250, "MAIL"), (250, "RCPT"), (250, "BDAT"), (250, "BDAT LAST")):
            expect(code, s.getreply(), what)
        sent["messages"] += 1
        sent["recipients"] += 1
        sent["bytes"] += len(msg)
        expect(221, s.quit(), "QUIT")
    print(json.dumps(sent))


if __name__ == "__main__":
    main()
