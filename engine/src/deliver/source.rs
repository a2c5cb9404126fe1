//! Egress sources: which local address a new connection binds and which
//! name it says in EHLO.
//!
//! Sources and pools are the shaping rules' `[source.NAME]` (bind address,
//! EHLO name, rate, warm-up) and `[pool.NAME]` (weighted sources). A site
//! uses, in order: the pool (or single source) its messages named with
//! `X-virtualMTA` (kept in the spool record's queue field, stripped from
//! the message at injection), else the `pool` of the shaping rule of the
//! destination at its head, else no source (the kernel picks the address
//! and EHLO says the configured host name). A pool's source is picked by
//! weight for each connection, so a pool's weights hold over connections,
//! among the sources that are not waiting for their own message rate
//! (`available`; all of them when every one waits): a source held back by
//! its `[source.NAME]` rate or warm-up does not take connection slots the
//! pool's other sources could use, so the split follows the limits.
//!
//! Binding happens in `conn.rs` on a non-blocking socket (bind, then
//! connect in progress, then the connection's completion awaited through
//! io_uring), so choosing a source never blocks the shard. This file is
//! pure: tested by value.

// std
use std::net::IpAddr;

// external
use sluice_shaping::config::Rules;

/// The source a connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The `[source.NAME]` name.
    pub name: String,
    /// Local address to bind.
    pub bind: IpAddr,
    /// EHLO name.
    pub ehlo: String,
    /// The pool it was drawn from (`None`: named directly).
    pub pool: Option<String>,
}

/// Picks the source for a new connection: `named` is the pool or source a
/// message asked for, `rule_pool` the destination rule's pool; `random`
/// draws the weighted choice among the pool's sources for which
/// `available` holds (among all of them when it holds for none). `None`:
/// no source (unbound). `Err`: an unknown name (logged by the caller).
pub fn choose(
    rules: &Rules,
    named: Option<&str>,
    rule_pool: Option<&str>,
    random: u64,
    available: &dyn Fn(&str) -> bool,
) -> Result<Option<Chosen>, String> {
    let Some(name) = named.or(rule_pool) else {
        return Ok(None);
    };
    let (source, pool) = if let Some(pool) = rules.pools.get(name) {
        let weighted = |only_available: bool| {
            pool.sources
                .iter()
                .filter(move |(s, _)| !only_available || available(s))
        };
        let only_available = weighted(true).next().is_some();
        let total: u64 = weighted(only_available).map(|(_, w)| u64::from(*w)).sum();
        let mut point = random % total.max(1);
        let mut picked = None;
        for (s, w) in weighted(only_available) {
            if point < u64::from(*w) {
                picked = Some(s.as_str());
                break;
            }
            point -= u64::from(*w);
        }
        let source = picked.ok_or_else(|| format!("pool {name} has no sources"))?;
        (source, Some(name.to_string()))
    } else if rules.sources.contains_key(name) {
        (name, None)
    } else {
        return Err(format!("no source or pool named {name}"));
    };
    let s = rules
        .sources
        .get(source)
        .ok_or_else(|| format!("pool {name} names the unknown source {source}"))?;
    Ok(Some(Chosen {
        name: s.name.clone(),
        bind: s.bind,
        ehlo: s.ehlo.clone(),
        pool,
    }))
}

/// Whether a pool or source name as written in `X-virtualMTA` may be
/// stored: 1 to 64 visible ASCII characters without spaces.
pub fn valid_name(name: &[u8]) -> bool {
    (1..=64).contains(&name.len()) && name.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::parse(
            r#"
            [source.a]
            bind = "127.0.0.2"
            ehlo = "a.test"
            [source.b]
            bind = "127.0.0.3"
            ehlo = "b.test"
            [pool.main]
            sources = { a = 3, b = 1 }
            [pool.only-b]
            sources = { b = 1 }
            "#,
            "t.toml",
        )
        .expect("valid rules")
    }

    #[test]
    fn named_pool_wins_over_the_rule_pool() {
        let r = rules();
        let c = choose(&r, Some("only-b"), Some("main"), 0, &all)
            .unwrap()
            .unwrap();
        assert_eq!(c.bind, "127.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(c.ehlo, "b.test");
        let c = choose(&r, None, Some("only-b"), 7, &all).unwrap().unwrap();
        assert_eq!(c.name, "b");
        assert_eq!(choose(&r, None, None, 0, &all), Ok(None));
    }

    #[test]
    fn a_source_name_selects_that_source() {
        let c = choose(&rules(), Some("a"), None, 99, &all)
            .unwrap()
            .unwrap();
        assert_eq!(c.name, "a");
        assert!(choose(&rules(), Some("nope"), None, 0, &all).is_err());
    }

    #[test]
    fn weights_hold_over_draws() {
        let r = rules();
        let a = (0..400u64)
            .filter(|&i| {
                choose(&r, Some("main"), None, i, &all)
                    .unwrap()
                    .unwrap()
                    .name
                    == "a"
            })
            .count();
        assert_eq!(a, 300, "weights 3:1 over consecutive draws");
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn sources_waiting_for_their_rate_are_skipped_unless_all_wait() {
        let r = rules();
        let not_a = |s: &str| s != "a";
        let picks: Vec<String> = (0..40u64)
            .map(|i| {
                choose(&r, Some("main"), None, i, &not_a)
                    .unwrap()
                    .unwrap()
                    .name
            })
            .collect();
        assert!(picks.iter().all(|n| n == "b"), "{picks:?}");
        let c = choose(&r, Some("main"), None, 1, &not_a).unwrap().unwrap();
        assert_eq!(c.pool.as_deref(), Some("main"));
        // Every source waits: the weights decide as usual.
        let none = |_: &str| false;
        let a = (0..400u64)
            .filter(|&i| {
                choose(&r, Some("main"), None, i, &none)
                    .unwrap()
                    .unwrap()
                    .name
                    == "a"
            })
            .count();
        assert_eq!(a, 300);
    }

    #[test]
    fn names() {
        assert!(valid_name(b"pool-1"));
        assert!(!valid_name(b""));
        assert!(!valid_name(b"a b"));
        assert!(!valid_name(&[b'x'; 65]));
    }
}
