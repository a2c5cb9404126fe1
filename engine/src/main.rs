//! `sluice`: the engine's command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use sluice_engine::config::{Config, ConfigError, RawConfig, RawCores, RawRoute, EMBEDDED_DEFAULT};
use sluice_engine::runtime::{
    home_shard, resolve_cores, shard_count, shard_port, ActiveRules, Engine, RuntimeError,
};

/// Sluice: a thread-per-core outbound SMTP sending engine.
///
/// Messages injected over SMTP are stored durably in a per-shard spool,
/// acknowledged with `250` once synced, queued per destination and
/// delivered over reused, pipelined connections.
#[derive(Parser)]
#[command(name = "sluice", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags that override the configuration file.
#[derive(clap::Args, Debug, Default)]
struct Overrides {
    /// Configuration file (TOML); without it the embedded default is used
    /// (see `sluice default-config`).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Shared injection address every shard accepts on (`inject.listen`).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// First per-shard injection port: shard n also listens on PORT+n
    /// (`inject.shard_port_base`; 0 turns per-shard ports off).
    #[arg(long, value_name = "PORT")]
    shard_port_base: Option<u16>,
    /// Static route, tried before the file's routes; repeatable. PATTERN is
    /// `*`, `example.com` or `*.example.com`; several hosts are comma
    /// separated: `--route '*=127.0.0.1:2526'`.
    #[arg(long = "route", value_name = "PATTERN=HOST:PORT[,HOST:PORT]")]
    routes: Vec<String>,
    /// Spool directory (`spool.dir`); shard n uses DIR/shard-n.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// CPUs that run shards, one shard each: `all`, or a list like
    /// `0,1` or `0-3,6` (`cores`).
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine until SIGTERM or SIGINT (graceful: stop accepting,
    /// finish transactions in flight, sync, exit 0). Prints its layout
    /// (shards, cores, ports, spool, durability) at start.
    Run(Overrides),
    /// Print the home shard of DOMAIN and the per-shard port that reaches
    /// it (`shard_port_base + shard`), for injectors that route by domain.
    Route {
        /// The recipient domain (case does not matter).
        domain: String,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Validate a configuration file without starting anything; prints every
    /// problem with its key path and exits 1 if there is any.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print the embedded default configuration (a documented starting point).
    DefaultConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} route(s), spool {}, listen {})",
                    file.display(),
                    c.routes.len(),
                    c.spool_dir.display(),
                    c.listen
                );
                // The shaping file it names is validated too (every
                // problem listed with its file and key path).
                match ActiveRules::load(&c, shard_count(&c)) {
                    Ok(rules) => {
                        println!("shaping: ok: {}", rules.describe());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::DefaultConfig => {
            print!("{EMBEDDED_DEFAULT}");
            ExitCode::SUCCESS
        }
        Command::Route { domain, overrides } => route(&domain, &overrides),
        Command::Run(overrides) => run(&overrides),
    }
}

fn route(domain: &str, o: &Overrides) -> ExitCode {
    let config = match load(o) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let shards = shard_count(&config);
    let shard = home_shard(domain, shards);
    let cpu = resolve_cores(&config).get(shard as usize).copied();
    println!("domain:    {}", domain.to_ascii_lowercase());
    println!(
        "shard:     {shard} of {shards}{}",
        cpu.map(|c| format!(" (CPU {c})")).unwrap_or_default()
    );
    match config.shard_port_base.and_then(|b| shard_port(b, shard)) {
        Some(port) => {
            let mut addr = config.listen;
            addr.set_port(port);
            println!("port:      {port}");
            println!("address:   {addr}");
        }
        None => println!("port:      none: per-shard ports are off (set inject.shard_port_base or --shard-port-base); use {}", config.listen),
    }
    ExitCode::SUCCESS
}

fn run(o: &Overrides) -> ExitCode {
    Logger::install();
    let config = match load(o) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let engine = match Engine::start(config.clone()) {
        Ok(e) => e,
        Err(e @ RuntimeError::Shaping(_)) => {
            // A configuration problem: exit 2, as for other bad input files
            // named on start.
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::FAILURE;
        }
    };
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, engine.stop_flag().clone()) {
            eprintln!("sluice: cannot install the handler for signal {signal}: {e}");
            engine.stop_flag().store(true, Ordering::Relaxed);
            let _ = engine.wait();
            return ExitCode::FAILURE;
        }
    }
    let layout = engine.layout().describe(&config);
    print!("{layout}");
    let _ = std::io::stdout().flush();
    if engine.layout().durability == sluice_engine::config::Durability::NoneUnsafe {
        eprintln!("sluice: WARNING: spool.durability = \"none-unsafe\": nothing is synced; a crash or power loss LOSES MAIL THAT WAS ACKNOWLEDGED. Benchmarks only.");
    }
    match engine.wait() {
        Ok(reports) => {
            let accepted: u64 = reports.iter().map(|r| r.inject.accepted).sum();
            let recovered: u64 = reports.iter().map(|r| r.recovered).sum();
            eprintln!("sluice: stopped cleanly ({accepted} message(s) accepted, {recovered} recovered at start)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fail(e: &ConfigError) -> ExitCode {
    eprintln!("sluice: {e}");
    eprintln!(
        "(check the file with `sluice check-config FILE`; `sluice default-config` shows every key)"
    );
    ExitCode::FAILURE
}

/// Loads the file (or the embedded default) with the flags applied before
/// validation, so a bad flag is reported under its key.
fn load(o: &Overrides) -> Result<Config, ConfigError> {
    let edit = |raw: &mut RawConfig| apply(o, raw);
    match &o.config {
        Some(path) => {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                file: file.clone(),
                source,
            })?;
            Config::parse_with(&file, &text, path.parent().or(Some(Path::new("."))), edit)
        }
        None => Config::parse_with("<embedded default>", EMBEDDED_DEFAULT, None, edit),
    }
}

fn apply(o: &Overrides, raw: &mut RawConfig) {
    if let Some(l) = &o.listen {
        raw.inject.listen = l.clone();
    }
    if let Some(b) = o.shard_port_base {
        raw.inject.shard_port_base = b;
    }
    if let Some(s) = &o.spool {
        // A flag is relative to the working directory, not to the file.
        raw.spool.dir = match std::env::current_dir() {
            Ok(cwd) if s.is_relative() => cwd.join(s),
            _ => s.clone(),
        };
    }
    if let Some(c) = &o.cores {
        raw.cores = parse_cores(c);
    }
    let cli_routes: Vec<RawRoute> = o
        .routes
        .iter()
        .map(|r| match r.split_once('=') {
            Some((pattern, hosts)) => RawRoute {
                pattern: pattern.trim().to_string(),
                hosts: hosts.split(',').map(|h| h.trim().to_string()).collect(),
            },
            // Validation reports the missing hosts under route[i].hosts.
            None => RawRoute {
                pattern: r.clone(),
                hosts: Vec::new(),
            },
        })
        .collect();
    if !cli_routes.is_empty() {
        let file_routes = std::mem::take(&mut raw.route);
        raw.route = cli_routes;
        raw.route.extend(file_routes);
    }
}

/// `all`, or `0,1`, `0-3,6`. A malformed list becomes a word the
/// configuration validation reports under `cores`.
fn parse_cores(text: &str) -> RawCores {
    let t = text.trim();
    if t == "all" {
        return RawCores::Word(t.to_string());
    }
    let mut list = Vec::new();
    for part in t.split(',') {
        let part = part.trim();
        let parsed = match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if a <= b && b - a < 4096 => {
                    list.extend(a..=b);
                    true
                }
                _ => false,
            },
            None => part.parse::<usize>().map(|n| list.push(n)).is_ok(),
        };
        if !parsed {
            return RawCores::Word(text.to_string());
        }
    }
    RawCores::List(list)
}

/// Log lines on stderr: `sluice: LEVEL target: message`. `SLUICE_LOG`
/// sets the level (`error`, `warn`, `info` (default), `debug`, `trace`).
struct Logger;

static LOGGER: Logger = Logger;

impl Logger {
    fn install() {
        let level = match std::env::var("SLUICE_LOG").as_deref() {
            Ok("error") => log::LevelFilter::Error,
            Ok("warn") => log::LevelFilter::Warn,
            Ok("debug") => log::LevelFilter::Debug,
            Ok("trace") => log::LevelFilter::Trace,
            Ok("off") => log::LevelFilter::Off,
            _ => log::LevelFilter::Info,
        };
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("sluice: {} {}: {}", r.level(), r.target(), r.args());
        }
    }

    fn flush(&self) {}
}
