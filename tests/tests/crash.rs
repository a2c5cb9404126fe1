//! The durability promise of injection, end to end (RELIABILITY.md: "every
//! message that got `250` is delivered at least once after any crash"):
//! a client pipelines messages with unique ids into `sluice`, the engine is
//! killed with SIGKILL at a random moment (mid-DATA, mid-commit, mid-
//! delivery), restarted on the same spool, and the sink's record of
//! delivered ids must contain every id that was acknowledged. Duplicates are
//! allowed (at-least-once) and counted.
//!
//! Needs the release (or `SLUICE_BIN_DIR`) binaries `sluice` and
//! `sluice-sink`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_tests::{binary, free_port, greets, loopback, Process, SinkBuilder};

const TIMEOUT: Duration = Duration::from_secs(30);

fn start_sluice(dir: &Path, port: u16, sink_port: u16, tag: &str) -> Process {
    let mut cmd = Command::new(binary("sluice").expect("sluice binary"));
    cmd.args(["run", "--cores", "0,1", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--spool")
        .arg(dir.join("spool"))
        .arg("--route")
        .arg(format!("*=127.0.0.1:{sink_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("sluice-{tag}.err"))).expect("stderr file"));
    let p = Process::spawn("sluice", cmd).expect("start sluice");
    assert!(
        greets(loopback(port), TIMEOUT),
        "nothing greeted on port {port} within {TIMEOUT:?}"
    );
    p
}

/// Pipelines messages `prefix-<n>` until the connection breaks or `stop`;
/// returns the ids that got `250`.
fn inject_until_killed(port: u16, prefix: &str, stop: &AtomicBool) -> Vec<String> {
    let mut acked = Vec::new();
    let Ok(s) = TcpStream::connect(loopback(port)) else {
        return acked;
    };
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    let mut line = String::new();
    let mut read_reply = |reader: &mut BufReader<TcpStream>| -> Option<u16> {
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(n) if n >= 4 => {
                    if line.as_bytes()[3] != b'-' {
                        return line[..3].parse().ok();
                    }
                }
                _ => return None,
            }
        }
    };
    if read_reply(&mut reader) != Some(220) || w.write_all(b"EHLO crash.test\r\n").is_err() {
        return acked;
    }
    if read_reply(&mut reader) != Some(250) {
        return acked;
    }
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Eight transactions in flight per round trip.
        let ids: Vec<String> = (0..8).map(|k| format!("{prefix}-{}", n + k)).collect();
        n += 8;
        let mut batch = Vec::new();
        for id in &ids {
            // About 1.5 KB of body in 78-octet lines (RFC 5321 §4.5.3.1.6
            // refuses lines over 998; BDAT content is checked like DATA).
            let body = format!(
                "X-Sluice-Id: {id}\r\nSubject: crash test\r\n\r\n{}",
                ("z".repeat(76) + "\r\n").repeat(20)
            );
            batch.extend_from_slice(
                format!(
                    "MAIL FROM:<s@src.test>\r\nRCPT TO:<r@d{}.test>\r\nBDAT {} LAST\r\n{body}",
                    n % 13,
                    body.len()
                )
                .as_bytes(),
            );
        }
        if w.write_all(&batch).is_err() {
            return acked;
        }
        for id in ids {
            for _ in 0..2 {
                if read_reply(&mut reader) != Some(250) {
                    return acked;
                }
            }
            match read_reply(&mut reader) {
                Some(250) => acked.push(id),
                _ => return acked,
            }
        }
    }
    acked
}

#[test]
fn every_acknowledged_message_is_delivered_after_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink_port = free_port().expect("port");
    let mut sink = SinkBuilder::new(dir.path(), "sink")
        .port(sink_port)
        .record_ids()
        .start();

    let port = free_port().expect("port");
    let acked_all = Arc::new(Mutex::new(HashSet::new()));
    // Kill points vary per round: early (during the first transactions),
    // mid-stream, later (deliveries in flight).
    // More rounds (`SLUICE_CRASH_ROUNDS=N`, the long variant) kill at
    // pseudo-random moments between 100 ms and 1.5 s, seed printed.
    let rounds: usize = std::env::var("SLUICE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut x = seed;
    let mut kill_after = vec![
        Duration::from_millis(150),
        Duration::from_millis(400),
        Duration::from_millis(900),
    ];
    kill_after.truncate(rounds);
    while kill_after.len() < rounds {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        kill_after.push(Duration::from_millis(100 + x % 1400));
    }
    eprintln!("crash test: {rounds} round(s), seed {seed}");
    for (round, wait) in kill_after.iter().enumerate() {
        let mut engine = start_sluice(dir.path(), port, sink_port, &format!("r{round}"));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let stop = Arc::clone(&stop);
                let acked_all = Arc::clone(&acked_all);
                std::thread::spawn(move || {
                    let ids = inject_until_killed(port, &format!("r{round}c{c}"), &stop);
                    acked_all.lock().expect("lock").extend(ids);
                })
            })
            .collect();
        std::thread::sleep(*wait);
        engine.kill9().expect("kill -9");
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("client thread");
        }
    }
    // A last, clean run delivers whatever is left, then stops gracefully.
    let mut engine = start_sluice(dir.path(), port, sink_port, "final");
    let acked: HashSet<String> = acked_all.lock().expect("lock").clone();
    assert!(
        !acked.is_empty(),
        "some messages were acknowledged before the kills"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing = acked.len();
    while Instant::now() < deadline {
        // The sink flushes ids on its report tick; poll the file.
        let ids = sink.ids();
        let seen: HashSet<&str> = ids.iter().map(String::as_str).collect();
        missing = acked
            .iter()
            .filter(|id| !seen.contains(id.as_str()))
            .count();
        if missing == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = engine.stop(TIMEOUT).expect("stop sluice");
    assert!(status.success(), "{status:?}");
    let _ = sink.process.stop(TIMEOUT);
    let lines = sink.ids();
    let seen: HashSet<&str> = lines.iter().map(String::as_str).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .collect();
    let duplicates = lines.len() - seen.len();
    eprintln!(
        "crash test: {} acknowledged, {} delivered ids, {duplicates} duplicate deliveries, {} lost",
        acked.len(),
        seen.len(),
        lost.len()
    );
    sluice_tests::write_report(
        "crash_kill9",
        serde_json::json!({
            "rounds": rounds,
            "seed": seed,
            "kill_after_ms": kill_after.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>(),
            "acknowledged": acked.len(),
            "delivered_ids": seen.len(),
            "duplicate_deliveries": duplicates,
            "lost": lost.len(),
        }),
    );
    assert!(
        lost.is_empty(),
        "{missing} acknowledged message(s) never delivered, e.g. {:?}",
        &lost[..lost.len().min(5)]
    );
}
