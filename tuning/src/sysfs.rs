//! Reading `/sys` and `/proc` under a chosen root, and the small text formats
//! found there (CPU lists, cache sizes, `key: value` files).
//!
//! Every reader takes a [`SysRoot`] so that tests can point it at a fixture
//! tree; production code uses [`SysRoot::host`]. A missing or unreadable file is
//! never an error here: readers return `None` and the caller reports
//! "unknown", because containers routinely hide parts of `/sys`.

use std::fs;
use std::path::{Path, PathBuf};

/// Upper bound on a CPU or IRQ number accepted from a list. Linux's
/// `NR_CPUS` tops out at 8192; this guards against a corrupt file making us
/// allocate billions of entries.
pub const CPU_ID_MAX: u32 = 1 << 16;

/// Upper bound on the bytes read from one pseudo-file. `/proc/interrupts` on a
/// 256-CPU machine with many devices is the largest we read (a few hundred
/// KiB).
pub const FILE_BYTES_MAX: u64 = 8 << 20;

/// A filesystem root under which `sys/...` and `proc/...` are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysRoot {
    root: PathBuf,
}

impl SysRoot {
    /// The running machine (`/`).
    pub fn host() -> Self {
        Self::new("/")
    }

    /// A fixture tree laid out like `/` (it holds `sys/` and maybe `proc/`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Whether this is the running machine's root, so process-level probes
    /// (rlimits, syscalls) describe the same machine as the files read.
    pub fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Joins a path relative to the root (`"sys/devices/system/cpu"`).
    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.root.join(relative)
    }

    /// The trimmed contents of a file, or `None` when it is missing,
    /// unreadable, larger than [`FILE_BYTES_MAX`] or not UTF-8.
    pub fn read(&self, relative: impl AsRef<Path>) -> Option<String> {
        read_trimmed(&self.join(relative))
    }

    /// A file holding one unsigned integer.
    pub fn read_u64(&self, relative: impl AsRef<Path>) -> Option<u64> {
        self.read(relative)?.parse().ok()
    }

    /// A file holding one signed integer (`numa_node` may be `-1`).
    pub fn read_i64(&self, relative: impl AsRef<Path>) -> Option<i64> {
        self.read(relative)?.parse().ok()
    }

    /// A file holding a CPU list (`0-3,8-11`).
    pub fn read_cpu_list(&self, relative: impl AsRef<Path>) -> Option<Vec<u32>> {
        parse_cpu_list(&self.read(relative)?)
    }

    /// Names of the entries of a directory, sorted; empty when missing.
    pub fn list_dir(&self, relative: impl AsRef<Path>) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.join(relative)) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok())
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

/// Reads a file's trimmed text, tolerating absence.
pub fn read_trimmed(path: &Path) -> Option<String> {
    use std::io::Read;
    let file = fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(FILE_BYTES_MAX).read_to_string(&mut text).ok()?;
    Some(text.trim().to_owned())
}

/// Parses the kernel's CPU list format (`0-3,8,10-11`, possibly empty) into a
/// sorted, deduplicated list. `None` on any malformed element, a reversed
/// range or a number above [`CPU_ID_MAX`].
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let text = text.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Some(cpus);
    }
    for part in text.split(',') {
        let part = part.trim();
        // Some kernels print strides (`0-15:2`); accept them.
        let (range, stride) = match part.split_once(':') {
            Some((range, stride)) => (range, stride.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let one = range.parse::<u32>().ok()?;
                (one, one)
            }
        };
        if first > last || last > CPU_ID_MAX {
            return None;
        }
        cpus.extend((first..=last).step_by(stride as usize));
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// Formats CPUs as the kernel does (`0-3,8`), the form `taskset -c` and
/// `smp_affinity_list` accept.
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut index = 0;
    while index < sorted.len() {
        let first = sorted[index];
        let mut last = first;
        while index + 1 < sorted.len() && sorted[index + 1] == last + 1 {
            index += 1;
            last = sorted[index];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if first == last {
            out.push_str(&first.to_string());
        } else {
            out.push_str(&format!("{first}-{last}"));
        }
        index += 1;
    }
    out
}

/// Parses a cache size as `/sys` prints it (`48K`, `2048K`, `32M`) into bytes.
pub fn parse_size_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, multiplier) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&text[..text.len() - 1], 1u64 << 20),
        b'G' | b'g' => (&text[..text.len() - 1], 1u64 << 30),
        _ => (text, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(multiplier)
}

/// Finds `key` in a `key: value` file such as `/proc/self/status` or a node's
/// `meminfo` (`Node 0 MemTotal:  123 kB`), returning the value text.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        // Node meminfo lines are prefixed with "Node N ".
        let matches = name == key || name.rsplit(' ').next() == Some(key);
        matches.then(|| value.trim())
    })
}

/// Parses a value like `16384 kB` into bytes.
pub fn parse_kb_bytes(value: &str) -> Option<u64> {
    let number = value.split_whitespace().next()?.parse::<u64>().ok()?;
    match value.split_whitespace().nth(1) {
        Some("kB") | Some("KB") => number.checked_mul(1024),
        None => Some(number),
        Some(_) => None,
    }
}

/// Human-readable byte count (`1.5 GiB`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("0-6:2"), Some(vec![0, 2, 4, 6]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("0-4294967295"), None);
        assert_eq!(format_cpu_list(&[11, 0, 1, 2, 3, 8, 10]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn sizes_and_fields() {
        assert_eq!(parse_size_bytes("48K"), Some(48 * 1024));
        assert_eq!(parse_size_bytes("32M"), Some(32 << 20));
        assert_eq!(parse_size_bytes("12"), Some(12));
        assert_eq!(parse_size_bytes("K"), None);
        let meminfo = "Node 0 MemTotal:       16384 kB\nNode 0 MemFree: 1 kB\n";
        assert_eq!(
            field(meminfo, "MemTotal").and_then(parse_kb_bytes),
            Some(16 << 20)
        );
        assert_eq!(
            field("CapEff:\t00000000a80425fb\n", "CapEff"),
            Some("00000000a80425fb")
        );
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }
}
