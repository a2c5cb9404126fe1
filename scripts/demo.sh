#!/usr/bin/env bash
# The main job: build the release binaries, then `sluice-bench demo` starts
# sluice-sink and the sluice engine (temporary durable spool, every domain
# routed to the sink), injects a minute of 2 KB messages over 1,000 Zipf
# domains, prints injection and delivery figures, stops both and leaves
# nothing running.
#   scripts/demo.sh [extra sluice-bench demo options, e.g. --messages 200000 --shards 2]
# Files (demo.json, report.json, latency.hlog/.hgrm, plots/, logs) go to
# ./sluice-demo-RUN/ (or --out DIR).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --bins --locked
exec target/release/sluice-bench demo "$@"
