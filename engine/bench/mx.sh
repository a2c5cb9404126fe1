#!/usr/bin/env bash
# MX delivery against a static route, same load, back to back:
#   sluice-bench --SMTP--> sluice --SMTP--> sluice-sink (127.0.0.1)
# route: `[[route]] pattern = "*"` to the sink.
# mx:    no route; every recipient domain d{i}.bench.test has
#        `MX 10 mx.bench.test.` and mx.bench.test `A 127.0.0.1`, served by
#        tests/tests/mx_dns.py (Python dnslib) on loopback; `[dns]
#        allow_loopback`, `smtp_port` = the sink's port. All domains roll up
#        into one site, so connections are shared as with the route.
# Reports per mode: delivered at the sink, wall time from the first
# injection to the last arrival, engine CPU µs per delivered message.
#
# usage: engine/bench/mx.sh [MESSAGES] [DOMAINS]   (defaults 20000, 1000)
# Build first: cargo build --release --bins
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
N=${1:-20000}
DOMAINS=${2:-1000}
OUT=${OUT:-$(mktemp -d)}
IN_PORT=${IN_PORT:-2725}
SINK_PORT=${SINK_PORT:-2726}
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT INT TERM

python3 - "$OUT/zone.json" "$DOMAINS" <<'PY'
import json, sys
records = [[f"d{i}.bench.test", "MX", 300, 10, "mx.bench.test."] for i in range(int(sys.argv[2]) + 1)]
records.append(["mx.bench.test", "A", 300, "127.0.0.1"])
json.dump({"records": records}, open(sys.argv[1], "w"))
PY

run() {
  local mode=$1 dir="$OUT/$1"
  mkdir -p "$dir"
  "$BIN/sluice-sink" --listen "127.0.0.1:$SINK_PORT" --cores 1 \
    --summary "$dir/sink.json" --summary-interval 200ms --stats-interval 0 >"$dir/sink.log" 2>&1 &
  PIDS+=($!)
  local extra
  if [ "$mode" = mx ]; then
    sleep 1000000 | python3 "$ROOT/tests/tests/mx_dns.py" "$OUT/zone.json" >"$dir/dns.out" 2>"$dir/dns.err" &
    PIDS+=($!)
    for _ in $(seq 1 100); do grep -q PORT "$dir/dns.out" 2>/dev/null && break; sleep 0.1; done
    local dns_port; dns_port=$(awk '/PORT/ {print $2}' "$dir/dns.out")
    extra="[dns]
nameservers = [\"127.0.0.1:$dns_port\"]
timeout = \"1s\"
allow_loopback = true
smtp_port = $SINK_PORT"
  else
    extra="[[route]]
pattern = \"*\"
hosts = [\"127.0.0.1:$SINK_PORT\"]"
  fi
  cat >"$dir/sluice.toml" <<TOML
hostname = "sluice.bench"
cores = [0]
[inject]
listen = "127.0.0.1:$IN_PORT"
message_size_max = "1MiB"
[spool]
dir = "$dir/spool"
[delivery]
log_dir = "$dir/log"
$extra
TOML
  "$BIN/sluice" run --config "$dir/sluice.toml" >"$dir/sluice.log" 2>&1 &
  local engine=$!; PIDS+=($engine)
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$IN_PORT) 2>/dev/null && break; sleep 0.1; done
  for _ in $(seq 1 100); do [ -s "$dir/sink.json" ] && break; sleep 0.1; done
  read -r U0 S0 < <(awk '{print $14, $15}' "/proc/$engine/stat")
  local t0; t0=$(date +%s.%N)
  "$BIN/sluice-bench" run --target "127.0.0.1:$IN_PORT" --messages "$N" --connections 16 \
    --size 2k --recipients 1 --domains "$DOMAINS" --domain-shape zipf:1.1 --domain-suffix bench.test \
    --sink-summary "$dir/sink.json" --sink-wait 120s --json "$dir/bench.json" --progress none \
    >"$dir/bench.log" 2>&1 || true
  local t1; t1=$(date +%s.%N)
  read -r U1 S1 < <(awk '{print $14, $15}' "/proc/$engine/stat")
  python3 - "$mode" "$dir/bench.json" "$t0" "$t1" "$U0" "$S0" "$U1" "$S1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
mode, path = sys.argv[1], sys.argv[2]
t0, t1 = float(sys.argv[3]), float(sys.argv[4])
u0, s0, u1, s1, tick = map(int, sys.argv[5:10])
r = json.load(open(path))
d = r.get("delivered") or 0
cpu = ((u1 - u0) + (s1 - s0)) / tick
print(f"{mode:5}: delivered {d} of {r.get('messages')} in {t1 - t0:.1f} s "
      f"({d / (t1 - t0):.0f}/s); engine CPU {cpu:.2f} s = {cpu * 1e6 / d if d else float('nan'):.0f} us/message")
PY
  cleanup
}
run route
run mx
echo "reports in $OUT"
