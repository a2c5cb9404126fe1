//! `sluice-bench demo`: the whole path on this machine with one command.
//!
//! It starts `sluice-sink` and the `sluice` engine as child processes
//! ([`crate::procs::Children`], which stops them however the demo ends),
//! writes the engine an embedded configuration (spool in a temporary
//! directory, durable `fdatasync` commits, every domain routed to the sink),
//! waits for both to greet, injects about a minute of load with
//! [`crate::run::run`], and waits until the sink has counted every accepted
//! message. The table adds what only the demo can see: delivered messages
//! per second from the first injection to the last arrival, and the CPU the
//! engine and the sink each spent per message (read after the sink counted
//! everything, so the engine's delivery work is included).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Arg, Args};
use serde::Serialize;

use crate::cli::{parse_duration, RunArgs};
use crate::probe::CpuProbe;
use crate::procs::{free_port, free_port_range, wait_for_greeting, Children, Stopped, TempDir};
use crate::report::Report;
use crate::{run, Error};

/// Load when neither --messages nor --duration is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(60);

/// Options of `sluice-bench demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// The load (the options of `run` that apply to the demo).
    #[command(flatten)]
    pub load: RunArgs,

    /// The `sluice-sink` binary (default: next to this program).
    #[arg(long, value_name = "FILE")]
    pub sink_bin: Option<PathBuf>,

    /// The `sluice` engine binary (default: next to this program).
    #[arg(long, value_name = "FILE")]
    pub engine_bin: Option<PathBuf>,

    /// Directory for the report, logs and plots (default: ./sluice-demo-RUN).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// CPUs of the sink (it gets the CPUs after the engine's, wrapping).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub sink_cores: u32,

    /// Longest wait for the sink and the engine to greet.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub startup_timeout: Duration,

    /// After SIGTERM, how long a child may take to exit before SIGKILL.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub stop_grace: Duration,
}

/// Adjusts the `run` options flattened into `demo`: the demo decides the
/// target, the files and what is measured, and its defaults differ.
pub fn demo_arg(a: Arg) -> Arg {
    match a.get_id().as_str() {
        // Set by the command itself; a placeholder keeps clap from asking for it.
        "target" => a.required(false).hide(true).default_value("127.0.0.1:0"),
        "route_by_domain" | "sink_summary" | "pids" | "pid_tree" | "json" | "hlog" | "hgrm"
        | "plot" => a.required(false).hide(true),
        "shards" => a
            .help("Engine shards, pinned to CPUs 0..N-1; with more than one, each message goes to its domain's shard port")
            .default_value("1"),
        "duration" => a.help("Send for this long (default 60s unless --messages is given)"),
        "messages" => a.help("Send this many messages instead of a minute's worth"),
        "domains" => a.default_value("1000"),
        "domain_shape" => a.default_value("zipf:1.1"),
        "sink_wait" => a.default_value("120s"),
        _ => a,
    }
}

/// What a demo measured, written as `demo.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The injection report (also `report.json`).
    pub report: Report,
    /// Seconds from the start of injection until the sink had counted every
    /// accepted message (or gave up waiting).
    pub seconds_to_last_arrival: f64,
    /// Delivered messages per second over that time.
    pub delivered_per_sec: f64,
    /// Engine CPU (user + system) microseconds per accepted message,
    /// including the delivery after injection ended.
    pub engine_cpu_us_per_msg: f64,
    /// Sink CPU microseconds per accepted message.
    pub sink_cpu_us_per_msg: f64,
    /// Engine shards.
    pub shards: u32,
    /// Where the files are.
    pub out_dir: PathBuf,
    /// How each child ended.
    pub children: Vec<ChildEnd>,
    /// Whether the demo met its targets.
    pub passed: bool,
    /// Why it did not.
    pub problems: Vec<String>,
}

/// How a child ended (serializable).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChildEnd {
    /// `sluice` or `sluice-sink`.
    pub name: String,
    /// Its PID (gone by the time the report is written).
    pub pid: u32,
    /// Exited 0 on SIGTERM.
    pub clean: bool,
    /// Its exit status.
    pub status: String,
}

impl From<Stopped> for ChildEnd {
    fn from(s: Stopped) -> Self {
        ChildEnd {
            name: s.name,
            pid: s.pid,
            clean: s.clean,
            status: s.status,
        }
    }
}

/// Runs the demo. `interrupt` (Ctrl-C) ends the load early; the children
/// are stopped in every case before this returns.
pub fn demo(args: &DemoArgs, interrupt: Arc<AtomicBool>) -> Result<DemoReport, Error> {
    let engine_bin = find_binary(args.engine_bin.as_deref(), "sluice")?;
    let sink_bin = find_binary(args.sink_bin.as_deref(), "sluice-sink")?;
    let shards = args.load.shards.unwrap_or(1);
    let run_id = args.load.run_id.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{ms:x}")
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("sluice-demo-{run_id}")));
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Locals drop in reverse order: the children stop before the spool is removed.
    let tmp = TempDir::new("sluice-demo")?;
    let mut children = Children::new(args.stop_grace);

    let sink_port = free_port()?;
    let inject_port = free_port()?;
    let shard_port_base = if shards > 1 {
        let count = u16::try_from(shards).map_err(|_| Error::Parse("--shards: too many".into()))?;
        Some(free_port_range(count, &[sink_port, inject_port])?)
    } else {
        None
    };
    let sink_summary = tmp.path().join("sink.json");
    let sink_cpus = cpu_list(shards as usize, args.sink_cores as usize, cpus);
    eprintln!(
        "sluice-bench demo: starting sluice-sink on 127.0.0.1:{sink_port} (CPUs {sink_cpus})"
    );
    let sink_pid = children.spawn(
        "sluice-sink",
        &sink_bin,
        &[
            "--listen".into(),
            format!("127.0.0.1:{sink_port}"),
            "--cores".into(),
            sink_cpus,
            "--hostname".into(),
            "sink.demo.invalid".into(),
            "--summary".into(),
            path_arg(&sink_summary),
            "--summary-interval".into(),
            "500ms".into(),
            "--stats-interval".into(),
            "0".into(),
        ],
        &out.join("sink.log"),
    )?;
    let deadline = Instant::now() + args.startup_timeout;
    let sink_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, sink_port));
    wait_for_greeting(sink_addr, deadline, &mut children, &interrupt)?;
    wait_for_file(&sink_summary, deadline, &mut children)?;

    let config_path = tmp.path().join("sluice.toml");
    let config = engine_config(&EngineLayout {
        shards,
        cpus,
        inject_port,
        shard_port_base,
        sink_port,
        spool: tmp.path().join("spool"),
        log_dir: tmp.path().join("delivery-log"),
    });
    std::fs::write(&config_path, &config).map_err(|e| Error::io(&config_path, e))?;
    std::fs::write(out.join("sluice.toml"), &config)
        .map_err(|e| Error::io(&out.join("sluice.toml"), e))?;
    eprintln!(
        "sluice-bench demo: starting sluice on 127.0.0.1:{inject_port}, {shards} shard(s), durable spool in {}",
        tmp.path().join("spool").display()
    );
    let engine_pid = children.spawn(
        "sluice",
        &engine_bin,
        &["run".into(), "--config".into(), path_arg(&config_path)],
        &out.join("sluice.log"),
    )?;
    let inject_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, inject_port));
    wait_for_greeting(inject_addr, deadline, &mut children, &interrupt)?;
    if let Some(base) = shard_port_base {
        for shard in 0..shards {
            let port = u16::try_from(u32::from(base) + shard)
                .map_err(|_| Error::Parse("--shards: ports beyond 65535".into()))?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            wait_for_greeting(addr, deadline, &mut children, &interrupt)?;
        }
    }

    let mut load = args.load.clone();
    if load.messages.is_none() && load.duration.is_none() {
        load.duration = Some(DEFAULT_DURATION);
    }
    load.target = format!("127.0.0.1:{inject_port}");
    load.route_by_domain = shard_port_base;
    load.shards = shard_port_base.map(|_| shards);
    load.run_id = Some(run_id);
    load.sink_summary = Some(sink_summary);
    load.pids = vec![engine_pid, sink_pid];
    load.json = Some(out.join("report.json"));
    load.hlog = Some(out.join("latency.hlog"));
    load.hgrm = Some(out.join("latency.hgrm"));
    load.plot = Some(out.join("plots"));
    match (load.messages, load.duration) {
        (Some(n), _) => eprintln!("sluice-bench demo: injecting {n} messages"),
        (None, Some(d)) => eprintln!("sluice-bench demo: injecting for {d:?}"),
        (None, None) => {}
    }

    let engine_cpu = CpuProbe::start(&[engine_pid])?;
    let sink_cpu = CpuProbe::start(&[sink_pid])?;
    let started = Instant::now();
    let outcome = run::run(&load, interrupt)?;
    let seconds_to_last_arrival = started.elapsed().as_secs_f64();
    let report = outcome.report;
    let engine_cpu = engine_cpu.finish(report.accepted)?;
    let sink_cpu = sink_cpu.finish(report.accepted)?;
    children.check_running()?;

    let ends: Vec<ChildEnd> = children
        .stop_all()
        .into_iter()
        .map(ChildEnd::from)
        .collect();
    let mut problems = report.problems.clone();
    for end in &ends {
        if !end.clean {
            problems.push(format!(
                "{} did not stop cleanly on SIGTERM ({}); see {}",
                end.name,
                end.status,
                out.join(format!("{}.log", end.name.trim_start_matches("sluice-")))
                    .display()
            ));
        }
    }
    if report.delivered.is_some_and(|d| d != report.accepted) {
        problems.push(format!(
            "the sink counted {} messages, the engine accepted {}",
            report.delivered.unwrap_or(0),
            report.accepted
        ));
    }
    problems.dedup();
    let demo = DemoReport {
        seconds_to_last_arrival,
        delivered_per_sec: report.delivered.unwrap_or(0) as f64 / seconds_to_last_arrival.max(1e-9),
        engine_cpu_us_per_msg: engine_cpu.cpu_us_per_msg,
        sink_cpu_us_per_msg: sink_cpu.cpu_us_per_msg,
        shards,
        out_dir: out.clone(),
        children: ends,
        passed: problems.is_empty(),
        problems,
        report,
    };
    let text = serde_json::to_string_pretty(&demo)
        .map_err(|e| Error::Io(format!("encoding demo.json: {e}")))?;
    let path = out.join("demo.json");
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    drop(tmp);
    Ok(demo)
}

impl DemoReport {
    /// Writes the injection table and the demo's own lines.
    pub fn write_table(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut report = self.report.clone();
        // The demo's verdict replaces the run's in the table.
        report.passed = self.passed;
        report.problems = self.problems.clone();
        let mut table = Vec::new();
        report.write_table(&mut table)?;
        let table = String::from_utf8_lossy(&table);
        let (body, result) = table
            .rsplit_once("  result")
            .unwrap_or((table.as_ref(), ""));
        write!(out, "{body}")?;
        writeln!(
            out,
            "  delivered/s {:.0} msg/s ({:.2}M msg/hour), first injection to last arrival ({:.1} s)",
            self.delivered_per_sec,
            self.delivered_per_sec * 3600.0 / 1e6,
            self.seconds_to_last_arrival
        )?;
        writeln!(
            out,
            "  engine cpu  {:.2} us/msg (sluice, {} shard(s), delivery included)",
            self.engine_cpu_us_per_msg, self.shards
        )?;
        writeln!(out, "  sink cpu    {:.2} us/msg", self.sink_cpu_us_per_msg)?;
        writeln!(
            out,
            "  files       {0}/demo.json report.json latency.hlog latency.hgrm plots/ sluice.log sink.log",
            self.out_dir.display()
        )?;
        write!(out, "  result{result}")
    }
}

/// Where the engine listens and delivers.
#[derive(Debug, Clone)]
pub struct EngineLayout {
    /// Shards (CPUs 0..shards-1, modulo the CPU count).
    pub shards: u32,
    /// CPUs on this machine.
    pub cpus: usize,
    /// Shared injection port on 127.0.0.1.
    pub inject_port: u16,
    /// First per-shard port, when routing by domain.
    pub shard_port_base: Option<u16>,
    /// The sink's port on 127.0.0.1.
    pub sink_port: u16,
    /// Spool directory.
    pub spool: PathBuf,
    /// Delivery log directory.
    pub log_dir: PathBuf,
}

/// The engine configuration the demo writes (TOML, see `sluice default-config`).
pub fn engine_config(l: &EngineLayout) -> String {
    let cores: Vec<String> = (0..l.shards as usize)
        .map(|i| (i % l.cpus.max(1)).to_string())
        .collect();
    let mut text = String::new();
    text.push_str("# Written by `sluice-bench demo`: a temporary durable spool, every\n");
    text.push_str("# domain routed to the local sluice-sink.\n");
    text.push_str("hostname = \"sluice.demo.invalid\"\n");
    text.push_str(&format!("cores = [{}]\n\n", cores.join(", ")));
    text.push_str("[inject]\n");
    text.push_str(&format!("listen = \"127.0.0.1:{}\"\n", l.inject_port));
    if let Some(base) = l.shard_port_base {
        text.push_str(&format!("shard_port_base = {base}\n"));
    }
    text.push_str("message_size_max = \"10MiB\"\n\n");
    text.push_str("[spool]\n");
    text.push_str(&format!("dir = {}\n", toml_string(&path_arg(&l.spool))));
    text.push_str("durability = \"fdatasync\"\n\n");
    text.push_str("[delivery]\n");
    text.push_str(&format!(
        "log_dir = {}\n\n",
        toml_string(&path_arg(&l.log_dir))
    ));
    text.push_str("[[route]]\n");
    text.push_str("pattern = \"*\"\n");
    text.push_str(&format!("hosts = [\"127.0.0.1:{}\"]\n", l.sink_port));
    text
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

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `count` CPUs starting after the engine's `first`, wrapping, as ranges
/// (`1-1` or `1-1,0-0`: the sink reads a bare number as a CPU count).
fn cpu_list(first: usize, count: usize, cpus: usize) -> String {
    let cpus = cpus.max(1);
    let list: Vec<String> = (0..count.min(cpus))
        .map(|i| (first + i) % cpus)
        .map(|c| format!("{c}-{c}"))
        .collect();
    list.join(",")
}

/// `given`, else `name` next to the running program.
fn find_binary(given: Option<&Path>, name: &str) -> Result<PathBuf, Error> {
    let path = match given {
        Some(p) => p.to_owned(),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| Error::Io(format!("locating this program: {e}")))?;
            let dir = exe.parent().unwrap_or(Path::new("."));
            dir.join(name)
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Io(format!(
            "{} not found; build it with `cargo build --release --bins` (or pass --{}-bin)",
            path.display(),
            if name == "sluice" { "engine" } else { "sink" }
        )))
    }
}

fn wait_for_file(path: &Path, deadline: Instant, children: &mut Children) -> Result<(), Error> {
    loop {
        children.check_running()?;
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Io(format!(
                "{} was not written in time",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_routes_everything_to_the_sink() {
        let text = engine_config(&EngineLayout {
            shards: 3,
            cpus: 2,
            inject_port: 2600,
            shard_port_base: Some(2700),
            sink_port: 2526,
            spool: PathBuf::from("/tmp/a \"b\"\\c"),
            log_dir: PathBuf::from("/tmp/log"),
        });
        assert!(text.contains("cores = [0, 1, 0]"), "{text}");
        assert!(text.contains("shard_port_base = 2700"));
        assert!(text.contains(r#"dir = "/tmp/a \"b\"\\c""#), "{text}");
        assert!(text.contains(r#"hosts = ["127.0.0.1:2526"]"#));
        assert!(text.contains(r#"durability = "fdatasync""#));
    }

    #[test]
    fn sink_cpus_follow_the_engine() {
        assert_eq!(cpu_list(1, 1, 2), "1-1");
        assert_eq!(cpu_list(2, 2, 2), "0-0,1-1");
        assert_eq!(cpu_list(1, 4, 2), "1-1,0-0");
        assert_eq!(cpu_list(0, 1, 1), "0-0");
    }
}
