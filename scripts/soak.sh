#!/usr/bin/env bash
# The full soak (issue 10): ten minutes (or $1 seconds) at 80% of the
# maximum rate measured first, with receiver faults mixed in. Writes
# target/reliability/soak.{json,csv,svg}. Not part of CI, which runs the
# same test for 20 seconds at a fixed rate.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
cargo build --release --locked --bins
SLUICE_SOAK_SECONDS="$seconds" SLUICE_SOAK_RATE="${SLUICE_SOAK_RATE:-auto}" \
    cargo test --release --locked -p sluice-tests --test soak -- --nocapture
echo "curves: target/reliability/soak.svg, samples: target/reliability/soak.csv"
