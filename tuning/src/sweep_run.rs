//! Running a whole sweep: for every point of a [`plan`](crate::sweep::plan),
//! start `sluice-sink` on the layout's sink CPUs, write an engine
//! configuration (`cores` = the shard CPUs, a fresh spool directory, the
//! point's commit window, every domain routed to the sink), start
//! `sluice run --config`, wait for its 220, drive it with `sluice-bench`
//! confined to the harness CPUs, and stop engine then sink.
//!
//! Every child is owned by a [`Guarded`], so an error, a panic or an
//! interrupt between runs leaves nothing running; the interrupt flag is
//! checked before each run and while waiting for the harness.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::affinity::confine;
use crate::layout::cpu_list_arg;
use crate::runner::{free_port, wait_for_listener, Guarded, RunError};
use crate::sweep::{parse_harness_report, RunSample, SweepPoint};

/// Poll interval while waiting for the harness.
const POLL: Duration = Duration::from_millis(20);

/// The binaries a sweep starts.
#[derive(Clone, Debug)]
pub struct SweepTools {
    /// `sluice`.
    pub engine: PathBuf,
    /// `sluice-sink`.
    pub sink: PathBuf,
    /// `sluice-bench`.
    pub harness: PathBuf,
}

/// How much load one run puts on the engine.
#[derive(Clone, Debug)]
pub enum Load {
    /// This many messages.
    Messages(u64),
    /// Send for this long.
    Duration(Duration),
}

/// The load and limits of each run of a sweep.
#[derive(Clone, Debug)]
pub struct PointSpec {
    /// Messages or duration.
    pub load: Load,
    /// Concurrent connections.
    pub connections: u32,
    /// Message size, as `sluice-bench --size` takes it (`2k`).
    pub size: String,
    /// Longest the harness may run before the run is abandoned.
    pub run_timeout: Duration,
    /// Longest sink or engine may take to start listening.
    pub startup_timeout: Duration,
    /// Give every shard its own injection port and let the harness send
    /// each message to the port of its domain's home shard (`sluice-bench
    /// --route-by-domain`), so no message crosses shards on the way in.
    pub route_by_domain: bool,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `count` consecutive ports on 127.0.0.1 that are free now (bound and
/// released together; a small race with other processes remains).
fn free_port_range(count: usize) -> Result<u16, RunError> {
    let count = count.max(1) as u16;
    for _ in 0..64 {
        let base = free_port()?;
        let Some(end) = base.checked_add(count) else {
            continue;
        };
        let held: Vec<_> = (base..end)
            .map_while(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
            .collect();
        if held.len() == usize::from(count) {
            return Ok(base);
        }
    }
    Err(RunError::Io {
        what: format!("finding {count} consecutive free ports"),
        source: io::Error::new(io::ErrorKind::AddrInUse, "64 tries"),
    })
}

/// The engine configuration for `point`: shards on its shard CPUs, a
/// durable spool in `spool`, injection on `inject`, every domain routed to
/// the sink at `sink`. The engine reads durations in whole milliseconds, so
/// the commit window is rounded up to one.
pub fn engine_config(
    point: &SweepPoint,
    inject: SocketAddr,
    shard_port_base: Option<u16>,
    sink: SocketAddr,
    spool: &Path,
) -> String {
    let cores: Vec<String> = point
        .layout
        .shard_cpus
        .iter()
        .map(ToString::to_string)
        .collect();
    let window_ms = point.commit_window.as_micros().div_ceil(1000).max(1);
    let mut text = String::new();
    text.push_str("# Written by `sluice-tune sweep` for one point.\n");
    text.push_str("hostname = \"sluice.sweep.invalid\"\n");
    text.push_str(&format!("cores = [{}]\n\n", cores.join(", ")));
    text.push_str("[inject]\n");
    text.push_str(&format!("listen = \"{inject}\"\n"));
    if let Some(base) = shard_port_base {
        text.push_str(&format!("shard_port_base = {base}\n"));
    }
    text.push('\n');
    text.push_str("[spool]\n");
    text.push_str(&format!(
        "dir = {}\n",
        toml_string(&spool.display().to_string())
    ));
    text.push_str(&format!("commit_window = \"{window_ms}ms\"\n"));
    text.push_str("durability = \"fdatasync\"\n\n");
    text.push_str("[delivery]\n");
    text.push_str(&format!(
        "log_dir = {}\n\n",
        toml_string(&spool.join("delivery-log").display().to_string())
    ));
    text.push_str("[[route]]\npattern = \"*\"\n");
    text.push_str(&format!("hosts = [\"{sink}\"]\n"));
    text
}

/// One run of `point`: sink, engine and harness, files (configuration,
/// logs, reports, spool) in `workdir`. Returns `Ok(None)` when `interrupted`
/// was set before or during the run (everything stopped).
pub fn run_point(
    tools: &SweepTools,
    point: &SweepPoint,
    spec: &PointSpec,
    workdir: &Path,
    interrupted: &AtomicBool,
) -> Result<Option<RunSample>, RunError> {
    if interrupted.load(Ordering::Relaxed) {
        return Ok(None);
    }
    fs::create_dir_all(workdir).map_err(io_error(format!("creating {}", workdir.display())))?;
    let log = |name: &str| -> Result<fs::File, RunError> {
        fs::File::create(workdir.join(name)).map_err(io_error(format!("creating {name}")))
    };
    let sink_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let summary = workdir.join("sink-summary.json");
    let report = workdir.join("harness.json");

    let mut sink_command = Command::new(&tools.sink);
    sink_command
        .arg("--listen")
        .arg(sink_addr.to_string())
        .arg("--cores")
        .arg(cpu_list_arg(&point.layout.sink_cpus))
        .arg("--summary")
        .arg(&summary)
        .args(["--summary-interval", "500ms", "--stats-interval", "0"])
        .stdout(log("sink.out")?)
        .stderr(log("sink.err")?);
    // Locals drop in reverse order: harness, engine, then sink stop.
    let mut sink = Guarded::spawn("sluice-sink", sink_command)?;
    wait_for_listener(sink_addr, spec.startup_timeout, &mut sink)
        .map_err(|e| with_stderr(e, &workdir.join("sink.err")))?;

    let inject_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config_path = workdir.join("sluice.toml");
    let shards = point.layout.shard_cpus.len();
    let shard_port_base = if spec.route_by_domain {
        Some(free_port_range(shards)?)
    } else {
        None
    };
    let config = engine_config(
        point,
        inject_addr,
        shard_port_base,
        sink_addr,
        &workdir.join("spool"),
    );
    fs::write(&config_path, config).map_err(io_error("writing the engine config"))?;
    let mut engine_command = Command::new(&tools.engine);
    engine_command
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .stdout(log("sluice.out")?)
        .stderr(log("sluice.err")?);
    let mut engine = Guarded::spawn("sluice", engine_command)?;
    wait_for_listener(inject_addr, spec.startup_timeout, &mut engine)
        .map_err(|e| with_stderr(e, &workdir.join("sluice.err")))?;
    if let Some(base) = shard_port_base {
        for port in base..base + shards as u16 {
            wait_for_listener(
                SocketAddr::from(([127, 0, 0, 1], port)),
                spec.startup_timeout,
                &mut engine,
            )
            .map_err(|e| with_stderr(e, &workdir.join("sluice.err")))?;
        }
    }

    // The harness reads the sink's summary from its start.
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
        .arg(inject_addr.to_string())
        .arg("--cores")
        .arg(point.layout.harness_cpus.len().to_string())
        .arg("--connections")
        .arg(spec.connections.to_string());
    match &spec.load {
        Load::Messages(n) => harness_command.arg("--messages").arg(n.to_string()),
        Load::Duration(d) => harness_command
            .arg("--duration")
            .arg(format!("{}ms", d.as_millis())),
    };
    harness_command
        .arg("--size")
        .arg(&spec.size)
        .arg("--sink-summary")
        .arg(&summary)
        .arg("--json")
        .arg(&report)
        .args(["--progress", "none"])
        .stdout(log("harness.out")?)
        .stderr(log("harness.err")?);
    if let Some(pid) = engine.pid() {
        harness_command.arg("--pids").arg(pid.to_string());
    }
    if let Some(base) = shard_port_base {
        harness_command
            .arg("--route-by-domain")
            .arg(base.to_string())
            .arg("--shards")
            .arg(shards.to_string());
    }
    confine(&mut harness_command, &point.layout.harness_cpus)
        .map_err(io_error("confining the harness"))?;
    let mut harness = Guarded::spawn("sluice-bench", harness_command)?;
    let started = Instant::now();
    let status = loop {
        if interrupted.load(Ordering::Relaxed) {
            harness.stop();
            engine.stop();
            sink.stop();
            return Ok(None);
        }
        if let Some(status) = harness.try_status()? {
            break status;
        }
        if started.elapsed() >= spec.run_timeout {
            harness.stop();
            return Err(RunError::Timeout {
                what: "sluice-bench",
                after: spec.run_timeout,
            });
        }
        std::thread::sleep(POLL);
    };
    engine.stop();
    sink.stop();

    let no_report = |report: String| RunError::NoReport {
        status,
        report,
        stderr: tail(&workdir.join("harness.err")),
    };
    let text = fs::read_to_string(&report).map_err(|e| no_report(e.to_string()))?;
    parse_harness_report(&text)
        .map(Some)
        .map_err(|e| no_report(e.to_string()))
}

fn with_stderr(error: RunError, log: &Path) -> RunError {
    match error {
        RunError::Exited { what, status, .. } => RunError::Exited {
            what,
            status,
            stderr: tail(log),
        },
        other => other,
    }
}

/// The last 600 bytes of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(600);
    String::from_utf8_lossy(&text[start..]).trim().to_owned()
}
