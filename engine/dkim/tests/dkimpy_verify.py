#!/usr/bin/env python3
"""Independent DKIM verifier for sluice-dkim's tests (dkimpy, not mail-auth).

Usage: dkimpy_verify.py MESSAGE_FILE DNS_NAME TXT_RECORD_FILE

Verifies every DKIM-Signature of the message with dkimpy, answering DNS
queries from the given record only (no network: any other name gets no
answer). Exit status: 0 all signatures verify, 1 a signature fails,
2 usage or environment error (dkimpy or pynacl missing).
"""
import os
import sys


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import dkim  # dkimpy
    except ImportError:
        print("dkimpy is missing: python3 -m pip install dkimpy pynacl", file=sys.stderr)
        return 2
    message_path, dns_name, txt_path = sys.argv[1:]
    with open(message_path, "rb") as f:
        message = f.read()
    with open(txt_path, "rb") as f:
        record = f.read().strip()
    wanted = dns_name.lower().rstrip(".").encode()
    asked = []

    def dnsfunc(name, timeout=5):
        asked.append(name)
        if isinstance(name, str):
            name = name.encode()
        return record if name.lower().rstrip(b".") == wanted else None

    logger = None
    if os.environ.get("DKIMPY_DEBUG"):
        import logging

        logging.basicConfig(level=logging.DEBUG)
        logger = logging.getLogger("dkim")
    count = message.count(b"\nDKIM-Signature:") + message.startswith(b"DKIM-Signature:")
    if count == 0:
        print("no DKIM-Signature header", file=sys.stderr)
        return 1
    for index in range(count):
        try:
            ok = dkim.DKIM(message, logger=logger).verify(idx=index, dnsfunc=dnsfunc)
        except Exception as e:  # dkimpy raises on malformed input
            print(f"signature {index}: error {e!r} (asked {asked})", file=sys.stderr)
            return 1
        if not ok:
            print(f"signature {index}: FAIL (asked {asked})", file=sys.stderr)
            return 1
    print(f"{count} signature(s) verified by dkimpy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
