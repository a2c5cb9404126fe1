//! Postfix's smtp-source against the sink, and the `sluice-sink` binary
//! itself (signals, summary, exit codes, --help).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";

fn smtp_source_present() -> bool {
    if Path::new(SMTP_SOURCE).exists() {
        return true;
    }
    eprintln!(
        "\n*** SKIPPED: {SMTP_SOURCE} is missing; install Postfix \
         (`bash ../shared/peers/install.sh` as root) to run the smtp-source interop test ***\n"
    );
    false
}

fn run_smtp_source(args: &[&str], port: u16) {
    let out = Command::new(SMTP_SOURCE)
        .args(args)
        .args([
            "-M",
            "bench.invalid",
            "-f",
            "sender@bench.invalid",
            "-t",
            "rcpt@sink.invalid",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("run smtp-source");
    assert!(
        out.status.success(),
        "smtp-source failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn smtp_source_counts_match_exactly() {
    if !smtp_source_present() {
        return;
    }
    let mut cfg = config();
    cfg.cores = sluice_sink::config::allowed_cpus()
        .into_iter()
        .take(2)
        .collect();
    let sink = start(cfg);
    let port = sink.addr.port();
    // Many messages per connection (-d), two recipients each.
    run_smtp_source(
        &["-s", "4", "-m", "400", "-l", "2000", "-r", "2", "-d"],
        port,
    );
    // A new connection per message.
    run_smtp_source(&["-s", "2", "-m", "30", "-l", "100"], port);
    let s = sink.stop();
    assert_eq!(n(&s, &["messages"]), 430);
    assert_eq!(n(&s, &["recipients"]), 830);
    assert_eq!(n(&s, &["transactions"]), 430);
    assert_eq!(n(&s, &["connections"]), 4 + 30);
    assert_eq!(n(&s, &["replies", "354"]), 430);
    assert_eq!(n(&s, &["replies", "221"]), 34);
    assert_eq!(n(&s, &["domains", "sink.invalid", "messages"]), 430);
    assert!(n(&s, &["bytes"]) >= 400 * 2000);
}

/// The binary on an ephemeral port; returns the child and its port.
fn spawn_sink(args: &[&str]) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-sink"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--stats-interval",
            "0",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice-sink");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .next()
        .expect("a start-up line")
        .expect("utf-8 start-up line");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // Keep draining stderr so the child never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr.port())
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice-sink did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn binary_prints_the_summary_on_sigterm() {
    let (mut child, port) = spawn_sink(&["--seed", "5"]);
    let mut c = Client::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(c.reply().0, 220);
    c.cmd("EHLO client.test");
    assert_eq!(
        send_one(&mut c, &["a@bin.test", "b@bin.test"], &message("b1")),
        250
    );
    assert_eq!(c.cmd("QUIT").0, 221);
    let status = terminate(&mut child);
    assert!(status.success(), "exit status {status}");
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let s: serde_json::Value = serde_json::from_str(&out).expect("JSON summary on stdout");
    assert_eq!(n(&s, &["messages"]), 1);
    assert_eq!(n(&s, &["recipients"]), 2);
    assert_eq!(n(&s, &["connections"]), 1);
    assert_eq!(n(&s, &["seed"]), 5);
    assert!(s["latency_ms"]["p50"].is_number());
    assert!(s["replies"]["250"].is_number());
}

#[test]
fn binary_writes_the_summary_file_and_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("s.json");
    let cert = dir.path().join("cert.pem");
    let (mut child, _port) = spawn_sink(&[
        "--summary",
        summary.to_str().unwrap(),
        "--summary-interval",
        "50ms",
        "--tls-cert-out",
        cert.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + IO_TIMEOUT;
    while !summary.exists() {
        assert!(Instant::now() < deadline, "no periodic summary");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(terminate(&mut child).success());
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(n(&s, &["messages"]), 0);
    assert!(std::fs::read_to_string(&cert)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[test]
fn bad_profile_and_flags_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        "[rcpt.reject]\n451 = 0.5\n[domains.\"a.test\"]\nrate = 3\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_sluice-sink");
    let out = Command::new(bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--profile",
            profile.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("domains.a.test"), "{err}");
    assert!(err.contains("rate"), "{err}");

    std::fs::write(&profile, "[mail.reject]\n421 = 0.9\n451 = 0.9\n").unwrap();
    let out = Command::new(bin)
        .args(["validate", profile.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mail.reject"));

    std::fs::write(&profile, "[mail.reject]\n421 = 0.1\n").unwrap();
    let out = Command::new(bin)
        .args(["validate", profile.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    let out = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--cores", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cores"));
}

#[test]
fn help_documents_every_option_and_version_prints() {
    let bin = env!("CARGO_BIN_EXE_sluice-sink");
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--cores",
        "--profile",
        "--summary",
        "--stats-interval",
        "--hlog",
        "--record-ids",
        "--capture",
        "--tls-cert",
        "--seed",
        "--reject",
        "--delay",
        "--domain-rate",
        "--domain-max-connections",
        "--never-greet",
        "--drop-in-data",
        "--drop-after-messages",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
