//! Site keys: one name for "the same set of receiving servers".
//!
//! Thousands of domains hosted by one provider publish the same MX host
//! set, and the provider's limits apply to connections, not to recipient
//! domains. Queues and shaping therefore roll domains up by a site key:
//!
//! - with MX records: the distinct exchange names, lower case, without the
//!   trailing dot, sorted and joined with `,`
//!   (`alt1.aspmx.l.google.com,aspmx.l.google.com`). Preferences are left
//!   out on purpose: a provider that re-weights its hosts is still one
//!   site.
//! - with a configured provider suffix (see [`SiteRules`]): when every
//!   exchange ends with the same configured suffix, the key is that suffix
//!   alone (`google.com`), so domains that publish different subsets of a
//!   provider's hosts still share one site.
//! - without MX (the implicit MX of RFC 5321 §5.1): the domain itself,
//!   prefixed `=` so it cannot collide with a host-set key.
//!
//! The key depends only on names, never on addresses or on the shuffle
//! order, so it is stable across lookups and across shards.

use std::fmt;

/// A stable key for a set of MX hosts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteKey(String);

impl SiteKey {
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Provider suffixes that collapse host sets into one site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteRules {
    /// Normalised suffixes such as `google.com` or `outlook.com`. A host
    /// matches when it equals the suffix or ends with `.` + suffix. The
    /// longest matching suffix wins.
    pub provider_suffixes: Vec<String>,
}

impl SiteRules {
    /// The site key of the normalised exchange names `hosts`.
    pub fn key_for_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> SiteKey {
        let mut names: Vec<&str> = hosts.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        if let Some(suffix) = self.common_provider(&names) {
            return SiteKey(suffix.to_owned());
        }
        SiteKey(names.join(","))
    }

    /// The site key of a domain delivered through its implicit MX.
    pub fn key_for_implicit(&self, domain: &str) -> SiteKey {
        SiteKey(format!("={domain}"))
    }

    fn common_provider(&self, names: &[&str]) -> Option<&str> {
        let first = names.first()?;
        let suffix = self.longest_suffix(first)?;
        names
            .iter()
            .all(|n| self.longest_suffix(n) == Some(suffix))
            .then_some(suffix)
    }

    fn longest_suffix(&self, host: &str) -> Option<&str> {
        self.provider_suffixes
            .iter()
            .filter(|s| {
                host == s.as_str()
                    || (host.len() > s.len()
                        && host.ends_with(s.as_str())
                        && host.as_bytes()[host.len() - s.len() - 1] == b'.')
            })
            .max_by_key(|s| s.len())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_distinct_names() {
        let rules = SiteRules::default();
        let a = rules.key_for_hosts(["mx2.example.net", "mx1.example.net", "mx2.example.net"]);
        let b = rules.key_for_hosts(["mx1.example.net", "mx2.example.net"]);
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "mx1.example.net,mx2.example.net");
        assert_eq!(
            rules.key_for_implicit("example.org").as_str(),
            "=example.org"
        );
    }

    #[test]
    fn provider_suffix_collapses_only_when_all_match() {
        let rules = SiteRules {
            provider_suffixes: vec!["google.com".into(), "l.google.com".into()],
        };
        let key = rules.key_for_hosts(["aspmx.l.google.com", "alt1.aspmx.l.google.com"]);
        assert_eq!(key.as_str(), "l.google.com");
        let mixed = rules.key_for_hosts(["aspmx.l.google.com", "mx.example.net"]);
        assert_eq!(mixed.as_str(), "aspmx.l.google.com,mx.example.net");
        // A suffix must match at a label boundary.
        let fake = rules.key_for_hosts(["evilgoogle.com"]);
        assert_eq!(fake.as_str(), "evilgoogle.com");
    }
}
