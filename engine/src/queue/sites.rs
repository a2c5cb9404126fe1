//! Sites: destinations that share next hops share connections and limits.
//!
//! With static routes a site is one distinct host list: two patterns
//! routed to the same `HOST:PORT` list are one site. MX delivery (a later
//! issue) will key sites by the sorted MX host set instead. Site
//! [`UNROUTED`] has no hosts: delivery answers its recipients with a
//! temporary failure and they are retried.

// std
use std::net::SocketAddr;

// crate
use crate::config::Route;

/// Index of a site.
pub type SiteId = u32;

/// The site of domains that no route matches.
pub const UNROUTED: SiteId = 0;

/// The routing table: patterns in order, each pointing at a site.
#[derive(Debug, Clone, Default)]
pub struct Sites {
    /// `(route, site)` in the configured order.
    routes: Vec<(Route, SiteId)>,
    /// Hosts per site; `hosts[UNROUTED]` is empty.
    hosts: Vec<Vec<SocketAddr>>,
}

impl Sites {
    /// Builds sites from static routes (first match wins).
    pub fn from_routes(routes: &[Route]) -> Sites {
        let mut hosts: Vec<Vec<SocketAddr>> = vec![Vec::new()];
        let mut table = Vec::with_capacity(routes.len());
        for r in routes {
            let site = match hosts.iter().position(|h| *h == r.hosts) {
                Some(i) if i != UNROUTED as usize => i,
                _ => {
                    hosts.push(r.hosts.clone());
                    hosts.len() - 1
                }
            };
            table.push((r.clone(), site as SiteId));
        }
        Sites {
            routes: table,
            hosts,
        }
    }

    /// The site for a (lower-case) domain.
    pub fn site_for(&self, domain: &str) -> SiteId {
        self.routes
            .iter()
            .find(|(r, _)| r.pattern.matches(domain))
            .map(|(_, s)| *s)
            .unwrap_or(UNROUTED)
    }

    /// Number of sites, [`UNROUTED`] included.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether only [`UNROUTED`] exists.
    pub fn is_empty(&self) -> bool {
        self.hosts.len() <= 1
    }

    /// Next hops of a site, in order.
    pub fn hosts(&self, site: SiteId) -> &[SocketAddr] {
        self.hosts
            .get(site as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// A short name for logs: the first host, or `unrouted`.
    pub fn name(&self, site: SiteId) -> String {
        match self.hosts(site).first() {
            Some(h) => h.to_string(),
            None => "unrouted".to_string(),
        }
    }
}
