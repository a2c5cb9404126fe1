//! `RawConfig` → [`Rules`]: parse every quantity, check every reference,
//! collect every problem.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use regex::RegexBuilder;

use super::{
    default_command_timeout, default_connect_timeout, default_data_timeout, default_max_age,
    default_max_connections, default_max_deliveries_per_connection,
    default_max_recipients_per_transaction, default_retry_after, default_tls, key_path, Layer,
    Match, Pool, Problem, Provider, RawBackoff, RawConfig, RawMatch, RawRule, Rules, Scoped,
    Source, TlsPolicy, Warmup,
};
use crate::backoff::{Aimd, BackoffAction, BackoffRule, CodePattern, Recovery};
use crate::units::{parse_duration, parse_rate, parse_retry, Rate, UnitError};

/// A compiled reply-text pattern may use at most this much memory.
const REGEX_BYTES_MAX: usize = 1 << 20;

struct Check<'a> {
    problems: Vec<Problem>,
    broken: &'a [String],
    sources: &'a BTreeMap<String, super::RawSource>,
    pools: &'a BTreeMap<String, super::RawPool>,
}

impl Check<'_> {
    /// Whether `[section.name]` exists or was already reported as broken.
    fn known(&self, section: &str, name: &str, exists: bool) -> bool {
        let path = key_path(section, name);
        exists
            || self
                .broken
                .iter()
                .any(|b| *b == path || b.starts_with(&format!("{path}.")))
    }

    fn problem(&mut self, path: &str, reason: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_string(),
            reason: reason.into(),
        });
    }

    fn quantity<T>(
        &mut self,
        path: &str,
        field: &str,
        text: Option<&String>,
        parse: fn(&str) -> Result<T, UnitError>,
    ) -> Option<T> {
        let text = text?;
        match parse(text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(&format!("{path}.{field}"), format!("`{text}`: {e}"));
                None
            }
        }
    }

    fn rate(&mut self, path: &str, field: &str, text: Option<&String>) -> Option<Rate> {
        let rate = self.quantity(path, field, text, parse_rate)?;
        if rate.count == 0 {
            self.problem(
                &format!("{path}.{field}"),
                "a rate of 0 never sends: use a suspend rule instead",
            );
            return None;
        }
        Some(rate)
    }

    fn positive_duration(
        &mut self,
        path: &str,
        field: &str,
        text: Option<&String>,
    ) -> Option<Duration> {
        let d = self.quantity(path, field, text, parse_duration)?;
        if d.is_zero() {
            self.problem(&format!("{path}.{field}"), "must be longer than 0");
            return None;
        }
        Some(d)
    }

    fn positive(&mut self, path: &str, field: &str, value: Option<u32>) -> Option<u32> {
        match value {
            Some(0) => {
                self.problem(&format!("{path}.{field}"), "must be at least 1");
                None
            }
            v => v,
        }
    }

    fn layer(&mut self, path: &str, raw: &RawRule, matches_allowed: bool) -> Layer {
        if raw.matches.is_some() && !matches_allowed {
            self.problem(
                &format!("{path}.match"),
                "only [provider.NAME] sections take `match`",
            );
        }
        let tls = raw.tls.as_ref().and_then(|t| {
            let policy = TlsPolicy::parse(t);
            if policy.is_none() {
                self.problem(
                    &format!("{path}.tls"),
                    format!(
                        "`{t}`: expected disabled, opportunistic, required or required-verified"
                    ),
                );
            }
            policy
        });
        if let Some(pool) = &raw.pool {
            if !self.known("pool", pool, self.pools.contains_key(pool)) {
                self.problem(&format!("{path}.pool"), format!("no [pool.{pool}] section"));
            }
        }
        let retry_after = self.quantity(path, "retry_after", raw.retry_after.as_ref(), parse_retry);
        if let Some(super::RetrySchedule::List(delays)) = &retry_after {
            if delays.iter().any(Duration::is_zero) {
                self.problem(
                    &format!("{path}.retry_after"),
                    "delays must be longer than 0",
                );
            }
        }
        let mut backoff = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for (i, rule) in raw.backoff.iter().enumerate() {
            let rule_path = format!("{path}.backoff[{i}]");
            if names.contains(&rule.name.as_str()) {
                self.problem(
                    &format!("{rule_path}.name"),
                    format!("`{}` is used twice in this section", rule.name),
                );
            }
            names.push(&rule.name);
            if let Some(rule) = self.backoff(&rule_path, rule) {
                backoff.push(rule);
            }
        }
        Layer {
            max_connections: self.positive(path, "max_connections", raw.max_connections),
            max_message_rate: self.rate(path, "max_message_rate", raw.max_message_rate.as_ref()),
            max_connection_rate: self.rate(
                path,
                "max_connection_rate",
                raw.max_connection_rate.as_ref(),
            ),
            max_deliveries_per_connection: self.positive(
                path,
                "max_deliveries_per_connection",
                raw.max_deliveries_per_connection,
            ),
            max_recipients_per_transaction: self.positive(
                path,
                "max_recipients_per_transaction",
                raw.max_recipients_per_transaction,
            ),
            connect_timeout: self.positive_duration(
                path,
                "connect_timeout",
                raw.connect_timeout.as_ref(),
            ),
            command_timeout: self.positive_duration(
                path,
                "command_timeout",
                raw.command_timeout.as_ref(),
            ),
            data_timeout: self.positive_duration(path, "data_timeout", raw.data_timeout.as_ref()),
            retry_after,
            max_age: self.positive_duration(path, "max_age", raw.max_age.as_ref()),
            tls,
            pool: raw.pool.clone(),
            backoff,
        }
    }

    fn scoped(&mut self, path: &str, raw: &RawRule, matches_allowed: bool) -> Scoped {
        let layer = self.layer(path, raw, matches_allowed);
        let mut by_source = HashMap::new();
        for (name, over) in &raw.source {
            let over_path = key_path(&format!("{path}.source"), name);
            if !self.known("source", name, self.sources.contains_key(name)) {
                self.problem(&over_path, format!("no [source.{name}] section"));
            }
            if !over.source.is_empty() {
                self.problem(
                    &format!("{over_path}.source"),
                    "source overrides do not nest",
                );
            }
            let layer = self.layer(&over_path, over, false);
            by_source.insert(name.clone(), layer);
        }
        Scoped { layer, by_source }
    }

    fn backoff(&mut self, path: &str, raw: &RawBackoff) -> Option<BackoffRule> {
        let before = self.problems.len();
        if raw.name.trim().is_empty() {
            self.problem(&format!("{path}.name"), "must not be empty");
        }
        if raw.code.is_none() && raw.enhanced.is_none() && raw.text.is_none() {
            self.problem(path, "needs at least one of code, enhanced, text");
        }
        let code = raw.code.as_ref().and_then(|c| {
            let p = CodePattern::parse(c);
            if p.is_none() {
                self.problem(
                    &format!("{path}.code"),
                    format!(
                        "`{c}`: expected three characters, digits or x, first 2-5 (e.g. 421, 4xx)"
                    ),
                );
            }
            p
        });
        if let Some(e) = &raw.enhanced {
            if !enhanced_ok(e) {
                self.problem(
                    &format!("{path}.enhanced"),
                    format!("`{e}`: expected an RFC 3463 code like 4.7.28, or a prefix ending in a dot like 4.7."),
                );
            }
        }
        let text = raw.text.as_ref().and_then(|t| {
            match RegexBuilder::new(t).size_limit(REGEX_BYTES_MAX).build() {
                Ok(re) => Some(re),
                Err(e) => {
                    self.problem(
                        &format!("{path}.text"),
                        format!("bad regular expression: {e}"),
                    );
                    None
                }
            }
        });
        let backoff_fields = raw.backoff_max_message_rate.is_some()
            || raw.backoff_max_connections.is_some()
            || raw.backoff_retry_after.is_some()
            || raw.recover_after.is_some()
            || raw.recover_after_deliveries.is_some()
            || raw.aimd_decrease_percent.is_some()
            || raw.aimd_increase_percent.is_some()
            || raw.aimd_step_deliveries.is_some();
        let action = match raw.action.as_str() {
            "backoff" => {
                if raw.suspend_for.is_some() {
                    self.problem(
                        &format!("{path}.suspend_for"),
                        "only for action = \"suspend\"",
                    );
                }
                let max_message_rate = self.rate(
                    path,
                    "backoff_max_message_rate",
                    raw.backoff_max_message_rate.as_ref(),
                );
                let max_connections =
                    self.positive(path, "backoff_max_connections", raw.backoff_max_connections);
                let retry_after = self.positive_duration(
                    path,
                    "backoff_retry_after",
                    raw.backoff_retry_after.as_ref(),
                );
                let after =
                    self.positive_duration(path, "recover_after", raw.recover_after.as_ref());
                let after_deliveries = self.positive(
                    path,
                    "recover_after_deliveries",
                    raw.recover_after_deliveries,
                );
                let aimd = match (
                    raw.aimd_decrease_percent,
                    raw.aimd_increase_percent,
                    raw.aimd_step_deliveries,
                ) {
                    (None, None, None) => None,
                    (Some(d), Some(i), Some(s))
                        if (1..=99).contains(&d) && (1..=100).contains(&i) && s >= 1 =>
                    {
                        Some(Aimd {
                            decrease_percent: d,
                            increase_percent: i,
                            step_deliveries: s,
                        })
                    }
                    _ => {
                        self.problem(path, "AIMD needs aimd_decrease_percent (1-99), aimd_increase_percent (1-100) and aimd_step_deliveries (>= 1) together");
                        None
                    }
                };
                if max_message_rate.is_none()
                    && max_connections.is_none()
                    && retry_after.is_none()
                    && aimd.is_none()
                    && self.problems.len() == before
                {
                    self.problem(path, "a backoff needs backoff_max_message_rate, backoff_max_connections, backoff_retry_after or AIMD");
                }
                if after.is_none()
                    && after_deliveries.is_none()
                    && aimd.is_none()
                    && self.problems.len() == before
                {
                    self.problem(
                        path,
                        "never returns to normal: set recover_after or recover_after_deliveries",
                    );
                }
                BackoffAction::Backoff {
                    max_message_rate,
                    max_connections,
                    retry_after,
                    recovery: Recovery {
                        after,
                        after_deliveries,
                    },
                    aimd,
                }
            }
            "suspend" => {
                if backoff_fields {
                    self.problem(
                        path,
                        "backoff_*, recover_* and aimd_* fields are only for action = \"backoff\"",
                    );
                }
                let duration =
                    self.positive_duration(path, "suspend_for", raw.suspend_for.as_ref());
                if raw.suspend_for.is_none() {
                    self.problem(
                        &format!("{path}.suspend_for"),
                        "action = \"suspend\" needs a duration",
                    );
                }
                BackoffAction::Suspend {
                    duration: duration.unwrap_or_default(),
                }
            }
            "bounce" => {
                if backoff_fields || raw.suspend_for.is_some() {
                    self.problem(path, "action = \"bounce\" takes no other settings");
                }
                BackoffAction::Bounce
            }
            other => {
                self.problem(
                    &format!("{path}.action"),
                    format!("`{other}`: expected backoff, suspend or bounce"),
                );
                BackoffAction::Bounce
            }
        };
        (self.problems.len() == before).then(|| BackoffRule {
            name: raw.name.clone(),
            code,
            enhanced: raw.enhanced.clone(),
            text,
            action,
        })
    }
}

/// RFC 3463 §2: class "." subject "." detail, class 2, 4 or 5, subject and
/// detail 1-3 digits; or a prefix ending in a dot.
fn enhanced_ok(text: &str) -> bool {
    let (body, prefix) = match text.strip_suffix('.') {
        Some(body) => (body, true),
        None => (text, false),
    };
    let parts: Vec<&str> = body.split('.').collect();
    let digits = |p: &&str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
    matches!(parts.first(), Some(&("2" | "4" | "5")))
        && parts.iter().skip(1).all(digits)
        && if prefix {
            parts.len() <= 2
        } else {
            parts.len() == 3
        }
}

/// Lower-case, no trailing dot; letters, digits, `-` and `.` only.
pub(crate) fn normalize_domain(text: &str) -> Option<String> {
    let d = text
        .trim()
        .trim_end_matches('.')
        .trim_start_matches('.')
        .to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 255
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(d)
}

/// `YYYY-MM-DD` (UTC) to seconds since the Unix epoch.
fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1970..=9999).contains(&year) || !(1..=12).contains(&month) {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day < 1 || day > month_days[(month - 1) as usize] {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days).ok().map(|d| d * 86_400)
}

impl TryFrom<RawConfig> for Rules {
    type Error = Vec<Problem>;

    fn try_from(raw: RawConfig) -> Result<Rules, Vec<Problem>> {
        let mut check = Check {
            problems: Vec::new(),
            broken: &raw.broken,
            sources: &raw.source,
            pools: &raw.pool,
        };
        let mut default = check.scoped("default", &raw.default, false);
        let d = &mut default.layer;
        d.max_connections
            .get_or_insert_with(default_max_connections);
        d.max_recipients_per_transaction
            .get_or_insert_with(default_max_recipients_per_transaction);
        d.max_deliveries_per_connection
            .get_or_insert_with(default_max_deliveries_per_connection);
        d.connect_timeout
            .get_or_insert_with(default_connect_timeout);
        d.command_timeout
            .get_or_insert_with(default_command_timeout);
        d.data_timeout.get_or_insert_with(default_data_timeout);
        d.retry_after.get_or_insert_with(default_retry_after);
        d.max_age.get_or_insert_with(default_max_age);
        d.tls.get_or_insert_with(default_tls);

        let mut domains = HashMap::new();
        for (name, rule) in &raw.domain {
            let path = key_path("domain", name);
            let scoped = check.scoped(&path, rule, false);
            match normalize_domain(name) {
                None => check.problem(&path, "not a domain name"),
                Some(n) => {
                    if domains.insert(n.clone(), scoped).is_some() {
                        check.problem(
                            &path,
                            format!("`{n}` is configured twice (names are case-insensitive)"),
                        );
                    }
                }
            }
        }

        let mut providers = Vec::new();
        for (name, rule) in &raw.provider {
            let path = key_path("provider", name);
            let scoped = check.scoped(&path, rule, true);
            let mut matches = Vec::new();
            for (i, m) in rule.matches.iter().flatten().enumerate() {
                let (text, make): (&String, fn(String) -> Match) = match m {
                    RawMatch::MxSuffix(s) => (s, Match::MxSuffix),
                    RawMatch::DomainSuffix(s) => (s, Match::DomainSuffix),
                };
                match normalize_domain(text) {
                    Some(n) => matches.push(make(n)),
                    None => check.problem(
                        &format!("{path}.match[{i}]"),
                        format!("`{text}` is not a domain suffix"),
                    ),
                }
            }
            if rule.matches.as_ref().is_none_or(Vec::is_empty) {
                check.problem(
                    &format!("{path}.match"),
                    "a provider needs at least one { mx_suffix = … } or { domain_suffix = … }",
                );
            }
            providers.push(Provider {
                name: name.clone(),
                matches,
                rule: scoped,
            });
        }

        let mut warmups = HashMap::new();
        for (name, w) in &raw.warmup {
            let path = key_path("warmup", name);
            let mut steps = Vec::new();
            for (i, step) in w.steps.iter().enumerate() {
                let step_path = format!("{path}.steps[{i}]");
                let after = check.quantity(&step_path, "after", Some(&step.after), parse_duration);
                let rate = check.rate(&step_path, "max_message_rate", Some(&step.max_message_rate));
                if let (Some(after), Some(rate)) = (after, rate) {
                    if steps.last().is_some_and(|(prev, _)| *prev >= after) {
                        check.problem(
                            &format!("{step_path}.after"),
                            "steps must be in increasing age",
                        );
                    }
                    steps.push((after, rate));
                }
            }
            if w.steps.is_empty() {
                check.problem(&format!("{path}.steps"), "needs at least one step");
            }
            warmups.insert(name.clone(), Warmup { steps });
        }

        let mut sources = BTreeMap::new();
        for (name, s) in &raw.source {
            let path = key_path("source", name);
            let bind = s.bind.parse::<IpAddr>();
            if bind.is_err() {
                check.problem(
                    &format!("{path}.bind"),
                    format!("`{}` is not an IP address", s.bind),
                );
            }
            if normalize_domain(&s.ehlo).is_none() {
                check.problem(
                    &format!("{path}.ehlo"),
                    format!("`{}` is not a host name", s.ehlo),
                );
            }
            let max_message_rate =
                check.rate(&path, "max_message_rate", s.max_message_rate.as_ref());
            let warmup = match (&s.warmup, &s.warmup_start) {
                (None, None) => None,
                (Some(w), Some(start)) => {
                    let schedule = warmups.get(w).cloned();
                    if !check.known("warmup", w, schedule.is_some()) {
                        check.problem(
                            &format!("{path}.warmup"),
                            format!("no [warmup.{w}] section"),
                        );
                    }
                    let start_s = parse_date(start);
                    if start_s.is_none() {
                        check.problem(
                            &format!("{path}.warmup_start"),
                            format!("`{start}`: expected a date YYYY-MM-DD"),
                        );
                    }
                    schedule.zip(start_s)
                }
                _ => {
                    check.problem(&path, "warmup and warmup_start go together");
                    None
                }
            };
            if let Ok(bind) = bind {
                sources.insert(
                    name.clone(),
                    Source {
                        name: name.clone(),
                        bind,
                        ehlo: s.ehlo.to_ascii_lowercase(),
                        max_message_rate,
                        warmup,
                    },
                );
            }
        }

        let mut pools = BTreeMap::new();
        for (name, p) in &raw.pool {
            let path = key_path("pool", name);
            if p.sources.is_empty() {
                check.problem(&format!("{path}.sources"), "needs at least one source");
            }
            for (source, weight) in &p.sources {
                let source_path = key_path(&format!("{path}.sources"), source);
                if !check.known("source", source, raw.source.contains_key(source)) {
                    check.problem(&source_path, format!("no [source.{source}] section"));
                }
                if *weight == 0 {
                    check.problem(&source_path, "weight must be at least 1");
                }
            }
            let max_message_rate =
                check.rate(&path, "max_message_rate", p.max_message_rate.as_ref());
            pools.insert(
                name.clone(),
                Pool {
                    name: name.clone(),
                    sources: p.sources.iter().map(|(s, w)| (s.clone(), *w)).collect(),
                    max_message_rate,
                },
            );
        }

        if check.problems.is_empty() {
            Ok(Rules {
                default,
                domains,
                providers,
                sources,
                pools,
            })
        } else {
            Err(check.problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(951_868_800));
        assert_eq!(parse_date("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2023-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
    }

    #[test]
    fn enhanced_codes() {
        assert!(
            enhanced_ok("4.7.28")
                && enhanced_ok("5.1.1")
                && enhanced_ok("4.7.")
                && enhanced_ok("4.")
        );
        assert!(
            !enhanced_ok("3.1.1")
                && !enhanced_ok("4.7")
                && !enhanced_ok("4.7.1.")
                && !enhanced_ok("4.7.1234")
        );
    }

    #[test]
    fn domains() {
        assert_eq!(normalize_domain("Example.COM."), Some("example.com".into()));
        assert_eq!(normalize_domain(".google.com"), Some("google.com".into()));
        assert_eq!(normalize_domain("bad domain"), None);
        assert_eq!(normalize_domain(""), None);
    }
}
