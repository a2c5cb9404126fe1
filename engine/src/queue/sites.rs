//! Sites: destinations that share next hops share connections and limits.
//!
//! - With static routes a site is one distinct host list: two patterns
//!   routed to the same `HOST:PORT` list are one site.
//! - Domains no route matches are resolved through DNS (RFC 5321 §5.1, by
//!   `deliver`) and then join the site of their MX host set: the key is
//!   `sluice_dns::SiteKey` (the sorted distinct exchange names, or a
//!   configured provider suffix), so the thousands of domains one
//!   provider hosts share one site. The site's addresses are those of the
//!   latest resolution that joined it (preference order, equal
//!   preferences shuffled).
//! - A message sent through a source pool (`X-virtualMTA`) uses its own
//!   variant of the site (`KEY@pool`): its connections bind that pool's
//!   sources, so they never carry another pool's mail.
//!
//! Site [`UNROUTED`] has no hosts: it holds the destinations waiting for
//! their MX resolution.

// std
use std::collections::HashMap;
use std::net::SocketAddr;

// crate
use crate::config::Route;

/// Index of a site.
pub type SiteId = u32;

/// The site of domains that no route matches (waiting for MX resolution).
pub const UNROUTED: SiteId = 0;

/// Sites at most per shard (each costs a pool slot and a queue ring).
/// Past it, new keys share the last site instead of growing the table,
/// so a flood of distinct MX host sets cannot exhaust memory.
pub const SITES_MAX: usize = 1 << 20;

/// One site: its hops and what chose them.
#[derive(Debug, Clone, Default)]
struct Site {
    /// Next hops, in the order to try them.
    hosts: Vec<SocketAddr>,
    /// MX host names (empty for static routes), for shaping's provider
    /// matching.
    names: Vec<String>,
    /// The key (log name).
    key: String,
    /// The source pool (or source) its connections bind, if any.
    pool: Option<Box<str>>,
    /// Leading addresses of equal (the best) MX preference: connections
    /// start at a random one of them, spreading load (RFC 5321 §5.1).
    spread: usize,
}

/// The routing table: patterns in order, each pointing at a site, plus the
/// sites MX resolution made.
#[derive(Debug, Clone, Default)]
pub struct Sites {
    /// `(route, site)` in the configured order.
    routes: Vec<(Route, SiteId)>,
    /// Sites by index; `sites[UNROUTED]` has no hosts.
    sites: Vec<Site>,
    /// Site by key (MX sites and pool variants).
    by_key: HashMap<String, SiteId>,
}

impl Sites {
    /// Builds sites from static routes (first match wins).
    pub fn from_routes(routes: &[Route]) -> Sites {
        let mut sites = vec![Site {
            key: "unrouted".into(),
            ..Site::default()
        }];
        let mut table = Vec::with_capacity(routes.len());
        for r in routes {
            let site = match sites.iter().position(|s| s.hosts == r.hosts) {
                Some(i) if i != UNROUTED as usize => i,
                _ => {
                    sites.push(Site {
                        hosts: r.hosts.clone(),
                        names: Vec::new(),
                        // The whole list: two routes sharing a first host
                        // are still distinct sites (and pool variants).
                        key: r
                            .hosts
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        pool: None,
                        spread: 0,
                    });
                    sites.len() - 1
                }
            };
            table.push((r.clone(), site as SiteId));
        }
        Sites {
            routes: table,
            sites,
            by_key: HashMap::new(),
        }
    }

    /// The static site for a (lower-case) domain, [`UNROUTED`] when no
    /// route matches.
    pub fn site_for(&self, domain: &str) -> SiteId {
        self.routes
            .iter()
            .find(|(r, _)| r.pattern.matches(domain))
            .map(|(_, s)| *s)
            .unwrap_or(UNROUTED)
    }

    /// The site for a domain whose mail goes through `pool`: the static
    /// site's pool variant, or [`UNROUTED`] when no route matches.
    pub fn site_for_pool(&mut self, domain: &str, pool: Option<&str>) -> SiteId {
        let site = self.site_for(domain);
        match pool {
            Some(pool) if site != UNROUTED => {
                let base = &self.sites[site as usize];
                let key = format!("{}@{pool}", base.key);
                let (hosts, names) = (base.hosts.clone(), base.names.clone());
                self.keyed(&key, hosts, names, Some(pool))
            }
            _ => site,
        }
    }

    /// The site of an MX host set: `key` is the resolution's site key,
    /// `hosts` the addresses in the order to try them. An existing site
    /// takes the newer addresses.
    pub fn site_for_mx(
        &mut self,
        key: &str,
        hosts: Vec<SocketAddr>,
        names: Vec<String>,
        pool: Option<&str>,
    ) -> SiteId {
        let key = match pool {
            Some(p) => format!("{key}@{p}"),
            None => key.to_string(),
        };
        self.keyed(&key, hosts, names, pool)
    }

    /// Whether the table is full and has no site for the MX key `key` in
    /// `pool` yet (then [`Sites::site_for_mx`] must not be asked for it).
    pub fn full_for_mx(&self, key: &str, pool: Option<&str>) -> bool {
        if self.sites.len() < SITES_MAX {
            return false;
        }
        let key = match pool {
            Some(p) => format!("{key}@{p}"),
            None => key.to_string(),
        };
        !self.by_key.contains_key(&key)
    }

    fn keyed(
        &mut self,
        key: &str,
        hosts: Vec<SocketAddr>,
        names: Vec<String>,
        pool: Option<&str>,
    ) -> SiteId {
        if let Some(&id) = self.by_key.get(key) {
            let site = &mut self.sites[id as usize];
            site.hosts = hosts;
            site.names = names;
            return id;
        }
        if self.sites.len() >= SITES_MAX {
            // Bounded: the table never grows past SITES_MAX.
            return (self.sites.len() - 1) as SiteId;
        }
        let id = self.sites.len() as SiteId;
        self.sites.push(Site {
            hosts,
            names,
            key: key.to_string(),
            pool: pool.map(Into::into),
            spread: 0,
        });
        self.by_key.insert(key.to_string(), id);
        id
    }

    /// Sets how many leading addresses of `site` share the best MX
    /// preference (see [`Sites::spread`]).
    pub fn set_spread(&mut self, site: SiteId, addresses: usize) {
        if let Some(s) = self.sites.get_mut(site as usize) {
            s.spread = addresses.min(s.hosts.len());
        }
    }

    /// How many leading addresses of `site` a new connection may start
    /// at (0 or 1: always the first).
    pub fn spread(&self, site: SiteId) -> usize {
        self.sites.get(site as usize).map_or(0, |s| s.spread)
    }

    /// Number of sites, [`UNROUTED`] included.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// Whether only [`UNROUTED`] exists.
    pub fn is_empty(&self) -> bool {
        self.sites.len() <= 1
    }

    /// Next hops of a site, in order.
    pub fn hosts(&self, site: SiteId) -> &[SocketAddr] {
        self.sites
            .get(site as usize)
            .map(|s| s.hosts.as_slice())
            .unwrap_or(&[])
    }

    /// MX host names of a site (empty for static routes).
    pub fn names(&self, site: SiteId) -> &[String] {
        self.sites
            .get(site as usize)
            .map(|s| s.names.as_slice())
            .unwrap_or(&[])
    }

    /// The source pool (or source name) a site's connections bind.
    pub fn pool(&self, site: SiteId) -> Option<&str> {
        self.sites
            .get(site as usize)
            .and_then(|s| s.pool.as_deref())
    }

    /// A short name for logs: a route's host list, the MX site key (with
    /// `@pool` for a pool's variant), or `unrouted`.
    pub fn name(&self, site: SiteId) -> String {
        self.sites
            .get(site as usize)
            .map_or_else(|| "unrouted".to_string(), |s| s.key.clone())
    }
}
