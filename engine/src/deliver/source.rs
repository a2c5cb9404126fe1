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
//! weight for each connection, so a pool's weights hold over connections.
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
}

/// Picks the source for a new connection: `named` is the pool or source a
/// message asked for, `rule_pool` the destination rule's pool; `random`
/// draws the weighted choice. `None`: no source (unbound), or an unknown
/// name (logged by the caller).
pub fn choose(
    rules: &Rules,
    named: Option<&str>,
    rule_pool: Option<&str>,
    random: u64,
) -> Result<Option<Chosen>, String> {
    let Some(name) = named.or(rule_pool) else {
        return Ok(None);
    };
    let source = if let Some(pool) = rules.pools.get(name) {
        pool.pick(random)
            .ok_or_else(|| format!("pool {name} has no sources"))?
    } else if rules.sources.contains_key(name) {
        name
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
        let c = choose(&r, Some("only-b"), Some("main"), 0)
            .unwrap()
            .unwrap();
        assert_eq!(c.bind, "127.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(c.ehlo, "b.test");
        let c = choose(&r, None, Some("only-b"), 7).unwrap().unwrap();
        assert_eq!(c.name, "b");
        assert_eq!(choose(&r, None, None, 0), Ok(None));
    }

    #[test]
    fn a_source_name_selects_that_source() {
        let c = choose(&rules(), Some("a"), None, 99).unwrap().unwrap();
        assert_eq!(c.name, "a");
        assert!(choose(&rules(), Some("nope"), None, 0).is_err());
    }

    #[test]
    fn weights_hold_over_draws() {
        let r = rules();
        let a = (0..400u64)
            .filter(|&i| choose(&r, Some("main"), None, i).unwrap().unwrap().name == "a")
            .count();
        assert_eq!(a, 300, "weights 3:1 over consecutive draws");
    }

    #[test]
    fn names() {
        assert!(valid_name(b"pool-1"));
        assert!(!valid_name(b""));
        assert!(!valid_name(b"a b"));
        assert!(!valid_name(&[b'x'; 65]));
    }
}
