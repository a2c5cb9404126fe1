//! Shared pieces of the MX and source tests (`mx.rs`, `sources.rs`):
//! sinks on chosen 127.0.0.x addresses, the engine with a given config,
//! a plain SMTP injector that can add headers, the delivery log, and a
//! scripted DNS server (`mx_dns.py`, Python dnslib). Loopback only.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{binary, wait_for_port, Process};

/// Longest any single wait lasts.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a test waits for outcomes.
pub const SETTLE: Duration = Duration::from_secs(40);

/// A `sluice-sink` on `ip:port` recording ids, peers and messages.
pub struct Sink {
    _process: Process,
    pub ids: PathBuf,
    pub peers: PathBuf,
    pub capture: PathBuf,
}

impl Sink {
    pub fn start(dir: &Path, name: &str, ip: &str, port: u16) -> Sink {
        Sink::start_with(dir, name, ip, port, &[])
    }

    /// Like [`Sink::start`], with more `sluice-sink` flags (e.g. a fault
    /// profile: `--reject connect:421=1`).
    pub fn start_with(dir: &Path, name: &str, ip: &str, port: u16, extra: &[&str]) -> Sink {
        let ids = dir.join(format!("{name}-ids.txt"));
        let peers = dir.join(format!("{name}-peers.txt"));
        let capture = dir.join(format!("{name}-capture"));
        std::fs::create_dir_all(&capture).expect("capture dir");
        let mut cmd = Command::new(binary("sluice-sink").expect("sluice-sink binary"));
        cmd.args(["--listen", &format!("{ip}:{port}"), "--cores", "1"])
            .args(["--stats-interval", "0", "--summary-interval", "0"])
            .arg("--record-ids")
            .arg(&ids)
            .arg("--record-peers")
            .arg(&peers)
            .arg("--capture")
            .arg(&capture)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = Process::spawn("sluice-sink", cmd).expect("start the sink");
        let addr: SocketAddr = format!("{ip}:{port}").parse().expect("sink address");
        wait_for_port(addr, TIMEOUT).expect("sink listening");
        Sink {
            _process: process,
            ids,
            peers,
            capture,
        }
    }

    /// Ids received so far.
    pub fn ids(&self) -> Vec<String> {
        lines(&self.ids)
    }

    /// Peer addresses of the connections accepted so far, without the
    /// test's own readiness probes (from 127.0.0.1).
    pub fn peers(&self) -> Vec<String> {
        lines(&self.peers)
            .into_iter()
            .filter(|p| p != "127.0.0.1")
            .collect()
    }

    /// Every captured message, as text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.capture)
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                out.push(t);
            }
        }
        out
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The engine's config: the common parts plus `extra` (sections).
pub fn write_config(dir: &Path, inject_port: u16, extra: &str) -> PathBuf {
    let cfg = dir.join("sluice.toml");
    let text = format!(
        r#"hostname = "sluice.test"
cores = [0]
[inject]
listen = "127.0.0.1:{inject_port}"
message_size_max = "1MiB"
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
{extra}
"#,
        spool = dir.join("spool").display(),
        log = dir.join("log").display(),
    );
    std::fs::write(&cfg, text).expect("write the config");
    cfg
}

/// Starts `sluice run` and waits for its listener.
pub fn start_engine(dir: &Path, cfg: &Path, inject_port: u16) -> Process {
    let mut cmd = Command::new(binary("sluice").expect("sluice binary"));
    cmd.arg("run")
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sluice.err")).expect("stderr file"));
    let p = Process::spawn("sluice", cmd).expect("start sluice");
    wait_for_port(SocketAddr::from(([127, 0, 0, 1], inject_port)), TIMEOUT)
        .expect("sluice listening");
    p
}

/// One message to inject: id, recipients, extra header lines.
pub struct Msg<'a> {
    pub id: &'a str,
    pub rcpts: &'a [&'a str],
    pub headers: &'a str,
}

/// Injects messages over one SMTP session; returns after every `250`.
pub fn inject(port: u16, messages: &[Msg<'_>]) {
    let start = Instant::now();
    let (mut r, mut w) = loop {
        let s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), TIMEOUT)
            .expect("connect to sluice");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut greeting = String::new();
        r.read_line(&mut greeting).expect("read the greeting");
        if greeting.starts_with("220") {
            break (r, s);
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "sluice keeps answering {greeting:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut expect = |code: &str| loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read a reply");
        assert!(n > 0, "sluice closed the connection");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    };
    w.write_all(b"EHLO injector.test\r\n").unwrap();
    expect("250");
    for m in messages {
        w.write_all(b"MAIL FROM:<sender@origin.test>\r\n").unwrap();
        expect("250");
        for rc in m.rcpts {
            w.write_all(format!("RCPT TO:<{rc}>\r\n").as_bytes())
                .unwrap();
            expect("250");
        }
        w.write_all(b"DATA\r\n").unwrap();
        expect("354");
        let body = format!(
            "X-Sluice-Id: {id}\r\n{headers}Subject: test {id}\r\n\r\nbody of {id}\r\n.\r\n",
            id = m.id,
            headers = m.headers
        );
        w.write_all(body.as_bytes()).unwrap();
        expect("250");
    }
    w.write_all(b"QUIT\r\n").unwrap();
    expect("221");
}

/// Every delivery log record so far.
pub fn log_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("log"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                out.push(v);
            }
        }
    }
    out
}

/// Records about `recipient`.
pub fn records_for(dir: &Path, recipient: &str) -> Vec<serde_json::Value> {
    log_records(dir)
        .into_iter()
        .filter(|r| r["recipient"] == recipient)
        .collect()
}

/// Polls `done` every 20 ms until it holds or [`SETTLE`] passes.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < SETTLE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The scripted DNS server; killed on drop.
pub struct Dns {
    child: Child,
    pub port: u16,
    /// The zone file (rewrite it with [`Dns::set_zone`]).
    pub zone: PathBuf,
    /// Every question asked, one `name TYPE` line each.
    pub queries: PathBuf,
}

impl Dns {
    /// Serves `zone` (see `mx_dns.py`) on a free 127.0.0.1 port.
    pub fn start(dir: &Path, zone: &serde_json::Value) -> Dns {
        let path = dir.join("zone.json");
        let queries = dir.join("dns-queries.txt");
        std::fs::write(&path, zone.to_string()).expect("write the zone");
        // Next to this file, as compiled (not the library's notion of the
        // workspace, which another checkout sharing the target dir may set).
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mx_dns.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&path)
            .arg(&queries)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with dnslib (scripts/setup.sh installs it)");
        let mut out = child.stdout.take().expect("stdout");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).expect("read the port") == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).expect("utf-8");
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("mx_dns.py said {line:?}"));
        Dns {
            child,
            port,
            zone: path,
            queries,
        }
    }

    /// Replaces the zone; the server reads it again at its next question.
    pub fn set_zone(&self, zone: &serde_json::Value) {
        // Written aside and renamed: the server never reads half a file.
        let tmp = self.zone.with_extension("tmp");
        std::fs::write(&tmp, zone.to_string()).expect("write the zone");
        std::fs::rename(&tmp, &self.zone).expect("replace the zone");
    }

    /// How many questions for `name` (any type) were asked so far.
    pub fn asked(&self, name: &str) -> usize {
        lines(&self.queries)
            .iter()
            .filter(|l| l.split(' ').next() == Some(name))
            .count()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
