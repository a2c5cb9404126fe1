//! Shared pieces of the bad-input and interop suites (`bad_input.rs`,
//! `interop_inject.rs`, `interop_deliver.rs`): a `sluice` engine with a
//! configurable `[inject]` section, a `sluice-sink` that records the
//! `X-Sluice-Id` of every message it accepts and keeps a JSON summary, and
//! polling helpers with a deadline. Everything listens on 127.0.0.1 only.
#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{binary, free_port, read_json, wait_for_port, Process};

/// Longest any single wait in these suites lasts.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a test waits for deliveries to settle.
pub const SETTLE: Duration = Duration::from_secs(40);

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A running `sluice-sink` that records ids and rewrites its summary often.
pub struct Sink {
    pub process: Process,
    pub port: u16,
    pub ids: PathBuf,
    pub summary: PathBuf,
}

impl Sink {
    pub fn start(dir: &Path, name: &str) -> Sink {
        Sink::start_with(dir, name, &[])
    }

    /// As [`Sink::start`], with extra `sluice-sink` arguments.
    pub fn start_with(dir: &Path, name: &str, extra: &[&str]) -> Sink {
        let port = free_port().expect("free port for the sink");
        let ids = dir.join(format!("{name}-ids.txt"));
        let summary = dir.join(format!("{name}-summary.json"));
        let mut cmd = Command::new(binary("sluice-sink").expect("sluice-sink binary"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--cores", "1"])
            .args(["--stats-interval", "0", "--summary-interval", "100ms"])
            .arg("--record-ids")
            .arg(&ids)
            .arg("--summary")
            .arg(&summary)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = Process::spawn("sluice-sink", cmd).expect("start the sink");
        wait_for_port(loopback(port), TIMEOUT).expect("sink listening");
        Sink {
            process,
            port,
            ids,
            summary,
        }
    }

    /// How often each id arrived.
    pub fn ids(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&self.ids) {
            for line in text.lines().filter(|l| !l.is_empty()) {
                *counts.entry(line.to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Messages accepted so far, from the summary (0 before the first write).
    pub fn messages(&self) -> u64 {
        if !self.summary.exists() {
            return 0;
        }
        read_json(&self.summary)
            .ok()
            .and_then(|v| v["messages"].as_u64())
            .unwrap_or(0)
    }
}

/// A running `sluice` with one shard, its stderr kept in the test directory.
pub struct Engine {
    pub process: Process,
    pub port: u16,
    pub stderr: PathBuf,
}

impl Engine {
    /// Starts `sluice run` with one shard, `[inject]` extended by
    /// `inject_extra`, and every domain routed to `127.0.0.1:route_port`.
    /// Returns once the listener greets with `220`.
    pub fn start(dir: &Path, inject_extra: &str, route_port: u16) -> Engine {
        let port = free_port().expect("free port for sluice");
        let cfg = dir.join("sluice.toml");
        // The default size limit (50 MiB) does not fit the small test segments.
        let size = if inject_extra.contains("message_size_max") {
            ""
        } else {
            "message_size_max = \"1MiB\""
        };
        let text = format!(
            r#"hostname = "sluice.test"
cores = [0]
[inject]
listen = "127.0.0.1:{port}"
{inject_extra}
{size}
[spool]
dir = "{spool}"
segment_size = "4MiB"
[delivery]
retry = "300ms"
reply_timeout = "5s"
connect_timeout = "2s"
idle_close = "300ms"
log_dir = "{log}"
log_flush = "20ms"
[[route]]
pattern = "*"
hosts = ["127.0.0.1:{route_port}"]
"#,
            spool = dir.join("spool").display(),
            log = dir.join("log").display(),
        );
        std::fs::write(&cfg, text).expect("write the config");
        let stderr = dir.join("sluice.err");
        let mut cmd = Command::new(binary("sluice").expect("sluice binary"));
        cmd.arg("run").arg("--config").arg(&cfg);
        cmd.stdout(Stdio::null());
        cmd.stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let process = Process::spawn("sluice", cmd).expect("start sluice");
        if !greets(loopback(port)) {
            let said = std::fs::read_to_string(&stderr).unwrap_or_default();
            panic!("sluice did not greet on port {port} within {TIMEOUT:?}; it said:\n{said}");
        }
        Engine {
            process,
            port,
            stderr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// Whether the process is still running (not exited or crashed).
    pub fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the pid exists and is ours.
        unsafe { libc::kill(self.process.pid() as libc::pid_t, 0) == 0 }
    }

    pub fn said(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Waits until `addr` greets with `220` (not `421 4.3.2` while recovering).
pub fn greets(addr: SocketAddr) -> bool {
    let start = Instant::now();
    while start.elapsed() < TIMEOUT {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut line = String::new();
            if BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("220 ") {
                let _ = (&s).write_all(b"QUIT\r\n");
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Polls `done` every 50 ms until it holds; panics after [`SETTLE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < SETTLE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a program can be run (found on PATH or at its absolute path).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The output of a peer program run with a deadline.
pub struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion, killing it after `limit` (then `success` is
/// false and stderr says so). Output goes through files so that a chatty
/// peer never blocks on a full pipe.
pub fn run_bounded(dir: &Path, tag: &str, mut cmd: Command, limit: Duration) -> Ran {
    let out_path = dir.join(format!("{tag}.out"));
    let err_path = dir.join(format!("{tag}.err"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {tag}: {e}"));
    let start = Instant::now();
    let (success, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.success(), false),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break (false, true);
            }
        }
    };
    let mut stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if timed_out {
        stderr.push_str(&format!("\n[{tag} killed after {limit:?}]"));
    }
    Ran {
        success,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr,
    }
}

/// One message for [`send_each`]: sender, recipient, `X-Sluice-Id`, body.
pub struct Message<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub id: &'a str,
    pub body: &'a str,
}

/// Sends `messages` on one connection to `addr`, one transaction at a
/// time, and panics unless every step gets its expected reply (`220`,
/// `250` to EHLO/MAIL/RCPT, `354`, `250` after the data, `221`).
pub fn send_each(addr: SocketAddr, messages: &[Message<'_>]) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut w = stream;
    let mut reply = |want: &str| {
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("reply");
            assert!(line.starts_with(want), "want {want}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    };
    reply("220");
    w.write_all(b"EHLO client.test\r\n").expect("write");
    reply("250");
    for m in messages {
        let txn = format!("MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n", m.from, m.to);
        w.write_all(txn.as_bytes()).expect("write");
        reply("250");
        reply("250");
        reply("354");
        let body = format!(
            "X-Sluice-Id: {id}\r\nSubject: {id}\r\n\r\n{}\r\n.\r\n",
            m.body,
            id = m.id
        );
        w.write_all(body.as_bytes()).expect("write");
        reply("250");
    }
    w.write_all(b"QUIT\r\n").expect("write");
    reply("221");
}
