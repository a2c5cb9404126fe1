//! `sluice-bench`: see `sluice-bench --help` and the crate docs of `sluice_bench`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use sluice_bench::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let interrupt = Arc::new(AtomicBool::new(false));
    // Ctrl-C / TERM: stop starting transactions, finish the ones in flight,
    // stop any children, and still print and write the report.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, interrupt.clone()) {
            eprintln!("sluice-bench: cannot handle signal {signal}: {e}");
        }
    }
    let mut out = std::io::stdout().lock();
    let (passed, problems) = match cli.command {
        Command::Run(args) => match sluice_bench::run::run(&args, interrupt) {
            Ok(outcome) => {
                let _ = outcome.report.write_table(&mut out);
                (outcome.report.passed, outcome.report.problems)
            }
            Err(e) => return usage_error(&e),
        },
        Command::Demo(args) => match sluice_bench::demo::demo(&args, interrupt) {
            Ok(demo) => {
                let _ = demo.write_table(&mut out);
                (demo.passed, demo.problems)
            }
            Err(e) => return usage_error(&e),
        },
        Command::Compare(args) => match sluice_bench::compare::compare(&args, interrupt) {
            Ok(c) => {
                let _ = c.write_table(&mut out);
                let mut problems = Vec::new();
                for side in [&c.a, &c.b] {
                    problems.extend(
                        side.report
                            .problems
                            .iter()
                            .map(|p| format!("{}: {p}", side.name)),
                    );
                }
                (c.passed, problems)
            }
            Err(e) => return usage_error(&e),
        },
    };
    let _ = out.flush();
    if passed {
        ExitCode::SUCCESS
    } else {
        eprintln!("sluice-bench: the run did not meet its targets:");
        for p in &problems {
            eprintln!("  - {p}");
        }
        ExitCode::from(1)
    }
}

fn usage_error(e: &sluice_bench::Error) -> ExitCode {
    eprintln!("sluice-bench: {e}");
    ExitCode::from(2)
}
