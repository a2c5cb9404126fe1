//! A `sluice-sink` for a test: [`SinkBuilder`] picks its address and what
//! it records, [`Sink`] reads what it recorded. Every file it writes is
//! named after the sink (`<name>-summary.json`, `<name>-ids.txt`,
//! `<name>-peers.txt`, `<name>-capture/`) in the test directory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{binary, free_port, read_json, read_lines, wait_for_port, Process, TIMEOUT};

/// How to start a sink: one shard on `127.0.0.1` and a free port unless
/// told otherwise, its JSON summary rewritten every 100 ms.
#[derive(Debug, Clone)]
pub struct SinkBuilder {
    dir: PathBuf,
    name: String,
    ip: String,
    port: Option<u16>,
    record_ids: bool,
    capture: bool,
    record_peers: bool,
    args: Vec<String>,
}

impl SinkBuilder {
    /// A sink named `name` whose files go into `dir`.
    pub fn new(dir: &Path, name: &str) -> SinkBuilder {
        SinkBuilder {
            dir: dir.to_path_buf(),
            name: name.into(),
            ip: "127.0.0.1".into(),
            port: None,
            record_ids: false,
            capture: false,
            record_peers: false,
            args: Vec::new(),
        }
    }

    /// Listen on this loopback address (e.g. `127.0.0.2`) instead.
    pub fn ip(mut self, ip: &str) -> Self {
        self.ip = ip.into();
        self
    }

    /// Listen on this port instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Record the `X-Sluice-Id` of every accepted message (`--record-ids`).
    pub fn record_ids(mut self) -> Self {
        self.record_ids = true;
        self
    }

    /// Keep every accepted message (`--capture`, up to 100 000).
    pub fn capture(mut self) -> Self {
        self.capture = true;
        self
    }

    /// Record the peer address of every connection (`--record-peers`).
    pub fn record_peers(mut self) -> Self {
        self.record_peers = true;
        self
    }

    /// More `sluice-sink` arguments (a fault profile, TLS files).
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Starts the sink and waits for its listener.
    pub fn start(self) -> Sink {
        let port = match self.port {
            Some(p) => p,
            None => free_port().expect("free port for the sink"),
        };
        let file = |what: &str| self.dir.join(format!("{}-{what}", self.name));
        let summary = file("summary.json");
        let ids = self.record_ids.then(|| file("ids.txt"));
        let peers = self.record_peers.then(|| file("peers.txt"));
        let capture = self.capture.then(|| file("capture"));
        let mut cmd = Command::new(binary("sluice-sink").expect("sluice-sink binary"));
        cmd.args(["--listen", &format!("{}:{port}", self.ip), "--cores", "1"])
            .args(["--stats-interval", "0", "--summary-interval", "100ms"])
            .arg("--summary")
            .arg(&summary);
        if let Some(ids) = &ids {
            cmd.arg("--record-ids").arg(ids);
        }
        if let Some(peers) = &peers {
            cmd.arg("--record-peers").arg(peers);
        }
        if let Some(capture) = &capture {
            std::fs::create_dir_all(capture).expect("capture dir");
            cmd.args(["--capture-max", "100000"])
                .arg("--capture")
                .arg(capture);
        }
        cmd.args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = Process::spawn("sluice-sink", cmd).expect("start the sink");
        let addr: SocketAddr = format!("{}:{port}", self.ip).parse().expect("sink address");
        wait_for_port(addr, TIMEOUT).expect("sink listening");
        Sink {
            process,
            port,
            summary,
            ids,
            peers,
            capture,
        }
    }
}

/// A running `sluice-sink` (stopped when dropped).
pub struct Sink {
    /// The process.
    pub process: Process,
    /// The port it listens on.
    pub port: u16,
    summary: PathBuf,
    ids: Option<PathBuf>,
    peers: Option<PathBuf>,
    capture: Option<PathBuf>,
}

impl Sink {
    /// A sink on a free 127.0.0.1 port with `args`, recording only its
    /// summary.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Sink {
        SinkBuilder::new(dir, name).args(args).start()
    }

    /// The JSON summary (null before its first write).
    pub fn summary(&self) -> serde_json::Value {
        if !self.summary.exists() {
            return serde_json::Value::Null;
        }
        read_json(&self.summary).unwrap_or(serde_json::Value::Null)
    }

    /// The summary file (the sink writes it one last time as it stops).
    pub fn summary_path(&self) -> &Path {
        &self.summary
    }

    /// Messages accepted so far, from the summary (0 before its first write).
    pub fn messages(&self) -> u64 {
        self.summary()["messages"].as_u64().unwrap_or(0)
    }

    /// Ids received so far, in order (needs [`SinkBuilder::record_ids`]).
    pub fn ids(&self) -> Vec<String> {
        read_lines(
            self.ids
                .as_deref()
                .expect("a sink started with record_ids()"),
        )
    }

    /// How often each id arrived (needs [`SinkBuilder::record_ids`]).
    pub fn id_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for id in self.ids() {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    /// Peer addresses of the connections accepted so far, without the
    /// test's own readiness probes from 127.0.0.1 (needs
    /// [`SinkBuilder::record_peers`]).
    pub fn peers(&self) -> Vec<String> {
        self.all_peers()
            .into_iter()
            .filter(|p| p != "127.0.0.1")
            .collect()
    }

    /// Every recorded peer address, 127.0.0.1 included (the readiness
    /// probe, and an engine connecting unbound).
    pub fn all_peers(&self) -> Vec<String> {
        read_lines(
            self.peers
                .as_deref()
                .expect("a sink started with record_peers()"),
        )
    }

    /// Every captured message (`.eml`) with its path, sorted by path
    /// (needs [`SinkBuilder::capture`]).
    pub fn captured(&self) -> Vec<(PathBuf, String)> {
        let dir = self
            .capture
            .as_deref()
            .expect("a sink started with capture()");
        let mut v: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
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
