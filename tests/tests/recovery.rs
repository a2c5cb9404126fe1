//! Recovery under load (issue 10, "Crash and storage faults"): fill one
//! shard's spool with queued messages (the destination is down), stop the
//! engine, start it again and probe the listener the whole time. Every
//! reply before the first `220` must be `421 4.3.2`; once it greets, the
//! start-up report must count every acknowledged message as live. The
//! recovery time and counts go to the reliability report.
//!
//! CI runs a short version; the full one is
//! `SLUICE_RECOVERY_MESSAGES=1000000 cargo test --release -p sluice-tests --test recovery -- --nocapture`.
//! Needs the release (or `SLUICE_BIN_DIR`) binaries `sluice` and
//! `sluice-bench`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{
    binary, dir_bytes, free_port, loopback, read_json, run_bounded, write_report, Process,
};

/// Messages queued in the short (CI) version.
const SHORT: u64 = 30_000;
/// Longest the probe waits for the engine to greet after a restart.
const RECOVERY_WAIT: Duration = Duration::from_secs(600);

fn config(dir: &Path, port: u16, nobody: u16) -> String {
    format!(
        r#"hostname = "sluice.test"
cores = [0]
[inject]
listen = "127.0.0.1:{port}"
message_size_max = "1MiB"
[spool]
dir = "{spool}"
segment_size = "64MiB"
[delivery]
retry = "1h"
connect_timeout = "1s"
log_dir = "{log}"
[[route]]
pattern = "*"
hosts = ["127.0.0.1:{nobody}"]
"#,
        spool = dir.join("spool").display(),
        log = dir.join("log").display(),
    )
}

fn start(dir: &Path, tag: &str) -> Process {
    let mut cmd = Command::new(binary("sluice").expect("sluice binary"));
    cmd.arg("run")
        .arg("--config")
        .arg(dir.join("sluice.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("sluice-{tag}.err"))).expect("stderr"));
    Process::spawn("sluice", cmd).expect("start sluice")
}

/// One probe: the first reply line, or `None` if nothing answered.
fn probe(addr: SocketAddr) -> Option<String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    if line.starts_with("220 ") {
        let _ = (&s).write_all(b"QUIT\r\n");
    }
    (!line.is_empty()).then_some(line)
}

/// Probes until the engine greets; returns (time to greet, replies seen
/// before it, every non-421-4.3.2 reply among them).
fn probe_until_greeting(addr: SocketAddr) -> (Duration, u64, Vec<String>) {
    let start = Instant::now();
    let mut refused = 0;
    let mut wrong = Vec::new();
    loop {
        match probe(addr) {
            Some(line) if line.starts_with("220 ") => return (start.elapsed(), refused, wrong),
            Some(line) => {
                if line.starts_with("421 4.3.2") {
                    refused += 1;
                } else {
                    wrong.push(line);
                }
            }
            None => {}
        }
        assert!(
            start.elapsed() < RECOVERY_WAIT,
            "no greeting within {RECOVERY_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `N live message(s)` figure of the start-up report.
fn live_messages(said: &str) -> Option<u64> {
    let line = said.lines().find(|l| l.contains("spool opened in"))?;
    let before = line.split(" live message(s)").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

/// A second engine pointed at a spool that a running one holds stops with
/// an error naming the shard directory, and the first one keeps serving.
#[test]
fn a_second_engine_on_the_same_spool_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, other, nobody) = (
        free_port().expect("port"),
        free_port().expect("port"),
        free_port().expect("port"),
    );
    std::fs::write(
        dir.path().join("sluice.toml"),
        config(dir.path(), port, nobody),
    )
    .expect("config");
    let _first = start(dir.path(), "first");
    let (_, _, wrong) = probe_until_greeting(loopback(port));
    assert!(wrong.is_empty(), "{wrong:?}");

    let second_config = dir.path().join("second.toml");
    std::fs::write(&second_config, config(dir.path(), other, nobody)).expect("config");
    let mut cmd = Command::new(binary("sluice").expect("sluice binary"));
    cmd.arg("run").arg("--config").arg(&second_config);
    let ran = run_bounded(dir.path(), "second", cmd, Duration::from_secs(60));
    assert!(!ran.success, "the second engine ran: {}", ran.stderr);
    assert!(
        ran.stderr.contains("in use by another process") && ran.stderr.contains("shard-0"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        probe(loopback(port)).as_deref().map(|l| &l[..4]),
        Some("220 ")
    );
}

#[test]
fn restart_with_a_full_queue_answers_421_until_recovered() {
    let messages: u64 = std::env::var("SLUICE_RECOVERY_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHORT);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let nobody = free_port().expect("a port nobody listens on");
    std::fs::write(
        dir.path().join("sluice.toml"),
        config(dir.path(), port, nobody),
    )
    .expect("config");

    // 1. Fill the queue.
    let mut engine = start(dir.path(), "fill");
    let (waited, _, _) = probe_until_greeting(loopback(port));
    eprintln!("first start greeted after {waited:?}");
    let report = dir.path().join("harness.json");
    let fill_started = Instant::now();
    let status = Command::new(binary("sluice-bench").expect("sluice-bench binary"))
        .args(["run", "--target", &format!("127.0.0.1:{port}")])
        .args(["--messages", &messages.to_string(), "--size", "512"])
        .args(["--connections", "16", "--cores", "1", "--progress", "none"])
        .arg("--json")
        .arg(&report)
        .stdout(Stdio::null())
        .status()
        .expect("run sluice-bench");
    let fill_seconds = fill_started.elapsed().as_secs_f64();
    let report = read_json(&report).expect("harness report");
    let accepted = report["accepted"].as_u64().expect("accepted count");
    assert!(status.success(), "the harness failed: {report}");
    assert_eq!(accepted, messages, "every message acknowledged: {report}");
    engine
        .stop(Duration::from_secs(60))
        .expect("graceful stop after filling");
    let spool_bytes: u64 = dir_bytes(&dir.path().join("spool"));

    // 2. Restart and probe from the first moment.
    let mut engine = start(dir.path(), "recover");
    let (recovery, refused, wrong) = probe_until_greeting(loopback(port));
    let said = std::fs::read_to_string(dir.path().join("sluice-recover.err")).unwrap_or_default();
    let live = live_messages(&said);
    eprintln!(
        "recovered {live:?} of {accepted} queued ({} MiB spool) in {recovery:?}; {refused} probe(s) answered 421 4.3.2 meanwhile",
        spool_bytes >> 20
    );
    write_report(
        "recovery_under_load",
        serde_json::json!({
            "queued": accepted,
            "fill_seconds": fill_seconds,
            "spool_bytes": spool_bytes,
            "live_after_restart": live,
            "seconds_to_first_220": recovery.as_secs_f64(),
            "probes_answered_421_4_3_2": refused,
            "other_replies_before_220": wrong,
        }),
    );
    assert!(
        wrong.is_empty(),
        "before the first 220 every reply is 421 4.3.2: {wrong:?}"
    );
    assert_eq!(
        live,
        Some(accepted),
        "every acknowledged message is live after the restart:\n{said}"
    );
    engine.stop(Duration::from_secs(60)).expect("stop");
}
