//! [`Signer`]: every configured key, loaded once, and the per-message
//! signing call.

use std::collections::HashMap;

use mail_auth::common::crypto::DkimKey;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization as MaCanonicalization, DkimSigner, Done};

use crate::author::{author_domain, AuthorError};
use crate::config::{Algorithm, Canonicalization, DkimConfig, DomainConfig};
use crate::key::{load_key, KeyError};

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The author domain could not be read from the From header.
    #[error(transparent)]
    Author(#[from] AuthorError),
    /// [`Signer::sign_as`] named a domain without a key.
    #[error("no DKIM key is configured for {domain}")]
    NoKey {
        /// The requested signing domain.
        domain: String,
    },
    /// The crypto backend failed (it does not for valid keys).
    #[error("DKIM signing for {domain} failed: {message}")]
    Crypto {
        /// The signing domain.
        domain: String,
        /// The backend's message.
        message: String,
    },
}

/// Why [`Signer::load`] failed: one entry per domain whose key was refused.
#[derive(Debug, thiserror::Error)]
#[error("{} DKIM key(s) refused:\n{}", errors.len(), render(errors))]
pub struct LoadError {
    /// `(config key of the domain, error)`, in domain order.
    pub errors: Vec<(String, KeyError)>,
}

fn render(errors: &[(String, KeyError)]) -> String {
    let lines: Vec<String> = errors
        .iter()
        .map(|(key, e)| format!("  {key}.key_file: {e}"))
        .collect();
    lines.join("\n")
}

struct DomainSigner {
    signer: DkimSigner<DkimKey, Done>,
    selector: String,
    algorithm: Algorithm,
}

/// Signs messages with the configured keys. Built once at start (reading
/// every key file then) and shared read-only: signing takes `&self` and
/// touches no lock, so shards may share one behind an `Arc` or each hold
/// their own.
pub struct Signer {
    domains: HashMap<String, DomainSigner>,
    map: HashMap<String, String>,
    default_domain: Option<String>,
}

/// What [`Signer::sign`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed<'a> {
    /// A `DKIM-Signature` header was appended; `d=` is this domain.
    By(&'a str),
    /// No key, mapping or default covers the author domain: the message
    /// goes out unsigned and nothing was appended.
    Unsigned,
}

impl Signer {
    /// Loads every key named in `config`. All keys are tried, and every
    /// refusal is reported, before this returns.
    pub fn load(config: &DkimConfig) -> Result<Signer, LoadError> {
        let mut domains = HashMap::with_capacity(config.domains.len());
        let mut errors = Vec::new();
        for domain in config.domains.values() {
            match load_key(&domain.key_file, domain.algorithm) {
                Ok(loaded) => {
                    let signer = build(domain, loaded.key);
                    domains.insert(
                        domain.domain.clone(),
                        DomainSigner {
                            signer,
                            selector: domain.selector.clone(),
                            algorithm: loaded.algorithm,
                        },
                    );
                }
                Err(e) => errors.push((domain.config_key.clone(), e)),
            }
        }
        if !errors.is_empty() {
            return Err(LoadError { errors });
        }
        Ok(Signer {
            domains,
            map: config
                .map
                .iter()
                .map(|(a, s)| (a.clone(), s.clone()))
                .collect(),
            default_domain: config.default_domain.clone(),
        })
    }

    /// The signing domain for an author domain (lower case): its own key,
    /// else its mapping, else the default, else `None`.
    pub fn signing_domain(&self, author_domain: &str) -> Option<&str> {
        if let Some((domain, _)) = self.domains.get_key_value(author_domain) {
            return Some(domain);
        }
        if let Some(mapped) = self.map.get(author_domain) {
            return Some(mapped);
        }
        self.default_domain.as_deref()
    }

    /// Every signing domain with its selector and algorithm, in domain
    /// order (for start-up reports).
    pub fn domains(&self) -> Vec<(&str, &str, Algorithm)> {
        let mut list: Vec<(&str, &str, Algorithm)> = self
            .domains
            .iter()
            .map(|(d, s)| (d.as_str(), s.selector.as_str(), s.algorithm))
            .collect();
        list.sort_unstable_by(|a, b| a.0.cmp(b.0));
        list
    }

    /// The `(selector, algorithm)` of a signing domain, if it has a key.
    pub fn key_info(&self, domain: &str) -> Option<(&str, Algorithm)> {
        self.domains
            .get(domain)
            .map(|d| (d.selector.as_str(), d.algorithm))
    }

    /// Signs `message` (header block, blank line, body, CRLF line endings,
    /// exactly as it will be transmitted after dot-unstuffing) with the key
    /// its From domain selects, appending the `DKIM-Signature` header field
    /// (ending in CRLF) to `out`. The caller transmits `out` followed by
    /// `message`. The body is hashed in place, never copied.
    ///
    /// `domain_buffer` is scratch space for the author domain, reused across
    /// calls to avoid an allocation per message.
    pub fn sign<'s>(
        &'s self,
        message: &[u8],
        domain_buffer: &mut String,
        out: &mut Vec<u8>,
    ) -> Result<Signed<'s>, SignError> {
        author_domain(message, domain_buffer)?;
        let Some(domain) = self.signing_domain(domain_buffer) else {
            return Ok(Signed::Unsigned);
        };
        self.sign_as(domain, message, out)?;
        // sign_as succeeded, so the domain has a key; return the stored name.
        Ok(Signed::By(
            self.domains
                .get_key_value(domain)
                .map_or(domain, |(d, _)| d.as_str()),
        ))
    }

    /// Signs `message` as `domain` (lower case) regardless of its From
    /// header, appending the `DKIM-Signature` header field to `out`.
    pub fn sign_as(
        &self,
        domain: &str,
        message: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SignError> {
        let entry = self.domains.get(domain).ok_or_else(|| SignError::NoKey {
            domain: domain.to_string(),
        })?;
        let signature = entry.signer.sign(message).map_err(|e| SignError::Crypto {
            domain: domain.to_string(),
            message: e.to_string(),
        })?;
        // RFC 6376 §3.5: no `l=` tag is ever written (the builder leaves
        // body_length off), so appended content cannot ride on the signature.
        debug_assert_eq!(signature.l, 0);
        signature.write_header(out);
        // mail-auth folds after a base64 chunk that fills a line even when
        // it is the last one, leaving `b=...\r\n\t;`. RFC 6376 §3.7 has
        // verifiers drop the b= value "including all surrounding
        // whitespace", but dkimpy (and others) keep whitespace after the
        // value, see " ;" and fail where mail-auth signed "b=;". Dropping
        // that fold makes the header identical for every verifier; the
        // signed bytes are unchanged because b= is empty when signing.
        const TRAILING_FOLD: &[u8] = b"\r\n\t;\r\n";
        if out.ends_with(TRAILING_FOLD) {
            let fold_at = out.len() - TRAILING_FOLD.len();
            out.drain(fold_at..fold_at + 3);
        }
        debug_assert!(out.ends_with(b";\r\n") && !out.ends_with(TRAILING_FOLD));
        Ok(())
    }
}

fn build(domain: &DomainConfig, key: DkimKey) -> DkimSigner<DkimKey, Done> {
    // mail-auth signs every occurrence of each listed name and lists names
    // it did not find once more in h= (RFC 6376 §5.4.2 "nonexistent header
    // fields"). Listing an oversigned name twice therefore yields one entry
    // per occurrence plus one: a header added later breaks the signature
    // (RFC 6376 §8.15).
    let headers = domain.headers.iter().chain(domain.oversign.iter()).cloned();
    let signer = DkimSigner::from_key(key)
        .domain(domain.domain.clone())
        .selector(domain.selector.clone())
        .headers(headers)
        .header_canonicalization(convert(domain.header_canonicalization))
        .body_canonicalization(convert(domain.body_canonicalization))
        .body_length(false);
    match domain.expiry {
        Some(expiry) => signer.expiration(expiry.as_secs()),
        None => signer,
    }
}

fn convert(c: Canonicalization) -> MaCanonicalization {
    match c {
        Canonicalization::Relaxed => MaCanonicalization::Relaxed,
        Canonicalization::Simple => MaCanonicalization::Simple,
    }
}
