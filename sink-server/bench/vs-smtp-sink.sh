#!/usr/bin/env bash
# smtp-source drives Postfix's smtp-sink, then sluice-sink (release build),
# with the same load; reports msgs/s and sink CPU microseconds per message.
# Optionally (DRIVERS) the same is done with sluice-bench as the driver, which
# pipelines whole transactions (RFC 2920) where the sink offers PIPELINING
# (both sinks do), to show each sink's cost with a pipelining client.
#
# usage: sink-server/bench/vs-smtp-sink.sh [N] [SIZES] [SESSIONS] [REPS]
#   N         messages per run                      (default 100000)
#   SIZES     payload bytes, smtp-source -l         (default "2000 20000")
#   SESSIONS  parallel sessions, smtp-source -s     (default "16 64")
#   REPS      runs per config, median reported      (default 3)
# env:
#   PORT=2526         sink port on 127.0.0.1 (must be free)
#   SINKS="smtp-sink sluice-sink"   which sinks to measure
#   SINK_CORES=1      sluice-sink --cores (1: one shard, like smtp-sink's one process)
#   AFFINITY=none     none | split (sink on CPU 1, source on CPU 0)
#   SLUICE_SINK=...   binary (default: target/release/sluice-sink, built if missing)
#   DRIVERS="smtp-source"   add sluice-bench for a pipelining driver
#                     (target/release/sluice-bench, built if missing; its
#                     --size counts headers too, smtp-source -l only the body)
#   SLUICE_BENCH=...  sluice-bench binary
#
# Sink CPU is utime+stime of the sink process (all threads) from
# /proc/PID/stat, in CLK_TCK ticks (usually 10 ms): use N large enough that a
# run costs the sink many ticks, or the per-message figure is coarse.
# smtp-source never pipelines (man smtp-source, BUGS), so this measures the
# sinks' per-command cost on a chatty client; -d reuses connections.
#
# Output: one summary line per sink and config (median of REPS), '#' lines
# per run, and a final ratio line per config.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
if [ -r "$PEERS/lib.sh" ]; then
  . "$PEERS/lib.sh"
else
  # Minimal copies of the shared helpers, for checkouts without shared/.
  SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
  SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
  CLK_TCK=$(getconf CLK_TCK)
  need() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] || { echo "missing: $1 (install postfix)" >&2; exit 2; }; }
  now() { date +%s.%N; }
  cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
  median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{ if(NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
  wait_port() {
    local port=$1 i
    for i in $(seq 1 100); do
      (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0
      sleep 0.1
    done
    echo "port $port did not open" >&2; return 1
  }
  port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
  stop_pid() {
    local p=$1 i
    [ -n "$p" ] || return 0
    kill -TERM "$p" 2>/dev/null || return 0
    for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  }
fi
need "$SMTP_SINK"; need "$SMTP_SOURCE"

N=${1:-100000}
SIZES=${2:-"2000 20000"}
SESSIONS=${3:-"16 64"}
REPS=${4:-3}
PORT=${PORT:-2526}
SINKS=${SINKS:-"smtp-sink sluice-sink"}
SINK_CORES=${SINK_CORES:-1}
AFFINITY=${AFFINITY:-none}
case $AFFINITY in
  none)  PIN_SINK=();             PIN_SRC=() ;;
  split) PIN_SINK=(taskset -c 1); PIN_SRC=(taskset -c 0) ;;
  *) echo "bad AFFINITY $AFFINITY" >&2; exit 2 ;;
esac
SLUICE_SINK=${SLUICE_SINK:-$ROOT/target/release/sluice-sink}
if [ ! -x "$SLUICE_SINK" ]; then
  (cd "$ROOT" && cargo build --release -p sluice-sink)
fi
DRIVERS=${DRIVERS:-smtp-source}
SLUICE_BENCH=${SLUICE_BENCH:-$ROOT/target/release/sluice-bench}
case " $DRIVERS " in
  *" sluice-bench "*)
    [ -x "$SLUICE_BENCH" ] || (cd "$ROOT" && cargo build --release -p sluice-bench) ;;
esac

WORK=$(mktemp -d)
SINK_PID=""
cleanup() { stop_pid "$SINK_PID"; SINK_PID=""; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
port_free "$PORT" || { echo "127.0.0.1:$PORT already in use" >&2; exit 1; }

echo "# machine: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "# N=$N SIZES=$SIZES SESSIONS=$SESSIONS REPS=$REPS AFFINITY=$AFFINITY SINK_CORES=$SINK_CORES DRIVERS=$DRIVERS CLK_TCK=$CLK_TCK"

declare -A RESULT
for sink in $SINKS; do
  case $sink in
    smtp-sink)
      # -u nobody: required when started as root; one event-driven process.
      "${PIN_SINK[@]}" "$SMTP_SINK" -u nobody -m 1024 127.0.0.1:"$PORT" 4096 >"$WORK/sink.log" 2>&1 &
      ;;
    sluice-sink)
      "${PIN_SINK[@]}" "$SLUICE_SINK" --listen 127.0.0.1:"$PORT" --cores "$SINK_CORES" \
        --stats-interval 0 --summary-interval 0 --summary "$WORK/summary.json" --seed 1 \
        >"$WORK/sink.log" 2>&1 &
      ;;
    *) echo "unknown sink $sink" >&2; exit 2 ;;
  esac
  SINK_PID=$!
  wait_port "$PORT"
  sent=0
  for driver in $DRIVERS; do
  for size in $SIZES; do
    for sess in $SESSIONS; do
      rates=""; sinkcpus=""
      for rep in $(seq 1 "$REPS"); do
        s0=$(cpu_ticks "$SINK_PID")
        t0=$(now)
        rc=0
        case $driver in
          smtp-source)
            "${PIN_SRC[@]}" "$SMTP_SOURCE" -d -s "$sess" -m "$N" -l "$size" \
              -M bench.invalid -f sender@bench.invalid -t rcpt@sink.invalid \
              127.0.0.1:"$PORT" >"$WORK/src.log" 2>&1 || rc=$?
            ;;
          sluice-bench)
            "${PIN_SRC[@]}" "$SLUICE_BENCH" run --target 127.0.0.1:"$PORT" --cores 1 \
              --connections "$sess" --messages "$N" --size "$size" --progress none \
              >"$WORK/src.log" 2>&1 || rc=$?
            ;;
          *) echo "unknown driver $driver" >&2; exit 2 ;;
        esac
        t1=$(now)
        s1=$(cpu_ticks "$SINK_PID")
        if [ $rc -ne 0 ]; then
          echo "# FAILED rc=$rc sink=$sink driver=$driver size=$size sess=$sess: $(tail -2 "$WORK/src.log" | tr '\n' ' ')" >&2
          continue
        fi
        sent=$((sent + N))
        read -r secs rate sinkus < <(awk -v t0="$t0" -v t1="$t1" -v n="$N" \
            -v k="$((s1 - s0))" -v hz="$CLK_TCK" 'BEGIN{
            d=t1-t0; printf "%.3f %.0f %.2f\n", d, n/d, k/hz*1e6/n}')
        echo "# run sink=$sink driver=$driver size=$size sess=$sess rep=$rep secs=$secs msg_per_s=$rate sink_cpu_us_per_msg=$sinkus ticks=$((s1 - s0))"
        rates="$rates $rate"; sinkcpus="$sinkcpus $sinkus"
      done
      [ -n "$rates" ] || continue
      mr=$(echo "$rates" | median); mc=$(echo "$sinkcpus" | median)
      RESULT["$sink/$driver/$size/$sess"]=$mc
      echo "$sink driver=$driver size=$size sess=$sess msgs=$N msg_per_s=$mr sink_cpu_us_per_msg=$mc runs=[${rates# }] cpu=[${sinkcpus# }]"
    done
  done
  done
  stop_pid "$SINK_PID"; SINK_PID=""
  if [ "$sink" = sluice-sink ]; then
    got=$(grep -m1 '^  "messages"' "$WORK/summary.json" | tr -dc '0-9')
    if [ "$got" != "$sent" ]; then
      echo "# MISMATCH: the drivers sent $sent messages, sluice-sink counted $got" >&2
      exit 1
    fi
    echo "# sluice-sink counted $got messages = sent $sent (exact)"
  fi
  sleep 0.5
done

for driver in $DRIVERS; do
  for size in $SIZES; do
    for sess in $SESSIONS; do
      a=${RESULT["smtp-sink/$driver/$size/$sess"]:-}; b=${RESULT["sluice-sink/$driver/$size/$sess"]:-}
      [ -n "$a" ] && [ -n "$b" ] || continue
      awk -v a="$a" -v b="$b" -v d="$driver" -v s="$size" -v x="$sess" 'BEGIN{
        if (b > 0) printf "ratio driver=%s size=%s sess=%s smtp-sink/sluice-sink CPU per msg = %.2fx (goal >= 5x)\n", d, s, x, a/b;
        else printf "ratio driver=%s size=%s sess=%s: sluice-sink used no measurable CPU ticks; raise N\n", d, s, x }'
    done
  done
done
