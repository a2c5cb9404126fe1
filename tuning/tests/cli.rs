//! The `sluice-tune` binary: help, version, `inspect` (on this machine and on
//! a fixture tree) and `layouts`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-tune"))
        .args(args)
        .output()
        .expect("spawn sluice-tune")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

fn finding<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id}"))
}

#[test]
fn help_and_version() {
    let help = run(&["--help"]);
    assert!(help.status.success());
    assert!(stdout(&help).contains("inspect") && stdout(&help).contains("layouts"));
    for sub in ["inspect", "layouts"] {
        let help = run(&[sub, "--help"]);
        assert!(help.status.success(), "{sub} --help");
        assert!(
            stdout(&help).contains("--sys"),
            "{sub} --help documents --sys"
        );
    }
    assert!(stdout(&run(&["inspect", "--help"])).contains("--spool"));
    let version = run(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        stdout(&version).trim(),
        format!("sluice-tune {}", env!("CARGO_PKG_VERSION"))
    );
    // Unknown options are usage errors (clap exits 2).
    assert_eq!(run(&["inspect", "--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn inspect_json_on_this_machine_with_a_spool_dir() {
    let spool = tempfile::tempdir().expect("tempdir");
    let path = spool.path().to_str().expect("utf-8 temp path");
    let output = run(&[
        "inspect",
        "--json",
        "--spool",
        path,
        "--sync-rounds",
        "20",
        "--write-mib",
        "8",
        "--measure-seconds",
        "2",
    ]);
    let report = json(&output);
    for key in [
        "tool",
        "root",
        "kernel",
        "topology",
        "allowed_cpus",
        "io_uring",
        "limits",
        "storage",
        "nics",
        "findings",
    ] {
        assert!(report.get(key).is_some(), "missing key {key}");
    }
    assert!(report["topology"]["cpus"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
    for key in [
        "available",
        "features",
        "supported_ops",
        "missing_required_ops",
    ] {
        assert!(report["io_uring"].get(key).is_some(), "io_uring.{key}");
    }
    for key in [
        "memlock_bytes",
        "nofile",
        "somaxconn",
        "ephemeral_ports",
        "tcp_tw_reuse",
    ] {
        assert!(report["limits"].get(key).is_some(), "limits.{key}");
    }
    let storage = &report["storage"];
    assert_eq!(storage["dir"], path);
    let rounds = storage["sync"]["count"].as_u64().expect("sync measured");
    assert!((1..=20).contains(&rounds));
    // At most the 8 MiB asked for; fewer only if the time bound hit first
    // (a loaded machine), never more, and whole 1 MiB chunks.
    let written = storage["write"]["bytes"].as_u64().expect("write measured");
    assert!(
        (1..=8).contains(&(written >> 20)) && written % (1 << 20) == 0,
        "{written}"
    );
    for f in report["findings"].as_array().expect("findings") {
        for key in [
            "id",
            "area",
            "severity",
            "observed",
            "recommendation",
            "command",
        ] {
            assert!(f.get(key).is_some(), "finding {} lacks {key}", f["id"]);
        }
        let severity = f["severity"].as_str().expect("severity string");
        assert!(["ok", "info", "unknown", "warning", "critical"].contains(&severity));
    }
    for id in [
        "cpus",
        "io_uring",
        "memlock",
        "nofile",
        "spool-fdatasync",
        "spool-fs",
    ] {
        finding(&report, id);
    }
    // Scratch files are gone.
    assert_eq!(
        std::fs::read_dir(spool.path()).expect("read spool").count(),
        0
    );
}

#[test]
fn inspect_text_on_this_machine() {
    let output = run(&["inspect"]);
    assert!(output.status.success());
    let text = stdout(&output);
    for heading in [
        "CPU",
        "io_uring",
        "Process limits",
        "Network tunables",
        "Spool storage",
    ] {
        assert!(
            text.contains(&format!("\n{heading}\n")),
            "{heading} in:\n{text}"
        );
    }
    assert!(text.contains("sluice-tune inspect --spool"));
}

#[test]
fn inspect_a_fixture_tree() {
    let root = fixture("cpu16");
    let report = json(&run(&[
        "inspect",
        "--json",
        "--sys",
        root.to_str().expect("utf-8"),
    ]));
    assert_eq!(report["kernel"], "6.1.0-fixture");
    assert_eq!(
        report["topology"]["cpus"].as_array().map(Vec::len),
        Some(16)
    );
    // Syscall probes describe the running kernel, not a fixture.
    assert_eq!(report["io_uring"], Value::Null);
    assert_eq!(finding(&report, "io_uring")["severity"], "unknown");
    assert_eq!(finding(&report, "somaxconn")["severity"], "warning");
    assert_eq!(
        finding(&report, "somaxconn")["command"],
        "sysctl -w net.core.somaxconn=65535"
    );
    assert_eq!(finding(&report, "syn-backlog")["severity"], "ok");
    assert_eq!(finding(&report, "ephemeral-ports")["severity"], "warning");
    assert_eq!(finding(&report, "tw-reuse")["severity"], "info");
    assert_eq!(finding(&report, "cpu-affinity")["severity"], "warning");
    assert_eq!(finding(&report, "cpufreq")["severity"], "warning");
    assert_eq!(finding(&report, "smt")["severity"], "info");
    assert_eq!(finding(&report, "numa")["severity"], "info");
    assert_eq!(finding(&report, "spool")["severity"], "unknown");
    // Process limits describe this process, not the fixture's machine.
    assert_eq!(finding(&report, "memlock")["severity"], "unknown");
    assert_eq!(finding(&report, "nofile")["severity"], "unknown");
    let nic = finding(&report, "nic-eth0");
    assert_eq!(nic["severity"], "info");
    assert_eq!(nic["command"], "ethtool -L eth0 combined 16");
    let nics = report["nics"].as_array().expect("nics");
    assert_eq!(nics.len(), 1, "lo has no device and is skipped");
    let eth0 = &nics[0];
    assert_eq!(
        (eth0["rx_queues"].as_u64(), eth0["tx_queues"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(eth0["numa_node"], 1);
    assert_eq!(eth0["speed_mbps"], 25000);
    let irqs = eth0["irqs"].as_array().expect("irqs");
    assert_eq!(irqs.len(), 4);
    assert_eq!(irqs[1]["name"], "eth0-TxRx-1");
    assert_eq!(irqs[1]["effective_affinity"], serde_json::json!([10]));
    assert_eq!(irqs[1]["count"], 2000);
}

#[test]
fn inspect_of_an_empty_root_reports_unknowns() {
    let empty = tempfile::tempdir().expect("tempdir");
    let report = json(&run(&[
        "inspect",
        "--json",
        "--sys",
        empty.path().to_str().expect("utf-8"),
    ]));
    assert!(report["topology_error"]
        .as_str()
        .is_some_and(|e| e.contains("no CPUs")));
    for id in ["cpus", "somaxconn", "tw-reuse", "ephemeral-ports", "nic"] {
        assert_eq!(finding(&report, id)["severity"], "unknown", "{id}");
    }
}

#[test]
fn inspect_rejects_a_bad_spool_path() {
    let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-spool-dir");
    let output = run(&["inspect", "--spool", missing.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-spool-dir"));
}

#[test]
fn layouts_on_fixtures_and_this_machine() {
    let root = fixture("cpu16");
    let root = root.to_str().expect("utf-8");
    let output = run(&["layouts", "--shards", "4", "--sys", root]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(text.starts_with("16 CPUs on 8 physical cores"));
    assert!(text.contains("spread/separate\n"));
    assert!(text.contains("cores = [0, 8, 2, 10]"));
    assert!(text.contains("cores = [0, 1, 2, 3]"));

    let json = json(&run(&[
        "layouts",
        "--shards",
        "4",
        "--sys",
        root,
        "--json",
        "--prefer-node",
        "1",
        "--pinning",
        "numa-local",
        "--helpers",
        "separate",
    ]));
    let layouts = json["layouts"].as_array().expect("layouts");
    assert_eq!(layouts.len(), 1);
    assert_eq!(
        layouts[0]["layout"]["shard_cpus"],
        serde_json::json!([8, 10, 12, 14])
    );

    let too_many = run(&["layouts", "--shards", "17", "--sys", root]);
    assert_eq!(too_many.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&too_many.stderr).contains("the machine has 16"));
    assert_eq!(
        run(&["layouts", "--shards", "0", "--sys", root])
            .status
            .code(),
        Some(1)
    );

    // This machine: one shard always fits.
    let here = run(&["layouts", "--shards", "1"]);
    assert!(
        here.status.success(),
        "{}",
        String::from_utf8_lossy(&here.stderr)
    );
    assert!(stdout(&here).contains("cores = ["));
}

#[test]
fn sync_scaling_measures_each_writer_count() {
    let spool = tempfile::tempdir().expect("tempdir");
    let path = spool.path().to_str().expect("utf-8 temp path");
    let output = run(&[
        "sync-scaling",
        "--spool",
        path,
        "--writers",
        "1,3",
        "--rounds",
        "5",
        "--seconds",
        "2",
        "--json",
    ]);
    let results = json(&output);
    let results = results.as_array().expect("array");
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["writers"], 3);
    let rounds = results[1]["latency"]["count"].as_u64().expect("count");
    assert!(
        (3..=15).contains(&rounds),
        "3 writers x at most 5 rounds: {rounds}"
    );
    assert!(results[0]["syncs_per_s"].as_f64().is_some_and(|r| r > 0.0));
    assert_eq!(std::fs::read_dir(spool.path()).expect("read").count(), 0);

    let text = run(&[
        "sync-scaling",
        "--spool",
        path,
        "--writers",
        "2",
        "--rounds",
        "3",
    ]);
    assert!(text.status.success());
    assert!(stdout(&text).contains("syncs/s"));
    assert_eq!(
        run(&["sync-scaling", "--spool", path, "--writers", "0"])
            .status
            .code(),
        Some(1)
    );
    let missing = spool.path().join("missing");
    let missing = run(&["sync-scaling", "--spool", missing.to_str().expect("utf-8")]);
    assert_eq!(missing.status.code(), Some(1));
}
