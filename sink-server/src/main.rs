//! `sluice-sink`: see the `sluice_sink` crate docs and `--help`.

use std::process::ExitCode;

use clap::Parser;
use sluice_sink::cli::{Cli, Command};
use sluice_sink::profile::{Overrides, Profile};
use sluice_sink::runner::Sink;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Validate { file }) = &cli.command {
        let overrides: Overrides = cli.args.overrides();
        return match Profile::load(Some(file), &overrides) {
            Ok(_) => {
                println!("{}: valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice-sink: {e}");
                ExitCode::from(2)
            }
        };
    }
    let (config, outputs) = match cli.args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-sink: {e}");
            eprintln!("(run `sluice-sink --help` for the options)");
            return ExitCode::from(2);
        }
    };
    let shards = config.shard_count();
    let seed = config.seed;
    let passive = config.profile.is_passive();
    let sink = match Sink::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice-sink: {e}");
            return ExitCode::from(1);
        }
    };
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, sink.shared().stop.clone()) {
            eprintln!("sluice-sink: cannot install the handler for signal {signal}: {e}");
            return ExitCode::from(1);
        }
    }
    eprintln!(
        "sluice-sink listening on {} with {shards} shard(s), seed {seed}, profile: {}",
        sink.local_addr(),
        if passive {
            "none (accept everything)"
        } else {
            "active"
        }
    );
    match sink.run(&outputs) {
        Ok(summary) => {
            if outputs.summary.is_none() {
                // A Value always serializes.
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).expect("JSON value serializes")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice-sink: writing outputs failed: {e}");
            ExitCode::from(1)
        }
    }
}
