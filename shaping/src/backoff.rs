//! Adaptive feedback: delivery outcomes matched against backoff rules
//! change a queue's mode (normal, backoff, suspended), and the mode says
//! which limits to restrict. Pure: time is passed in.
//!
//! A queue leaves backoff after `recover_after` or after
//! `recover_after_deliveries` deliveries, whichever comes first; with AIMD
//! configured it instead climbs back in steps of `aimd_increase_percent` of
//! the configured rate every `aimd_step_deliveries` deliveries, and every
//! further match cuts the rate by `aimd_decrease_percent`.

use std::time::Duration;

use regex::Regex;

use crate::units::{Nanos, Rate};

/// A delivery attempt's result, as the engine saw it.
#[derive(Clone, Copy, Debug)]
pub struct Outcome<'a> {
    /// The reply code (RFC 5321 §4.2); a lost connection counts as 451.
    pub code: u16,
    /// The enhanced status code (RFC 3463), e.g. `"4.7.28"`, when present.
    pub enhanced: Option<&'a str>,
    /// The reply text.
    pub text: &'a str,
    /// The destination domain.
    pub destination: &'a str,
    /// The source used.
    pub source: Option<&'a str>,
}

impl Outcome<'_> {
    /// A 2xx reply: delivered (RFC 5321 §4.2.1, the first digit decides).
    pub fn delivered(&self) -> bool {
        self.code / 100 == 2
    }
}

/// A reply code pattern: three positions, each a digit or `x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodePattern([Option<u8>; 3]);

impl CodePattern {
    /// Parses `"421"`, `"4xx"`, `"45x"`; the first position must be 2-5.
    pub fn parse(text: &str) -> Option<CodePattern> {
        let bytes = text.as_bytes();
        if bytes.len() != 3 {
            return None;
        }
        let mut digits = [None; 3];
        for (slot, b) in digits.iter_mut().zip(bytes) {
            *slot = match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'x' | b'X' => None,
                _ => return None,
            };
        }
        matches!(digits[0], Some(2..=5)).then_some(CodePattern(digits))
    }

    /// Whether `code` matches.
    pub fn matches(&self, code: u16) -> bool {
        let actual = [
            (code / 100 % 10) as u8,
            (code / 10 % 10) as u8,
            (code % 10) as u8,
        ];
        code < 1000
            && self
                .0
                .iter()
                .zip(actual)
                .all(|(want, got)| want.is_none_or(|w| w == got))
    }
}

/// How a backoff ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Back to normal this long after the last match.
    pub after: Option<Duration>,
    /// Back to normal after this many deliveries.
    pub after_deliveries: Option<u32>,
}

/// Additive increase, multiplicative decrease of the message rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aimd {
    /// Percent cut at each match (1-99).
    pub decrease_percent: u32,
    /// Percent of the configured rate added per step (1-100).
    pub increase_percent: u32,
    /// Deliveries per step.
    pub step_deliveries: u32,
}

/// What a matching rule does.
#[derive(Clone, Debug, PartialEq)]
pub enum BackoffAction {
    /// Slow down until recovery.
    Backoff {
        /// Message rate while backing off (the floor, with AIMD).
        max_message_rate: Option<Rate>,
        /// Connections while backing off.
        max_connections: Option<u32>,
        /// Retry delay for deferred messages while backing off.
        retry_after: Option<Duration>,
        /// When to return to normal.
        recovery: Recovery,
        /// Optional AIMD recovery.
        aimd: Option<Aimd>,
    },
    /// Stop sending for a while.
    Suspend {
        /// How long.
        duration: Duration,
    },
    /// Fail the message permanently.
    Bounce,
}

/// A validated backoff rule.
#[derive(Clone, Debug)]
pub struct BackoffRule {
    /// Its name, recorded in every change it makes.
    pub name: String,
    /// Reply code pattern.
    pub code: Option<CodePattern>,
    /// Enhanced status code, or prefix ending in `.`.
    pub enhanced: Option<String>,
    /// Pattern on the reply text.
    pub text: Option<Regex>,
    /// The action.
    pub action: BackoffAction,
}

impl BackoffRule {
    /// Whether the rule matches an outcome (all given patterns must).
    pub fn matches(&self, outcome: &Outcome<'_>) -> bool {
        self.code.is_none_or(|c| c.matches(outcome.code))
            && self.enhanced.as_deref().is_none_or(|want| {
                outcome.enhanced.is_some_and(|got| {
                    got == want || (want.ends_with('.') && got.starts_with(want))
                })
            })
            && self
                .text
                .as_ref()
                .is_none_or(|re| re.is_match(outcome.text))
    }
}

/// A queue's mode.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Configured limits apply.
    Normal,
    /// Restricted limits apply.
    Backoff {
        /// The rule that made it.
        rule: String,
        /// When it recovers by time.
        until: Option<Nanos>,
        /// Deliveries since entering (or since the last AIMD step).
        deliveries: u32,
        /// The message rate in force, if restricted.
        message_rate: Option<Rate>,
        /// The connection limit in force, if restricted.
        max_connections: Option<u32>,
        /// Retry delay for deferred messages.
        retry_after: Option<Duration>,
    },
    /// No connections until `until`.
    Suspended {
        /// The rule that made it.
        rule: String,
        /// When it ends.
        until: Nanos,
    },
}

/// A change of mode, with the rule that made it (`None`: recovery).
#[derive(Clone, Debug, PartialEq)]
pub struct ModeChange {
    /// When.
    pub at: Nanos,
    /// The rule that caused it, or `None` when returning to normal.
    pub rule: Option<String>,
    /// The new mode.
    pub mode: Mode,
}

impl ModeChange {
    /// The message rate restriction the new mode asks for.
    pub fn message_rate(&self) -> Option<Rate> {
        match &self.mode {
            Mode::Backoff { message_rate, .. } => *message_rate,
            _ => None,
        }
    }

    /// The connection restriction the new mode asks for (0 = suspended).
    pub fn max_connections(&self) -> Option<u32> {
        match &self.mode {
            Mode::Backoff {
                max_connections, ..
            } => *max_connections,
            Mode::Suspended { .. } => Some(0),
            Mode::Normal => None,
        }
    }
}

/// What one outcome leads to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// The queue's mode changed.
    pub change: Option<ModeChange>,
    /// A `bounce` rule matched: fail the message permanently; names the rule.
    pub bounce: Option<String>,
}

/// The mode state machine of one queue.
#[derive(Clone, Debug)]
pub struct QueueMode {
    mode: Mode,
    configured_rate: Option<Rate>,
    recovery: Recovery,
    aimd: Option<(Aimd, Rate)>,
}

impl QueueMode {
    /// A queue in normal mode whose configured message rate is
    /// `configured_rate` (the base for AIMD).
    pub fn new(configured_rate: Option<Rate>) -> QueueMode {
        QueueMode {
            mode: Mode::Normal,
            configured_rate,
            recovery: Recovery {
                after: None,
                after_deliveries: None,
            },
            aimd: None,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Feeds one outcome; the first matching rule (most specific layer
    /// first) decides.
    pub fn on_outcome(
        &mut self,
        now: Nanos,
        outcome: &Outcome<'_>,
        rules: &[BackoffRule],
    ) -> Verdict {
        if let Some(rule) = rules.iter().find(|r| r.matches(outcome)) {
            return self.apply(now, rule);
        }
        let mut verdict = Verdict::default();
        if outcome.delivered() {
            verdict.change = self.on_delivery(now);
        }
        verdict
    }

    fn apply(&mut self, now: Nanos, rule: &BackoffRule) -> Verdict {
        let mut verdict = Verdict::default();
        match &rule.action {
            BackoffAction::Bounce => verdict.bounce = Some(rule.name.clone()),
            BackoffAction::Suspend { duration } => {
                let mode = Mode::Suspended {
                    rule: rule.name.clone(),
                    until: now.plus(*duration),
                };
                verdict.change = self.enter(now, Some(rule.name.clone()), mode);
            }
            BackoffAction::Backoff {
                max_message_rate,
                max_connections,
                retry_after,
                recovery,
                aimd,
            } => {
                if matches!(self.mode, Mode::Suspended { .. }) {
                    return verdict;
                }
                self.recovery = *recovery;
                let message_rate = match (aimd, self.configured_rate) {
                    (Some(aimd), Some(configured)) => {
                        let floor = max_message_rate.unwrap_or(Rate {
                            count: 1,
                            burst: 1,
                            ..configured
                        });
                        let current = match &self.mode {
                            Mode::Backoff {
                                message_rate: Some(r),
                                ..
                            } => *r,
                            _ => configured,
                        };
                        self.aimd = Some((*aimd, floor));
                        let cut = current.scaled_percent(100 - aimd.decrease_percent);
                        Some(floor_rate(cut, floor))
                    }
                    _ => {
                        self.aimd = None;
                        *max_message_rate
                    }
                };
                let mode = Mode::Backoff {
                    rule: rule.name.clone(),
                    until: recovery.after.map(|d| now.plus(d)),
                    deliveries: 0,
                    message_rate,
                    max_connections: *max_connections,
                    retry_after: *retry_after,
                };
                verdict.change = self.enter(now, Some(rule.name.clone()), mode);
            }
        }
        verdict
    }

    fn on_delivery(&mut self, now: Nanos) -> Option<ModeChange> {
        let Mode::Backoff {
            rule,
            deliveries,
            message_rate,
            ..
        } = &mut self.mode
        else {
            return None;
        };
        *deliveries += 1;
        if let (Some((aimd, _)), Some(configured), Some(rate)) =
            (self.aimd, self.configured_rate, *message_rate)
        {
            if *deliveries < aimd.step_deliveries {
                return None;
            }
            *deliveries = 0;
            // Additive increase: a step of the configured rate, converted to
            // the current rate's period.
            let step = configured.scaled_percent(aimd.increase_percent);
            let step_count = u128::from(step.count) * u128::from(rate.period_ns())
                / u128::from(step.period_ns());
            let raised = Rate {
                count: rate
                    .count
                    .saturating_add(u64::try_from(step_count).unwrap_or(u64::MAX)),
                burst: rate.burst.saturating_add(step.burst),
                ..rate
            };
            if raised.min(configured) == configured {
                return self.enter(now, None, Mode::Normal);
            }
            *message_rate = Some(raised);
            let rule = Some(rule.clone());
            return Some(ModeChange {
                at: now,
                rule,
                mode: self.mode.clone(),
            });
        }
        if self
            .recovery
            .after_deliveries
            .is_some_and(|n| *deliveries >= n)
        {
            return self.enter(now, None, Mode::Normal);
        }
        None
    }

    /// Time-based transitions due at `now` (end of suspension or backoff).
    pub fn poll(&mut self, now: Nanos) -> Option<ModeChange> {
        let due = match &self.mode {
            Mode::Normal => false,
            Mode::Backoff { until, .. } => until.is_some_and(|u| now >= u),
            Mode::Suspended { until, .. } => now >= *until,
        };
        if due {
            self.enter(now, None, Mode::Normal)
        } else {
            None
        }
    }

    /// When `poll` next has something to do.
    pub fn deadline(&self) -> Option<Nanos> {
        match &self.mode {
            Mode::Normal => None,
            Mode::Backoff { until, .. } => *until,
            Mode::Suspended { until, .. } => Some(*until),
        }
    }

    fn enter(&mut self, now: Nanos, rule: Option<String>, mode: Mode) -> Option<ModeChange> {
        if mode == self.mode {
            return None;
        }
        if mode == Mode::Normal {
            self.aimd = None;
        }
        self.mode = mode.clone();
        Some(ModeChange {
            at: now,
            rule,
            mode,
        })
    }
}

fn floor_rate(rate: Rate, floor: Rate) -> Rate {
    if rate.min(floor) == rate {
        floor
    } else {
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::parse_rate;

    fn outcome(code: u16, enhanced: Option<&'static str>, text: &'static str) -> Outcome<'static> {
        Outcome {
            code,
            enhanced,
            text,
            destination: "example.com",
            source: None,
        }
    }

    fn backoff_rule(aimd: Option<Aimd>) -> BackoffRule {
        BackoffRule {
            name: "rate-limited".into(),
            code: CodePattern::parse("4xx"),
            enhanced: Some("4.7.".into()),
            text: Some(Regex::new("(?i)rate").unwrap()),
            action: BackoffAction::Backoff {
                max_message_rate: Some(parse_rate("10/min").unwrap()),
                max_connections: Some(2),
                retry_after: Some(Duration::from_secs(1200)),
                recovery: Recovery {
                    after: Some(Duration::from_secs(3600)),
                    after_deliveries: Some(3),
                },
                aimd,
            },
        }
    }

    #[test]
    fn code_patterns() {
        let p = CodePattern::parse("45x").unwrap();
        assert!(p.matches(451) && p.matches(452) && !p.matches(421) && !p.matches(1451));
        assert!(CodePattern::parse("421").unwrap().matches(421));
        assert!(CodePattern::parse("xx1").is_none());
        assert!(CodePattern::parse("4212").is_none());
        assert!(CodePattern::parse("6xx").is_none());
    }

    #[test]
    fn enters_and_leaves_backoff() {
        let rules = [backoff_rule(None)];
        let mut q = QueueMode::new(Some(parse_rate("100/min").unwrap()));
        let miss = q.on_outcome(Nanos(0), &outcome(421, Some("4.7.0"), "try later"), &rules);
        assert_eq!(miss, Verdict::default());
        let hit = q.on_outcome(
            Nanos(5),
            &outcome(421, Some("4.7.28"), "Rate limited"),
            &rules,
        );
        let change = hit.change.unwrap();
        assert_eq!(change.rule.as_deref(), Some("rate-limited"));
        assert_eq!(change.message_rate(), Some(parse_rate("10/min").unwrap()));
        assert_eq!(change.max_connections(), Some(2));
        // Three deliveries bring it back.
        let ok = outcome(250, Some("2.0.0"), "ok");
        assert!(q.on_outcome(Nanos(6), &ok, &rules).change.is_none());
        assert!(q.on_outcome(Nanos(7), &ok, &rules).change.is_none());
        let back = q.on_outcome(Nanos(8), &ok, &rules).change.unwrap();
        assert_eq!((back.mode, back.rule), (Mode::Normal, None));
        // Or the time limit does.
        q.on_outcome(Nanos(10), &outcome(421, Some("4.7.28"), "rate"), &rules);
        assert_eq!(
            q.deadline(),
            Some(Nanos(10).plus(Duration::from_secs(3600)))
        );
        assert!(q.poll(Nanos(11)).is_none());
        assert_eq!(
            q.poll(Nanos(10).plus(Duration::from_secs(3600)))
                .unwrap()
                .mode,
            Mode::Normal
        );
    }

    #[test]
    fn suspend_and_bounce() {
        let rules = [
            BackoffRule {
                name: "blocked".into(),
                code: CodePattern::parse("5xx"),
                enhanced: None,
                text: Some(Regex::new("blocked").unwrap()),
                action: BackoffAction::Suspend {
                    duration: Duration::from_secs(60),
                },
            },
            BackoffRule {
                name: "no-user".into(),
                code: None,
                enhanced: Some("5.1.1".into()),
                text: None,
                action: BackoffAction::Bounce,
            },
        ];
        let mut q = QueueMode::new(None);
        let v = q.on_outcome(Nanos(0), &outcome(554, None, "you are blocked"), &rules);
        assert_eq!(v.change.unwrap().max_connections(), Some(0));
        let v = q.on_outcome(
            Nanos(1),
            &outcome(550, Some("5.1.1"), "no such user"),
            &rules,
        );
        assert_eq!(v.bounce.as_deref(), Some("no-user"));
        assert!(v.change.is_none());
        assert_eq!(q.poll(Nanos(60_000_000_000)).unwrap().mode, Mode::Normal);
    }

    #[test]
    fn aimd_vectors() {
        let aimd = Aimd {
            decrease_percent: 50,
            increase_percent: 25,
            step_deliveries: 2,
        };
        let rules = [backoff_rule(Some(aimd))];
        let configured = parse_rate("100/min").unwrap();
        let mut q = QueueMode::new(Some(configured));
        let hit = outcome(421, Some("4.7.1"), "rate");
        let c = q.on_outcome(Nanos(0), &hit, &rules).change.unwrap();
        assert_eq!(c.message_rate().unwrap().count, 50);
        let c = q.on_outcome(Nanos(1), &hit, &rules).change.unwrap();
        assert_eq!(c.message_rate().unwrap().count, 25);
        // Floor: the rule's 10/min.
        q.on_outcome(Nanos(2), &hit, &rules);
        let c = q.on_outcome(Nanos(3), &hit, &rules).change.unwrap();
        assert_eq!(c.message_rate().unwrap().count, 10);
        // Two deliveries per +25/min step: 10 -> 35 -> 60 -> 85 -> normal.
        let ok = outcome(250, None, "ok");
        let mut counts = Vec::new();
        for t in 4..20 {
            if let Some(change) = q.on_outcome(Nanos(t), &ok, &rules).change {
                counts.push(change.message_rate().map(|r| r.count));
            }
        }
        assert_eq!(counts, vec![Some(35), Some(60), Some(85), None]);
    }
}
