//! `sluice-bench`: see `sluice-bench --help` and the crate docs of `sluice_bench`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use sluice_bench::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let interrupt = Arc::new(AtomicBool::new(false));
            // Ctrl-C / TERM: stop starting transactions, finish the ones in
            // flight, and still print and write the report.
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                if let Err(e) = signal_hook::flag::register(signal, interrupt.clone()) {
                    eprintln!("sluice-bench: cannot handle signal {signal}: {e}");
                }
            }
            match sluice_bench::run::run(&args, interrupt) {
                Ok(outcome) => {
                    let mut out = std::io::stdout().lock();
                    let _ = outcome.report.write_table(&mut out);
                    let _ = out.flush();
                    if outcome.report.passed {
                        ExitCode::SUCCESS
                    } else {
                        eprintln!("sluice-bench: the run did not meet its targets:");
                        for p in &outcome.report.problems {
                            eprintln!("  - {p}");
                        }
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("sluice-bench: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
