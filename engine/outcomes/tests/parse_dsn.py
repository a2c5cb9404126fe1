#!/usr/bin/env python3
"""Parse DSNs with Python's own email package and print their structure.

Usage: parse_dsn.py FILE...  Prints one JSON object per file (a JSON list).
Exits non-zero when a message has MIME defects, so that an independent
parser, not our generator, judges well-formedness.
"""
import email
import email.policy
import json
import sys


def fields(block):
    return {k: " ".join(str(v).split()) for k, v in block.items()}


def describe(path):
    with open(path, "rb") as f:
        raw = f.read()
    # compat32 with raise_on_defect: missing boundaries, bad headers and the
    # like raise instead of being repaired silently.
    policy = email.policy.compat32.clone(raise_on_defect=True)
    msg = email.message_from_bytes(raw, policy=policy)
    out = {
        "content_type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "to": msg["To"],
        "from": msg["From"],
        "subject": msg["Subject"],
        "auto_submitted": msg["Auto-Submitted"],
        "parts": [],
        "per_message": None,
        "per_recipient": [],
        "returned_headers": None,
    }
    defects = list(msg.defects)
    for part in msg.walk():
        defects.extend(part.defects)
    if defects:
        raise SystemExit("%s: defects %r" % (path, defects))
    if not msg.is_multipart():
        raise SystemExit("%s: not multipart" % path)
    for part in msg.get_payload():
        ctype = part.get_content_type()
        out["parts"].append(ctype)
        if ctype == "message/delivery-status":
            blocks = part.get_payload()
            out["per_message"] = fields(blocks[0])
            out["per_recipient"] = [fields(b) for b in blocks[1:]]
        elif ctype == "text/rfc822-headers":
            text = part.get_payload(decode=True).decode("utf-8", "replace")
            inner = email.message_from_string(text, policy=policy)
            out["returned_headers"] = fields(inner)
        elif ctype == "message/rfc822":
            inner = part.get_payload()[0]
            out["returned_headers"] = fields(inner)
            out["returned_body"] = inner.get_payload()
    return out


if __name__ == "__main__":
    print(json.dumps([describe(p) for p in sys.argv[1:]]))
