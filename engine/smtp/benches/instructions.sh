#!/bin/sh
# Instructions per unit of protocol work, counted by valgrind (cachegrind's
# "I refs"): each workload runs N and 2N times and the difference is divided
# by N, so start-up cost cancels out. Unlike wall-clock figures this is
# stable on a loaded machine and needs no hardware counters.
#   cargo build --release -p sluice-smtp --example workloads
#   engine/smtp/benches/instructions.sh
set -eu
BIN=${BIN:-target/release/examples/workloads}
N=${N:-2000}
count() {
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$BIN" "$1" "$2" 2>&1 \
        | awk '/I *refs:/ {gsub(",", "", $NF); print $NF}'
}
for workload in commands_session commands_sluice commands_smtp_proto replies_sluice replies_smtp_proto \
    stuff_2k unstuff_2k_sluice unstuff_2k_smtp_proto session_bdat_2k session_data_2k; do
    one=$(count "$workload" "$N")
    two=$(count "$workload" $((N * 2)))
    echo "$workload $(( (two - one) / N ))"
done | awk '{
    unit = ($1 ~ /^commands|^replies/) ? 3 : 1;
    what = ($1 ~ /^commands/) ? "per command" : ($1 ~ /^replies/) ? "per reply" : ($1 ~ /^session/) ? "per 2 KB message, client and server" : "per 2 KB body";
    printf "%-24s %8d instructions %s\n", $1, $2 / unit, what
}'
