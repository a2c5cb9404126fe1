//! A real sweep in short form: `sluice-tune sweep` over 1 and 2 shards, one
//! run each, against the built `sluice`, `sluice-sink` and `sluice-bench`.
//! Skipped (printing SKIPPED) when those binaries are not built.

use std::path::PathBuf;
use std::process::Command;

fn bin_dir() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    [target.join("release"), target.join("debug")]
        .into_iter()
        .find(|dir| {
            ["sluice", "sluice-sink", "sluice-bench"]
                .iter()
                .all(|name| dir.join(name).is_file())
        })
}

/// Processes whose command line mentions `needle`.
fn running_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(text);
            }
        }
    }
    found
}

#[test]
fn a_short_sweep_over_one_and_two_shards() {
    let Some(bins) = bin_dir() else {
        eprintln!("SKIPPED: sluice, sluice-sink or sluice-bench not built in target/release or target/debug");
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let spool = work.path().join("spool");
    let out = work.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-tune"))
        .arg("sweep")
        .args([
            "--shards",
            "1,2",
            "--pinning",
            "compact",
            "--helpers",
            "shared",
        ])
        .args(["--runs", "1", "--messages", "2000", "--connections", "8"])
        .arg("--spool-dir")
        .arg(&spool)
        .arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(&bins)
        .output()
        .expect("running sluice-tune sweep");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("msgs/s"), "no table:\n{stdout}");
    assert!(stdout.contains("1 shard(s)"), "{stdout}");
    assert!(
        stdout.contains("2 shard(s)")
            || std::thread::available_parallelism().map_or(1, |n| n.get()) < 2,
        "{stdout}"
    );
    assert!(stdout.contains("cores = ["), "no snippet:\n{stdout}");
    assert!(stdout.contains("commit_window = \"1ms\""), "{stdout}");
    assert!(out.join("sweep.json").is_file());
    assert!(out.join("sweep.svg").is_file());
    // Every child was stopped: nothing still runs with this sweep's files.
    let spool_text = spool.display().to_string();
    let left = running_with(&spool_text);
    assert!(left.is_empty(), "still running: {left:?}");
}

/// With `--route-by-domain` every shard listens on its own port and the
/// harness sends each message to its domain's home shard.
#[test]
fn a_short_sweep_routing_by_domain() {
    let Some(bins) = bin_dir() else {
        eprintln!("SKIPPED: sluice, sluice-sink or sluice-bench not built in target/release or target/debug");
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let spool = work.path().join("spool");
    let out = work.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-tune"))
        .arg("sweep")
        .args([
            "--shards",
            "2",
            "--pinning",
            "compact",
            "--helpers",
            "shared",
        ])
        .args(["--runs", "1", "--messages", "2000", "--connections", "8"])
        .arg("--route-by-domain")
        .arg("--spool-dir")
        .arg(&spool)
        .arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(&bins)
        .output()
        .expect("running sluice-tune sweep");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("SKIPPED: one CPU, no two-shard layout");
        return;
    }
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("2 shard(s)"), "{stdout}");
    assert!(
        stdout.contains("shard_port_base"),
        "no routing advice:\n{stdout}"
    );
    let point = spool.join("point-0-run-0");
    let config = std::fs::read_to_string(point.join("sluice.toml")).expect("engine config");
    assert!(config.contains("shard_port_base = "), "{config}");
    let report = std::fs::read_to_string(point.join("harness.json")).expect("harness report");
    let report: serde_json::Value = serde_json::from_str(&report).expect("harness JSON");
    assert!(
        !report["load"]["route_by_domain"].is_null(),
        "the harness did not route by domain: {report}"
    );
    assert_eq!(report["accepted"].as_u64(), Some(2000), "{report}");
}
