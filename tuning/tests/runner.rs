//! One real measurement: `sluice-bench` against `sluice-sink` on loopback,
//! placed by a layout of this machine; and the child guards that make sure
//! nothing is left running.
//!
//! Needs the workspace binaries built (`cargo build --bins`, or the release
//! build CI makes first); `SLUICE_BIN_DIR` points elsewhere.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tune::affinity::current_affinity;
use sluice_tune::layout::{layout, HelperPlacement, LayoutRequest, Pinning};
use sluice_tune::runner::{run_sink_and_harness, Guarded, RunError, RunSpec, Tools};
use sluice_tune::sysfs::SysRoot;
use sluice_tune::topology::Topology;

fn binary(name: &str) -> PathBuf {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("SLUICE_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    dirs.push(target.join("release"));
    dirs.push(target.join("debug"));
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{name} not found in {dirs:?}; run `cargo build --bins` first"))
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn harness_against_sink_on_a_layout_of_this_machine() {
    let tools = Tools {
        sink: binary("sluice-sink"),
        harness: binary("sluice-bench"),
    };
    let topology = Topology::read(&SysRoot::host()).expect("host topology");
    let topology = topology
        .restrict(&current_affinity().expect("affinity"))
        .expect("CPUs");
    let request = LayoutRequest::new(1);
    let placed = layout(
        &topology,
        Pinning::Spread,
        HelperPlacement::Separate,
        &request,
    )
    .or_else(|_| {
        layout(
            &topology,
            Pinning::Spread,
            HelperPlacement::Shared,
            &request,
        )
    })
    .expect("a one-shard layout");
    let workdir = tempfile::tempdir().expect("tempdir");
    let spec = RunSpec {
        messages: 2_000,
        connections: 4,
        size: "2k".into(),
        run_timeout: Duration::from_secs(60),
        startup_timeout: Duration::from_secs(20),
    };
    let sample = run_sink_and_harness(&tools, &placed, &spec, workdir.path())
        .unwrap_or_else(|e| panic!("run failed: {e}"));
    assert!(sample.passed, "{sample:?}");
    assert_eq!(sample.failed, 0);
    assert!(sample.msgs_per_sec > 0.0);
    assert!(sample.inject_p99_ms > 0.0);
    assert!(workdir.path().join("sink-summary.json").is_file());
}

#[test]
fn a_failed_harness_is_reported_and_the_sink_stopped() {
    let tools = Tools {
        sink: binary("sluice-sink"),
        harness: PathBuf::from("false"),
    };
    let topology = Topology::read(&SysRoot::host()).expect("host topology");
    let topology = topology
        .restrict(&current_affinity().expect("affinity"))
        .expect("CPUs");
    let placed = layout(
        &topology,
        Pinning::Compact,
        HelperPlacement::Shared,
        &LayoutRequest::new(1),
    )
    .expect("layout");
    let workdir = tempfile::tempdir().expect("tempdir");
    let spec = RunSpec {
        messages: 10,
        connections: 1,
        size: "2k".into(),
        run_timeout: Duration::from_secs(30),
        startup_timeout: Duration::from_secs(20),
    };
    let error = run_sink_and_harness(&tools, &placed, &spec, workdir.path()).expect_err("fails");
    assert!(matches!(error, RunError::NoReport { .. }), "{error}");
    // The sink wrote its final summary when it was stopped.
    assert!(workdir.path().join("sink-summary.json").is_file());
}

#[test]
fn guards_stop_children_on_timeout_and_drop() {
    let mut command = Command::new("sleep");
    command.arg("30");
    let mut guarded = Guarded::spawn("sleep", command).expect("spawn sleep");
    let pid = guarded.pid().expect("pid");
    let started = Instant::now();
    let error = guarded
        .wait_for(Duration::from_millis(100))
        .expect_err("times out");
    assert!(
        matches!(error, RunError::Timeout { what: "sleep", .. }),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!alive(pid), "killed and reaped");

    let mut command = Command::new("sleep");
    command.arg("30");
    let guarded = Guarded::spawn("sleep", command).expect("spawn sleep");
    let pid = guarded.pid().expect("pid");
    drop(guarded);
    assert!(!alive(pid), "dropping the guard stops the child");

    let mut quick = Guarded::spawn("true", Command::new("true")).expect("spawn true");
    assert!(quick
        .wait_for(Duration::from_secs(10))
        .expect("exits")
        .success());
}
