#!/usr/bin/env bash
# sluice-bench vs Postfix smtp-source: the same load into the same sink, CPU per message.
#
# usage: bench-harness/bench/vs-smtp-source.sh [N] [SESSIONS] [REPS]
#   N         messages per run                 (default 100000)
#   SESSIONS  concurrent connections           (default "16 64")
#   REPS      runs per config, medians printed (default 3)
# env:
#   SINKS="smtp-sink sluice-sink"  which sinks to drive (sluice-sink only if built)
#   SIZE=2000        smtp-source -l payload bytes; sluice-bench gets SIZE+HDR total bytes
#   HDR=330          header bytes sluice-bench adds (its From/To/Date/Message-ID/X-Sluice-* lines)
#   CORES=1          sluice-bench executors (--cores); smtp-source is one process
#   WINDOW=8         sluice-bench transactions in flight per connection (PIPELINING)
#   PORT=2526        sink port on 127.0.0.1
#   BENCH_BIN=...    sluice-bench binary (default: target/release/sluice-bench, built if missing)
#
# Both generators are measured the same way: GNU time -v (user + system CPU of the
# whole process) divided by the messages the sink accepted; the sink's CPU comes
# from /proc/PID/stat. smtp-source never pipelines (man smtp-source, BUGS);
# sluice-bench pipelines whole transactions when the sink offers PIPELINING.
# Output: one '#' line per run, one summary line per (sink, generator, sessions).
# Needs: /usr/sbin/smtp-source and smtp-sink (bash ../shared/peers/install.sh as root).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS="$ROOT/../shared/peers"
. "$PEERS/lib.sh"
need "$SMTP_SINK"; need "$SMTP_SOURCE"; need "$TIME_BIN"

N=${1:-100000}
SESSIONS=${2:-"16 64"}
REPS=${3:-3}
SINKS=${SINKS:-"smtp-sink sluice-sink"}
SIZE=${SIZE:-2000}
HDR=${HDR:-330}
CORES=${CORES:-1}
WINDOW=${WINDOW:-8}
PORT=${PORT:-2526}
BENCH_BIN=${BENCH_BIN:-$ROOT/target/release/sluice-bench}
SLUICE_SINK_BIN=${SLUICE_SINK_BIN:-$ROOT/target/release/sluice-sink}

if [ ! -x "$BENCH_BIN" ]; then
  (cd "$ROOT" && cargo build --release -p sluice-bench) >&2
fi

WORK=$(mktemp -d)
SINK_PID=""
cleanup() { stop_pid "$SINK_PID"; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
port_free "$PORT" || { echo "127.0.0.1:$PORT already in use" >&2; exit 1; }

start_sink() {
  case $1 in
    smtp-sink)
      # -u nobody: required when started as root. Announces PIPELINING.
      "$SMTP_SINK" -u nobody -m 1024 127.0.0.1:"$PORT" 4096 >"$WORK/sink.log" 2>&1 &
      SINK_PID=$! ;;
    sluice-sink)
      "$SLUICE_SINK_BIN" --listen 127.0.0.1:"$PORT" --stats-interval 0 >"$WORK/sink.log" 2>&1 &
      SINK_PID=$! ;;
  esac
  wait_port "$PORT"
}

# run_one GEN SESS -> prints "secs gen_cpu_us sink_cpu_us rate"
run_one() {
  local gen=$1 sess=$2 rc=0 s0 s1 t0 t1
  s0=$(cpu_ticks "$SINK_PID"); t0=$(now)
  case $gen in
    smtp-source)
      "$TIME_BIN" -v -o "$WORK/time.txt" "$SMTP_SOURCE" -d -s "$sess" -m "$N" -l "$SIZE" \
        -M bench.invalid -f sender@bench.invalid -t rcpt@sink.invalid \
        127.0.0.1:"$PORT" >"$WORK/gen.log" 2>&1 || rc=$? ;;
    sluice-bench)
      "$TIME_BIN" -v -o "$WORK/time.txt" "$BENCH_BIN" run --target 127.0.0.1:"$PORT" \
        --connections "$sess" --messages "$N" --size $((SIZE + HDR)) --cores "$CORES" \
        --window "$WINDOW" --progress none --json "$WORK/report.json" \
        >"$WORK/gen.log" 2>&1 || rc=$? ;;
  esac
  t1=$(now); s1=$(cpu_ticks "$SINK_PID")
  if [ $rc -ne 0 ]; then
    echo "# FAILED $gen sess=$sess rc=$rc: $(tail -3 "$WORK/gen.log" | tr '\n' ' ')" >&2
    return 1
  fi
  local su ss
  su=$(awk -F': ' '/User time/{print $2}' "$WORK/time.txt")
  ss=$(awk -F': ' '/System time/{print $2}' "$WORK/time.txt")
  awk -v t0="$t0" -v t1="$t1" -v n="$N" -v su="$su" -v ss="$ss" -v k="$((s1 - s0))" -v hz="$CLK_TCK" \
    'BEGIN{ d=t1-t0; printf "%.3f %.2f %.2f %.0f\n", d, (su+ss)*1e6/n, k/hz*1e6/n, n/d }'
}

echo "# machine: $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# N=$N size=$SIZE (+$HDR header bytes for sluice-bench) reps=$REPS cores=$CORES window=$WINDOW"
for sink in $SINKS; do
  if [ "$sink" = sluice-sink ] && [ ! -x "$SLUICE_SINK_BIN" ]; then
    echo "# skip sluice-sink: $SLUICE_SINK_BIN not built (cargo build --release -p sluice-sink)"
    continue
  fi
  start_sink "$sink"
  for sess in $SESSIONS; do
    declare -A med=()
    for gen in smtp-source sluice-bench; do
      cpus=""; rates=""; sinks=""
      for rep in $(seq 1 "$REPS"); do
        if out=$(run_one "$gen" "$sess"); then
          read -r secs gcpu scpu rate <<<"$out"
          echo "# run sink=$sink gen=$gen sess=$sess rep=$rep secs=$secs msg_per_s=$rate gen_cpu_us_per_msg=$gcpu sink_cpu_us_per_msg=$scpu"
          cpus="$cpus $gcpu"; rates="$rates $rate"; sinks="$sinks $scpu"
        fi
      done
      [ -n "$cpus" ] || continue
      med[$gen]=$(echo "$cpus" | median)
      echo "vs-smtp-source sink=$sink gen=$gen sess=$sess msgs=$N msg_per_s=$(echo "$rates" | median) gen_cpu_us_per_msg=${med[$gen]} sink_cpu_us_per_msg=$(echo "$sinks" | median) runs_cpu=[${cpus# }]"
    done
    if [ -n "${med[smtp-source]:-}" ] && [ -n "${med[sluice-bench]:-}" ]; then
      awk -v a="${med[sluice-bench]}" -v b="${med[smtp-source]}" -v s="$sess" -v k="$sink" \
        'BEGIN{ printf "ratio sink=%s sess=%s sluice-bench/smtp-source cpu per msg = %.3f (goal <= 0.333)\n", k, s, a/b }'
    fi
    unset med
  done
  stop_pid "$SINK_PID"; SINK_PID=""
  sleep 0.5
done
