#!/usr/bin/env python3
"""A small scripted authoritative-and-recursive-looking DNS server for the
sluice-dns integration tests. Loopback only; UDP and TCP on one port.

Usage: dns_server.py [--port N]   (0 = pick a free port)
Prints "PORT <n>" on stdout once both sockets listen, then serves until
stdin closes (the test holds the pipe; when the test process dies, the
server exits with it).

The zone is fixed below (all names under .test). Behaviours by name:
  servfail.test      SERVFAIL to every query
  refused.test       REFUSED to every query
  tc.test            over UDP always a TC=1 empty answer; full answer on TCP
  slow*.test         answered after 300 ms (dedup and concurrency tests)
  anything else not in the zone: NXDOMAIN with the zone SOA
UDP answers larger than the client's EDNS payload (512 without EDNS) are
sent truncated (TC=1), as a real server does, except for oversize.test,
which is always sent whole (over 4096 bytes).

Control queries (TXT, class IN):
  <name>.count.control       number of queries seen for <name> (any type)
  <name>.tcpcount.control    the same, over TCP only
  maxinflight.control        highest number of queries being handled at once
"""

import argparse
import socket
import sys
import threading
import time

from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord

SOA_RR = RR(
    "test.",
    QTYPE.SOA,
    ttl=60,
    rdata=SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, 30)),
)

ZONE = {}


def add(name, rtype, rdata, ttl=300):
    ZONE.setdefault(name.lower().rstrip("."), []).append(
        RR(name, getattr(QTYPE, rtype), ttl=ttl, rdata=rdata)
    )


# Two MX hosts with loopback addresses (IPv4 and IPv6).
add("mx.test", "MX", MX("mx1.mx.test.", 10))
add("mx.test", "MX", MX("mx2.mx.test.", 20))
add("mx1.mx.test", "A", A("127.0.0.1"))
add("mx1.mx.test", "AAAA", AAAA("::1"))
add("mx2.mx.test", "A", A("127.0.0.2"))
# Four hosts of equal preference.
for h in "abcd":
    add("shuffle.test", "MX", MX(f"{h}.shuffle.test.", 10))
    add(f"{h}.shuffle.test", "A", A("127.0.0.1"))
# No MX at all: the implicit MX is the domain itself.
add("plain.test", "A", A("127.0.0.3"))
add("plain.test", "TXT", TXT("v=spf1 -all"))
# Null MX (RFC 7505), with an A record that must not be used.
add("nullmx.test", "MX", MX(".", 0))
add("nullmx.test", "A", A("127.0.0.1"))
# A public (documentation range) address: allowed without any override.
add("public.test", "MX", MX("mx.public.test.", 10))
add("mx.public.test", "A", A("192.0.2.10"))
# Short TTL for cache expiry tests.
add("ttl.test", "A", A("127.0.0.4"), ttl=5)
# A CNAME to mx.test: the server chases it inside the zone.
add("alias.test", "CNAME", CNAME("mx.test."))
# Truncated over UDP, complete over TCP.
add("tc.test", "MX", MX("mx1.mx.test.", 10))
# An MX set too large for a 1232-byte UDP answer.
for i in range(60):
    add("big.test", "MX", MX(f"mail-exchanger-number-{i:02d}.big-provider-network.test.", 10))
add("mail-exchanger-number-00.big-provider-network.test", "A", A("127.0.0.5"))
# Sent whole over UDP whatever the client advertised (a misbehaving
# server): over 4096 bytes, which the resolver must treat as truncated.
for i in range(150):
    add("oversize.test", "MX", MX(f"mail-exchanger-number-{i:03d}.oversize-provider.test.", 10))
# Slow names.
add("slow.test", "A", A("127.0.0.6"))
for i in range(8):
    add(f"slow{i}.test", "A", A("127.0.0.6"))

LOCK = threading.Lock()
COUNTS = {}
TCP_COUNTS = {}
INFLIGHT = [0, 0]  # current, max


def resolve(qname, qtype):
    """Returns (rcode, answers, authorities) like a recursive server would,
    following CNAMEs inside the zone."""
    answers = []
    name = qname
    for _ in range(8):
        records = ZONE.get(name)
        if records is None:
            if answers:
                return RCODE.NXDOMAIN, answers, [SOA_RR]
            return RCODE.NXDOMAIN, [], [SOA_RR]
        matching = [r for r in records if r.rtype == qtype]
        if matching:
            return RCODE.NOERROR, answers + matching, []
        cnames = [r for r in records if r.rtype == QTYPE.CNAME]
        if cnames and qtype != QTYPE.CNAME:
            answers.append(cnames[0])
            name = str(cnames[0].rdata.label).lower().rstrip(".")
            continue
        return RCODE.NOERROR, answers, [SOA_RR]
    return RCODE.SERVFAIL, [], []


def answer(data, tcp):
    request = DNSRecord.parse(data)
    reply = request.reply()
    q = request.q
    qname = str(q.qname).lower().rstrip(".")
    with LOCK:
        COUNTS[qname] = COUNTS.get(qname, 0) + 1
        if tcp:
            TCP_COUNTS[qname] = TCP_COUNTS.get(qname, 0) + 1
    if qname.endswith(".control") and q.qtype == QTYPE.TXT:
        with LOCK:
            if qname == "maxinflight.control":
                value = INFLIGHT[1]
            elif qname.endswith(".tcpcount.control"):
                value = TCP_COUNTS.get(qname[: -len(".tcpcount.control")], 0)
            else:
                value = COUNTS.get(qname[: -len(".count.control")], 0)
        reply.add_answer(RR(q.qname, QTYPE.TXT, ttl=0, rdata=TXT(str(value))))
        return reply.pack()
    if qname.startswith("slow"):
        time.sleep(0.3)
    if qname == "servfail.test":
        reply.header.rcode = RCODE.SERVFAIL
        return reply.pack()
    if qname == "refused.test":
        reply.header.rcode = RCODE.REFUSED
        return reply.pack()
    if qname == "tc.test" and not tcp:
        reply.header.tc = 1
        return reply.pack()
    rcode, answers, authorities = resolve(qname, q.qtype)
    reply.header.rcode = rcode
    for rr in answers:
        reply.add_answer(rr)
    for rr in authorities:
        reply.add_auth(rr)
    packed = reply.pack()
    if not tcp and qname != "oversize.test":
        limit = 512
        for ar in request.ar:
            if ar.rtype == QTYPE.OPT:
                limit = max(512, ar.rclass)
        if len(packed) > limit:
            truncated = request.reply()
            truncated.header.tc = 1
            packed = truncated.pack()
    return packed


def tracked(fn, *args):
    with LOCK:
        INFLIGHT[0] += 1
        INFLIGHT[1] = max(INFLIGHT[1], INFLIGHT[0])
    try:
        return fn(*args)
    finally:
        with LOCK:
            INFLIGHT[0] -= 1


def serve_udp(sock):
    while True:
        data, peer = sock.recvfrom(65535)

        def handle(data=data, peer=peer):
            try:
                sock.sendto(tracked(answer, data, False), peer)
            except Exception as e:  # a bad query must not stop the server
                print(f"udp error: {e}", file=sys.stderr)

        threading.Thread(target=handle, daemon=True).start()


def serve_tcp_conn(conn):
    with conn:
        try:
            while True:
                head = recv_exact(conn, 2)
                if head is None:
                    return
                data = recv_exact(conn, int.from_bytes(head, "big"))
                if data is None:
                    return
                out = tracked(answer, data, True)
                conn.sendall(len(out).to_bytes(2, "big") + out)
        except Exception as e:
            print(f"tcp error: {e}", file=sys.stderr)


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def serve_tcp(sock):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn,), daemon=True).start()


def bind(port):
    """Binds UDP and TCP on the same loopback port; retries when a random
    UDP port is taken for TCP."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            if port != 0:
                raise
            continue
        tcp.listen(64)
        return udp, tcp
    raise RuntimeError("no free port for UDP and TCP")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    udp, tcp = bind(args.port)
    threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    print(f"PORT {udp.getsockname()[1]}", flush=True)
    # Serve until the parent closes our stdin (or dies).
    sys.stdin.read()


if __name__ == "__main__":
    main()
