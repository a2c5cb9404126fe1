//! Tenants and campaigns at injection: which tenant a message belongs to,
//! its campaign label, and what the tenant's configuration implies for it
//! (its source pool, whether it gets DSN bounces).
//!
//! # Where a message's tenant comes from (precedence)
//! 1. A client authenticated (AUTH) as a user listed in a tenant's
//!    `users` injects as that tenant; the tenant header is removed and
//!    ignored, unless the tenant says `header_override = true` (a platform
//!    account injecting for its own customers), in which case a valid
//!    header names the tenant and the user's tenant is the fallback.
//! 2. Otherwise the tenant header (`[inject] tenant_header`, default
//!    `X-Tenant`) names it.
//! 3. Otherwise the message has no tenant.
//!
//! A header may name a tenant that has no `[tenants.NAME]` table: like
//! KumoMTA, the name is accepted as a free label (stored, logged,
//! suspendable), counted per shard and said once per label on stderr.
//! A tenant name is 1 to 64 visible ASCII characters; a campaign 1 to 128
//! printable ASCII characters; header values that are not are ignored.
//!
//! # What a tenant decides
//! - `pool`: the source pool of its messages that name none with
//!   `X-virtualMTA` (stored in the record's queue field, like the header's).
//! - `dsn`: whether its failures bounce to the sender (default: `[delivery]
//!   dsn`); see [`Tenants::dsn_for`].
//!
//! Pure: parsed and validated with the rest of the configuration, tested
//! by value.

// std
use std::collections::{BTreeMap, HashMap};

// external
use serde::Deserialize;

/// Longest tenant name.
pub const TENANT_BYTES_MAX: usize = 64;
/// Longest campaign label.
pub const CAMPAIGN_BYTES_MAX: usize = 128;

/// `[tenants.NAME]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// AUTH users who inject as this tenant.
    #[serde(default)]
    pub users: Vec<String>,
    /// Let the tenant header of this tenant's users name another tenant.
    #[serde(default)]
    pub header_override: bool,
    /// Source pool (or source) for messages without `X-virtualMTA`.
    pub pool: Option<String>,
    /// DSN bounces for this tenant's messages (default: `[delivery] dsn`).
    pub dsn: Option<bool>,
}

/// One configured tenant, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its name (the `[tenants.NAME]` key).
    pub name: String,
    /// Its source pool, if set.
    pub pool: Option<String>,
    /// Its DSN setting, if set.
    pub dsn: Option<bool>,
    /// Whether the tenant header may override the user's tenant.
    pub header_override: bool,
}

/// The tenant configuration every shard receives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tenants {
    /// Lower-cased name of the tenant header; empty: not read.
    pub tenant_header: Vec<u8>,
    /// Lower-cased name of the campaign header; empty: not read.
    pub campaign_header: Vec<u8>,
    by_name: BTreeMap<String, Tenant>,
    by_user: HashMap<String, String>,
}

/// What injection stores for a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The tenant (empty: none).
    pub tenant: Vec<u8>,
    /// Whether the tenant has no `[tenants.NAME]` table (a free label).
    pub unknown: bool,
    /// The pool the tenant's configuration adds (when the message named none).
    pub pool: Option<String>,
}

/// Whether `name` may be a tenant: 1 to 64 visible ASCII characters.
pub fn valid_tenant(name: &[u8]) -> bool {
    (1..=TENANT_BYTES_MAX).contains(&name.len()) && name.iter().all(u8::is_ascii_graphic)
}

/// Whether `label` may be a campaign: 1 to 128 printable ASCII characters.
pub fn valid_campaign(label: &[u8]) -> bool {
    (1..=CAMPAIGN_BYTES_MAX).contains(&label.len())
        && label.iter().all(|&b| b == b' ' || b.is_ascii_graphic())
}

/// Whether `name` may be a header field name (RFC 5322 §3.6.8 ftext).
fn valid_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

impl Tenants {
    /// Validates `[inject] tenant_header`/`campaign_header` and
    /// `[tenants.*]`, reporting every problem under its key.
    pub fn from_raw(
        tenant_header: &str,
        campaign_header: &str,
        raw: &BTreeMap<String, RawTenant>,
        bad: &mut impl FnMut(&str, String),
    ) -> Tenants {
        let mut header = |key: &str, name: &str| -> Vec<u8> {
            if name.is_empty() {
                return Vec::new();
            }
            if !valid_field_name(name) {
                bad(
                    key,
                    format!("`{name}` is not a header field name (visible ASCII, no `:`); \"\" turns it off"),
                );
                return Vec::new();
            }
            if name.eq_ignore_ascii_case("x-virtualmta") {
                bad(
                    key,
                    "X-virtualMTA already names the source pool; choose another header".into(),
                );
            }
            name.to_ascii_lowercase().into_bytes()
        };
        let tenant_header = header("inject.tenant_header", tenant_header);
        let campaign_header = header("inject.campaign_header", campaign_header);
        if !tenant_header.is_empty() && tenant_header == campaign_header {
            bad(
                "inject.campaign_header",
                "is the same header as inject.tenant_header".into(),
            );
        }
        let mut by_name = BTreeMap::new();
        let mut by_user: HashMap<String, String> = HashMap::new();
        for (name, t) in raw {
            let key = format!("tenants.{name}");
            if !valid_tenant(name.as_bytes()) {
                bad(
                    &key,
                    "a tenant name is 1 to 64 visible ASCII characters (no spaces)".into(),
                );
                continue;
            }
            if let Some(p) = &t.pool {
                if !crate::deliver::source::valid_name(p.as_bytes()) {
                    bad(
                        &format!("{key}.pool"),
                        format!("`{p}`: a pool name is 1 to 64 visible ASCII characters"),
                    );
                }
            }
            for (i, u) in t.users.iter().enumerate() {
                if u.is_empty() {
                    bad(&format!("{key}.users[{i}]"), "empty user name".into());
                } else if let Some(other) = by_user.insert(u.clone(), name.clone()) {
                    bad(
                        &format!("{key}.users[{i}]"),
                        format!("user `{u}` is already tenant `{other}`'s; a user injects as one tenant"),
                    );
                }
            }
            by_name.insert(
                name.clone(),
                Tenant {
                    name: name.clone(),
                    pool: t.pool.clone(),
                    dsn: t.dsn,
                    header_override: t.header_override,
                },
            );
        }
        Tenants {
            tenant_header,
            campaign_header,
            by_name,
            by_user,
        }
    }

    /// A configured tenant by name.
    pub fn get(&self, name: &[u8]) -> Option<&Tenant> {
        std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.by_name.get(n))
    }

    /// Configured tenants, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.by_name.values()
    }

    /// The tenant of a message: from the authenticated `user` and the
    /// tenant `header` value, by the precedence of the module docs.
    pub fn resolve(&self, user: Option<&str>, header: Option<&[u8]>) -> Resolved {
        let header = header.filter(|h| valid_tenant(h));
        let by_user = user
            .and_then(|u| self.by_user.get(u))
            .and_then(|n| self.by_name.get(n));
        let name: &[u8] = match (by_user, header) {
            (Some(t), Some(h)) if t.header_override => h,
            (Some(t), _) => t.name.as_bytes(),
            (None, Some(h)) => h,
            (None, None) => return Resolved::default(),
        };
        let configured = self.get(name);
        Resolved {
            tenant: name.to_vec(),
            unknown: configured.is_none(),
            pool: configured.and_then(|t| t.pool.clone()),
        }
    }

    /// Whether a message of `tenant` (empty: none) bounces to its sender:
    /// the tenant's `dsn`, else `global` (`[delivery] dsn`).
    pub fn dsn_for(&self, tenant: &[u8], global: bool) -> bool {
        self.get(tenant).and_then(|t| t.dsn).unwrap_or(global)
    }

    /// Whether any message can bounce: `global`, or a tenant turns DSNs on.
    pub fn any_dsn(&self, global: bool) -> bool {
        global || self.by_name.values().any(|t| t.dsn == Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(text: &str) -> Result<Tenants, Vec<(String, String)>> {
        let raw: BTreeMap<String, RawTenant> = toml::from_str(text).expect("toml");
        let mut problems = Vec::new();
        let t = Tenants::from_raw("X-Tenant", "X-Campaign", &raw, &mut |k: &str, r| {
            problems.push((k.to_string(), r))
        });
        if problems.is_empty() {
            Ok(t)
        } else {
            Err(problems)
        }
    }

    const CONFIG: &str = r#"
        [acme]
        users = ["alice"]
        pool = "blue"
        dsn = false
        [platform]
        users = ["pat"]
        header_override = true
    "#;

    #[test]
    fn the_user_wins_unless_the_tenant_lets_the_header_override() {
        let t = tenants(CONFIG).unwrap();
        let r = t.resolve(Some("alice"), Some(b"other"));
        assert_eq!((r.tenant.as_slice(), r.unknown), (&b"acme"[..], false));
        assert_eq!(r.pool.as_deref(), Some("blue"));
        let r = t.resolve(Some("pat"), Some(b"acme"));
        assert_eq!(r.tenant, b"acme");
        assert_eq!(r.pool.as_deref(), Some("blue"), "the named tenant's pool");
        let r = t.resolve(Some("pat"), None);
        assert_eq!(r.tenant, b"platform");
        // No user: the header; an unconfigured name is a free label.
        let r = t.resolve(None, Some(b"newco"));
        assert_eq!((r.tenant.as_slice(), r.unknown), (&b"newco"[..], true));
        assert_eq!(r.pool, None);
        // A user of no tenant is like no user.
        assert_eq!(t.resolve(Some("bob"), Some(b"acme")).tenant, b"acme");
        assert_eq!(t.resolve(Some("bob"), None), Resolved::default());
        // Invalid header values are ignored.
        assert_eq!(t.resolve(None, Some(b"two words")), Resolved::default());
        assert_eq!(t.resolve(None, Some(&[b'x'; 65])), Resolved::default());
    }

    #[test]
    fn dsn_per_tenant_defaults_to_the_global_setting() {
        let t = tenants(CONFIG).unwrap();
        assert!(!t.dsn_for(b"acme", true));
        assert!(t.dsn_for(b"platform", true));
        assert!(!t.dsn_for(b"platform", false));
        assert!(t.dsn_for(b"", true));
        assert!(t.dsn_for(b"unknown", true));
        assert!(!t.any_dsn(false));
        let on = tenants("[x]\ndsn = true\n").unwrap();
        assert!(on.any_dsn(false) && on.dsn_for(b"x", false));
    }

    #[test]
    fn problems_name_their_keys() {
        let errs = tenants(
            r#"
            [a]
            users = ["u"]
            pool = "has space"
            [b]
            users = ["u", ""]
            ["bad name"]
        "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tenants.a.pool",
                "tenants.b.users[0]",
                "tenants.b.users[1]",
                "tenants.bad name"
            ],
            "{errs:?}"
        );
        let mut problems = Vec::new();
        Tenants::from_raw(
            "X-virtualMTA",
            "Bad:Name",
            &BTreeMap::new(),
            &mut |k: &str, _| problems.push(k.to_string()),
        );
        assert_eq!(problems, ["inject.tenant_header", "inject.campaign_header"]);
    }

    #[test]
    fn labels() {
        assert!(valid_tenant(b"acme-1"));
        assert!(!valid_tenant(b""));
        assert!(!valid_tenant("caf\u{e9}".as_bytes()));
        assert!(valid_campaign(b"Black Friday 2026"));
        assert!(!valid_campaign(b"tab\there"));
    }
}
