//! Shared pieces of the operator suites (`accounting.rs`, `admin.rs`): a
//! `sluice` engine with its admin listener, accounting log and CSV on, a
//! small SMTP client, the accounting log reader, an HTTP client for the
//! admin listener, and the `sluice` CLI. Everything listens on 127.0.0.1.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{binary, free_port, wait_for_port, Process};

/// Longest any single wait lasts.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a test waits for deliveries to settle.
pub const SETTLE: Duration = Duration::from_secs(60);

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A running `sluice-sink`.
pub struct Sink {
    pub process: Process,
    pub port: u16,
    pub summary: PathBuf,
    pub capture: PathBuf,
}

impl Sink {
    /// Starts a one-shard sink with `extra` flags, capturing messages.
    pub fn start(dir: &Path, name: &str, extra: &[&str]) -> Sink {
        let port = free_port().expect("free port for the sink");
        let summary = dir.join(format!("{name}-summary.json"));
        let capture = dir.join(format!("{name}-capture"));
        std::fs::create_dir_all(&capture).expect("capture dir");
        let mut cmd = Command::new(binary("sluice-sink").expect("sluice-sink binary"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--cores", "1"])
            .args(["--stats-interval", "0", "--summary-interval", "100ms"])
            .args(["--capture-max", "100000"])
            .arg("--capture")
            .arg(&capture)
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
            summary,
            capture,
        }
    }

    /// The sink's JSON summary (null before its first write).
    pub fn summary(&self) -> serde_json::Value {
        std::fs::read_to_string(&self.summary)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Every captured message.
    pub fn captured(&self) -> Vec<(PathBuf, String)> {
        let mut v: Vec<(PathBuf, String)> = std::fs::read_dir(&self.capture)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("eml"))
                    .map(|e| {
                        let text =
                            String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default())
                                .into_owned();
                        (e.path(), text)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A running `sluice` with one shard, its admin listener and its log.
pub struct Engine {
    pub process: Process,
    pub port: u16,
    pub admin_port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub stderr: PathBuf,
}

impl Engine {
    /// Starts `sluice run` routing every domain to `route_port`, with
    /// `extra` appended to the configuration (sections of your own).
    pub fn start(dir: &Path, route_port: u16, delivery_extra: &str, extra: &str) -> Engine {
        Engine::start_on(dir, route_port, "[0]", "", delivery_extra, extra)
    }

    /// Like [`Engine::start`], with one shard per CPU of `cores` (TOML,
    /// e.g. `"[0, 1]"`) and `inject_extra` in `[inject]`.
    pub fn start_on(
        dir: &Path,
        route_port: u16,
        cores: &str,
        inject_extra: &str,
        delivery_extra: &str,
        extra: &str,
    ) -> Engine {
        let port = free_port().expect("free port for sluice");
        let admin_port = free_port().expect("free port for the admin listener");
        let config = dir.join("sluice.toml");
        let text = format!(
            r#"hostname = "sluice.test"
cores = {cores}
[inject]
listen = "127.0.0.1:{port}"
message_size_max = "1MiB"
{inject_extra}
[spool]
dir = "{spool}"
segment_size = "4MiB"
[delivery]
retry = "200ms"
reply_timeout = "5s"
connect_timeout = "2s"
idle_close = "300ms"
log_dir = "{log}"
log_flush = "20ms"
{delivery_extra}
[log]
csv = true
[admin]
listen = "127.0.0.1:{admin_port}"
{extra}
[[route]]
pattern = "*"
hosts = ["127.0.0.1:{route_port}"]
"#,
            spool = dir.join("spool").display(),
            log = dir.join("log").display(),
        );
        std::fs::write(&config, text).expect("write the config");
        let stderr = dir.join("sluice.err");
        let mut cmd = Command::new(binary("sluice").expect("sluice binary"));
        cmd.arg("run").arg("--config").arg(&config);
        cmd.stdout(Stdio::null());
        cmd.stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let process = Process::spawn("sluice", cmd).expect("start sluice");
        let e = Engine {
            process,
            port,
            admin_port,
            dir: dir.to_path_buf(),
            config,
            stderr,
        };
        if !greets(loopback(port)) {
            panic!(
                "sluice did not start on port {port} (admin {admin_port}); it said:\n{}",
                e.said()
            );
        }
        e
    }

    pub fn said(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Every accounting record so far, across files.
    pub fn records(&self) -> Vec<serde_json::Value> {
        read_records(&self.dir.join("log"))
    }

    /// Runs `sluice ARGS --admin 127.0.0.1:PORT`; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(binary("sluice").expect("sluice binary"))
            .args(args)
            .arg("--admin")
            .arg(format!("127.0.0.1:{}", self.admin_port))
            .stdin(Stdio::null())
            .output()
            .expect("run sluice");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Waits for the admin listener.
    pub fn wait_admin(&self) {
        if wait_for_port(loopback(self.admin_port), TIMEOUT).is_err() {
            panic!(
                "no admin listener on {}; sluice said:\n{}",
                self.admin_port,
                self.said()
            );
        }
    }

    /// An HTTP GET on the admin listener: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.admin_port, "GET", path, "")
    }
}

/// Every JSON record in `dir`'s files.
pub fn read_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.path().extension().and_then(|x| x.to_str()) != Some("jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                out.push(v);
            }
        }
    }
    out
}

pub fn count(records: &[serde_json::Value], kind: &str) -> usize {
    records.iter().filter(|r| r["type"] == kind).count()
}

/// A minimal HTTP/1.1 request with `Connection: close`.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&loopback(port), TIMEOUT).expect("connect admin");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Waits until `addr` greets with `220`.
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

/// A blocking SMTP client for injection (one connection, many messages).
pub struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    pub fn connect(port: u16) -> Smtp {
        let s = TcpStream::connect_timeout(&loopback(port), TIMEOUT).expect("connect sluice");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut c = Smtp {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        };
        assert_eq!(c.reply().0, 220);
        assert_eq!(c.cmd("EHLO client.test").0, 250);
        c
    }

    /// Reads one (possibly multi-line) reply: (code, last line).
    pub fn reply(&mut self) -> (u16, String) {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read reply");
            assert!(line.len() >= 4, "short reply {line:?}");
            if line.as_bytes()[3] == b' ' {
                return (
                    line[..3].parse().expect("code"),
                    line.trim_end().to_string(),
                );
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        self.reply()
    }

    /// Sends one message; returns the spool id from `250 2.0.0 s<k>.<id> queued`.
    pub fn send(&mut self, from: &str, to: &[&str], tag: &str) -> String {
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
        for r in to {
            assert_eq!(self.cmd(&format!("RCPT TO:<{r}>")).0, 250, "RCPT {r}");
        }
        assert_eq!(self.cmd("DATA").0, 354);
        let body = format!(
            "From: <{from}>\r\nTo: <{}>\r\nSubject: {tag}\r\nX-Sluice-Id: {tag}\r\nMessage-ID: <{tag}@client.test>\r\n\r\nBody of {tag}.\r\n.",
            to.first().copied().unwrap_or("")
        );
        let (code, text) = self.cmd(&body);
        assert_eq!(code, 250, "{text}");
        text.split_whitespace()
            .find(|w| w.starts_with('s') && w.contains('.'))
            .unwrap_or("")
            .to_string()
    }

    pub fn quit(mut self) {
        let _ = self.cmd("QUIT");
    }
}
