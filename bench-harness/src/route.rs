//! Splitting a load into groups, one per destination port.
//!
//! Without routing there is one group: every connection goes to `--target`.
//! With `--route-by-domain PORT_BASE --shards N` the recipient-domain
//! distribution is split by the engine's own domain-to-shard function
//! ([`sluice_shaping::lease::domain_shard`]): group `s` draws only domains whose
//! home shard is `s` and connects to `PORT_BASE + s`. Each group gets a share
//! of the messages, connections and open-loop rate proportional to its
//! probability mass, so the union is the same load as without routing, and
//! every message of a group stays on its shard's port.

use std::sync::Arc;

use crate::message::LoadShape;
use crate::schedule::apportion;
use crate::Error;

/// One destination port and the part of the load it receives.
#[derive(Debug, Clone)]
pub struct Group {
    /// Group number (the shard with routing, 0 otherwise).
    pub id: u32,
    /// Destination port.
    pub port: u16,
    /// Messages of this group, for count-bound runs.
    pub messages: Option<u64>,
    /// Connections of this group.
    pub connections: u32,
    /// Open-loop rate of this group, messages/s.
    pub rate_per_sec: Option<f64>,
    /// What the group's messages look like.
    pub shape: Arc<LoadShape>,
}

/// Builds the groups. `route` is `(port_base, shards)`; `home_shard` maps a
/// domain to its shard (the engine's function; a parameter for tests).
pub fn plan(
    shape: LoadShape,
    port: u16,
    messages: Option<u64>,
    connections: u32,
    rate_per_sec: Option<f64>,
    route: Option<(u16, u32)>,
    home_shard: impl Fn(&str, u32) -> u32,
) -> Result<Vec<Group>, Error> {
    let Some((port_base, shards)) = route else {
        return Ok(vec![Group {
            id: 0,
            port,
            messages,
            connections,
            rate_per_sec,
            shape: Arc::new(shape),
        }]);
    };
    let mut parts = Vec::new();
    for s in 0..shards {
        let restricted = shape
            .recipient_domains
            .restrict(|d| home_shard(d, shards) == s);
        if let Some(domains) = restricted {
            let mass: f64 = shape
                .recipient_domains
                .iter()
                .filter(|(d, _)| home_shard(d, shards) == s)
                .map(|(_, p)| p)
                .sum();
            parts.push((s, domains, mass));
        }
    }
    let used = parts.len() as u32;
    if connections < used {
        return Err(Error::Parse(format!(
            "--route-by-domain: recipient domains map to {used} shards; use --connections {used} or more"
        )));
    }
    let masses: Vec<f64> = parts.iter().map(|p| p.2).collect();
    let message_split = messages.map(|n| apportion(n, &masses));
    // One connection per used shard, the rest by mass.
    let extra = apportion(u64::from(connections - used), &masses);
    let mut groups = Vec::with_capacity(parts.len());
    for (i, (s, domains, mass)) in parts.into_iter().enumerate() {
        let port = u16::try_from(u32::from(port_base) + s).map_err(|_| {
            Error::Parse(format!(
                "--route-by-domain {port_base}: port for shard {s} above 65535"
            ))
        })?;
        let mut group_shape = shape.clone();
        group_shape.recipient_domains = domains;
        groups.push(Group {
            id: s,
            port,
            messages: message_split.as_ref().map(|m| m[i]),
            connections: 1 + extra[i] as u32,
            rate_per_sec: rate_per_sec.map(|r| r * mass),
            shape: Arc::new(group_shape),
        });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{DomainDist, DomainShape};

    fn shape(domains: usize) -> LoadShape {
        LoadShape {
            sizes: "1k".parse().unwrap(),
            recipients: 1..=1,
            recipient_domains: DomainDist::new(domains, "bench.invalid", DomainShape::Uniform, &[])
                .unwrap(),
            sender_domains: DomainDist::single("s.invalid"),
            local_parts: 10,
            run_id: "t".into(),
            seed: 1,
        }
    }

    #[test]
    fn no_routing_is_one_group() {
        let g = plan(shape(10), 2525, Some(100), 4, None, None, |_, _| 0).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(
            (g[0].port, g[0].messages, g[0].connections),
            (2525, Some(100), 4)
        );
    }

    #[test]
    fn routing_splits_by_home_shard() {
        let home = sluice_shaping::lease::domain_shard;
        let groups = plan(
            shape(64),
            0,
            Some(10_000),
            16,
            Some(1000.0),
            Some((3000, 4)),
            home,
        )
        .unwrap();
        assert_eq!(
            groups.iter().map(|g| g.messages.unwrap()).sum::<u64>(),
            10_000
        );
        assert_eq!(groups.iter().map(|g| g.connections).sum::<u32>(), 16);
        let rate: f64 = groups.iter().map(|g| g.rate_per_sec.unwrap()).sum();
        assert!((rate - 1000.0).abs() < 1e-6);
        for g in &groups {
            assert_eq!(u32::from(g.port), 3000 + g.id);
            for (d, p) in g.shape.recipient_domains.iter() {
                assert!(p > 0.0);
                assert_eq!(home(d, 4), g.id, "{d} routed to the wrong shard");
            }
        }
    }

    #[test]
    fn too_few_connections_is_an_error() {
        let r = plan(shape(64), 0, Some(10), 1, None, Some((3000, 4)), |d, n| {
            (d.len() as u32) % n
        });
        assert!(r.is_err());
    }
}
