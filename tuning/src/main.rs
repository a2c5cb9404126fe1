//! `sluice-tune`: machine inspection and shard layouts for Sluice.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use sluice_tune::affinity;
use sluice_tune::inspect::{inspect, render_text, InspectOptions};
use sluice_tune::layout::{
    all_layouts, shard_cpus, HelperPlacement, Layout, LayoutRequest, Pinning,
};
use sluice_tune::storage::{
    measure_parallel_fdatasync, StorageOptions, SYNC_WRITERS_MAX, WRITE_BYTES_CEILING,
};
use sluice_tune::sysfs::SysRoot;
use sluice_tune::topology::Topology;

mod sweep_cmd;

/// Reads the machine Sluice runs on, says what limits it, and lays out
/// engine shards on its CPUs.
#[derive(Parser, Debug)]
#[command(name = "sluice-tune", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Report CPUs, io_uring, limits, network tunables, spool storage and
    /// NICs, each finding with a recommendation and the command applying it.
    ///
    /// Exit status is 0 when the report was produced (whatever it found), 1
    /// when it could not be (bad --spool path), 2 on bad usage.
    Inspect(InspectArgs),
    /// Print shard pinnings (compact, spread, numa-local) with harness and
    /// sink placement (separate or shared) and a config snippet for each.
    Layouts(LayoutArgs),
    /// Measure how fdatasync throughput and latency change as more writers
    /// (one per shard, each syncing its own file) sync concurrently in the
    /// spool directory: the group-commit cost of adding shards.
    SyncScaling(SyncScalingArgs),
    /// Measure the engine over layouts: for each shard count, pinning and
    /// commit window, start sink, engine and harness, several runs each;
    /// print a table of medians, the best layout and its config snippet,
    /// and write sweep.json and sweep.svg to --out.
    Sweep(sweep_cmd::SweepArgs),
}

#[derive(Args, Debug)]
struct SyncScalingArgs {
    /// Directory to measure in (the spool's filesystem). Scratch files are
    /// created there and removed.
    #[arg(long, value_name = "DIR")]
    spool: PathBuf,
    /// Writer counts to measure, comma-separated.
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        default_value = "1,2,4,8"
    )]
    writers: Vec<usize>,
    /// Write+fdatasync rounds per writer at most.
    #[arg(long, value_name = "N", default_value_t = 200)]
    rounds: usize,
    /// Time limit per writer count, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3)]
    seconds: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Spool directory to measure (filesystem, free space, fallocate,
    /// fdatasync latency, write bandwidth). Scratch files are created there
    /// and removed. Without it, storage is reported as not examined.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Read /sys and /proc under this root instead of / (a fixture tree);
    /// syscall probes (io_uring) are skipped then.
    #[arg(long, value_name = "ROOT", default_value = "/")]
    sys: PathBuf,
    /// Shards planned, used to size the locked-memory recommendation
    /// (default: one per online CPU).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Write+fdatasync rounds for the latency measurement.
    #[arg(long, value_name = "N", default_value_t = 200)]
    sync_rounds: usize,
    /// MiB written for the sequential bandwidth measurement (at most 1024).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    write_mib: u64,
    /// Time limit of each storage measurement, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    measure_seconds: u64,
}

#[derive(Args, Debug)]
struct LayoutArgs {
    /// Number of engine shards (one pinned executor each).
    #[arg(long, value_name = "N")]
    shards: usize,
    /// Read the topology under this root instead of / (a fixture tree).
    #[arg(long, value_name = "ROOT", default_value = "/")]
    sys: PathBuf,
    /// CPUs for the bench-harness.
    #[arg(long, value_name = "N", default_value_t = 1)]
    harness_cpus: usize,
    /// CPUs for the sink.
    #[arg(long, value_name = "N", default_value_t = 1)]
    sink_cpus: usize,
    /// NUMA node to fill first with numa-local (e.g. the NIC's node).
    #[arg(long, value_name = "NODE")]
    prefer_node: Option<u32>,
    /// Only this pinning (default: all).
    #[arg(long, value_enum)]
    pinning: Option<Pinning>,
    /// Only this harness/sink placement (default: both).
    #[arg(long, value_enum)]
    helpers: Option<HelperPlacement>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Lay out over every online CPU, even those outside this process's
    /// CPU set (cgroup cpuset or taskset); by default only allowed CPUs are
    /// used when reading this machine.
    #[arg(long)]
    all_cpus: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => run_inspect(args),
        Command::Layouts(args) => run_layouts(args),
        Command::SyncScaling(args) => run_sync_scaling(args),
        Command::Sweep(args) => sweep_cmd::run_sweep(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluice-tune: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_inspect(args: InspectArgs) -> Result<()> {
    if args.write_mib << 20 > WRITE_BYTES_CEILING {
        bail!(
            "--write-mib {} is above the 1024 MiB ceiling; pass a smaller value",
            args.write_mib
        );
    }
    if args.shards == Some(0) {
        bail!("--shards must be at least 1");
    }
    let options = InspectOptions {
        root: SysRoot::new(&args.sys),
        spool: args.spool,
        storage: StorageOptions {
            sync_count: args.sync_rounds,
            write_bytes: args.write_mib << 20,
            sync_time_max: Duration::from_secs(args.measure_seconds),
            write_time_max: Duration::from_secs(args.measure_seconds),
            ..StorageOptions::default()
        },
        shards: args.shards,
    };
    let report = inspect(&options).context("inspection failed; check the --spool path")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(())
}

#[derive(Serialize)]
struct LayoutEntry {
    name: String,
    layout: Option<Layout>,
    error: Option<String>,
    same_as: Option<String>,
    config: Option<String>,
}

fn run_layouts(args: LayoutArgs) -> Result<()> {
    let root = SysRoot::new(&args.sys);
    let mut topology = Topology::read(&root)
        .with_context(|| format!("cannot read the CPU topology under {}", args.sys.display()))?;
    // On the host, only CPUs this process may use can take shards (a
    // cgroup cpuset or taskset narrows them).
    if root.is_host() && !args.all_cpus {
        let allowed = affinity::current_affinity().context("reading this process's CPU set")?;
        topology = topology.restrict(&allowed).with_context(|| {
            format!("none of the online CPUs is in this process's CPU set {allowed:?}")
        })?;
    }
    let request = LayoutRequest {
        shards: args.shards,
        harness_cpus: args.harness_cpus,
        sink_cpus: args.sink_cpus,
        preferred_node: args.prefer_node,
    };
    // Counts that no pinning can satisfy are a usage error, not a listing.
    shard_cpus(&topology, Pinning::Compact, &request)
        .with_context(|| format!("no layout for {} shard(s)", args.shards))?;
    let mut entries: Vec<LayoutEntry> = Vec::new();
    let mut made: Vec<Layout> = Vec::new();
    for (pinning, helpers, result) in all_layouts(&topology, &request) {
        if args.pinning.is_some_and(|p| p != pinning) || args.helpers.is_some_and(|h| h != helpers)
        {
            continue;
        }
        let name = format!("{}/{}", pinning.name(), helpers.name());
        let entry = match result {
            Ok(layout) => {
                let same_as = made.iter().find(|m| m.same_cpus(&layout)).map(Layout::name);
                made.push(layout.clone());
                LayoutEntry {
                    name,
                    config: Some(layout.config_snippet()),
                    layout: Some(layout),
                    error: None,
                    same_as,
                }
            }
            Err(error) => LayoutEntry {
                name,
                layout: None,
                error: Some(error.to_string()),
                same_as: None,
                config: None,
            },
        };
        entries.push(entry);
    }
    if args.json {
        #[derive(Serialize)]
        struct Output<'a> {
            topology: &'a Topology,
            request: &'a LayoutRequest,
            layouts: &'a [LayoutEntry],
        }
        let output = Output {
            topology: &topology,
            request: &request,
            layouts: &entries,
        };
        println!("{}", serde_json::to_string_pretty(&output)?);
        return Ok(());
    }
    println!("{}", topology.summary());
    for entry in &entries {
        println!();
        match (&entry.layout, &entry.error) {
            (Some(layout), _) => {
                println!("{}", entry.name);
                if let Some(same) = &entry.same_as {
                    println!("  (same CPUs as {same})");
                }
                println!(
                    "  shards on {} physical core(s), {} sharing a core, nodes {:?}{}",
                    layout.physical_cores,
                    layout.shards_sharing_core,
                    layout.nodes,
                    if layout.helpers_touch_shard_cores {
                        "; harness/sink share cores with shards"
                    } else {
                        ""
                    }
                );
                for line in entry.config.as_deref().unwrap_or("").lines() {
                    println!("    {line}");
                }
            }
            (None, Some(error)) => println!("{}: not possible: {error}", entry.name),
            (None, None) => {}
        }
    }
    Ok(())
}

fn run_sync_scaling(args: SyncScalingArgs) -> Result<()> {
    if args.writers.iter().any(|&w| w == 0 || w > SYNC_WRITERS_MAX) {
        bail!("--writers: each count must be within 1..={SYNC_WRITERS_MAX}");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if !args.spool.is_dir() {
        bail!(
            "--spool {}: not a directory; create it first",
            args.spool.display()
        );
    }
    let options = StorageOptions {
        sync_count: args.rounds,
        sync_time_max: Duration::from_secs(args.seconds),
        ..StorageOptions::default()
    };
    let mut results = Vec::new();
    if !args.json {
        println!(
            "fdatasync after a 4 KiB write, each writer its own file, in {}",
            args.spool.display()
        );
        println!(
            "{:>8} {:>10} {:>10} {:>10} {:>10} {:>8}",
            "writers", "syncs/s", "median us", "p99 us", "max us", "rounds"
        );
    }
    for &writers in &args.writers {
        let result =
            measure_parallel_fdatasync(&args.spool, writers, &options).with_context(|| {
                format!("measuring {writers} writer(s) in {}", args.spool.display())
            })?;
        if !args.json {
            println!(
                "{:>8} {:>10.0} {:>10} {:>10} {:>10} {:>8}",
                result.writers,
                result.syncs_per_s,
                result.latency.median_us,
                result.latency.p99_us,
                result.latency.max_us,
                result.latency.count
            );
        }
        results.push(result);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}
