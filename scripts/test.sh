#!/usr/bin/env bash
# The whole test suite, as CI runs it (see README.md).
#   scripts/test.sh            setup + fmt + clippy + every test
#   SLUICE_LONG=1 scripts/test.sh   also the long variants (soaks, many-round crash loops)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "setup (system packages and Python tools used as independent peers)"
bash scripts/setup.sh

step "rustfmt"
cargo fmt --all -- --check

step "clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build the release binaries the end-to-end tests drive"
cargo build --release --locked --bins

step "tests"
# glommio needs locked memory for io_uring; the executors are sized to fit
# the common 8 MiB RLIMIT_MEMLOCK (see HACKING.md).
cargo test --workspace --locked
