//! The injection listener's TLS and AUTH settings, validated from
//! `[inject]`: certificate files loaded into a rustls config, the
//! implicit-TLS address, the users file.

// std
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// crate
use super::auth::Users;
use crate::config::RawInject;

/// `[inject]` TLS and AUTH, validated.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Server TLS config: STARTTLS is offered when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Implicit-TLS listener address.
    pub implicit_tls_listen: Option<SocketAddr>,
    /// AUTH users; AUTH is offered (under TLS) when set.
    pub users: Option<Arc<Users>>,
    /// MAIL before AUTH gets `530 5.7.0`.
    pub auth_required: bool,
}

impl Security {
    /// Validates the keys, reporting every problem through `bad`.
    pub fn from_raw(
        raw: &RawInject,
        base: Option<&Path>,
        bad: &mut impl FnMut(&str, String),
    ) -> Security {
        let resolve = |p: &PathBuf| match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p.clone(),
        };
        let tls = match (&raw.tls_cert, &raw.tls_key) {
            (Some(cert), Some(key)) => {
                match crate::tls::server_config(&resolve(cert), &resolve(key)) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        bad("inject.tls_cert", e);
                        None
                    }
                }
            }
            (Some(_), None) => {
                bad("inject.tls_key", "missing: tls_cert needs its key".into());
                None
            }
            (None, Some(_)) => {
                bad(
                    "inject.tls_cert",
                    "missing: tls_key needs its certificate".into(),
                );
                None
            }
            (None, None) => None,
        };
        let tls_configured = raw.tls_cert.is_some() && raw.tls_key.is_some();
        let implicit_tls_listen = raw.implicit_tls_listen.as_ref().and_then(|a| {
            if !tls_configured {
                bad(
                    "inject.implicit_tls_listen",
                    "needs inject.tls_cert and inject.tls_key".into(),
                );
            }
            a.parse::<SocketAddr>()
                .map_err(|e| {
                    bad(
                        "inject.implicit_tls_listen",
                        format!("`{a}`: {e}; expected ADDR:PORT"),
                    )
                })
                .ok()
        });
        let users = raw.auth_users.as_ref().and_then(|p| {
            if !tls_configured {
                // RFC 4954 §4 and our rule: AUTH only after TLS.
                bad(
                    "inject.auth_users",
                    "AUTH is offered only under TLS: set inject.tls_cert and inject.tls_key".into(),
                );
            }
            match Users::load(&resolve(p)) {
                Ok(u) if u.is_empty() => {
                    bad("inject.auth_users", format!("{}: no users", p.display()));
                    None
                }
                Ok(u) => Some(Arc::new(u)),
                Err(e) => {
                    bad("inject.auth_users", e);
                    None
                }
            }
        });
        if raw.auth_required && raw.auth_users.is_none() {
            bad(
                "inject.auth_required",
                "needs inject.auth_users (nobody could send)".into(),
            );
        }
        Security {
            tls,
            implicit_tls_listen,
            users,
            auth_required: raw.auth_required,
        }
    }
}
