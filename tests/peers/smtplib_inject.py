#!/usr/bin/env python3
"""Inject mail into sluice with Python's smtplib, an independent SMTP client.

usage: smtplib_inject.py HOST PORT COUNT ID_PREFIX

Sends, over one EHLO session, COUNT messages with unique X-Sluice-Id headers
(one recipient each, several domains), then on the same session one message
to three recipients in two domains, one SMTPUTF8 message (non-ASCII local
parts), and one whose body has lines starting with a dot; then a second
session that starts with HELO (no extensions). Prints one JSON object on
stdout: {"ids": [...every id acknowledged...], "transactions": N} where N is
the number of (message, destination domain) pairs the sink must see.
Exits non-zero on any refusal.
"""
import json
import smtplib
import sys
from email.message import EmailMessage


def message(msg_id, sender, rcpts, body):
    m = EmailMessage()
    m["From"] = sender
    m["To"] = ", ".join(rcpts)
    m["Subject"] = f"smtplib {msg_id}"
    m["X-Sluice-Id"] = msg_id
    m.set_content(body)
    return m


def main():
    host, port, count, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ids, transactions = [], 0
    with smtplib.SMTP(host, port, timeout=20) as s:
        code, _ = s.ehlo("smtplib.test")
        assert code == 250, code
        for ext in ("size", "8bitmime", "smtputf8", "pipelining"):
            assert s.has_extn(ext), f"EHLO lacks {ext}"
        for i in range(count):
            mid = f"{prefix}-{i}"
            rcpt = f"user{i}@d{i % 3}.test"
            # send_message adds SIZE= since the server advertises SIZE.
            refused = s.send_message(message(mid, "sender@src.test", [rcpt], f"message {i}\n"))
            assert not refused, refused
            ids.append(mid)
            transactions += 1
        mid = f"{prefix}-multi"
        rcpts = ["a@d0.test", "b@d0.test", "c@d1.test"]
        refused = s.send_message(message(mid, "sender@src.test", rcpts, "three recipients\n"))
        assert not refused, refused
        ids.append(mid)
        transactions += 2
        mid = f"{prefix}-utf8"
        raw = (
            f"From: j\u00f6rg@src.test\r\nTo: m\u00fcller@d2.test\r\nSubject: utf8\r\n"
            f"X-Sluice-Id: {mid}\r\n\r\nGr\u00fc\u00dfe\r\n"
        ).encode("utf-8")
        refused = s.sendmail("j\u00f6rg@src.test", ["m\u00fcller@d2.test"], raw,
                             mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert not refused, refused
        ids.append(mid)
        transactions += 1
        mid = f"{prefix}-dots"
        # smtplib dot-stuffs these lines; the server must unstuff them.
        body = ".leading dot\n..two dots\n.\nafter a lone dot\n"
        refused = s.send_message(message(mid, "sender@src.test", ["dots@d1.test"], body))
        assert not refused, refused
        ids.append(mid)
        transactions += 1
    with smtplib.SMTP(host, port, timeout=20) as s:
        code, _ = s.helo("smtplib-helo.test")
        assert code == 250, code
        mid = f"{prefix}-helo"
        refused = s.send_message(message(mid, "sender@src.test", ["helo@d0.test"], "plain HELO\n"))
        assert not refused, refused
        ids.append(mid)
        transactions += 1
    print(json.dumps({"ids": ids, "transactions": transactions}))


if __name__ == "__main__":
    main()
