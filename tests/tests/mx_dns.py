#!/usr/bin/env python3
"""A scripted DNS server (Python dnslib) for tests/tests/mx.rs: serves a
zone given as JSON on 127.0.0.1, UDP and TCP on one port.

Usage: mx_dns.py ZONE.json [QUERY_LOG]
ZONE.json: {"records": [[name, type, ttl, value...]...], "servfail": [names]}
  type MX: value is preference, exchange ("." for a null MX)
  type A / AAAA: value is the address
Names not in the zone get NXDOMAIN with an SOA; names listed in
"servfail" get SERVFAIL. The zone file is read again whenever it changes
(tests rewrite it to change an answer). With QUERY_LOG, every question
is appended to that file as "name TYPE" before it is answered. Prints
"PORT <n>" once listening and serves until stdin closes (the test holds
the pipe, so the server dies with the test).
"""

import json
import os
import socket
import sys
import threading

from dnslib import AAAA, MX, QTYPE, RCODE, RR, SOA, A, DNSRecord

SOA_RR = RR("test.", QTYPE.SOA, ttl=60,
            rdata=SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, 30)))


def load(path):
    with open(path) as f:
        spec = json.load(f)
    zone = {}
    for name, rtype, ttl, *value in spec.get("records", []):
        if rtype == "MX":
            rdata = MX(value[1], value[0])
        elif rtype == "A":
            rdata = A(value[0])
        elif rtype == "AAAA":
            rdata = AAAA(value[0])
        else:
            raise SystemExit(f"unsupported type {rtype}")
        key = name.lower().rstrip(".")
        zone.setdefault(key, []).append(RR(name, getattr(QTYPE, rtype), ttl=ttl, rdata=rdata))
    servfail = {n.lower().rstrip(".") for n in spec.get("servfail", [])}
    return zone, servfail


class Zone:
    """The zone file, read again when its modification time changes."""

    def __init__(self, path, log):
        self.path = path
        self.log = log
        self.lock = threading.Lock()
        self.stamp = None
        self.zone, self.servfail = {}, set()

    def current(self):
        with self.lock:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns)
            if stamp != self.stamp:
                self.zone, self.servfail = load(self.path)
                self.stamp = stamp
            return self.zone, self.servfail

    def answer(self, data):
        zone, servfail = self.current()
        if self.log:
            q = DNSRecord.parse(data).q
            with self.lock, open(self.log, "a") as f:
                f.write(f"{str(q.qname).lower().rstrip('.')} {QTYPE[q.qtype]}\n")
        return answer(data, zone, servfail)


def answer(data, zone, servfail):
    request = DNSRecord.parse(data)
    reply = request.reply()
    q = request.q
    name = str(q.qname).lower().rstrip(".")
    if name in servfail:
        reply.header.rcode = RCODE.SERVFAIL
    elif name not in zone:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(SOA_RR)
    else:
        records = [rr for rr in zone[name] if rr.rtype == q.qtype]
        for rr in records:
            reply.add_answer(rr)
        if not records:
            reply.add_auth(SOA_RR)  # NODATA
    return reply.pack()


def serve_udp(sock, zone):
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            sock.sendto(zone.answer(data), peer)
        except Exception as e:  # a malformed query: ignore it
            print(f"udp: {e}", file=sys.stderr)


def serve_tcp(listener, zone):
    while True:
        conn, _ = listener.accept()
        try:
            size = int.from_bytes(conn.recv(2), "big")
            data = b""
            while len(data) < size:
                chunk = conn.recv(size - len(data))
                if not chunk:
                    break
                data += chunk
            out = zone.answer(data)
            conn.sendall(len(out).to_bytes(2, "big") + out)
        except Exception as e:
            print(f"tcp: {e}", file=sys.stderr)
        finally:
            conn.close()


def main():
    zone = Zone(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    zone.current()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", port))
    tcp.listen(16)
    for target, sock in ((serve_udp, udp), (serve_tcp, tcp)):
        threading.Thread(target=target, args=(sock, zone), daemon=True).start()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
