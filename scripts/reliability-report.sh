#!/usr/bin/env bash
# Runs the reliability suite (tests/) and gathers what each test recorded
# (target/reliability/*.json) into target/reliability/report.md.
#   bash scripts/reliability-report.sh          # the CI-sized versions
#   LONG=1 bash scripts/reliability-report.sh   # 1M-message recovery, 30 kill -9
#                                               # rounds, ten-minute soak
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/reliability
rm -rf "$out"
mkdir -p "$out"
cargo build --release --locked --bins
if [[ "${LONG:-0}" == 1 ]]; then
    export SLUICE_RECOVERY_MESSAGES=1000000 SLUICE_CRASH_ROUNDS=30
    export SLUICE_SOAK_SECONDS=600 SLUICE_SOAK_RATE=auto
fi
status=0
for t in crash corruption recovery receiver_faults shaping bad_input soak; do
    echo "== $t"
    cargo test --release --locked -p sluice-tests --test "$t" -- --test-threads 1 || status=1
done
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
lines = ["# Sluice reliability report", ""]
for path in sorted(out.glob("*.json")):
    data = json.loads(path.read_text())
    lines.append(f"## {data.pop('test', path.stem)}")
    data.pop("written_unix", None)
    lines.append("")
    lines.append("| measure | value |")
    lines.append("|---|---|")
    for key, value in data.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
        lines.append(f"| {key} | {value} |")
    lines.append("")
(out / "report.md").write_text("\n".join(lines))
print(f"wrote {out / 'report.md'}")
PY
exit $status
