#!/usr/bin/env python3
"""A scripted DNS server (Python dnslib) for tests/tests/mx.rs: serves a
zone given as JSON on 127.0.0.1, UDP and TCP on one port.

Usage: mx_dns.py ZONE.json
ZONE.json: {"records": [[name, type, ttl, value...]...], "servfail": [names]}
  type MX: value is preference, exchange ("." for a null MX)
  type A / AAAA: value is the address
Names not in the zone get NXDOMAIN with an SOA; names listed in
"servfail" get SERVFAIL. Prints "PORT <n>" once listening and serves until
stdin closes (the test holds the pipe, so the server dies with the test).
"""

import json
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


def serve_udp(sock, zone, servfail):
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            sock.sendto(answer(data, zone, servfail), peer)
        except Exception as e:  # a malformed query: ignore it
            print(f"udp: {e}", file=sys.stderr)


def serve_tcp(listener, zone, servfail):
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
            out = answer(data, zone, servfail)
            conn.sendall(len(out).to_bytes(2, "big") + out)
        except Exception as e:
            print(f"tcp: {e}", file=sys.stderr)
        finally:
            conn.close()


def main():
    zone, servfail = load(sys.argv[1])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", port))
    tcp.listen(16)
    for target, sock in ((serve_udp, udp), (serve_tcp, tcp)):
        threading.Thread(target=target, args=(sock, zone, servfail), daemon=True).start()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
