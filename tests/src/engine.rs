//! A `sluice` engine for a test: [`EngineConfig`] writes the configuration
//! the suites share (one test directory holds the spool, the delivery log
//! and the engine's stderr) with hooks for each section's extra lines, and
//! [`Engine`] is the running process with its ports, its log and its CLI.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{binary, free_port, greets, log, loopback, wait_for_port, Process, TIMEOUT};

/// The configuration of one test engine. The file it writes always has:
///
/// ```toml
/// hostname = "sluice.test"
/// cores = [0]                         # cores(..)
/// [inject]
/// listen = "127.0.0.1:<free port>"
/// message_size_max = "1MiB"           # unless the inject lines set one
/// <inject lines>
/// [spool]
/// dir = "<dir>/spool"
/// segment_size = "4MiB"
/// [delivery]
/// retry = "300ms"                     # retry(..), none with no_retry()
/// reply_timeout = "5s"
/// connect_timeout = "2s"
/// idle_close = "300ms"
/// log_dir = "<dir>/log"
/// log_flush = "20ms"
/// <delivery lines>
/// [log]                               # with csv()
/// csv = true
/// [admin]                             # with admin()
/// listen = "127.0.0.1:<free port>"
/// <admin lines>
/// [[route]]                           # one per route(..)
/// pattern = "<pattern>"
/// hosts = ["127.0.0.1:<port>"]
/// <extra>                             # sections of the test's own
/// ```
#[derive(Debug, Clone)]
pub struct EngineConfig {
    dir: PathBuf,
    cores: String,
    inject: String,
    delivery: String,
    retry: Option<String>,
    csv: bool,
    admin: Option<String>,
    routes: Vec<(String, u16)>,
    extra: String,
}

impl EngineConfig {
    /// The base configuration for an engine whose files live in `dir`: one
    /// shard, a 300 ms retry, no admin listener, no route.
    pub fn new(dir: &Path) -> EngineConfig {
        EngineConfig {
            dir: dir.to_path_buf(),
            cores: "[0]".into(),
            inject: String::new(),
            delivery: String::new(),
            retry: Some("300ms".into()),
            csv: false,
            admin: None,
            routes: Vec::new(),
            extra: String::new(),
        }
    }

    /// The `cores` list as TOML, e.g. `"[0, 1]"` for two shards.
    pub fn cores(mut self, cores: &str) -> Self {
        self.cores = cores.into();
        self
    }

    /// Extra lines for `[inject]`.
    pub fn inject(mut self, lines: &str) -> Self {
        push_lines(&mut self.inject, lines);
        self
    }

    /// Extra lines for `[delivery]` (or sections that follow it).
    pub fn delivery(mut self, lines: &str) -> Self {
        push_lines(&mut self.delivery, lines);
        self
    }

    /// The `[delivery] retry` interval (default `"300ms"`).
    pub fn retry(mut self, retry: &str) -> Self {
        self.retry = Some(retry.into());
        self
    }

    /// No `retry` key: the engine's default retry schedule.
    pub fn no_retry(mut self) -> Self {
        self.retry = None;
        self
    }

    /// `[log] csv = true`: the CSV accounting log beside the JSON one.
    pub fn csv(mut self) -> Self {
        self.csv = true;
        self
    }

    /// An `[admin]` listener on a free port, with `lines` in its section.
    pub fn admin(mut self, lines: &str) -> Self {
        push_lines(self.admin.get_or_insert_with(String::new), lines);
        self
    }

    /// A `[[route]]` sending `pattern` to `127.0.0.1:port`.
    pub fn route(mut self, pattern: &str, port: u16) -> Self {
        self.routes.push((pattern.into(), port));
        self
    }

    /// Text appended after everything else (sections of the test's own).
    pub fn extra(mut self, text: &str) -> Self {
        push_lines(&mut self.extra, text);
        self
    }

    /// The configuration text for an engine listening on `port` (and with
    /// its admin listener, if any, on `admin_port`).
    pub fn text(&self, port: u16, admin_port: u16) -> String {
        let mut t = format!(
            "hostname = \"sluice.test\"\ncores = {}\n[inject]\nlisten = \"127.0.0.1:{port}\"\n",
            self.cores
        );
        // The default size limit (50 MiB) does not fit the small segments.
        if !self.inject.contains("message_size_max") {
            t.push_str("message_size_max = \"1MiB\"\n");
        }
        t.push_str(&self.inject);
        t.push_str(&format!(
            "[spool]\ndir = \"{}\"\nsegment_size = \"4MiB\"\n",
            self.dir.join("spool").display()
        ));
        t.push_str("[delivery]\n");
        if let Some(retry) = &self.retry {
            t.push_str(&format!("retry = \"{retry}\"\n"));
        }
        t.push_str(&format!(
            "reply_timeout = \"5s\"\nconnect_timeout = \"2s\"\nidle_close = \"300ms\"\n\
             log_dir = \"{}\"\nlog_flush = \"20ms\"\n",
            self.dir.join("log").display()
        ));
        t.push_str(&self.delivery);
        if self.csv {
            t.push_str("[log]\ncsv = true\n");
        }
        if let Some(admin) = &self.admin {
            t.push_str(&format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"));
            t.push_str(admin);
        }
        for (pattern, port) in &self.routes {
            t.push_str(&format!(
                "[[route]]\npattern = \"{pattern}\"\nhosts = [\"127.0.0.1:{port}\"]\n"
            ));
        }
        t.push_str(&self.extra);
        t
    }

    /// Writes `<dir>/sluice.toml` and starts `sluice run` on it with free
    /// ports, as [`Engine::start_with`].
    pub fn start(&self) -> Engine {
        let port = free_port().expect("free port for sluice");
        let admin_port = match self.admin {
            Some(_) => free_port().expect("free port for the admin listener"),
            None => 0,
        };
        Engine::start_with(&self.dir, &self.text(port, admin_port), port, admin_port)
    }
}

/// Appends `lines` and a line break unless empty.
fn push_lines(to: &mut String, lines: &str) {
    if !lines.is_empty() {
        to.push_str(lines);
        if !lines.ends_with('\n') {
            to.push('\n');
        }
    }
}

/// A running `sluice` (stopped when dropped, as every [`Process`]).
pub struct Engine {
    /// The process.
    pub process: Process,
    /// The shared injection port.
    pub port: u16,
    /// The admin listener's port (0 without one).
    pub admin_port: u16,
    /// The test directory: spool, log and stderr.
    pub dir: PathBuf,
    /// The configuration file.
    pub config: PathBuf,
    /// Where the engine's stderr goes.
    pub stderr: PathBuf,
}

impl Engine {
    /// Writes `text` as `<dir>/sluice.toml` and starts `sluice run` on it
    /// (stdout to `<dir>/sluice.out`, stderr to `<dir>/sluice.err`), for a
    /// suite whose configuration is its own; returns once `port` greets
    /// with `220` and `admin_port` (unless 0) accepts connections.
    pub fn start_with(dir: &Path, text: &str, port: u16, admin_port: u16) -> Engine {
        let config = dir.join("sluice.toml");
        std::fs::write(&config, text).expect("write the config");
        let stderr = dir.join("sluice.err");
        let mut cmd = Command::new(binary("sluice").expect("sluice binary"));
        cmd.arg("run").arg("--config").arg(&config);
        // What it prints at start (the shard and shaping layout).
        cmd.stdout(std::fs::File::create(dir.join("sluice.out")).expect("stdout file"));
        cmd.stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let process = Process::spawn("sluice", cmd).expect("start sluice");
        let engine = Engine {
            process,
            port,
            admin_port,
            dir: dir.to_path_buf(),
            config,
            stderr,
        };
        if !greets(loopback(port), TIMEOUT) {
            panic!(
                "sluice did not greet on port {port} within {TIMEOUT:?}; it said:\n{}",
                engine.said()
            );
        }
        if admin_port != 0 {
            engine.wait_port(admin_port);
        }
        engine
    }

    /// The shared injection address, `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// What the engine wrote to stderr so far.
    pub fn said(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Whether the process is still running (not exited or crashed).
    pub fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the pid exists and is ours.
        unsafe { libc::kill(self.process.pid() as libc::pid_t, 0) == 0 }
    }

    /// Every delivery-log record so far, across files.
    pub fn records(&self) -> Vec<serde_json::Value> {
        log::read_records(&self.dir.join("log"))
    }

    /// Waits until another port of the engine (a shard port) accepts
    /// connections; panics with what the engine said if it does not.
    pub fn wait_port(&self, port: u16) {
        if wait_for_port(loopback(port), TIMEOUT).is_err() {
            panic!(
                "sluice is not listening on {port}; it said:\n{}",
                self.said()
            );
        }
    }

    /// Waits for the admin listener ([`EngineConfig::start`] already does).
    pub fn wait_admin(&self) {
        self.wait_port(self.admin_port);
    }

    /// Runs `sluice ARGS --admin 127.0.0.1:PORT`: (success, stdout, stderr).
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

    /// An HTTP GET on the admin listener: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.admin_port, "GET", path, "")
    }
}

/// A minimal HTTP/1.1 request to `127.0.0.1:port` with `Connection:
/// close`: (status, body); status 0 when the answer has none.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&loopback(port), TIMEOUT).expect("connect admin");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_every_section_in_order() {
        let dir = Path::new("/t");
        let text = EngineConfig::new(dir)
            .cores("[0, 1]")
            .inject("shard_port_base = 7000")
            .retry("200ms")
            .delivery("dsn = false")
            .csv()
            .admin("allow = [\"192.0.2.0/24\"]")
            .route("*", 2525)
            .extra("[dkim]\nx = 1")
            .text(25, 8080);
        let want = "hostname = \"sluice.test\"\ncores = [0, 1]\n[inject]\n\
            listen = \"127.0.0.1:25\"\nmessage_size_max = \"1MiB\"\nshard_port_base = 7000\n\
            [spool]\ndir = \"/t/spool\"\nsegment_size = \"4MiB\"\n[delivery]\nretry = \"200ms\"\n\
            reply_timeout = \"5s\"\nconnect_timeout = \"2s\"\nidle_close = \"300ms\"\n\
            log_dir = \"/t/log\"\nlog_flush = \"20ms\"\ndsn = false\n[log]\ncsv = true\n\
            [admin]\nlisten = \"127.0.0.1:8080\"\nallow = [\"192.0.2.0/24\"]\n\
            [[route]]\npattern = \"*\"\nhosts = [\"127.0.0.1:2525\"]\n[dkim]\nx = 1\n";
        assert_eq!(text, want);
    }

    #[test]
    fn a_size_limit_of_the_test_replaces_the_default_and_no_retry_has_none() {
        let text = EngineConfig::new(Path::new("/t"))
            .inject("message_size_max = \"64KiB\"")
            .no_retry()
            .text(25, 0);
        assert_eq!(text.matches("message_size_max").count(), 1, "{text}");
        assert!(text.contains("\"64KiB\""), "{text}");
        assert!(!text.contains("retry"), "{text}");
        assert!(!text.contains("[admin]"), "{text}");
        assert!(!text.contains("[log]"), "{text}");
    }
}
