//! `sluice-bench demo` and `compare` against the real `sluice` and
//! `sluice-sink` binaries on 127.0.0.1.
//!
//! The binaries are looked up in `$SLUICE_BIN_DIR`, then target/debug and
//! target/release (build them first: `cargo build --bins -p sluice-engine
//! -p sluice-sink`). When they are missing each test says so on stderr and
//! skips: building them from inside `cargo test` would wait on the lock the
//! outer cargo holds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_bench::procs::{free_port, pid_running, Children};

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
}

/// The directory holding `sluice` and `sluice-sink`, or None (skip).
fn bin_dir(test: &str) -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("sluice").is_file() && d.join("sluice-sink").is_file();
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("SLUICE_BIN_DIR") {
        candidates.push(PathBuf::from(d));
    }
    // CARGO_BIN_EXE_sluice-bench is <target>/<profile>/sluice-bench.
    let own = Path::new(env!("CARGO_BIN_EXE_sluice-bench"));
    if let Some(profile_dir) = own.parent() {
        candidates.push(profile_dir.to_owned());
        if let Some(target) = profile_dir.parent() {
            candidates.push(target.join("debug"));
            candidates.push(target.join("release"));
        }
    }
    let found = candidates.into_iter().find(|d| has_both(d));
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: sluice and sluice-sink binaries not found; \
             run `cargo build --bins -p sluice-engine -p sluice-sink` first \
             (or set SLUICE_BIN_DIR)"
        );
    }
    found
}

fn p(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// PIDs of live processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) && pid_running(pid) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn demo_delivers_every_message_and_leaves_nothing_running() {
    let Some(bins) = bin_dir("demo_delivers_every_message_and_leaves_nothing_running") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("demo");
    let spawned = bench()
        .args([
            "demo",
            "--messages",
            "2000",
            "--progress",
            "none",
            "--cores",
            "1",
        ])
        .args(["--out", &p(&dir)])
        .args(["--engine-bin", &p(&bins.join("sluice"))])
        .args(["--sink-bin", &p(&bins.join("sluice-sink"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let marker = format!("sluice-demo-{}-", spawned.id());
    let child = spawned.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert_eq!(
        child.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for line in ["delivered/s", "engine cpu", "sink cpu", "e2e ms", "PASS"] {
        assert!(stdout.contains(line), "table lacks {line}:\n{stdout}");
    }

    let demo = read_json(&dir.join("demo.json"));
    let report = &demo["report"];
    assert_eq!(report["messages"], 2000);
    assert_eq!(report["accepted"], 2000);
    assert_eq!(report["delivered"], 2000);
    assert_eq!(demo["passed"], true, "{demo}");
    assert!(demo["engine_cpu_us_per_msg"].as_f64().unwrap() > 0.0);
    assert!(demo["delivered_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["e2e_latency_ms"]["p50"].as_f64().is_some());
    // Every child was stopped cleanly (SIGTERM, exit 0) and is gone.
    let children = demo["children"].as_array().unwrap();
    assert_eq!(children.len(), 2);
    for c in children {
        assert_eq!(c["clean"], true, "{c}");
        let pid = c["pid"].as_u64().unwrap() as u32;
        assert!(!pid_running(pid), "{} (pid {pid}) still running", c["name"]);
    }
    assert_eq!(report_pids(report), pids_of(children));
    for file in [
        "report.json",
        "latency.hlog",
        "latency.hgrm",
        "sluice.toml",
        "sluice.log",
        "sink.log",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    assert!(std::fs::read_dir(dir.join("plots")).unwrap().count() >= 2);
    // Nothing started with the demo's temp dir on its command line is left.
    assert_eq!(processes_mentioning(&marker), Vec::<u32>::new());
}

fn report_pids(report: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = report["target_cpu"]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    v.sort_unstable();
    v
}

fn pids_of(children: &[Value]) -> Vec<u64> {
    let mut v: Vec<u64> = children
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn an_engine_that_fails_to_start_leaves_no_sink_running() {
    let Some(bins) = bin_dir("an_engine_that_fails_to_start_leaves_no_sink_running") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    // A stand-in engine that prints an error and exits 1.
    let fake = out.path().join("fake-sluice");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'sluice: spool: disk on fire' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spawned = bench()
        .args(["demo", "--messages", "100", "--progress", "none"])
        .args(["--out", &p(&out.path().join("demo"))])
        .args(["--engine-bin", &p(&fake)])
        .args(["--sink-bin", &p(&bins.join("sluice-sink"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The sink's command line names the harness's temp dir.
    let marker = format!("sluice-demo-{}-", spawned.id());
    let child = spawned.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert_eq!(child.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sluice exited early"), "{stderr}");
    assert!(stderr.contains("disk on fire"), "{stderr}");
    assert_eq!(processes_mentioning(&marker), Vec::<u32>::new());
}

#[test]
fn ctrl_c_during_the_load_stops_everything_and_still_reports() {
    let Some(bins) = bin_dir("ctrl_c_during_the_load_stops_everything_and_still_reports") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("demo");
    let child = bench()
        .args([
            "demo",
            "--duration",
            "60s",
            "--progress",
            "none",
            "--cores",
            "1",
        ])
        .args(["--out", &p(&dir)])
        .args(["--engine-bin", &p(&bins.join("sluice"))])
        .args(["--sink-bin", &p(&bins.join("sluice-sink"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let harness = child.id();
    // Wait until the engine is up and the load has started.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("sluice.log").is_file() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let marker = format!("sluice-demo-{harness}-");
    let started = processes_mentioning(&marker);
    assert!(!started.is_empty(), "no child of the demo found");
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(harness as libc::pid_t, libc::SIGINT);
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Interrupted: the report is printed, the exit code says the load was incomplete.
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    for pid in started {
        assert!(!pid_running(pid), "pid {pid} still running");
    }
    assert_eq!(processes_mentioning(&marker), Vec::<u32>::new());
    let demo = read_json(&dir.join("demo.json"));
    // Whatever was accepted before the interrupt reached the sink.
    assert_eq!(demo["report"]["delivered"], demo["report"]["accepted"]);
}

/// Starts a sluice-sink on a free port; returns the port and PID.
fn start_sink(
    children: &mut Children,
    bins: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> (u16, u32) {
    let port = free_port().unwrap();
    let mut args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--cores",
        "1",
        "--stats-interval",
        "0",
        "--summary",
        &p(&dir.join(format!("{name}.json"))),
        "--summary-interval",
        "100ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let pid = children
        .spawn(
            name,
            &bins.join("sluice-sink"),
            &args,
            &dir.join(format!("{name}.log")),
        )
        .unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    sluice_bench::procs::wait_for_greeting(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Instant::now() + Duration::from_secs(30),
        children,
        &stop,
    )
    .unwrap();
    // The summary is first written a moment after the greeting.
    let summary = dir.join(format!("{name}.json"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::metadata(&summary).is_ok_and(|m| m.len() > 0) {
        assert!(Instant::now() < deadline, "{name} wrote no summary");
        std::thread::sleep(Duration::from_millis(20));
    }
    (port, pid)
}

#[test]
fn compare_two_sinks_gives_both_reports_and_ratios() {
    let Some(bins) = bin_dir("compare_two_sinks_gives_both_reports_and_ratios") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children::new(Duration::from_secs(10));
    let (fast, fast_pid) = start_sink(&mut children, &bins, dir.path(), "fast", &[]);
    // b answers every end of data after 20 ms.
    let (slow, slow_pid) = start_sink(
        &mut children,
        &bins,
        dir.path(),
        "slow",
        &["--delay", "data=20ms"],
    );
    let json = dir.path().join("compare.json");
    let out = bench()
        .args([
            "compare",
            "--messages",
            "300",
            "--connections",
            "2",
            "--cores",
            "1",
        ])
        .args(["--progress", "none", "--settle", "100ms"])
        .args(["--a", &format!("127.0.0.1:{fast}"), "--a-name", "fast"])
        .args(["--b", &format!("127.0.0.1:{slow}"), "--b-name", "slow"])
        .args([
            "--a-pid",
            &fast_pid.to_string(),
            "--b-pid",
            &slow_pid.to_string(),
        ])
        .args(["--json", &p(&json)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "accepted msg/s",
        "inject p99 ms",
        "target cpu us/msg",
        "a/b",
    ] {
        assert!(stdout.contains(line), "table lacks {line}:\n{stdout}");
    }
    let c = read_json(&json);
    for side in ["a", "b"] {
        assert_eq!(c[side]["report"]["accepted"], 300, "{side}: {c}");
        assert!(c[side]["report"]["target_cpu"]["cpu_us_per_msg"].is_number());
    }
    assert_eq!(c["a"]["name"], "fast");
    assert_eq!(
        c["b"]["report"]["load"]["seed"],
        c["a"]["report"]["load"]["seed"]
    );
    // The slow sink holds every message at least 20 ms: a is faster.
    assert!(
        c["b"]["report"]["inject_latency_ms"]["p50"]
            .as_f64()
            .unwrap()
            >= 20.0
    );
    let p50 = c["ratios"]["inject_p50"].as_f64().unwrap();
    assert!(p50 < 1.0, "a/b inject p50 {p50}");
    assert!(c["ratios"]["msgs_per_sec"].as_f64().unwrap() > 1.0);
    assert!(c["ratios"]["target_cpu_us_per_msg"].is_number());
    drop(children);
    assert!(!pid_running(fast_pid) && !pid_running(slow_pid));
}

#[test]
fn compare_into_one_sink_reads_delivered_as_deltas() {
    let Some(bins) = bin_dir("compare_into_one_sink_reads_delivered_as_deltas") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children::new(Duration::from_secs(10));
    let (port, _) = start_sink(&mut children, &bins, dir.path(), "sink", &[]);
    let target = format!("127.0.0.1:{port}");
    let json = dir.path().join("compare.json");
    let out = bench()
        .args([
            "compare",
            "--messages",
            "250",
            "--connections",
            "2",
            "--cores",
            "1",
        ])
        .args(["--progress", "none", "--settle", "100ms"])
        .args(["--a", &target, "--b", &target])
        .args(["--sink-summary", &p(&dir.path().join("sink.json"))])
        .args(["--json", &p(&json)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = read_json(&json);
    assert_eq!(c["a"]["report"]["delivered"], 250);
    assert_eq!(c["b"]["report"]["delivered"], 250);
    assert_eq!(c["shared_sink"], true);
    assert!(c["ratios"]["delivered_per_sec"].is_number());
    assert!(stdout.contains("cumulative"), "{stdout}");
}

#[test]
fn demo_and_compare_help_document_their_options() {
    let out = bench().args(["demo", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--messages",
        "--duration",
        "--connections",
        "--size",
        "--domains",
        "--shards",
        "--sink-bin",
        "--engine-bin",
        "--out",
        "--sink-cores",
        "--startup-timeout",
        "--stop-grace",
        "--sink-wait",
    ] {
        assert!(help.contains(option), "demo --help lacks {option}");
    }
    // Options the demo decides itself are not offered.
    for hidden in ["--target", "--pids", "--hlog", "--route-by-domain"] {
        assert!(!help.contains(hidden), "demo --help offers {hidden}");
    }
    let out = bench().args(["compare", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--a ",
        "--b ",
        "--a-pid",
        "--b-pid",
        "--sink-summary",
        "--settle",
        "--json",
        "--messages",
    ] {
        assert!(help.contains(option), "compare --help lacks {option}");
    }
    // compare needs both targets.
    let out = bench()
        .args(["compare", "--a", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
