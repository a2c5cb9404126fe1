#!/usr/bin/env bash
# Sluice and Postfix, the same load into the same sink, side by side:
#   sluice-bench --SMTP--> sluice (durable fdatasync spool) --SMTP--> sluice-sink
#   sluice-bench --SMTP--> postfix smtpd -> queue (fsync) -> qmgr -> smtp --> same sluice-sink
# with `sluice-bench compare` (same seed, same messages, one after the other),
# delivered counts read as deltas of the one sink's summary, and CPU per
# message of the engine process and of the whole Postfix process tree
# (--pid-tree on the master: smtpd, cleanup, qmgr, smtp, reaped ones too).
# The Postfix instance is a throw-away one in a temp dir, configured as in
# ../shared/peers/postfix-relay.sh; /etc/postfix is neither used nor started.
#
# usage: bench-harness/bench/compare-postfix.sh [MESSAGES] [CONNECTIONS]
#   MESSAGES     per target (default 30000); CONNECTIONS (default 16)
# env: OUT=dir (default a temp dir, printed); BIN=target/release;
#      SLUICE_PORT=2725 POSTFIX_PORT=2726 SINK_PORT=2727; CONC=100 (Postfix
#      destination concurrency)
# Needs root (Postfix), /usr/sbin/postfix, and: cargo build --release --bins
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
N=${1:-30000}
CONNECTIONS=${2:-16}
OUT=${OUT:-$(mktemp -d)}
SLUICE_PORT=${SLUICE_PORT:-2725}
POSTFIX_PORT=${POSTFIX_PORT:-2726}
SINK_PORT=${SINK_PORT:-2727}
CONC=${CONC:-100}
POSTFIX=${POSTFIX:-/usr/sbin/postfix}
mkdir -p "$OUT"
for b in sluice sluice-sink sluice-bench; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run cargo build --release --bins" >&2; exit 2; }
done
[ -x "$POSTFIX" ] || { echo "missing $POSTFIX" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "must run as root (starts a private postfix instance)" >&2; exit 2; }

wait_port() {
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "127.0.0.1:$1 did not open" >&2; return 1
}
stop_pid() {
  [ -n "${1:-}" ] || return 0
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true
}
W=$(mktemp -d); chmod 755 "$W"
SINK_PID=""; ENGINE_PID=""; MASTER_PID=""
cleanup() {
  if [ -n "$MASTER_PID" ]; then "$POSTFIX" -c "$W/etc" stop >/dev/null 2>&1 || true; stop_pid "$MASTER_PID"; fi
  stop_pid "$ENGINE_PID"; stop_pid "$SINK_PID"; rm -rf "$W"
}
trap cleanup EXIT INT TERM

"$BIN/sluice-sink" --listen "127.0.0.1:$SINK_PORT" --cores 1-1 --summary "$OUT/sink.json" \
  --summary-interval 200ms --stats-interval 0 >"$OUT/sink.log" 2>&1 &
SINK_PID=$!
wait_port "$SINK_PORT"
for _ in $(seq 1 100); do [ -s "$OUT/sink.json" ] && break; sleep 0.1; done

cat >"$OUT/sluice.toml" <<TOML
hostname = "sluice.bench.invalid"
cores = [0]
[inject]
listen = "127.0.0.1:$SLUICE_PORT"
[spool]
dir = "$W/spool"
durability = "fdatasync"
[delivery]
log_dir = "$W/sluice-log"
# Plaintext, like the Postfix relay (smtp_tls_security_level = none) and
# the figures in BENCHMARKS.md; the engine's default is opportunistic TLS.
tls = "disabled"
[[route]]
pattern = "*"
hosts = ["127.0.0.1:$SINK_PORT"]
TOML
"$BIN/sluice" run --config "$OUT/sluice.toml" >"$OUT/sluice.log" 2>&1 &
ENGINE_PID=$!
wait_port "$SLUICE_PORT"

mkdir -p "$W/etc" "$W/queue" "$W/data"; chown postfix:postfix "$W/data"
cat >"$W/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $W/queue
data_directory = $W/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.bench.invalid
mydomain = bench.invalid
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
biff = no
append_dot_mydomain = no
relayhost = [127.0.0.1]:$SINK_PORT
default_transport = smtp:[127.0.0.1]:$SINK_PORT
relay_transport = smtp:[127.0.0.1]:$SINK_PORT
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
default_process_limit = 250
default_destination_concurrency_limit = $CONC
smtp_destination_concurrency_limit = $CONC
relay_destination_concurrency_limit = $CONC
smtp_connection_cache_on_demand = yes
smtp_connection_cache_destinations = [127.0.0.1]:$SINK_PORT
maillog_file = $W/maillog
maillog_file_prefixes = $W
EOF
cat >"$W/etc/master.cf" <<EOF
127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
# postfix(1) reports errors only to syslog or a tty: run it under script(1).
script -eqc "$POSTFIX -c $W/etc start" /dev/null >"$OUT/postfix-start.log" 2>&1 \
  || { cat "$OUT/postfix-start.log" >&2; exit 1; }
for _ in $(seq 1 100); do [ -s "$W/queue/pid/master.pid" ] && break; sleep 0.1; done
MASTER_PID=$(tr -d ' \n' <"$W/queue/pid/master.pid")
wait_port "$POSTFIX_PORT"
sleep 1

echo "machine: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $N messages of 2 KB, 1 recipient, 1,000 Zipf domains, $CONNECTIONS connections"
"$BIN/sluice-bench" compare \
  --a "127.0.0.1:$SLUICE_PORT" --a-name sluice --a-pid "$ENGINE_PID" \
  --b "127.0.0.1:$POSTFIX_PORT" --b-name postfix --b-pid "$MASTER_PID" --pid-tree \
  --sink-summary "$OUT/sink.json" --sink-wait 900s --settle 5s \
  --messages "$N" --connections "$CONNECTIONS" --size 2k --recipients 1 \
  --domains 1000 --domain-shape zipf:1.1 --progress none \
  --json "$OUT/compare.json" | tee "$OUT/compare.txt"
echo "reports in $OUT"
