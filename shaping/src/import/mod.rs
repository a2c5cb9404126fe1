//! Migration: KumoMTA `shaping.toml` and PowerMTA `<domain>` blocks to a
//! Sluice rules file. Every setting that does not map is reported with where
//! it was and why; nothing is dropped silently. The output is TOML text that
//! [`crate::config::Rules::parse`] accepts (the importers check this).

mod kumo;
mod pmta;

use thiserror::Error;

use crate::config::Rules;
pub use kumo::import_kumo;
pub use pmta::import_pmta;

/// A setting that was not carried over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmapped {
    /// Where it was: a key path (KumoMTA) or `line N: directive` (PowerMTA).
    pub path: String,
    /// Why it was not carried over.
    pub reason: String,
}

/// The result of an import.
#[derive(Clone, Debug)]
pub struct Imported {
    /// A Sluice rules file.
    pub toml: String,
    /// Everything that did not map.
    pub unmapped: Vec<Unmapped>,
}

/// Why an import failed as a whole.
#[derive(Debug, Error)]
pub enum ImportError {
    /// The input could not be read as the source format.
    #[error("{file}: {message}")]
    Syntax {
        /// The input file.
        file: String,
        /// What is wrong, with the line where known.
        message: String,
    },
    /// The converted rules do not validate (a value that maps but is out of
    /// range in Sluice); the problems name the converted key paths.
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigError),
}

/// Serializes the converted tables and checks the result validates.
fn finish(
    table: toml::Table,
    unmapped: Vec<Unmapped>,
    file: &str,
) -> Result<Imported, ImportError> {
    let toml = toml::to_string(&table).map_err(|e| ImportError::Syntax {
        file: file.to_string(),
        message: format!("cannot write the converted rules: {e}"),
    })?;
    Rules::parse(&toml, &format!("{file} (converted)"))?;
    Ok(Imported { toml, unmapped })
}

/// Moves whitespace and digit separators out of a human quantity:
/// `"30 days"` → `"30days"`, `"1,000/h"` → `"1_000/h"`.
fn squeeze(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c == ',' { '_' } else { c })
        .collect()
}
