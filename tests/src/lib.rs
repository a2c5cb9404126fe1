//! Support for the end-to-end tests in `tests/tests/`: locating the real
//! binaries, starting them as child processes that are always stopped
//! (SIGTERM, then SIGKILL) when the test ends, picking free loopback ports and
//! waiting for listeners; on top of that, one way for every suite to run a
//! `sluice` engine ([`EngineConfig`], [`Engine`]), a `sluice-sink`
//! ([`SinkBuilder`], [`Sink`]), inject mail ([`Smtp`]), read the delivery
//! log ([`read_records`]) and poll with a deadline ([`wait_until`]). Each
//! test file keeps only what is its own.
//!
//! Nothing here reaches beyond 127.0.0.0/8: the tests drive the binaries
//! with this crate's small SMTP client, the project's own harness or
//! independent peers (Postfix's `smtp-source`, Python's smtplib, swaks).
#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod engine;
mod log;
mod sink;
mod smtp;

pub use engine::{http, Engine, EngineConfig};
pub use log::{count, read_records, records_of};
pub use sink::{Sink, SinkBuilder};
pub use smtp::Smtp;

/// Longest any single wait of the support code lasts (a connect, a reply,
/// a listener coming up).
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Errors from the test support helpers.
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    /// A binary was not found in any of the target directories searched.
    #[error("binary `{name}` not found (looked in {searched:?}); run `cargo build --release --bins` first")]
    BinaryMissing {
        /// The binary's name.
        name: String,
        /// The directories that were searched.
        searched: Vec<PathBuf>,
    },
    /// A listener did not come up in time.
    #[error("nothing listened on {addr} within {waited:?}")]
    PortTimeout {
        /// The address waited for.
        addr: SocketAddr,
        /// How long we waited.
        waited: Duration,
    },
    /// Starting or stopping a process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The tests crate lives at <root>/tests, so its parent always exists.
    here.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// Finds a workspace binary, preferring the release build (the one the
/// README's test command builds), then the debug build. `SLUICE_BIN_DIR`
/// overrides the search.
pub fn binary(name: &str) -> Result<PathBuf, SupportError> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("SLUICE_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    dirs.push(target.join("release"));
    dirs.push(target.join("debug"));
    for dir in &dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(SupportError::BinaryMissing {
        name: name.to_string(),
        searched: dirs,
    })
}

/// Asks the kernel for a free TCP port on 127.0.0.1. The port is released
/// before returning, so a tiny race with other processes remains.
///
/// Within one process (the tests of one test binary run in parallel
/// threads) a port is never handed out twice: the servers under test bind
/// with `SO_REUSEPORT`, so two of them given the same port would both
/// start and silently share its connections, and one test's messages
/// would arrive at the other's sink.
pub fn free_port() -> Result<u16, SupportError> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..64 {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| SupportError::Io {
            what: "bind 127.0.0.1:0".into(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .map_err(|source| SupportError::Io {
                what: "local_addr".into(),
                source,
            })?;
        // A poisoned lock only means another test panicked; the set is intact.
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err(SupportError::Io {
        what: "find a port not handed out before".into(),
        source: io::Error::new(io::ErrorKind::AddrInUse, "64 tries"),
    })
}

/// Two consecutive free ports on 127.0.0.1 (a `shard_port_base` and the
/// port after it); returns the first.
pub fn free_port_pair() -> Result<u16, SupportError> {
    for _ in 0..100 {
        let base = free_port()?;
        if base == u16::MAX {
            continue;
        }
        let a = TcpListener::bind(loopback(base));
        let b = TcpListener::bind(loopback(base + 1));
        if a.is_ok() && b.is_ok() {
            return Ok(base);
        }
    }
    Err(SupportError::Io {
        what: "find two consecutive free ports on 127.0.0.1".into(),
        source: io::Error::new(io::ErrorKind::AddrInUse, "100 tries"),
    })
}

/// Waits until `addr` accepts a TCP connection, polling every 20 ms.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<(), SupportError> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(SupportError::PortTimeout {
        addr,
        waited: timeout,
    })
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `addr` greets with `220` (not `421 4.3.2` while the engine
/// recovers its spool), polling every 50 ms for at most `timeout`; says
/// `QUIT` on the connection that was greeted.
pub fn greets(addr: SocketAddr, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
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

/// Polls `done` every 50 ms until it holds; panics naming `what` after
/// `limit` (each suite passes its own settle time).
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
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

/// The output of a peer program run with [`run_bounded`].
pub struct Ran {
    /// Whether it exited with success before the limit.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error, and a note when it was killed at the limit.
    pub stderr: String,
}

/// Runs `cmd` to completion, killing it after `limit` (then `success` is
/// false and stderr says so). Output goes through `<dir>/<tag>.out` and
/// `.err` so that a chatty peer never blocks on a full pipe.
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

/// A child process that is stopped when dropped: SIGTERM, a grace period,
/// then SIGKILL. Tests can never leave a server running.
pub struct Process {
    name: String,
    child: Option<Child>,
}

impl Process {
    /// Starts `cmd` with stdin closed; stdout/stderr are inherited so that a
    /// failing test shows what the binary said.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Process, SupportError> {
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().map_err(|source| SupportError::Io {
            what: format!("spawn {name}"),
            source,
        })?;
        Ok(Process {
            name: name.to_string(),
            child: Some(child),
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends a signal (e.g. `libc::SIGTERM`, `libc::SIGKILL`).
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
        }
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit, then SIGKILL.
    /// Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus, SupportError> {
        let Some(mut child) = self.child.take() else {
            return Err(SupportError::Io {
                what: format!("stop {}", self.name),
                source: io::Error::other("already stopped"),
            });
        };
        // SAFETY: as in `signal`.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if start.elapsed() < grace => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    return child.wait().map_err(|source| SupportError::Io {
                        what: format!("wait {}", self.name),
                        source,
                    });
                }
                Err(source) => {
                    return Err(SupportError::Io {
                        what: format!("wait {}", self.name),
                        source,
                    })
                }
            }
        }
    }

    /// Kills at once (SIGKILL), as a crash would, and reaps the child.
    pub fn kill9(&mut self) -> Result<ExitStatus, SupportError> {
        let Some(mut child) = self.child.take() else {
            return Err(SupportError::Io {
                what: format!("kill {}", self.name),
                source: io::Error::other("already stopped"),
            });
        };
        let _ = child.kill();
        child.wait().map_err(|source| SupportError::Io {
            what: format!("wait {}", self.name),
            source,
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(Duration::from_secs(3));
        }
    }
}

/// The bytes of every file under `path`, recursively (0 for a path that
/// cannot be read: a file removed while walking counts as nothing).
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Where the suite writes its results: `$SLUICE_REPORT_DIR`, else
/// `target/reliability/` in the workspace.
pub fn report_dir() -> PathBuf {
    std::env::var_os("SLUICE_REPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("reliability"))
}

/// Records one test's results (counts, times, limits held) as
/// `<report_dir>/<name>.json`, stamped with the time it was written.
/// `scripts/reliability-report.sh` gathers these files into one report.
/// Failing to write is reported on stderr, never fails the test.
pub fn write_report(name: &str, mut results: serde_json::Value) {
    let dir = report_dir();
    if let Some(map) = results.as_object_mut() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        map.insert("test".into(), serde_json::Value::from(name));
        map.insert("written_unix".into(), serde_json::Value::from(now));
    }
    let path = dir.join(format!("{name}.json"));
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&results).unwrap_or_default(),
        )
    });
    match written {
        Ok(()) => eprintln!("report: {}", path.display()),
        Err(e) => eprintln!("report: could not write {}: {e}", path.display()),
    }
}

/// The non-empty lines of a file (none while it does not exist).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads a JSON file, retrying briefly while it is being replaced.
pub fn read_json(path: &Path) -> Result<serde_json::Value, SupportError> {
    let mut last = None;
    for _ in 0..50 {
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(io::Error::other(e)),
            },
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(SupportError::Io {
        what: format!("read {}", path.display()),
        source: last.unwrap_or_else(|| io::Error::other("unreadable")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_and_wait_sees_a_listener() {
        let port = free_port().expect("free port");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(wait_for_port(addr, Duration::from_millis(100)).is_err());
        let _l = TcpListener::bind(addr).expect("bind the port we were given");
        wait_for_port(addr, Duration::from_secs(2)).expect("listener seen");
    }

    #[test]
    fn process_guard_stops_a_child() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut p = Process::spawn("sleep", cmd).expect("spawn sleep");
        let status = p.stop(Duration::from_secs(2)).expect("stopped");
        assert!(!status.success(), "sleep was terminated, not finished");
    }

    #[test]
    fn missing_binary_names_the_fix() {
        let err = binary("no-such-sluice-binary").unwrap_err().to_string();
        assert!(err.contains("cargo build --release --bins"), "{err}");
    }
}
