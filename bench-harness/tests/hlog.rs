//! The `.hlog` file is read back by an independent HdrHistogram decoder: the
//! Python `hdrh` package (PyPI `hdrhistogram`). Skipped, loudly, only when
//! neither the package nor pip is available.

mod common;

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sluice_bench::cli::{self, Cli};

use common::{ServerOpts, TestServer};

fn python_with_hdrh() -> bool {
    let has = || {
        Command::new("python3")
            .args(["-c", "import hdrh.log"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if has() {
        return true;
    }
    let installed = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "hdrhistogram"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    installed && has()
}

#[test]
fn hlog_is_read_by_the_python_hdrh_decoder() {
    if !python_with_hdrh() {
        eprintln!("SKIPPED hlog_is_read_by_the_python_hdrh_decoder: python3 with hdrh unavailable and pip install hdrhistogram failed");
        return;
    }
    let server = TestServer::start(ServerOpts {
        data_delay: Duration::from_millis(2),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let hlog = dir.path().join("run.hlog");
    let hlog_arg = hlog.to_str().unwrap().to_owned();
    let target = server.addr.to_string();
    let argv = [
        "sluice-bench",
        "run",
        "--progress",
        "none",
        "--cores",
        "1",
        "--target",
        &target,
        "--messages",
        "300",
        "--connections",
        "2",
        "--interval",
        "50ms",
        "--hlog",
        &hlog_arg,
    ];
    let args = match Cli::try_parse_from(argv).unwrap().command {
        cli::Command::Run(a) => *a,
        other => panic!("parsed as {other:?}"),
    };
    let report = sluice_bench::run::run(&args, Arc::new(AtomicBool::new(false)))
        .unwrap()
        .report;
    assert!(report.passed, "{:?}", report.problems);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hlog_check.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&hlog)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let (total, intervals, max_us) = (fields[0], fields[1], fields[2]);
    assert_eq!(
        total, report.accepted,
        "Python decoded a different sample count"
    );
    assert!(intervals >= 1);
    // Same maximum as ours (both are the histogram's highest equivalent value).
    let ours_us = (report.inject_latency_ms.max * 1000.0).round() as u64;
    assert!(
        max_us.abs_diff(ours_us) <= ours_us / 500 + 1,
        "python max {max_us} us, ours {ours_us} us"
    );
}
