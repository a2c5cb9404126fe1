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

/// mimalloc's per-thread heaps suit thread-per-core: a shard allocates and
/// frees on its own thread without locks (ARCHITECTURE.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Queue summary of a running engine: ready, scheduled, in flight,
    /// received, delivered, bounced, per shard and in total, then the
    /// standing orders (suspended destinations and tenants with who and
    /// why, timed bounces, reroutes).
    Queues(AdminTarget),
    /// Top destinations of a running engine by depth, with the age of the
    /// oldest message, the last error and any suspension.
    Top {
        /// How many destinations to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Suspend delivery to a destination (recipient domain), or of a
    /// tenant's mail (--tenant) to every destination, on every shard;
    /// queued and arriving recipients wait (their max age still applies)
    /// until `sluice resume` or the end of --for. Kept in the spool
    /// directory's admin-state.json: a restart keeps it.
    Suspend {
        /// The recipient domain (or use --tenant).
        #[arg(required_unless_present = "tenant", conflicts_with = "tenant")]
        dest: Option<String>,
        /// Suspend this tenant's mail instead of a destination.
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// Who suspends it (shown in `sluice top` and `sluice queues`).
        #[arg(long, visible_alias = "by")]
        who: String,
        /// Why (shown in `sluice top` and `sluice queues`).
        #[arg(long, visible_alias = "reason")]
        why: String,
        /// Resume by itself after this long (`30m`, `2h`); default: until resumed.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Resume delivery to a suspended destination, or of a suspended
    /// tenant (--tenant).
    Resume {
        /// The recipient domain (or use --tenant).
        #[arg(required_unless_present = "tenant", conflicts_with = "tenant")]
        dest: Option<String>,
        /// Resume this tenant's mail instead of a destination.
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Bounce every queued recipient of a queue (recipient domain): each
    /// gets an AdminBounce record and its sender a DSN. With --for, new
    /// arrivals are bounced too until the time is up.
    Bounce {
        /// The queue (recipient domain).
        queue: String,
        /// Keep bouncing new arrivals this long (`10m`).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Who bounces it (in the log and the DSN).
        #[arg(long, default_value = "operator")]
        who: String,
        /// Why (in the log and the DSN).
        #[arg(long, default_value = "bounced by the operator")]
        why: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Send a queue (recipient domain) to other next hops on every shard
    /// (queued, in-flight and arriving recipients follow it) until
    /// `--clear`; kept in the spool directory's admin-state.json, so a
    /// restart keeps it.
    Reroute {
        /// The queue (recipient domain).
        queue: String,
        /// The new next hops, comma separated: `192.0.2.7:25,192.0.2.8:25`.
        #[arg(
            long,
            value_name = "HOST:PORT[,HOST:PORT]",
            required_unless_present = "clear",
            conflicts_with = "clear"
        )]
        to: Option<String>,
        /// End the reroute: the queue goes back to its own route or MX.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show a queued message: envelope, size, age, and where each
    /// recipient is (ready, scheduled with its next attempt, in flight or done).
    Inspect {
        /// The id from the 250 reply, e.g. `s0.42`.
        id: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Re-read the bounce rules file and apply it on every shard without
    /// a restart (a bad file is refused and the old rules stay).
    Reload(AdminTarget),
    /// Print the Prometheus metrics of a running engine.
    Metrics(AdminTarget),
}

/// Where a running engine's admin listener is.
#[derive(clap::Args, Debug, Default)]
struct AdminTarget {
    /// The admin listener, ADDR:PORT (default: `[admin] listen` of
    /// --config, else 127.0.0.1:8025).
    #[arg(long, value_name = "ADDR:PORT")]
    admin: Option<String>,
    /// The engine's configuration file (for its `[admin] listen`).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the admin API's JSON answer as is.
    #[arg(long)]
    json: bool,
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
        Command::Queues(t) => admin::queues(&t),
        Command::Top { limit, target } => admin::top(&target, limit),
        Command::Suspend {
            dest,
            tenant,
            who,
            why,
            duration,
            target,
        } => admin::order(
            &target,
            "/api/suspend",
            &admin::Subject::of(dest, tenant),
            Some((&who, &why)),
            duration.as_deref(),
        ),
        Command::Resume {
            dest,
            tenant,
            target,
        } => admin::order(
            &target,
            "/api/resume",
            &admin::Subject::of(dest, tenant),
            None,
            None,
        ),
        Command::Bounce {
            queue,
            duration,
            who,
            why,
            target,
        } => admin::order(
            &target,
            "/api/bounce",
            &admin::Subject::Domain(queue),
            Some((&who, &why)),
            duration.as_deref(),
        ),
        Command::Reroute {
            queue,
            to,
            clear: _,
            target,
        } => admin::reroute(&target, &queue, to.as_deref()),
        Command::Inspect { id, target } => admin::inspect(&target, &id),
        Command::Reload(t) => admin::reload(&t),
        Command::Metrics(t) => admin::metrics(&t),
        Command::Run(overrides) => run(&overrides),
    }
}

/// The operator subcommands: HTTP requests to the admin listener.
mod admin {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
    use std::process::ExitCode;
    use std::time::Duration;

    use sluice_engine::config::Config;

    use super::AdminTarget;

    const TIMEOUT: Duration = Duration::from_secs(15);

    fn addr(t: &AdminTarget) -> Result<SocketAddr, String> {
        if let Some(a) = &t.admin {
            return a
                .to_socket_addrs()
                .ok()
                .and_then(|mut i| i.next())
                .ok_or_else(|| format!("--admin {a}: expected ADDR:PORT"));
        }
        let config = match &t.config {
            Some(p) => Config::load(p).map_err(|e| e.to_string())?,
            None => Config::embedded_default().map_err(|e| e.to_string())?,
        };
        config.admin.listen.ok_or_else(|| {
            "the admin listener is off in this configuration ([admin] listen = \"off\")".into()
        })
    }

    /// One request; the JSON (or text) body of a 2xx answer.
    fn call(t: &AdminTarget, method: &str, path: &str, body: &str) -> Result<String, String> {
        let a = addr(t)?;
        let mut s = TcpStream::connect_timeout(&a, TIMEOUT).map_err(|e| {
            format!("cannot reach the admin listener at {a}: {e} (is sluice running? use --admin ADDR:PORT or --config FILE)")
        })?;
        let _ = s.set_read_timeout(Some(TIMEOUT));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            let why = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(body);
            Err(format!(
                "the admin listener answered {status}: {}",
                why.trim()
            ))
        }
    }

    fn json(
        t: &AdminTarget,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<serde_json::Value, String> {
        let text = call(t, method, path, body)?;
        if t.json {
            print!("{text}");
        }
        serde_json::from_str(&text).map_err(|e| format!("the admin listener's answer: {e}"))
    }

    fn done(r: Result<(), String>) -> ExitCode {
        match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {e}");
                ExitCode::FAILURE
            }
        }
    }

    pub fn queues(t: &AdminTarget) -> ExitCode {
        done(json(t, "GET", "/api/queues", "").map(|v| {
            if t.json {
                return;
            }
            println!(
                "{:>6} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8} {:>9}",
                "shard",
                "ready",
                "scheduled",
                "in-flight",
                "received",
                "delivered",
                "bounced",
                "expired",
                "transient"
            );
            let row = |name: String, r: &serde_json::Value| {
                let n = |k: &str| r[k].as_u64().unwrap_or(0);
                println!(
                    "{:>6} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8} {:>9}",
                    name,
                    n("ready"),
                    n("scheduled"),
                    n("in_flight"),
                    n("received"),
                    n("delivered"),
                    n("bounced"),
                    n("expired"),
                    n("transient_failures")
                );
            };
            for s in v["shards"].as_array().into_iter().flatten() {
                row(s["shard"].to_string(), s);
            }
            row("total".into(), &v["total"]);
            print_orders(&v["orders"]);
        }))
    }

    /// The standing orders of `/api/queues`, one line each.
    fn print_orders(o: &serde_json::Value) {
        let order = |s: &serde_json::Value| {
            let until = s["until_ms"]
                .as_u64()
                .map(|u| {
                    let left = u.saturating_sub(sluice_engine::deliver::now_unix_ms());
                    format!(", {}s left", left / 1000)
                })
                .unwrap_or_default();
            format!(
                "by {} ({}){until}",
                s["who"].as_str().unwrap_or(""),
                s["why"].as_str().unwrap_or("")
            )
        };
        let mut lines = Vec::new();
        for (key, what) in [
            ("suspended", "destination"),
            ("suspended_tenants", "tenant"),
            ("bouncing", "bouncing"),
        ] {
            for (name, s) in o[key].as_object().into_iter().flatten() {
                let verb = if key == "bouncing" { "" } else { "suspended " };
                lines.push(format!("{what} {name}: {verb}{}", order(s)));
            }
        }
        for (name, hops) in o["rerouted"].as_object().into_iter().flatten() {
            let hops: Vec<&str> = hops
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_str())
                .collect();
            lines.push(format!(
                "destination {name}: rerouted to {}",
                hops.join(",")
            ));
        }
        if !lines.is_empty() {
            println!("\nstanding orders:");
            for l in lines {
                println!("  {l}");
            }
        }
    }

    pub fn top(t: &AdminTarget, limit: usize) -> ExitCode {
        done(
            json(t, "GET", &format!("/api/top?limit={limit}"), "").map(|v| {
                if t.json {
                    return;
                }
                println!(
                    "{:<28} {:>5} {:>7} {:>9} {:>10}  last error",
                    "destination", "shard", "depth", "oldest", "state"
                );
                for r in v.as_array().into_iter().flatten() {
                    let state = if r["suspended"].is_object() {
                        format!(
                            "suspended by {} ({})",
                            r["suspended"]["who"].as_str().unwrap_or(""),
                            r["suspended"]["why"].as_str().unwrap_or("")
                        )
                    } else if r["bouncing"].is_object() {
                        "bouncing".to_string()
                    } else {
                        "active".to_string()
                    };
                    let oldest = r["oldest_age_s"]
                        .as_f64()
                        .map_or("-".to_string(), |s| format!("{s:.0}s"));
                    let name = match (r["domain"].as_str(), r["tenant"].as_str()) {
                        (Some(d), Some(t)) => format!("{d} [{t}]"),
                        (Some(d), None) => d.to_string(),
                        (None, Some(t)) => format!("tenant {t}"),
                        (None, None) => String::new(),
                    };
                    println!(
                        "{:<28} {:>5} {:>7} {:>9} {:>10}  {}",
                        name,
                        r["shard"],
                        r["depth"].as_u64().unwrap_or(0),
                        oldest,
                        state,
                        r["last_error"].as_str().unwrap_or("-")
                    );
                }
            }),
        )
    }

    /// What an order is about.
    pub enum Subject {
        /// A destination (recipient domain).
        Domain(String),
        /// A tenant.
        Tenant(String),
    }

    impl Subject {
        /// From the positional destination or `--tenant` (clap makes sure
        /// exactly one is given).
        pub fn of(dest: Option<String>, tenant: Option<String>) -> Subject {
            match tenant {
                Some(t) => Subject::Tenant(t),
                None => Subject::Domain(dest.unwrap_or_default()),
            }
        }
    }

    pub fn order(
        t: &AdminTarget,
        path: &str,
        subject: &Subject,
        who_why: Option<(&str, &str)>,
        duration: Option<&str>,
    ) -> ExitCode {
        let for_s = match duration.map(sluice_shaping::units::parse_duration) {
            None => None,
            Some(Ok(d)) => Some(d.as_secs_f64()),
            Some(Err(e)) => {
                eprintln!("sluice: --for {}: {e}", duration.unwrap_or(""));
                return ExitCode::from(2);
            }
        };
        let (mut body, dest) = match subject {
            Subject::Domain(d) => (serde_json::json!({"domain": d}), d.clone()),
            Subject::Tenant(n) => (serde_json::json!({"tenant": n}), format!("tenant {n}")),
        };
        if let Some((who, why)) = who_why {
            body["who"] = who.into();
            body["why"] = why.into();
        }
        if let Some(f) = for_s {
            body["for_s"] = f.into();
        }
        done(json(t, "POST", path, &body.to_string()).map(|v| {
            if t.json {
                return;
            }
            let shards = v["shards"].as_array().cloned().unwrap_or_default();
            let sum = |k: &str| shards.iter().filter_map(|s| s[k].as_u64()).sum::<u64>();
            match path {
                "/api/suspend" => println!(
                    "{dest}: suspended on {} shard(s); {} queued recipient(s) held",
                    shards.len(),
                    sum("parked")
                ),
                "/api/resume" => {
                    println!("{dest}: resumed; {} recipient(s) released", sum("released"))
                }
                _ => println!(
                    "{dest}: {} recipient(s) bounced{}",
                    sum("bounced"),
                    duration.map_or(String::new(), |d| format!(
                        "; new arrivals are bounced for {d}"
                    ))
                ),
            }
        }))
    }

    /// `to`: the new next hops; `None` (`--clear`): end the reroute.
    pub fn reroute(t: &AdminTarget, queue: &str, to: Option<&str>) -> ExitCode {
        let body = match to {
            Some(to) => {
                let hosts: Vec<&str> = to.split(',').map(str::trim).collect();
                serde_json::json!({"domain": queue, "to": hosts})
            }
            None => serde_json::json!({"domain": queue, "clear": true}),
        };
        done(json(t, "POST", "/api/reroute", &body.to_string()).map(|v| {
            if t.json {
                return;
            }
            match to {
                Some(to) => {
                    let site = v["shards"][0]["site"].as_str().unwrap_or("");
                    println!("{queue}: rerouted to {to} (site {site})");
                }
                None => println!("{queue}: reroute ended; back to its own route"),
            }
        }))
    }

    pub fn inspect(t: &AdminTarget, id: &str) -> ExitCode {
        done(
            json(t, "GET", &format!("/api/inspect?id={id}"), "").map(|v| {
                if t.json {
                    return;
                }
                println!("id:        {}", v["id"].as_str().unwrap_or(""));
                println!("sender:    <{}>", v["sender"].as_str().unwrap_or(""));
                for k in ["tenant", "campaign"] {
                    if let Some(x) = v[k].as_str() {
                        println!("{:<10} {x}", format!("{k}:"));
                    }
                }
                println!("size:      {} bytes", v["size"]);
                println!("age:       {:.1}s", v["age_s"].as_f64().unwrap_or(0.0));
                for r in v["recipients"].as_array().into_iter().flatten() {
                    let next = r["next_attempt_in_s"]
                        .as_f64()
                        .map_or(String::new(), |s| format!(", next attempt in {s:.1}s"));
                    let attempts = r["attempts"]
                        .as_u64()
                        .map_or(String::new(), |a| format!(", {a} attempt(s)"));
                    println!(
                        "rcpt {}:    <{}> {}{attempts}{next}",
                        r["index"],
                        r["address"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or("")
                    );
                }
            }),
        )
    }

    pub fn reload(t: &AdminTarget) -> ExitCode {
        done(json(t, "POST", "/api/reload", "").map(|v| {
            if t.json {
                return;
            }
            println!(
                "bounce rules: reloaded from {} ({} patterns)",
                v["bounce_rules"].as_str().unwrap_or(""),
                v["patterns"]
            );
            let s = &v["shaping"];
            match s.as_str() {
                Some(text) => println!("shaping:      {text}"),
                None => println!(
                    "shaping:      reloaded from {} on {} shard(s): {} limit(s) changed, \
                     {} no longer used (kept until their destinations go), \
                     {} backoff mode(s) ended, {} kept",
                    s["file"].as_str().unwrap_or(""),
                    s["shards"],
                    s["limits_changed"],
                    s["limits_unused"],
                    s["modes_ended"],
                    s["modes_kept"]
                ),
            }
        }))
    }

    pub fn metrics(t: &AdminTarget) -> ExitCode {
        done(call(t, "GET", "/metrics", "").map(|text| print!("{text}")))
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
