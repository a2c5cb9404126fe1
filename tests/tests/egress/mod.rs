//! What the MX and source suites (`mx.rs`, `sources.rs`) share beyond
//! `sluice_tests`: their sink (on a chosen 127.0.0.x address and port,
//! recording ids and peers, capturing), their engine (the shared base, the
//! test's own `[delivery]` lines and routes), an injector of messages with
//! extra headers, the delivery log per recipient, their settle time and a
//! scripted DNS server (`mx_dns.py`, Python dnslib). Loopback only.
#![allow(dead_code)] // each test file uses a different subset

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice_tests::{read_lines, read_records, EngineConfig, Sink, SinkBuilder, Smtp};

/// Shaping rules with sources on 127.0.0.2 (`s2`) and 127.0.0.3 (`s3`),
/// a pool for each (`two`, `three`), and `two` the default rule's pool.
pub const TWO_POOLS: &str = r#"
[default]
pool = "two"

[source.s2]
bind = "127.0.0.2"
ehlo = "s2.sluice.test"

[source.s3]
bind = "127.0.0.3"
ehlo = "s3.sluice.test"

[pool.two]
sources = { s2 = 1 }

[pool.three]
sources = { s3 = 1 }
"#;

/// Longest a test waits for outcomes.
pub const SETTLE: Duration = Duration::from_secs(40);

/// A sink on `ip:port` recording ids and peers and capturing messages,
/// with more `sluice-sink` flags (e.g. a fault profile:
/// `--reject connect:421=1`).
pub fn sink(dir: &Path, name: &str, ip: &str, port: u16, args: &[&str]) -> Sink {
    SinkBuilder::new(dir, name)
        .ip(ip)
        .port(port)
        .record_ids()
        .record_peers()
        .capture()
        .args(args)
        .start()
}

/// The engine's config: the shared base (one shard, 300 ms retry) with
/// `extra` in `[delivery]` (and the sections after it: routes, `[dns]`).
pub fn config(dir: &Path, extra: &str) -> EngineConfig {
    EngineConfig::new(dir).delivery(extra)
}

/// One message to inject: id, recipients, extra header lines.
pub struct Msg<'a> {
    pub id: &'a str,
    pub rcpts: &'a [&'a str],
    pub headers: &'a str,
}

/// Injects messages over one SMTP session; returns after every `250`.
pub fn inject(port: u16, messages: &[Msg<'_>]) {
    let mut c = Smtp::connect_ready(port);
    for m in messages {
        let data = format!(
            "X-Sluice-Id: {id}\r\n{headers}Subject: test {id}\r\n\r\nbody of {id}\r\n",
            id = m.id,
            headers = m.headers
        );
        c.transaction("sender@origin.test", m.rcpts, &data);
    }
    c.close();
}

/// Injects one message per (id, recipient) over one SMTP session.
pub fn inject_each(port: u16, messages: &[(String, String)]) {
    let rcpts: Vec<[&str; 1]> = messages.iter().map(|(_, r)| [r.as_str()]).collect();
    let msgs: Vec<Msg<'_>> = messages
        .iter()
        .zip(&rcpts)
        .map(|((id, _), rcpts)| Msg {
            id,
            rcpts,
            headers: "",
        })
        .collect();
    inject(port, &msgs);
}

/// Every delivery log record so far.
pub fn log_records(dir: &Path) -> Vec<serde_json::Value> {
    read_records(&dir.join("log"))
}

/// Records about `recipient`.
pub fn records_for(dir: &Path, recipient: &str) -> Vec<serde_json::Value> {
    log_records(dir)
        .into_iter()
        .filter(|r| r["recipient"] == recipient)
        .collect()
}

/// Polls `done` every 50 ms until it holds; panics after [`SETTLE`].
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    sluice_tests::wait_until(what, SETTLE, done)
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
        read_lines(&self.queries)
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
