//! `sluice-tune sweep`: runs every point of a sweep plan with the engine
//! between harness and sink, then prints the table, the best layout and its
//! snippet, and writes `sweep.json` and `sweep.svg`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use sluice_tune::affinity;
use sluice_tune::layout::{HelperPlacement, Pinning};
use sluice_tune::plot::plot_sweep;
use sluice_tune::sweep::{
    best, best_snippet, default_shard_counts, plan, render_table, summarize, SweepOptions,
};
use sluice_tune::sweep_run::{run_point, Load, PointSpec, SweepTools};
use sluice_tune::sysfs::SysRoot;
use sluice_tune::topology::Topology;

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Shard counts, comma-separated (default: powers of two plus one
    /// node's cores, all cores and all CPUs).
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    shards: Vec<usize>,
    /// Pinnings, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pinning: Vec<Pinning>,
    /// Harness/sink placements, comma-separated (default: both).
    #[arg(long, value_enum, value_delimiter = ',')]
    helpers: Vec<HelperPlacement>,
    /// Runs per point; the table shows their medians.
    #[arg(long, value_name = "N", default_value_t = 3)]
    runs: usize,
    /// Messages per run (default 20000 unless --duration).
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    messages: Option<u64>,
    /// Send for this long per run instead (e.g. 10s, 500ms).
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// Group-commit windows in whole milliseconds, comma-separated (1ms,2ms).
    #[arg(
        long,
        value_name = "W,W,...",
        value_delimiter = ',',
        default_value = "1ms"
    )]
    commit_window: Vec<String>,
    /// Concurrent harness connections.
    #[arg(long, value_name = "N", default_value_t = 32)]
    connections: u32,
    /// Message size (as sluice-bench --size takes it).
    #[arg(long, value_name = "SIZE", default_value = "2k")]
    size: String,
    /// Give each shard its own injection port and have the harness send
    /// every message to its domain's home shard (as `sluice-bench
    /// --route-by-domain` does), instead of one port whose shards hand
    /// messages over to each other.
    #[arg(long)]
    route_by_domain: bool,
    /// Directory for the per-point spools and logs (default: a temporary
    /// directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// Directory for sweep.json and sweep.svg.
    #[arg(long, value_name = "DIR", default_value = "sluice-sweep")]
    out: PathBuf,
    /// Directory holding sluice, sluice-sink and sluice-bench (default: next
    /// to this binary).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// "250ms", "2s", "1m" into a Duration.
fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("{text:?}: expected a number with ms, s or m"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("{text:?}: unit must be ms, s or m"),
    })
}

fn tools(bin_dir: Option<&Path>) -> Result<SweepTools> {
    let dir = match bin_dir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .parent()
            .map(Path::to_path_buf)
            .context("this binary has no directory")?,
    };
    let find = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if !path.is_file() {
            bail!(
                "{} not found; build it (cargo build --release --bins) or pass --bin-dir",
                path.display()
            );
        }
        Ok(path)
    };
    Ok(SweepTools {
        engine: find("sluice")?,
        sink: find("sluice-sink")?,
        harness: find("sluice-bench")?,
    })
}

pub fn run_sweep(args: SweepArgs) -> Result<()> {
    let tools = tools(args.bin_dir.as_deref())?;
    let mut windows = Vec::new();
    for text in &args.commit_window {
        let window = parse_duration(text)?;
        if window.is_zero() || window.subsec_micros() % 1000 != 0 {
            bail!("--commit-window {text}: must be whole milliseconds, at least 1ms");
        }
        windows.push(window);
    }
    let load = match (&args.duration, args.messages) {
        (Some(text), _) => Load::Duration(parse_duration(text)?),
        (None, Some(0)) => bail!("--messages must be at least 1"),
        (None, Some(n)) => Load::Messages(n),
        (None, None) => Load::Messages(20_000),
    };
    let run_timeout = match &load {
        Load::Duration(d) => *d * 3 + Duration::from_secs(30),
        Load::Messages(n) => Duration::from_secs(60 + n / 1000),
    };
    let topology = Topology::read(&SysRoot::host()).context("reading the CPU topology")?;
    let allowed = affinity::current_affinity().context("reading this process's CPU set")?;
    let topology = topology
        .restrict(&allowed)
        .context("none of the online CPUs is in this process's CPU set")?;
    let mut options = SweepOptions::full(&topology);
    if !args.shards.is_empty() {
        options.shard_counts = args.shards.clone();
    } else {
        options.shard_counts = default_shard_counts(&topology);
    }
    if !args.pinning.is_empty() {
        options.pinnings = args.pinning.clone();
    }
    if !args.helpers.is_empty() {
        options.helpers = args.helpers.clone();
    }
    options.commit_windows = windows;
    options.repetitions = args.runs;
    let points = plan(&topology, &options).context("planning the sweep")?;
    let spec = PointSpec {
        load,
        connections: args.connections,
        size: args.size.clone(),
        run_timeout,
        startup_timeout: Duration::from_secs(20),
        route_by_domain: args.route_by_domain,
    };

    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .context("installing the interrupt handler")?;
    }
    let temp;
    let work = match &args.spool_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("sluice-sweep-")
                .tempdir()
                .context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let total = (points.len() * options.repetitions) as u64;
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let bar = ProgressBar::new(total);
        // The template is a constant that indicatif accepts.
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}") {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut summaries = Vec::new();
    let mut done = 0u64;
    'points: for (index, point) in points.iter().enumerate() {
        let mut samples = Vec::new();
        for run in 0..options.repetitions {
            let label = format!("{} run {}/{}", point.label(), run + 1, options.repetitions);
            bar.set_message(label.clone());
            if !tty {
                eprintln!("sluice-tune sweep: [{}/{total}] {label}", done + 1);
            }
            let dir = work.join(format!("point-{index}-run-{run}"));
            match run_point(&tools, point, &spec, &dir, &interrupted) {
                Ok(Some(sample)) => samples.push(sample),
                Ok(None) => break 'points,
                Err(error) => {
                    bar.suspend(|| eprintln!("sluice-tune sweep: {label}: {error}"));
                }
            }
            done += 1;
            bar.inc(1);
        }
        if let Some(summary) = summarize(point.clone(), &samples) {
            summaries.push(summary);
        }
    }
    bar.finish_and_clear();
    if interrupted.load(Ordering::Relaxed) {
        eprintln!(
            "sluice-tune sweep: interrupted; every child stopped; reporting what was measured"
        );
    }
    if summaries.is_empty() {
        bail!("no point produced a measurement");
    }
    print!("{}", render_table(&summaries));
    let json = args.out.join("sweep.json");
    std::fs::write(&json, serde_json::to_string_pretty(&summaries)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let svg = args.out.join("sweep.svg");
    plot_sweep(&summaries, &svg)?;
    match best(&summaries) {
        Some(summary) => {
            println!("\nbest: {}", summary.point.label());
            print!("{}", best_snippet(summary));
            if args.route_by_domain {
                println!(
                    "# measured with one injection port per shard: add\n\
                     # shard_port_base = PORT to [inject] and send each message to\n\
                     # PORT + its domain's shard (`sluice route DOMAIN` prints it)"
                );
            }
        }
        None => println!("\nno point had every run pass; no best layout"),
    }
    println!("\nwrote {} and {}", json.display(), svg.display());
    Ok(())
}
