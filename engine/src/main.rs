//! `sluice`: the engine's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_engine::config::{Config, EMBEDDED_DEFAULT};

/// Sluice: a thread-per-core outbound SMTP sending engine.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
                ExitCode::SUCCESS
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
    }
}
