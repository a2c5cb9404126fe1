//! Command line: `sluice-bench run ...`, parsed with clap into [`RunArgs`].
//!
//! Human strings (`2k`, `30s`, `zipf:1.1`, `gmail.invalid=0.3`) are parsed
//! into types here, so a bad value is rejected before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::dist::{DomainShape, HeavyDomain, SizeDist};

/// SMTP load generator and latency meter for any MTA.
///
/// Injects generated messages over SMTP (pipelining across transactions and
/// BDAT when the server offers them), measures injection latency and rate,
/// and writes a table, a JSON report, HdrHistogram logs and plots. Exit code:
/// 0 when the run met its targets, 1 when it did not (errors above
/// --max-error-rate, connection failures, fewer messages accepted than asked),
/// 2 for bad usage.
#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inject a load into any SMTP server and report what it did.
    Run(Box<RunArgs>),
    /// Start sluice-sink and the sluice engine (temporary durable spool,
    /// every domain routed to the sink), inject about a minute of 2 KB
    /// messages over 1,000 Zipf-weighted domains, report injection and
    /// delivery, stop both, and leave nothing running.
    #[command(mut_args(crate::demo::demo_arg))]
    Demo(Box<crate::demo::DemoArgs>),
    /// The same load (same seed, same messages) against two SMTP targets one
    /// after the other, printed side by side with a/b ratios.
    #[command(mut_args(crate::compare::compare_arg))]
    Compare(Box<crate::compare::CompareArgs>),
}

/// How the live progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A progress bar on a terminal, plain lines otherwise.
    Auto,
    /// Always the progress bar.
    Bar,
    /// One plain line per interval.
    Plain,
    /// Nothing until the final report.
    None,
}

/// Options of `sluice-bench run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Server to inject into, HOST:PORT (with --route-by-domain only HOST is used).
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,

    /// Concurrent SMTP connections, spread over the executors.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,

    /// Executor threads (one glommio executor each); default: all CPUs.
    #[arg(long)]
    pub cores: Option<usize>,

    /// Pin executor i to CPU i (modulo the CPU count).
    #[arg(long)]
    pub pin: bool,

    /// Total messages to send (the default load when --duration is not given).
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,

    /// Send for this long instead of a message count (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Reconnect after this many messages on one connection (0: never).
    #[arg(long, default_value_t = 0)]
    pub messages_per_connection: u64,

    /// Open loop: a constant arrival schedule of R messages/s over all
    /// connections; latency counts from each message's scheduled time.
    /// The schedule starts once every connection has been greeted (at most
    /// 10 s after the start), so connecting is not charged to the first
    /// messages. Without it the load is closed-loop (as fast as replies
    /// allow).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,

    /// Open loop: a connection whose next message is due wakes at the next
    /// multiple of this since the start, so an executor wakes once per tick
    /// for all its connections instead of once per message. Latency still
    /// counts from each message's exact due time, so the tick's wait (at
    /// most one tick) is charged to the server. 0: wake for every message.
    #[arg(long, default_value = "0.5ms", value_parser = parse_duration)]
    pub tick: Duration,

    /// Transactions in flight per connection when the server offers
    /// PIPELINING (whole transactions are sent back to back); 1 without it.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub window: u32,

    /// Message size in bytes, headers included: `2k` (fixed), `1k-20k`
    /// (uniform), or `1k:70,10k:25,100k:5` (sizes with weights).
    #[arg(long, default_value = "2k", value_parser = parse_size)]
    pub size: SizeDist,

    /// Recipients per message: `1` or a uniform range `1-5`.
    #[arg(long, default_value = "1", value_parser = parse_range)]
    pub recipients: (u32, u32),

    /// Number of generated recipient domains `d{i}.SUFFIX`.
    #[arg(long, default_value_t = 100)]
    pub domains: usize,

    /// Weighting of generated domains: `uniform` or `zipf:S`.
    #[arg(long, default_value = "uniform", value_parser = parse_shape)]
    pub domain_shape: DomainShape,

    /// Suffix of generated domains (keep it non-routable).
    #[arg(long, default_value = "bench.invalid")]
    pub domain_suffix: String,

    /// A named domain taking a fixed share of recipients, DOMAIN=SHARE
    /// (repeatable; shares sum to at most 1, the rest go to generated domains).
    #[arg(long = "heavy-domain", value_name = "DOMAIN=SHARE", value_parser = parse_heavy)]
    pub heavy_domains: Vec<HeavyDomain>,

    /// Number of sender domains `s{i}.sender.invalid`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub sender_domains: u32,

    /// Recipient local parts are `user{k}` for k in 1..=N.
    #[arg(long, default_value_t = 1000)]
    pub local_parts: u32,

    /// Seed of every random choice (sizes, domains, recipients): the same
    /// seed sends the same messages.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Run identifier in `X-Sluice-Id: <run>-<n>` and Message-IDs
    /// (default: derived from the start time).
    #[arg(long)]
    pub run_id: Option<String>,

    /// Name sent in EHLO.
    #[arg(long, default_value = "sluice-bench.invalid")]
    pub ehlo: String,

    /// Require STARTTLS (fail the connection if it is not offered).
    #[arg(long)]
    pub starttls: bool,

    /// Accept any server certificate (test servers with self-signed certs).
    #[arg(long)]
    pub tls_insecure: bool,

    /// PEM file of CA certificates to trust instead of the built-in roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Server name to verify (default: the target host).
    #[arg(long)]
    pub tls_server_name: Option<String>,

    /// AUTH PLAIN with USER:PASSWORD after EHLO (after STARTTLS if asked).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub auth: Option<String>,

    /// Do not pipeline even if the server offers PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,

    /// Use DATA even if the server offers CHUNKING.
    #[arg(long)]
    pub no_chunking: bool,

    /// Longest wait for any reply before the connection is failed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub reply_timeout: Duration,

    /// Longest wait for TCP connect.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Connect attempts per connection slot before the run is failed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_attempts: u32,

    /// Routing mode for Sluice: send each message to port PORT_BASE + s,
    /// s = sluice_shaping::lease::domain_shard(recipient domain, --shards).
    #[arg(long, value_name = "PORT_BASE", requires = "shards")]
    pub route_by_domain: Option<u16>,

    /// Shard count of the target (with --route-by-domain).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,

    /// Largest tolerated fraction of failed messages (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,

    /// A live `sluice-sink` summary file: report delivered count and
    /// injection-to-arrival latency from it.
    #[arg(long, value_name = "FILE")]
    pub sink_summary: Option<PathBuf>,

    /// How long to wait after injection for the sink to count every message.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub sink_wait: Duration,

    /// PIDs of target processes whose CPU time is measured (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Count each --pids process with its descendants and reaped children
    /// (servers that work in several processes, such as Postfix's master).
    #[arg(long)]
    pub pid_tree: bool,

    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write the HdrHistogram interval log (latency, µs) here.
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,

    /// Write the HdrHistogram percentile distribution (ms) here.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Write latency and rate plots (PNG and SVG) into this directory.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,

    /// Reporting interval (progress, rate timeline, .hlog intervals).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Live progress on stderr.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

impl RunArgs {
    /// Message count when neither --messages nor --duration is given.
    pub const DEFAULT_MESSAGES: u64 = 10_000;

    /// Checks relationships clap cannot express; returns every problem.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                problems.push(format!("--rate {r}: must be a positive number"));
            }
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            problems.push("--max-error-rate: must be between 0 and 1".into());
        }
        if self.cores == Some(0) {
            problems.push("--cores: must be at least 1".into());
        }
        if self.interval < Duration::from_millis(10) {
            problems.push("--interval: at least 10ms".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            problems.push("--duration: must be positive".into());
        }
        if self.recipients.0 == 0 || self.recipients.0 > self.recipients.1 {
            problems.push("--recipients: a range from at least 1, low to high".into());
        }
        if self.tls_insecure && self.ca.is_some() {
            problems.push("--tls-insecure and --ca exclude each other".into());
        }
        if self.auth.as_deref().is_some_and(|a| !a.contains(':')) {
            problems.push("--auth: expected USER:PASSWORD".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds (may be fractional).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 500ms, 30s, 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

fn parse_size(text: &str) -> Result<SizeDist, String> {
    text.parse().map_err(|e: crate::Error| e.to_string())
}

fn parse_shape(text: &str) -> Result<DomainShape, String> {
    text.parse().map_err(|e: crate::Error| e.to_string())
}

fn parse_heavy(text: &str) -> Result<HeavyDomain, String> {
    text.parse().map_err(|e: crate::Error| e.to_string())
}

/// `N` or `LOW-HIGH`.
pub fn parse_range(text: &str) -> Result<(u32, u32), String> {
    let parse = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("{text:?}: expected N or N-M"))
    };
    match text.split_once('-') {
        Some((lo, hi)) => Ok((parse(lo)?, parse(hi)?)),
        None => {
            let n = parse(text)?;
            Ok((n, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn run_args_parse_and_validate() {
        let cli = Cli::try_parse_from([
            "sluice-bench",
            "run",
            "--target",
            "127.0.0.1:2525",
            "--size",
            "1k:3,10k:1",
            "--recipients",
            "1-3",
            "--heavy-domain",
            "big.invalid=0.25",
            "--domain-shape",
            "zipf:1.1",
            "--pids",
            "1,2",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.recipients, (1, 3));
        assert_eq!(args.pids, vec![1, 2]);
        assert_eq!(args.heavy_domains.len(), 1);
        assert!(args.validate().is_ok());

        let bad = Cli::try_parse_from([
            "sluice-bench",
            "run",
            "--target",
            "x:1",
            "--rate=-3",
            "--max-error-rate",
            "2",
        ])
        .unwrap();
        let Command::Run(args) = bad.command else {
            panic!("not run")
        };
        assert_eq!(args.validate().unwrap_err().len(), 2);
        assert!(Cli::try_parse_from([
            "sluice-bench",
            "run",
            "--target",
            "x:1",
            "--messages",
            "5",
            "--duration",
            "1s"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "sluice-bench",
            "run",
            "--target",
            "x:1",
            "--route-by-domain",
            "2600"
        ])
        .is_err());
    }
}
