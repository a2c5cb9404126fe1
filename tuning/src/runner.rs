//! Running one measurement: start `sluice-sink` on a layout's sink CPUs,
//! drive it with `sluice-bench` confined to the harness CPUs, stop the sink
//! and read the harness's JSON report into a [`RunSample`].
//!
//! This is the orchestration the sweep repeats for every point; the engine
//! goes between harness and sink once its `run` command exists (the harness
//! then targets the engine, whose routes point at the sink). Every child is
//! owned by a guard that stops it (SIGTERM, then SIGKILL) when dropped, so an
//! error or an interrupted sweep leaves nothing running.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::affinity::confine;
use crate::layout::{cpu_list_arg, Layout};
use crate::sweep::{parse_harness_report, RunSample, SweepError};

/// Poll interval while waiting for a listener or a process.
const POLL: Duration = Duration::from_millis(20);

/// How long a stopped child gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The binaries a run starts.
#[derive(Clone, Debug)]
pub struct Tools {
    /// `sluice-sink`.
    pub sink: PathBuf,
    /// `sluice-bench`.
    pub harness: PathBuf,
}

/// The load of one run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Messages the harness sends.
    pub messages: u64,
    /// Concurrent connections.
    pub connections: u32,
    /// Message size, as `sluice-bench --size` takes it (`2k`).
    pub size: String,
    /// Longest the harness may run before the run is abandoned.
    pub run_timeout: Duration,
    /// Longest the sink may take to start listening.
    pub startup_timeout: Duration,
}

/// Why a run produced no sample.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A process could not be started, or a file not written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The sink did not listen in time.
    #[error("the sink did not listen on {addr} within {waited:?}")]
    NotListening {
        /// Address waited for.
        addr: SocketAddr,
        /// How long.
        waited: Duration,
    },
    /// A server exited before it was ready.
    #[error("{what} exited early with {status}; stderr: {stderr}")]
    Exited {
        /// Which process.
        what: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },
    /// A process ran past its time limit and was killed.
    #[error("{what} still running after {after:?}; killed")]
    Timeout {
        /// Which process.
        what: &'static str,
        /// Its limit.
        after: Duration,
    },
    /// The harness exited without writing a usable report.
    #[error("the harness exited with {status} and no usable report ({report}); stderr: {stderr}")]
    NoReport {
        /// Its exit status.
        status: ExitStatus,
        /// Why the report was unusable.
        report: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// The report did not parse.
    #[error(transparent)]
    Report(#[from] SweepError),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// A child process stopped (SIGTERM, grace, SIGKILL) and reaped on drop.
pub struct Guarded {
    name: &'static str,
    child: Option<Child>,
}

impl Guarded {
    /// Starts `command` with stdin closed.
    pub fn spawn(name: &'static str, mut command: Command) -> Result<Self, RunError> {
        command.stdin(Stdio::null());
        let child = command
            .spawn()
            .map_err(io_error(format!("starting {name}")))?;
        Ok(Self {
            name,
            child: Some(child),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its exit status if it has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>, RunError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait().map_err(io_error("checking a child"))?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits for it to exit by itself, killing it after `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> Result<ExitStatus, RunError> {
        let started = Instant::now();
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(RunError::Io {
                    what: format!("waiting for {}", self.name),
                    source: io::Error::other("already reaped"),
                });
            };
            if let Some(status) = child.try_wait().map_err(io_error("waiting for a child"))? {
                self.child = None;
                return Ok(status);
            }
            if started.elapsed() >= limit {
                self.stop();
                return Err(RunError::Timeout {
                    what: self.name,
                    after: limit,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL; always reaps.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1 (released before returning; the sink binds
/// it right after).
pub fn free_port() -> Result<u16, RunError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_error("binding 127.0.0.1:0"))?;
    Ok(listener
        .local_addr()
        .map_err(io_error("reading the bound port"))?
        .port())
}

/// Waits until something accepts connections on `addr`, failing early if
/// `server` exits first.
pub fn wait_for_listener(
    addr: SocketAddr,
    timeout: Duration,
    server: &mut Guarded,
) -> Result<(), RunError> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, POLL).is_ok() {
            return Ok(());
        }
        if let Some(status) = server.try_status()? {
            return Err(RunError::Exited {
                what: server.name,
                status,
                stderr: String::new(),
            });
        }
        std::thread::sleep(POLL);
    }
    Err(RunError::NotListening {
        addr,
        waited: timeout,
    })
}

/// One run of the harness against the sink, placed as `layout` says; its
/// files (sink summary, harness report, logs) go into `workdir`.
pub fn run_sink_and_harness(
    tools: &Tools,
    layout: &Layout,
    spec: &RunSpec,
    workdir: &Path,
) -> Result<RunSample, RunError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let summary = workdir.join("sink-summary.json");
    let report = workdir.join("harness.json");
    let log = |name: &str| -> Result<fs::File, RunError> {
        fs::File::create(workdir.join(name)).map_err(io_error(format!("creating {name}")))
    };

    let mut sink_command = Command::new(&tools.sink);
    sink_command
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--cores")
        .arg(cpu_list_arg(&layout.sink_cpus))
        .arg("--summary")
        .arg(&summary)
        .args(["--stats-interval", "0"])
        .stdout(log("sink.out")?)
        .stderr(log("sink.err")?);
    // Not confined: the sink pins one executor per listed CPU itself and
    // checks the list against the CPUs it may use.
    let mut sink = Guarded::spawn("sluice-sink", sink_command)?;
    if let Err(error) = wait_for_listener(addr, spec.startup_timeout, &mut sink) {
        return Err(match error {
            RunError::Exited { what, status, .. } => RunError::Exited {
                what,
                status,
                stderr: tail(&workdir.join("sink.err")),
            },
            other => other,
        });
    }

    // The harness reads the sink's summary from its start; the sink writes
    // it within its first summary interval.
    let started = Instant::now();
    while !summary.is_file() {
        if started.elapsed() >= spec.startup_timeout {
            return Err(RunError::Io {
                what: format!("waiting for {}", summary.display()),
                source: io::Error::new(io::ErrorKind::TimedOut, "the sink wrote no summary"),
            });
        }
        std::thread::sleep(POLL);
    }

    let mut harness_command = Command::new(&tools.harness);
    harness_command
        .arg("run")
        .arg("--target")
        .arg(addr.to_string())
        .arg("--cores")
        .arg(layout.harness_cpus.len().to_string())
        .arg("--connections")
        .arg(spec.connections.to_string())
        .arg("--messages")
        .arg(spec.messages.to_string())
        .arg("--size")
        .arg(&spec.size)
        .arg("--sink-summary")
        .arg(&summary)
        .arg("--json")
        .arg(&report)
        .args(["--progress", "none"])
        .stdout(log("harness.out")?)
        .stderr(log("harness.err")?);
    if let Some(pid) = sink.pid() {
        harness_command.arg("--pids").arg(pid.to_string());
    }
    confine(&mut harness_command, &layout.harness_cpus)
        .map_err(io_error("confining the harness"))?;
    let mut harness = Guarded::spawn("sluice-bench", harness_command)?;
    let status = harness.wait_for(spec.run_timeout)?;
    sink.stop();

    let text = match fs::read_to_string(&report) {
        Ok(text) => text,
        Err(error) => {
            return Err(RunError::NoReport {
                status,
                report: error.to_string(),
                stderr: tail(&workdir.join("harness.err")),
            })
        }
    };
    parse_harness_report(&text).map_err(|error| RunError::NoReport {
        status,
        report: error.to_string(),
        stderr: tail(&workdir.join("harness.err")),
    })
}

/// The last 600 bytes of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(600);
    String::from_utf8_lossy(&text[start..]).trim().to_owned()
}
