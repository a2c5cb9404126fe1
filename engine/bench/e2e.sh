#!/usr/bin/env bash
# End-to-end benchmark of Sluice, side by side with Postfix, on this machine:
#   sluice-bench --SMTP--> sluice (durable spool) --SMTP--> sluice-sink
#   and the same load through Postfix as a relay to the same kind of sink
#   (../shared/peers/postfix-relay.sh).
# Load: 2 KB messages, 1 recipient, 1,000 recipient domains (Zipf s=1.1).
# Reports: messages/hour delivered at the sink (not merely accepted), engine
# CPU µs per delivered message (utime+stime of the sluice process / messages
# delivered), injection 250 latency p50/p99, injection-to-arrival p50/p99.
#
# usage: engine/bench/e2e.sh [MESSAGES] [SHARDS]
#   MESSAGES  messages per run (default 200000)
#   SHARDS    engine shards, cores 0..SHARDS-1 (default 1)
# env: CONNECTIONS=32 injection connections; WINDOW=16 transactions in
#      flight per connection (sluice-bench --window; with 8, 256 messages in
#      flight wait ~5 ms for their group commit and the CPUs idle ~40% of
#      the time, so the closed loop measured the harness, not the engine:
#      BENCHMARKS.md, session 5); POSTFIX=1 also run Postfix;
#      TLS=opportunistic for STARTTLS to the sink (default: disabled);
#      RATE=R open loop at R msgs/s for DURATION (default 30s) instead of
#      MESSAGES as fast as replies allow (engine/bench/half-rate.sh uses it);
#      TICK_Q= open-loop wake-up quantum of the harness (its --tick, 0.5ms);
#      BENCH_EXTRA='--flag value ...' more sluice-bench run arguments;
#      DELIVERY_EXTRA='key = value' lines added to its [delivery] table;
#      SPOOL_EXTRA='key = value' lines added to the engine's [spool] table;
#      POSTFIX_MESSAGES= messages of the Postfix run (default: MESSAGES,
#      at most 20000), the ratio of the two rates is printed last;
#      SINK_CPUS=, BENCH_CPUS= CPU lists (taskset -c) for the sink and the
#      harness; by default the sink's shards take the first CPUs (the
#      engine's) and the harness runs anywhere;
#      PERF=1 record a perf profile of the engine (engine-perf.txt);
#      OUT=dir for reports (default a temp dir, printed); BIN=target/release
# Build first: cargo build --release --bins
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
N=${1:-200000}
SHARDS=${2:-1}
CONNECTIONS=${CONNECTIONS:-32}
WINDOW=${WINDOW:-16}
OUT=${OUT:-$(mktemp -d)}
IN_PORT=${IN_PORT:-2625}
SINK_PORT=${SINK_PORT:-2626}
mkdir -p "$OUT"
for b in sluice sluice-sink sluice-bench; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run cargo build --release --bins" >&2; exit 2; }
done

PIDS=()
# The sink rewrites its summary (272 KB of JSON with 1,000 domains, 2-3 ms
# of CPU) this often; the closed-loop figure's wall time ends when the bench
# sees the last arrival there. Open loop needs no such precision, and less
# of the instrument in the latency it measures.
SUMMARY_EVERY=200ms
[ -n "${RATE:-}" ] && SUMMARY_EVERY=1s
# Start with nothing dirty from an earlier run: the kernel would write that
# out in the middle of this one, in front of its group commits.
sync
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

CORES=$(seq -s, 0 $((SHARDS - 1)))
${SINK_CPUS:+taskset -c "$SINK_CPUS"} "$BIN/sluice-sink" --listen "127.0.0.1:$SINK_PORT" --cores "$SHARDS" \
  --summary "$OUT/sink.json" --summary-interval "$SUMMARY_EVERY" --stats-interval 0 \
  >"$OUT/sink.log" 2>&1 &
SINK_PID=$!; PIDS+=("$SINK_PID")

cat >"$OUT/sluice.toml" <<TOML
hostname = "sluice.bench"
cores = [$CORES]
[inject]
listen = "127.0.0.1:$IN_PORT"
message_size_max = "1MiB"
[spool]
dir = "$OUT/spool"
durability = "fdatasync"
${SPOOL_EXTRA:-}
[delivery]
log_dir = "$OUT/log"
# Plaintext by default, like the Postfix relay (smtp_tls_security_level =
# none) and the figures in BENCHMARKS.md; TLS=opportunistic measures the
# engine's default (the sink offers STARTTLS).
tls = "${TLS:-disabled}"
${DELIVERY_EXTRA:-}
[[route]]
pattern = "*"
hosts = ["127.0.0.1:$SINK_PORT"]
TOML
"$BIN/sluice" run --config "$OUT/sluice.toml" >"$OUT/sluice.log" 2>&1 &
ENGINE_PID=$!; PIDS+=("$ENGINE_PID")
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$IN_PORT) 2>/dev/null && break; sleep 0.1
done
for _ in $(seq 1 100); do [ -s "$OUT/sink.json" ] && break; sleep 0.1; done
sleep 0.5

if [ "${PERF:-0}" = 1 ]; then
  perf record -F 999 -g -p "$ENGINE_PID" -o "$OUT/perf.data" >/dev/null 2>&1 &
  PERF_PID=$!
fi
if [ -n "${RATE:-}" ]; then
  LOAD=(--rate "$RATE" --duration "${DURATION:-30s}" ${TICK_Q:+--tick "$TICK_Q"})
else
  LOAD=(--messages "$N")
fi
read -r U0 S0 < <(awk '{print $14, $15}' "/proc/$ENGINE_PID/stat")
T0=$(date +%s.%N)
${BENCH_CPUS:+taskset -c "$BENCH_CPUS"} "$BIN/sluice-bench" run --target "127.0.0.1:$IN_PORT" "${LOAD[@]}" \
  --connections "$CONNECTIONS" --window "$WINDOW" --size 2k --recipients 1 --domains 1000 \
  --domain-shape zipf:1.1 --domain-suffix bench.test \
  --sink-summary "$OUT/sink.json" --sink-wait 120s \
  --json "$OUT/sluice-bench.json" --progress none ${BENCH_EXTRA:-} >"$OUT/bench.log" 2>&1 || true
read -r U1 S1 < <(awk '{print $14, $15}' "/proc/$ENGINE_PID/stat")
T1=$(date +%s.%N)
if [ "${PERF:-0}" = 1 ]; then
  kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true
  perf report -i "$OUT/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null \
    | grep -v '^$' | head -80 >"$OUT/engine-perf.txt" || true
fi
TICK=$(getconf CLK_TCK)
{
python3 - "$OUT" "$U1" "$U0" "$S1" "$S0" "$TICK" "$T0" "$T1" <<'PY'
import json, sys
out = sys.argv[1]
u1, u0, s1, s0, tick = map(int, sys.argv[2:7])
t0, t1 = map(float, sys.argv[7:9])
r = json.load(open(f"{out}/sluice-bench.json"))
def get(*keys):
    v = r
    for k in keys:
        if not isinstance(v, dict) or k not in v: return None
        v = v[k]
    return v
cpu_s = ((u1 - u0) + (s1 - s0)) / tick
delivered = get("delivered") or 0
# The bench returns once the sink counted every message (--sink-wait), so
# its wall time is injection start to last arrival.
wall = t1 - t0
print(f"accepted {r.get('accepted')} of {r.get('messages')}, delivered at the sink {delivered} "
      f"in {wall:.1f} s = {delivered / wall * 3600 / 1e6:.2f} M msgs/hour delivered")
lat = r.get("inject_latency_ms") or {}
print(f"injection 250 latency ms: p50 {lat.get('p50')} p99 {lat.get('p99')}")
print(f"injection-to-arrival latency ms (sink): {json.dumps(r.get('e2e_latency_ms'))}")
print(f"engine CPU: {cpu_s:.2f} s for {delivered} delivered = "
      f"{(cpu_s * 1e6 / delivered) if delivered else float('nan'):.1f} µs/message")
PY
} | tee "$OUT/summary.txt"
echo "reports in $OUT"

if [ "${POSTFIX:-0}" = 1 ]; then
  cleanup; PIDS=()
  # Postfix delivers ~1,000 msgs/s here: its run is capped (POSTFIX_MESSAGES)
  # so that the pair finishes in minutes; its rate is steady after a few
  # seconds.
  PF_N=${POSTFIX_MESSAGES:-$(( N < 20000 ? N : 20000 ))}
  echo "--- Postfix relay, same load size (smtp-source 2000 bytes, 1 rcpt, $PF_N messages) ---"
  # (POSTFIX names the postfix binary in there: not our POSTFIX=1.)
  env -u POSTFIX "$ROOT/../shared/peers/postfix-relay.sh" "$PF_N" 2000 1 | tee "$OUT/postfix.txt"
  python3 - "$OUT" <<'PY'
import re, sys
out = sys.argv[1]
s = re.search(r"= ([0-9.]+) M msgs/hour delivered", open(f"{out}/summary.txt").read())
p = re.search(r"^postfix-relay .*? msg_per_s=([0-9.]+)", open(f"{out}/postfix.txt").read(), re.M)
if s and p and float(p.group(1)) > 0:
    sluice = float(s.group(1)) * 1e6 / 3600
    print(f"ratio: Sluice {sluice:.0f} msgs/s delivered / Postfix {float(p.group(1)):.0f} msgs/s "
          f"= {sluice / float(p.group(1)):.1f}x (goal 50x)")
PY
fi
