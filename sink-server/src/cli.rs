//! Command-line interface of `sluice-sink`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};

use crate::config::{
    allowed_cpus, parse_cores, Capture, SinkConfig, CONNECTIONS_PER_SHARD_MAX_DEFAULT,
    IO_MEMORY_BYTES_DEFAULT, RCPT_MAX_DEFAULT, REPORT_INTERVAL, SIZE_BYTES_MAX_DEFAULT,
};
use crate::profile::{parse_duration, Overrides, Profile};
use crate::runner::Outputs;
use crate::tls::TlsMaterial;

/// The bundled /dev/null SMTP sink: accepts mail at line rate, counts it,
/// discards it, and can emulate slow, throttling or failing receivers.
///
/// On SIGINT or SIGTERM it prints a JSON summary (to --summary FILE, else
/// stdout) and exits 0. Exit code 2: bad flag or profile; 1: runtime failure.
#[derive(Debug, Parser)]
#[command(name = "sluice-sink", version, about, long_about)]
pub struct Cli {
    /// Check a profile file and exit.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server options.
    #[command(flatten)]
    pub args: Args,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a profile (TOML) and the profile flags, print the problems, and exit
    /// (0: valid, 2: invalid).
    Validate {
        /// The profile file.
        file: PathBuf,
    },
}

/// Server options.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Address to listen on. Every shard binds it with SO_REUSEPORT.
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub listen: SocketAddr,
    /// Shards: a count N (the first N CPUs this process may use, so taskset
    /// is honoured) or a CPU list like 0,2-3. One executor per CPU, pinned.
    /// Default: every CPU this process may use.
    #[arg(long)]
    pub cores: Option<String>,
    /// Host name in the greeting and the EHLO reply.
    #[arg(long, default_value = "sluice-sink.invalid")]
    pub hostname: String,
    /// Receiver profile (TOML); see the crate docs for its keys.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Seed of the profile's random decisions (shard i uses SEED+i).
    /// Default: random, printed in the summary.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the JSON summary here (atomically, temp file + rename) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Rewrite --summary this often while running ("0": only at exit).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub summary_interval: Duration,
    /// Print a live line on stderr this often ("0": never).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub stats_interval: Duration,
    /// Write an HdrHistogram interval log (V2 compressed, microseconds) of
    /// injection-to-arrival latency here.
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,
    /// Interval of the --hlog entries.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub hlog_interval: Duration,
    /// Append the id (X-Sluice-Id, else Message-ID) of every accepted
    /// message to FILE, one per line, after its 250 was sent.
    #[arg(long, value_name = "FILE")]
    pub record_ids: Option<PathBuf>,
    /// Append the peer address (IP only) of every accepted connection to
    /// FILE, one per line (tests check which source address a sender used).
    #[arg(long, value_name = "FILE")]
    pub record_peers: Option<PathBuf>,
    /// Write every accepted message in full into DIR (test mode; blocking writes).
    #[arg(long, value_name = "DIR")]
    pub capture: Option<PathBuf>,
    /// Capture at most this many messages.
    #[arg(long, default_value_t = 1000)]
    pub capture_max: u64,
    /// STARTTLS certificate chain (PEM). Without it a self-signed one is generated.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// STARTTLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Write the certificate in use (e.g. the generated one) here, so
    /// clients can trust it.
    #[arg(long, value_name = "FILE")]
    pub tls_cert_out: Option<PathBuf>,
    /// Do not offer STARTTLS.
    #[arg(long)]
    pub no_starttls: bool,
    /// Testing: offer STARTTLS but fail every handshake (it is signed with
    /// a key that is not the certificate's), to exercise a client's
    /// fallback to plaintext.
    #[arg(long, conflicts_with = "no_starttls")]
    pub tls_broken: bool,
    /// SIZE advertised and enforced, bytes (RFC 1870).
    #[arg(long, default_value_t = SIZE_BYTES_MAX_DEFAULT)]
    pub size_max: u64,
    /// Recipients accepted per transaction (more get 452 4.5.3; at least 100).
    #[arg(long, default_value_t = RCPT_MAX_DEFAULT)]
    pub rcpt_max: usize,
    /// Open connections per shard; more get 421 and are closed.
    #[arg(long, default_value_t = CONNECTIONS_PER_SHARD_MAX_DEFAULT)]
    pub connections_max: usize,
    /// Close a connection idle this long with 421 (RFC 5321 §4.5.3.2.7: 5 minutes; "0": never).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// glommio io_memory per shard, bytes. Keep shards x this under `ulimit -l`.
    #[arg(long, default_value_t = IO_MEMORY_BYTES_DEFAULT)]
    pub io_memory: usize,
    /// Busy-poll this long before an idle shard sleeps ("0": sleep at once).
    /// Trades CPU for wake-up latency.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub spin_before_park: Duration,
    /// Profile: accept TCP connections but never send the greeting.
    #[arg(long)]
    pub never_greet: bool,
    /// Profile: close a connection after it had N messages accepted.
    #[arg(long, value_name = "N")]
    pub drop_after_messages: Option<u64>,
    /// Profile: probability of closing the connection in the middle of a message body.
    #[arg(long, value_name = "P")]
    pub drop_in_data: Option<f64>,
    /// Profile: inject a reply code with a probability at a phase
    /// (connect, mail, rcpt, data; codes 421 451 452 550 554), e.g. rcpt:451=0.1. Repeatable.
    #[arg(long, value_name = "PHASE:CODE=P")]
    pub reject: Vec<String>,
    /// Profile: delay the reply of a phase, e.g. data=50ms. Repeatable.
    #[arg(long, value_name = "PHASE=DURATION")]
    pub delay: Vec<String>,
    /// Profile: accept at most N messages per second for DOMAIN, then 421 4.7.0. Repeatable.
    #[arg(long, value_name = "DOMAIN=N")]
    pub domain_rate: Vec<String>,
    /// Profile: at most N concurrent connections for DOMAIN (known at the first RCPT),
    /// then 421 4.7.0. Repeatable.
    #[arg(long, value_name = "DOMAIN=N")]
    pub domain_max_connections: Vec<String>,
    /// Profile: answer 550 5.1.1 for LOCAL (any domain) or LOCAL@DOMAIN. Repeatable.
    #[arg(long, value_name = "LOCAL[@DOMAIN]")]
    pub reject_local_part: Vec<String>,
}

impl Args {
    /// The profile flags as overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            never_greet: self.never_greet,
            drop_after_messages: self.drop_after_messages,
            drop_in_data: self.drop_in_data,
            reject: self.reject.clone(),
            delay: self.delay.clone(),
            domain_rate: self.domain_rate.clone(),
            domain_max_connections: self.domain_max_connections.clone(),
            reject_local_part: self.reject_local_part.clone(),
        }
    }

    /// Validates everything into a [`SinkConfig`] and [`Outputs`]; the
    /// error text names the flag or key at fault.
    pub fn into_config(self) -> Result<(SinkConfig, Outputs), String> {
        let profile =
            Profile::load(self.profile.as_deref(), &self.overrides()).map_err(|e| e.to_string())?;
        let allowed = allowed_cpus();
        let cores = match &self.cores {
            Some(spec) => parse_cores(spec, &allowed).map_err(|e| format!("--cores: {e}"))?,
            None => allowed,
        };
        if self.rcpt_max < 100 {
            return Err(format!(
                "--rcpt-max: {} is below 100, the minimum of RFC 5321 §4.5.3.1.8",
                self.rcpt_max
            ));
        }
        if self.hostname.is_empty() || self.hostname.contains(|c: char| c.is_whitespace()) {
            return Err(format!(
                "--hostname: `{}` is not a host name",
                self.hostname
            ));
        }
        let tls = if self.no_starttls {
            None
        } else {
            let material = match (&self.tls_cert, &self.tls_key) {
                _ if self.tls_broken => TlsMaterial::broken(std::slice::from_ref(&self.hostname)),
                (Some(c), Some(k)) => TlsMaterial::from_files(c, k),
                _ => TlsMaterial::self_signed(&[
                    self.hostname.clone(),
                    "localhost".into(),
                    "127.0.0.1".into(),
                ]),
            }
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
            if let Some(out) = &self.tls_cert_out {
                std::fs::write(out, &material.cert_pem)
                    .map_err(|e| format!("--tls-cert-out {}: {e}", out.display()))?;
            }
            Some(material)
        };
        if let Some(dir) = &self.capture {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("--capture {}: {e}", dir.display()))?;
        }
        let seed = self.seed.unwrap_or_else(rand::random);
        let config = SinkConfig {
            listen: self.listen,
            cores,
            hostname: self.hostname,
            profile,
            seed,
            tls,
            size_bytes_max: self.size_max,
            rcpt_max: self.rcpt_max,
            connections_per_shard_max: self.connections_max.max(1),
            idle_timeout: self.idle_timeout,
            report_interval: REPORT_INTERVAL,
            record_ids: self.record_ids,
            record_peers: self.record_peers,
            capture: self.capture.map(|dir| Capture {
                dir,
                messages_max: self.capture_max,
            }),
            io_memory_bytes: self.io_memory,
            backlog: 4096,
            spin_before_park: self.spin_before_park,
        };
        let outputs = Outputs {
            summary: self.summary,
            summary_interval: self.summary_interval,
            stats_interval: self.stats_interval,
            hlog: self.hlog,
            hlog_interval: self.hlog_interval,
        };
        Ok((config, outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_and_flags_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "sluice-sink",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--reject",
            "rcpt:451=0.5",
            "--no-starttls",
            "--seed",
            "9",
        ])
        .unwrap();
        let (cfg, _) = cli.args.into_config().unwrap();
        assert_eq!(cfg.cores, vec![0]);
        assert_eq!(cfg.seed, 9);
        assert!(cfg.tls.is_none());
        let bad = Cli::try_parse_from(["sluice-sink", "--reject", "rcpt:200=1", "--no-starttls"])
            .unwrap()
            .args
            .into_config()
            .unwrap_err();
        assert!(bad.contains("--reject"), "{bad}");
    }
}
