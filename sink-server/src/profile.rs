//! Receiver profiles: how the sink misbehaves on purpose.
//!
//! A profile is read from TOML (`--profile FILE`) into [`RawProfile`], merged
//! with the command-line overrides, and validated into [`Profile`], the only
//! form the shards see. Every problem is reported with its key path
//! (`rcpt.reject.451`, `domains."example.com".rate_per_second`), and all
//! problems are reported at once, not just the first.
//!
//! ```toml
//! never_greet = false          # accept TCP, never send the 220
//! drop_after_messages = 0      # close after N accepted messages (0: never)
//! drop_in_data = 0.0           # probability of dropping mid-DATA
//! reject_local_parts = ["nobody"]   # 550 5.1.1 at RCPT, any domain
//!
//! [connect]                    # phases: connect, mail, rcpt, data
//! delay = "0ms"                # before the reply of this phase
//! reject = { 421 = 0.01, 554 = 0.001 }   # probability of each code
//!
//! [domains."example.com"]
//! rate_per_second = 100        # more in one wall-clock second: 421 4.7.0
//! max_connections = 4          # more concurrent: 421 4.7.0
//! reject_local_parts = ["bounce"]
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// A profile or flag that cannot be used, naming every bad key.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read profile {path}: {source}")]
    Read {
        /// The file given with `--profile`.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped key.
    #[error("profile {path}: key `{key}`: {reason}")]
    Syntax {
        /// The file given with `--profile`.
        path: String,
        /// Full key path of the problem (`.` when at the top).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Values that parse but make no sense, each with its key.
    #[error("{}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

/// One invalid value: the key path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Full key path, e.g. `rcpt.reject.451` or `--reject`.
    pub key: String,
    /// What is wrong and what would be accepted.
    pub reason: String,
}

fn format_problems(problems: &[Problem]) -> String {
    let mut out = String::from("invalid profile:");
    for p in problems {
        out.push_str(&format!("\n  `{}`: {}", p.key, p.reason));
    }
    out
}

/// The SMTP phases at which a profile can inject replies or delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// The greeting, right after TCP accept.
    Connect,
    /// The reply to `MAIL FROM`.
    Mail,
    /// The reply to each `RCPT TO`.
    Rcpt,
    /// The reply after the end of data (final dot or `BDAT LAST`).
    Data,
}

impl Phase {
    /// All phases, in session order.
    pub const ALL: [Phase; 4] = [Phase::Connect, Phase::Mail, Phase::Rcpt, Phase::Data];

    /// The key used in TOML, flags and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
        }
    }

    /// Index into per-phase arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Reply codes a profile can inject (RFC 5321 §4.2.2 / §4.2.3).
pub const INJECTABLE_CODES: [u16; 5] = [421, 451, 452, 550, 554];

/// Seconds of per-domain rate history kept; older seconds are dropped.
pub const RATE_HISTORY_SECS_MAX: u64 = 3600;

/// Raw TOML form of a profile, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// Accept TCP but never send a greeting.
    #[serde(default)]
    pub never_greet: bool,
    /// Close the connection after this many accepted messages (0: never).
    #[serde(default)]
    pub drop_after_messages: u64,
    /// Probability of closing the connection in the middle of a message body.
    #[serde(default)]
    pub drop_in_data: f64,
    /// Local parts answered with `550 5.1.1` in any domain.
    #[serde(default)]
    pub reject_local_parts: Vec<String>,
    /// Rules for the greeting.
    #[serde(default)]
    pub connect: RawPhase,
    /// Rules for `MAIL FROM`.
    #[serde(default)]
    pub mail: RawPhase,
    /// Rules for `RCPT TO`.
    #[serde(default)]
    pub rcpt: RawPhase,
    /// Rules for the end of data.
    #[serde(default)]
    pub data: RawPhase,
    /// Per recipient domain overrides.
    #[serde(default)]
    pub domains: BTreeMap<String, RawDomain>,
}

/// Raw rules of one phase.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPhase {
    /// Delay before this phase's reply, e.g. `"250ms"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub delay: Option<Duration>,
    /// Probability of each injected reply code.
    #[serde(default)]
    pub reject: RawCodes,
}

/// Probabilities per injectable code; TOML keys are the bare codes.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCodes {
    /// Probability of `421` (and close).
    #[serde(rename = "421", default)]
    pub c421: f64,
    /// Probability of `451`.
    #[serde(rename = "451", default)]
    pub c451: f64,
    /// Probability of `452`.
    #[serde(rename = "452", default)]
    pub c452: f64,
    /// Probability of `550`.
    #[serde(rename = "550", default)]
    pub c550: f64,
    /// Probability of `554`.
    #[serde(rename = "554", default)]
    pub c554: f64,
}

impl RawCodes {
    fn slot(&mut self, code: u16) -> Option<&mut f64> {
        match code {
            421 => Some(&mut self.c421),
            451 => Some(&mut self.c451),
            452 => Some(&mut self.c452),
            550 => Some(&mut self.c550),
            554 => Some(&mut self.c554),
            _ => None,
        }
    }

    fn pairs(&self) -> [(u16, f64); 5] {
        [
            (421, self.c421),
            (451, self.c451),
            (452, self.c452),
            (550, self.c550),
            (554, self.c554),
        ]
    }
}

/// Raw per-domain overrides.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDomain {
    /// Accept at most this many messages per wall-clock second.
    #[serde(default)]
    pub rate_per_second: Option<u64>,
    /// Accept at most this many concurrent connections for the domain.
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// Local parts answered with `550 5.1.1` in this domain.
    #[serde(default)]
    pub reject_local_parts: Vec<String>,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Parses `"0"`, `"250ms"`, `"1.5s"`, `"2m"`, `"1h"`, `"10us"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim().replace('_', "");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` has no unit; use e.g. 250ms, 1s, 2m"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: `{num}` is not a number"))?;
    let secs = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (us, ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Command-line overrides applied on top of the TOML profile.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--never-greet`.
    pub never_greet: bool,
    /// `--drop-after-messages N`.
    pub drop_after_messages: Option<u64>,
    /// `--drop-in-data P`.
    pub drop_in_data: Option<f64>,
    /// `--reject PHASE:CODE=P`, repeatable.
    pub reject: Vec<String>,
    /// `--delay PHASE=DURATION`, repeatable.
    pub delay: Vec<String>,
    /// `--domain-rate DOMAIN=N`, repeatable.
    pub domain_rate: Vec<String>,
    /// `--domain-max-connections DOMAIN=N`, repeatable.
    pub domain_max_connections: Vec<String>,
    /// `--reject-local-part LOCAL[@DOMAIN]`, repeatable.
    pub reject_local_part: Vec<String>,
}

/// Validated rules of one phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseRule {
    /// Delay before the reply.
    pub delay: Duration,
    /// `(cumulative probability, code)`, increasing; empty when none.
    pub reject_cumulative: Vec<(f64, u16)>,
}

impl PhaseRule {
    /// The code to inject, drawing from `draw` only when the phase has
    /// reject rules (so a passive profile costs no random numbers).
    pub fn decide(&self, draw: impl FnOnce() -> f64) -> Option<u16> {
        if self.reject_cumulative.is_empty() {
            return None;
        }
        self.pick(draw())
    }

    /// The code to inject for a uniform draw `u` in `[0, 1)`, if any.
    pub fn pick(&self, u: f64) -> Option<u16> {
        self.reject_cumulative
            .iter()
            .find(|(limit, _)| u < *limit)
            .map(|(_, code)| *code)
    }
}

/// Validated per-domain overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainRule {
    /// Messages accepted per wall-clock second at most.
    pub rate_per_second: Option<u64>,
    /// Concurrent connections at most.
    pub max_connections: Option<u64>,
    /// Lower-cased local parts answered with `550 5.1.1`.
    pub reject_local_parts: HashSet<String>,
}

/// A validated receiver profile, handed to every shard at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Accept TCP but never greet.
    pub never_greet: bool,
    /// Close after this many accepted messages on one connection.
    pub drop_after_messages: Option<u64>,
    /// Probability of dropping a connection in the middle of a body.
    pub drop_in_data: f64,
    /// Lower-cased local parts rejected in every domain.
    pub reject_local_parts: HashSet<String>,
    /// Rules per phase, indexed by [`Phase::index`].
    pub phases: [PhaseRule; 4],
    /// Overrides by lower-cased domain.
    pub domains: HashMap<String, DomainRule>,
}

impl Profile {
    /// Reads `path` (when given), applies `overrides`, validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Profile, ProfileError> {
        let raw = match path {
            None => RawProfile::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ProfileError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                parse_toml(&text, &p.display().to_string())?
            }
        };
        Profile::build(raw, overrides).map_err(ProfileError::Invalid)
    }

    /// Whether the profile changes anything at all (the default does not).
    pub fn is_passive(&self) -> bool {
        *self == Profile::default()
    }

    /// The rules for `phase`.
    pub fn phase(&self, phase: Phase) -> &PhaseRule {
        &self.phases[phase.index()]
    }

    /// Whether `local@domain` (`domain` lower-cased; `local` in any case)
    /// is to get `550 5.1.1`. Allocates only when some rule could match.
    pub fn rejects_local_part(&self, local: &str, domain: &str) -> bool {
        let per_domain = self
            .domains
            .get(domain)
            .map(|d| &d.reject_local_parts)
            .filter(|set| !set.is_empty());
        if self.reject_local_parts.is_empty() && per_domain.is_none() {
            return false;
        }
        let local = local.to_ascii_lowercase();
        self.reject_local_parts.contains(&local)
            || per_domain.is_some_and(|set| set.contains(&local))
    }

    /// Merges `raw` and `ov` and checks every value, collecting all problems.
    pub fn build(mut raw: RawProfile, ov: &Overrides) -> Result<Profile, Vec<Problem>> {
        let mut problems = Vec::new();
        apply_overrides(&mut raw, ov, &mut problems);

        let mut phases: [PhaseRule; 4] = Default::default();
        for phase in Phase::ALL {
            let rp = match phase {
                Phase::Connect => &raw.connect,
                Phase::Mail => &raw.mail,
                Phase::Rcpt => &raw.rcpt,
                Phase::Data => &raw.data,
            };
            let rule = &mut phases[phase.index()];
            rule.delay = rp.delay.unwrap_or(Duration::ZERO);
            let mut total = 0.0;
            for (code, p) in rp.reject.pairs() {
                let key = format!("{}.reject.{code}", phase.name());
                if !(0.0..=1.0).contains(&p) {
                    problems.push(Problem {
                        key,
                        reason: format!("probability {p} is not within 0.0..=1.0"),
                    });
                    continue;
                }
                if p > 0.0 {
                    total += p;
                    rule.reject_cumulative.push((total, code));
                }
            }
            if total > 1.0 + 1e-9 {
                problems.push(Problem {
                    key: format!("{}.reject", phase.name()),
                    reason: format!("probabilities add up to {total:.3}, more than 1.0"),
                });
            }
        }
        if !(0.0..=1.0).contains(&raw.drop_in_data) {
            problems.push(Problem {
                key: "drop_in_data".into(),
                reason: format!("probability {} is not within 0.0..=1.0", raw.drop_in_data),
            });
        }
        let reject_local_parts =
            local_parts(&raw.reject_local_parts, "reject_local_parts", &mut problems);
        let mut domains = HashMap::new();
        for (name, d) in &raw.domains {
            let key = format!("domains.\"{name}\"");
            if name.is_empty() || name.len() > 255 || name.contains('@') {
                problems.push(Problem {
                    key: key.clone(),
                    reason: "not a domain name (1 to 255 characters, no `@`)".into(),
                });
            }
            if d.rate_per_second == Some(0) {
                problems.push(Problem {
                    key: format!("{key}.rate_per_second"),
                    reason: "must be at least 1 (use 550 rules to refuse everything)".into(),
                });
            }
            if d.max_connections == Some(0) {
                problems.push(Problem {
                    key: format!("{key}.max_connections"),
                    reason: "must be at least 1".into(),
                });
            }
            if domains.contains_key(&name.to_ascii_lowercase()) {
                problems.push(Problem {
                    key: key.clone(),
                    reason: "the same domain is listed twice (names are case-insensitive)".into(),
                });
            }
            let lp = local_parts(
                &d.reject_local_parts,
                &format!("{key}.reject_local_parts"),
                &mut problems,
            );
            domains.insert(
                name.to_ascii_lowercase(),
                DomainRule {
                    rate_per_second: d.rate_per_second,
                    max_connections: d.max_connections,
                    reject_local_parts: lp,
                },
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Profile {
            never_greet: raw.never_greet,
            drop_after_messages: (raw.drop_after_messages > 0).then_some(raw.drop_after_messages),
            drop_in_data: raw.drop_in_data,
            reject_local_parts,
            phases,
            domains,
        })
    }
}

/// Parses TOML text through `serde_path_to_error` so errors name the key.
pub fn parse_toml(text: &str, origin: &str) -> Result<RawProfile, ProfileError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ProfileError::Syntax {
            path: origin.to_string(),
            key,
            reason: e.into_inner().message().trim().to_string(),
        }
    })
}

fn local_parts(list: &[String], key: &str, problems: &mut Vec<Problem>) -> HashSet<String> {
    let mut out = HashSet::new();
    for (i, lp) in list.iter().enumerate() {
        // RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
        if lp.is_empty() || lp.len() > 64 || lp.contains('@') {
            problems.push(Problem {
                key: format!("{key}[{i}]"),
                reason: format!("`{lp}` is not a local part (1 to 64 characters, no `@`)"),
            });
        } else {
            out.insert(lp.to_ascii_lowercase());
        }
    }
    out
}

fn apply_overrides(raw: &mut RawProfile, ov: &Overrides, problems: &mut Vec<Problem>) {
    raw.never_greet |= ov.never_greet;
    if let Some(n) = ov.drop_after_messages {
        raw.drop_after_messages = n;
    }
    if let Some(p) = ov.drop_in_data {
        raw.drop_in_data = p;
    }
    for spec in &ov.reject {
        // PHASE:CODE=P
        let parsed = spec.split_once(':').and_then(|(phase, rest)| {
            let (code, p) = rest.split_once('=')?;
            Some((
                Phase::parse(phase)?,
                code.parse::<u16>().ok()?,
                p.parse::<f64>().ok()?,
            ))
        });
        let Some((phase, code, p)) = parsed else {
            problems.push(Problem {
                key: "--reject".into(),
                reason: format!("`{spec}`: expected PHASE:CODE=PROBABILITY, e.g. rcpt:451=0.1"),
            });
            continue;
        };
        let rp = match phase {
            Phase::Connect => &mut raw.connect,
            Phase::Mail => &mut raw.mail,
            Phase::Rcpt => &mut raw.rcpt,
            Phase::Data => &mut raw.data,
        };
        match rp.reject.slot(code) {
            Some(slot) => *slot = p,
            None => problems.push(Problem {
                key: "--reject".into(),
                reason: format!("`{spec}`: code {code} is not one of {INJECTABLE_CODES:?}"),
            }),
        }
    }
    for spec in &ov.delay {
        let parsed = spec
            .split_once('=')
            .and_then(|(phase, d)| Some((Phase::parse(phase)?, parse_duration(d).ok()?)));
        let Some((phase, d)) = parsed else {
            problems.push(Problem {
                key: "--delay".into(),
                reason: format!("`{spec}`: expected PHASE=DURATION, e.g. data=50ms"),
            });
            continue;
        };
        match phase {
            Phase::Connect => raw.connect.delay = Some(d),
            Phase::Mail => raw.mail.delay = Some(d),
            Phase::Rcpt => raw.rcpt.delay = Some(d),
            Phase::Data => raw.data.delay = Some(d),
        }
    }
    for (flag, list, is_rate) in [
        ("--domain-rate", &ov.domain_rate, true),
        (
            "--domain-max-connections",
            &ov.domain_max_connections,
            false,
        ),
    ] {
        for spec in list {
            let parsed = spec
                .split_once('=')
                .and_then(|(d, n)| Some((d.to_string(), n.parse::<u64>().ok()?)));
            let Some((domain, n)) = parsed else {
                problems.push(Problem {
                    key: flag.into(),
                    reason: format!("`{spec}`: expected DOMAIN=N, e.g. example.com=10"),
                });
                continue;
            };
            let entry = raw.domains.entry(domain.to_ascii_lowercase()).or_default();
            if is_rate {
                entry.rate_per_second = Some(n);
            } else {
                entry.max_connections = Some(n);
            }
        }
    }
    for spec in &ov.reject_local_part {
        match spec.split_once('@') {
            Some((local, domain)) => raw
                .domains
                .entry(domain.to_ascii_lowercase())
                .or_default()
                .reject_local_parts
                .push(local.to_string()),
            None => raw.reject_local_parts.push(spec.clone()),
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = parse_toml("[rcpt.reject]\n453 = 0.1\n", "p.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("rcpt.reject"), "{msg}");
        assert!(msg.contains("453"), "{msg}");
        let err = parse_toml("[domains.\"a.b\"]\nrate = 3\n", "p.toml").unwrap_err();
        assert!(err.to_string().contains("domains.a.b"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let raw = parse_toml(
            "drop_in_data = 2.0\n[mail.reject]\n421 = 0.7\n451 = 0.6\n\
             [domains.\"x.org\"]\nrate_per_second = 0\nmax_connections = 0\n",
            "p",
        )
        .unwrap();
        let problems = Profile::build(raw, &Overrides::default()).unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "mail.reject",
                "drop_in_data",
                "domains.\"x.org\".rate_per_second",
                "domains.\"x.org\".max_connections"
            ]
        );
    }

    #[test]
    fn overrides_and_pick() {
        let ov = Overrides {
            reject: vec!["rcpt:451=0.25".into(), "rcpt:550=0.25".into()],
            delay: vec!["data=20ms".into()],
            domain_rate: vec!["Example.com=5".into()],
            reject_local_part: vec!["nobody".into(), "bounce@example.com".into()],
            ..Overrides::default()
        };
        let p = Profile::build(RawProfile::default(), &ov).unwrap();
        let rcpt = p.phase(Phase::Rcpt);
        assert_eq!(rcpt.pick(0.1), Some(451));
        assert_eq!(rcpt.pick(0.3), Some(550));
        assert_eq!(rcpt.pick(0.6), None);
        assert_eq!(p.phase(Phase::Data).delay, Duration::from_millis(20));
        assert_eq!(p.domains["example.com"].rate_per_second, Some(5));
        assert!(p.rejects_local_part("nobody", "other.org"));
        assert!(p.rejects_local_part("Bounce", "example.com"));
        assert!(!p.rejects_local_part("bounce", "other.org"));
        assert!(!p.is_passive());
        assert!(Profile::build(RawProfile::default(), &Overrides::default())
            .unwrap()
            .is_passive());
    }

    #[test]
    fn bad_flags_are_named() {
        let ov = Overrides {
            reject: vec!["rcpt:999=0.1".into(), "bogus".into()],
            delay: vec!["data=fast".into()],
            ..Overrides::default()
        };
        let problems = Profile::build(RawProfile::default(), &ov).unwrap_err();
        assert_eq!(problems.len(), 3);
        assert!(problems
            .iter()
            .all(|p| p.key == "--reject" || p.key == "--delay"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
