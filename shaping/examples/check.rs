//! Validates a Sluice shaping rules file, or converts a KumoMTA / PowerMTA
//! one, without starting anything.
//!
//! ```text
//! cargo run -p sluice-shaping --example check -- RULES.toml
//! cargo run -p sluice-shaping --example check -- --from-kumo shaping.toml
//! cargo run -p sluice-shaping --example check -- --from-pmta /etc/pmta/config
//! ```
//!
//! Exit code 0 only when the file is valid (or converted); every problem goes
//! to stderr with the file, key path and reason.

use std::path::Path;
use std::process::ExitCode;

use sluice_shaping::config::validate;
use sluice_shaping::import::{import_kumo, import_pmta, Imported};

const USAGE: &str = "usage: check RULES.toml
       check --from-kumo KUMO_SHAPING.toml   (prints Sluice rules on stdout)
       check --from-pmta PMTA_CONFIG         (prints Sluice rules on stdout)
       check --help | --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        ["--version" | "-V"] => {
            println!("check (sluice-shaping) {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--from-kumo", file] => convert(file, import_kumo),
        ["--from-pmta", file] => convert(file, import_pmta),
        [file] if !file.starts_with('-') => match validate(Path::new(file)) {
            Ok(s) => {
                println!(
                    "{file}: ok ({} domains, {} providers, {} sources, {} pools, {} backoff rules)",
                    s.domains, s.providers, s.sources, s.pools, s.backoff_rules
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!("fix the problems above and run check again");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn convert<E: std::fmt::Display>(
    file: &str,
    import: fn(&str, &str) -> Result<Imported, E>,
) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{file}: cannot read the file: {e}");
            return ExitCode::FAILURE;
        }
    };
    match import(&text, file) {
        Ok(imported) => {
            print!("{}", imported.toml);
            for u in &imported.unmapped {
                eprintln!("{file}: not imported: {}: {}", u.path, u.reason);
            }
            eprintln!(
                "{} setting(s) not imported; review them before use",
                imported.unmapped.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
