#!/usr/bin/env bash
# DKIM signing cost end to end, next to the raw signing rate of the same keys
# measured in the same run:
#   sluice-bench --SMTP--> sluice (1 shard on CPU 0, fdatasync spool,
#   every message signed at injection) --SMTP--> sluice-sink
# for three modes: no DKIM, RSA-2048, Ed25519; ROUNDS rounds, each round
# measuring the raw rates first (`sign_rate`, pinned to CPU 0, engine not
# running), then one engine run per mode. Harness and sink run on CPU 1.
# Load: 2 KB messages, 1 recipient, 1,000 Zipf(1.1) domains; every message
# is signed through `default_domain` (the harness's From domain has no key).
# Reports per run: delivered msg/s (first injection to last arrival at the
# sink), engine CPU µs per message and messages per engine CPU-second; then
# medians per mode and signed delivery as a share of the raw signing rate.
#
# usage: engine/bench/dkim.sh [ROUNDS] [N_UNSIGNED_ED25519] [N_RSA]
#   defaults: 3 rounds, 100000 messages (none, Ed25519), 20000 (RSA)
# env: OUT=dir for reports (default a temp dir); BIN=target/release;
#      CONNECTIONS=32; SIGN_SECONDS=3 (raw measurement per key);
#      SPOOL_EXTRA='key = value' lines added to the engine's [spool] table
# Build first: cargo build --release --bins && \
#              cargo build --release -p sluice-dkim --example sign_rate
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
ROUNDS=${1:-3}
N_FAST=${2:-100000}
N_RSA=${3:-20000}
CONNECTIONS=${CONNECTIONS:-32}
SIGN_SECONDS=${SIGN_SECONDS:-3}
OUT=${OUT:-$(mktemp -d)}
IN_PORT=${IN_PORT:-2725}
SINK_PORT=${SINK_PORT:-2726}
mkdir -p "$OUT"
for b in sluice sluice-sink sluice-bench examples/sign_rate; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: see the build line in $0" >&2; exit 2; }
done
command -v openssl >/dev/null || { echo "openssl CLI missing (scripts/setup.sh)" >&2; exit 2; }

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT INT TERM

# Keys: mode 0600, as the engine requires.
KEYS="$OUT/keys"; mkdir -p "$KEYS"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEYS/rsa.pem" 2>/dev/null
openssl genpkey -algorithm ed25519 -out "$KEYS/ed25519.pem" 2>/dev/null
chmod 600 "$KEYS"/*.pem

RESULTS="$OUT/results.txt"; : >"$RESULTS"

run_engine() { # mode round messages
  local mode=$1 round=$2 n=$3 dir="$OUT/$1-$2"
  mkdir -p "$dir/capture"
  taskset -c 1 "$BIN/sluice-sink" --listen "127.0.0.1:$SINK_PORT" --cores 1 \
    --summary "$dir/sink.json" --summary-interval 200ms --stats-interval 0 \
    --capture "$dir/capture" --capture-max 3 >"$dir/sink.log" 2>&1 &
  PIDS+=("$!")
  local dkim=""
  if [ "$mode" != none ]; then
    dkim="[dkim]
default_domain = \"bench.example\"
[dkim.domains.\"bench.example\"]
selector = \"b1\"
key_file = \"$KEYS/$mode.pem\""
  fi
  cat >"$dir/sluice.toml" <<TOML
hostname = "sluice.bench"
cores = [0]
[inject]
listen = "127.0.0.1:$IN_PORT"
message_size_max = "1MiB"
[spool]
dir = "$dir/spool"
durability = "fdatasync"
${SPOOL_EXTRA:-}
[delivery]
log_dir = "$dir/log"
[[route]]
pattern = "*"
hosts = ["127.0.0.1:$SINK_PORT"]
$dkim
TOML
  "$BIN/sluice" run --config "$dir/sluice.toml" >"$dir/sluice.log" 2>&1 &
  local engine=$!; PIDS+=("$engine")
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$IN_PORT) 2>/dev/null && break; sleep 0.1
  done
  for _ in $(seq 1 100); do [ -s "$dir/sink.json" ] && break; sleep 0.1; done
  sleep 0.5
  local u0 s0 u1 s1 t0 t1
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$engine/stat")
  t0=$(date +%s.%N)
  taskset -c 1 "$BIN/sluice-bench" run --target "127.0.0.1:$IN_PORT" --messages "$n" \
    --connections "$CONNECTIONS" --size 2k --recipients 1 --domains 1000 \
    --domain-shape zipf:1.1 --domain-suffix bench.test \
    --sink-summary "$dir/sink.json" --sink-wait 300s \
    --json "$dir/sluice-bench.json" --progress none >"$dir/bench.log" 2>&1 || true
  t1=$(date +%s.%N)
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$engine/stat")
  cleanup
  # Every captured message must carry exactly one signature in signed modes.
  local sigs
  sigs=$(cat "$dir"/capture/*.eml 2>/dev/null | grep -c '^DKIM-Signature:' || true)
  python3 - "$dir" "$mode" "$round" "$u1" "$u0" "$s1" "$s0" "$(getconf CLK_TCK)" "$t0" "$t1" "$sigs" >>"$RESULTS" <<'PY'
import json, sys
d, mode, rnd = sys.argv[1:4]
u1, u0, s1, s0, tick = map(int, sys.argv[4:9])
t0, t1 = map(float, sys.argv[9:11])
sigs = int(sys.argv[11])
r = json.load(open(f"{d}/sluice-bench.json"))
delivered = r.get("delivered") or 0
cpu = ((u1 - u0) + (s1 - s0)) / tick
wall = t1 - t0
print(f"engine mode={mode} round={rnd} delivered={delivered} wall_s={wall:.2f} "
      f"rate={delivered / wall:.0f} cpu_us={cpu * 1e6 / max(delivered, 1):.1f} "
      f"per_cpu_s={delivered / cpu if cpu else 0:.0f} captured_signatures={sigs}")
PY
  tail -1 "$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
  taskset -c 0 "$BIN/examples/sign_rate" "$SIGN_SECONDS" "$KEYS/rsa.pem" "$KEYS/ed25519.pem" \
    | sed "s/^/raw round=$round /" | tee -a "$RESULTS"
  run_engine none "$round" "$N_FAST"
  run_engine ed25519 "$round" "$N_FAST"
  run_engine rsa "$round" "$N_RSA"
done

python3 - "$RESULTS" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=(\S+)", l)) for l in open(sys.argv[1])]
def med(xs): return statistics.median(float(x) for x in xs)
raw = {}
for alg, name in (("rsa-sha256", "rsa"), ("ed25519-sha256", "ed25519")):
    rr = [r for r in rows if r.get("alg") == alg]
    raw[name] = (med(r["raw_per_cpu_s"] for r in rr), med(r["signer_per_cpu_s"] for r in rr))
print()
print("Per core = per CPU-second (engine: utime+stime of the sluice process; raw: the signing thread's CPU time).")
print("| mode | delivered msg/s (wall) | engine µs/msg | msgs per engine CPU-s | raw key op per CPU-s | full Signer per CPU-s | engine ÷ raw key op | engine ÷ full Signer | signing added µs/msg |")
print("|---|---|---|---|---|---|---|---|---|")
base = None
for mode in ("none", "ed25519", "rsa"):
    er = [r for r in rows if r.get("mode") == mode]
    if not er: continue
    rate, cpu, per = med(r["rate"] for r in er), med(r["cpu_us"] for r in er), med(r["per_cpu_s"] for r in er)
    if mode == "none":
        base = cpu
    if mode in raw:
        k, s = raw[mode]
        added = f"{cpu - base:.1f} (Signer alone {1e6 / s:.1f})" if base is not None else "–"
        print(f"| {mode} | {rate:,.0f} | {cpu:.1f} | {per:,.0f} | {k:,.0f} | {s:,.0f} | {per / k:.0%} | {per / s:.0%} | {added} |")
    else:
        print(f"| {mode} | {rate:,.0f} | {cpu:.1f} | {per:,.0f} | – | – | – | – | – |")
print(f"(medians of {len([r for r in rows if r.get('mode') == 'rsa'])} runs; raw lines and runs in {sys.argv[1]})")
PY
echo "reports in $OUT"
