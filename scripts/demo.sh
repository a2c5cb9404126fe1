#!/usr/bin/env bash
# The main job: build the release binaries, start the bundled sink, inject a
# load with the harness, print throughput and latency, stop everything.
#   scripts/demo.sh [extra sluice-bench run options]
# Files (JSON report, .hlog, .hgrm, plots) go to ./demo-out/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --bins --locked
OUT=${OUT:-demo-out}
mkdir -p "$OUT"
PORT=${PORT:-2526}
SINK_PID=""
cleanup() { [ -n "$SINK_PID" ] && kill -TERM "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null; true; }
trap cleanup EXIT INT TERM

target/release/sluice-sink --listen 127.0.0.1:"$PORT" --summary "$OUT/sink.json" \
    --summary-interval 1s --stats-interval 0 &
SINK_PID=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.05; done

target/release/sluice-bench run --target 127.0.0.1:"$PORT" \
    --messages "${MESSAGES:-500000}" --connections 16 --size 2k --domains 1000 \
    --domain-shape zipf:1.0 --sink-summary "$OUT/sink.json" --pids "$SINK_PID" \
    --json "$OUT/report.json" --hlog "$OUT/inject.hlog" --hgrm "$OUT/inject.hgrm" \
    --plot "$OUT" "$@"
echo "files: $OUT/ (report.json, inject.hlog, inject.hgrm, plots)"
