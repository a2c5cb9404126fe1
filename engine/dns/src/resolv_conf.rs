//! `/etc/resolv.conf`: the name servers and the retry options.
//!
//! Only what a stub resolver for mail needs is read: `nameserver` lines
//! and `options timeout:N attempts:N rotate`. `search`, `domain` and
//! `ndots` are deliberately ignored: recipient domains are always fully
//! qualified, and appending a search domain to one would deliver mail to
//! the wrong place. Unknown lines are ignored, as glibc does.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// glibc's `RES_MAXRETRANS`: the largest `timeout` accepted, seconds.
pub const TIMEOUT_S_MAX: u64 = 30;
/// glibc's `RES_MAXRETRY`: the largest `attempts` accepted.
pub const ATTEMPTS_MAX: u32 = 5;
/// glibc's `MAXNS`; we allow more because configuration may list more,
/// but keep a bound.
pub const NAMESERVERS_MAX: usize = 8;

/// What resolv.conf says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Name servers in file order, port 53 (at most
    /// [`NAMESERVERS_MAX`]).
    pub nameservers: Vec<SocketAddr>,
    /// Per-try timeout (`options timeout:N`, default 5 s).
    pub timeout: Duration,
    /// Rounds over all servers (`options attempts:N`, default 2).
    pub attempts: u32,
    /// `options rotate`: start each query at the next server.
    pub rotate: bool,
}

impl Default for ResolvConf {
    fn default() -> Self {
        ResolvConf {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            rotate: false,
        }
    }
}

/// A resolv.conf that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl ResolvConf {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ResolvConfError> {
        let text = std::fs::read_to_string(path).map_err(|source| ResolvConfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::parse(&text))
    }

    /// Parses resolv.conf text. Malformed values are skipped (as glibc
    /// does), out-of-range ones clamped; the result may have no servers.
    pub fn parse(text: &str) -> Self {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_ascii_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A zone index (fe80::1%eth0) is not supported by
                    // IpAddr; such servers are skipped.
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        if conf.nameservers.len() < NAMESERVERS_MAX {
                            conf.nameservers.push(SocketAddr::new(ip, 53));
                        }
                    }
                }
                Some("options") => {
                    for option in words {
                        if let Some(v) = option.strip_prefix("timeout:") {
                            if let Ok(s) = v.parse::<u64>() {
                                conf.timeout = Duration::from_secs(s.clamp(1, TIMEOUT_S_MAX));
                            }
                        } else if let Some(v) = option.strip_prefix("attempts:") {
                            if let Ok(n) = v.parse::<u32>() {
                                conf.attempts = n.clamp(1, ATTEMPTS_MAX);
                            }
                        } else if option == "rotate" {
                            conf.rotate = true;
                        }
                    }
                }
                _ => {}
            }
        }
        conf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_and_options() {
        let conf = ResolvConf::parse(
            "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver  ::1 # local\n\
             ;nameserver 9.9.9.9\nnameserver bogus\nnameserver fe80::1%eth0\n\
             options ndots:2 timeout:3 attempts:9 rotate\n",
        );
        assert_eq!(
            conf.nameservers,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(conf.timeout, Duration::from_secs(3));
        assert_eq!(conf.attempts, ATTEMPTS_MAX);
        assert!(conf.rotate);
    }

    #[test]
    fn defaults_and_clamps() {
        let conf = ResolvConf::parse("options timeout:0 attempts:x\n");
        assert!(conf.nameservers.is_empty());
        assert_eq!(conf.timeout, Duration::from_secs(1));
        assert_eq!(conf.attempts, 2);
        let many: String = (0..20)
            .map(|i| format!("nameserver 10.0.0.{i}\n"))
            .collect();
        assert_eq!(ResolvConf::parse(&many).nameservers.len(), NAMESERVERS_MAX);
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 127.0.0.53\n").unwrap();
        let conf = ResolvConf::load(&path).unwrap();
        assert_eq!(conf.nameservers.len(), 1);
        assert!(ResolvConf::load(&dir.path().join("missing")).is_err());
    }
}
