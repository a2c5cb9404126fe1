//! The engine's delivery log as the tests read it: every JSON line of every
//! `delivery-*.jsonl` file in a log directory.

use std::path::Path;

/// Every JSON record in the `.jsonl` files of `dir`, file by file (none
/// while the directory does not exist; a half-written last line is skipped).
pub fn read_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.path().extension().and_then(|x| x.to_str()) != Some("jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                out.push(v);
            }
        }
    }
    out
}

/// How many records have `"type": kind` (`Delivery`, `Bounce`, ...).
pub fn count(records: &[serde_json::Value], kind: &str) -> usize {
    records.iter().filter(|r| r["type"] == kind).count()
}

/// The records of `kind` about `recipient`.
pub fn records_of(
    records: &[serde_json::Value],
    kind: &str,
    recipient: &str,
) -> Vec<serde_json::Value> {
    records
        .iter()
        .filter(|r| r["type"] == kind && r["recipient"] == recipient)
        .cloned()
        .collect()
}
