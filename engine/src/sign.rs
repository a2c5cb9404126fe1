//! DKIM signing at injection: the keys loaded once at start
//! ([`DkimKeys`], part of the validated [`crate::config::Config`]) and the
//! shard's signer ([`ShardSigner`]), called once per message at the end of
//! data, before the spool append.
//!
//! # Where the signature goes
//! A message is signed once, not per recipient or per attempt: the
//! `DKIM-Signature` header is stored in the spool record in front of the
//! message, so it survives restarts and delivery writes the signed message
//! straight from the mapping like any other. The spool takes one contiguous
//! body, so the per-connection body buffer starts with [`SIGNATURE_ROOM_BYTES`]
//! of headroom (only when keys are configured); the signature is written at
//! the end of the headroom, right before the `Received:` header, and the
//! record starts there. No message byte is moved; a signature longer than
//! the headroom (a very long `h=` list with a 4096-bit key) falls back to
//! one `memmove` of the body, counted in [`SignStats::moved`].
//!
//! # What is signed
//! The bytes exactly as delivery sends them (before dot-stuffing, which the
//! receiver undoes): the engine never rewrites a stored message. It does not
//! downgrade 8-bit content either: a message with 8-bit bytes for a server
//! without 8BITMIME fails with `5.6.3` (`sluice-smtp` client session), so
//! signing at injection is "after any 8BITMIME downgrade" trivially.
//!
//! # Which key
//! The domain of the From header (`sluice_dkim::author_domain`) selects its
//! own key, a mapped key, or the default domain's key; otherwise the message
//! is stored unsigned. A message whose From cannot be read (none, two, or
//! addresses in different domains) is also stored unsigned and counted.
//!
//! This module never does I/O after start: key files are read by
//! [`load_keys`] during configuration validation.

// std
use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

// external
use sluice_dkim::{DkimConfig, RawDkimConfig, SignError, Signed, Signer};

/// Headroom reserved in front of each message body for the signature. An
/// RSA-2048 signature with the default 16-name `h=` list is about 700
/// bytes; RSA-4096 with every one of 64 allowed names stays under 2 KiB
/// unless the names are long.
pub const SIGNATURE_ROOM_BYTES: usize = 2048;

/// The DKIM keys loaded at start: `None` when the configuration has no
/// `[dkim.domains]`. Read-only and shared by every shard (signing takes
/// `&Signer` and no lock; the `Arc` is cloned once per shard at start).
#[derive(Clone, Default)]
pub struct DkimKeys(Option<Arc<Signer>>);

impl fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("DkimKeys(none)"),
            Some(_) => f.write_str("DkimKeys(loaded)"),
        }
    }
}

impl DkimKeys {
    /// No keys: every message goes out unsigned.
    pub fn none() -> DkimKeys {
        DkimKeys(None)
    }

    /// Whether any key is loaded.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// One line for the start-up layout: every signing domain, its
    /// selector and algorithm, or `off`.
    pub fn describe(&self) -> String {
        let Some(signer) = self.signer() else {
            return "off (no [dkim.domains])".to_string();
        };
        let domains: Vec<String> = signer
            .domains()
            .iter()
            .map(|(d, s, a)| format!("{d} (s={s}, {})", a.name()))
            .collect();
        format!(
            "signing once per message at injection: {}",
            domains.join(", ")
        )
    }

    /// The signer, when keys are loaded.
    pub fn signer(&self) -> Option<&Signer> {
        self.0.as_deref()
    }
}

/// Validates the `[dkim]` section and loads every key it names, reporting
/// each problem through `bad` under its full key path (e.g.
/// `dkim.domains."example.com".key_file`). Relative key paths are resolved
/// against `base` (the configuration file's directory).
pub fn load_keys(
    raw: RawDkimConfig,
    base: Option<&Path>,
    bad: &mut dyn FnMut(&str, String),
) -> DkimKeys {
    let mut config = match DkimConfig::validate(raw, "dkim") {
        Ok(config) => config,
        Err(sluice_dkim::ConfigError::Invalid { problems }) => {
            for p in problems {
                bad(&p.key, p.message);
            }
            return DkimKeys::none();
        }
        Err(sluice_dkim::ConfigError::Syntax { key, message }) => {
            bad(&key, message);
            return DkimKeys::none();
        }
    };
    if config.domains.is_empty() {
        return DkimKeys::none();
    }
    for domain in config.domains.values_mut() {
        if let Some(base) = base {
            if domain.key_file.is_relative() {
                domain.key_file = base.join(&domain.key_file);
            }
        }
    }
    match Signer::load(&config) {
        Ok(signer) => DkimKeys(Some(Arc::new(signer))),
        Err(e) => {
            for (key, error) in e.errors {
                bad(&format!("{key}.key_file"), error.to_string());
            }
            DkimKeys::none()
        }
    }
}

/// Signing counters of one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignStats {
    /// Messages stored with a `DKIM-Signature`.
    pub signed: u64,
    /// Messages stored unsigned: no key, mapping or default for the author
    /// domain.
    pub no_key: u64,
    /// Messages stored unsigned because their From header names no single
    /// domain (missing, repeated, mixed domains) or the backend failed.
    pub failed: u64,
    /// Signatures that did not fit the headroom (the body was moved once).
    pub moved: u64,
}

/// What [`ShardSigner::sign`] did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOutcome {
    /// The record starts at this index of the buffer (signature included).
    Signed(usize),
    /// Not signed; the record starts at this index (after the headroom).
    Unsigned(usize),
}

impl SignOutcome {
    /// Index of the buffer where the record's body starts.
    pub fn start(self) -> usize {
        match self {
            SignOutcome::Signed(i) | SignOutcome::Unsigned(i) => i,
        }
    }
}

/// One shard's signer: the shared keys plus scratch buffers reused for
/// every message (single-threaded, so plain `RefCell`/`Cell`).
pub struct ShardSigner {
    keys: DkimKeys,
    scratch: RefCell<Scratch>,
    stats: Cell<SignStats>,
}

#[derive(Default)]
struct Scratch {
    signature: Vec<u8>,
    domain: String,
}

impl ShardSigner {
    /// The shard's signer, or `None` when no key is configured.
    pub fn new(keys: &DkimKeys) -> Option<ShardSigner> {
        keys.is_enabled().then(|| ShardSigner {
            keys: keys.clone(),
            scratch: RefCell::new(Scratch {
                signature: Vec::with_capacity(SIGNATURE_ROOM_BYTES),
                domain: String::with_capacity(255),
            }),
            stats: Cell::new(SignStats::default()),
        })
    }

    /// Bytes to reserve at the start of every body buffer.
    pub fn room(&self) -> usize {
        SIGNATURE_ROOM_BYTES
    }

    /// Counters so far.
    pub fn stats(&self) -> SignStats {
        self.stats.get()
    }

    /// Signs the message in `buffer[room..]` (which holds exactly the bytes
    /// to store and send) and places the signature in front of it. Returns
    /// where the record's body starts; the caller stores `buffer[start..]`.
    pub fn sign(&self, buffer: &mut Vec<u8>, room: usize) -> SignOutcome {
        assert!(
            room <= buffer.len(),
            "the body buffer lost its signature headroom"
        );
        // Only the signer runs here, and it calls nothing that re-enters.
        let mut scratch = self.scratch.borrow_mut();
        let Scratch { signature, domain } = &mut *scratch;
        signature.clear();
        let mut stats = self.stats.get();
        let outcome = match self.keys.signer() {
            None => Ok(Signed::Unsigned),
            Some(signer) => signer.sign(&buffer[room..], domain, signature),
        };
        let result = match outcome {
            Ok(Signed::By(_)) => {
                stats.signed += 1;
                let (start, moved) = place(buffer, room, signature);
                stats.moved += u64::from(moved);
                SignOutcome::Signed(start)
            }
            Ok(Signed::Unsigned) => {
                stats.no_key += 1;
                SignOutcome::Unsigned(room)
            }
            Err(e) => {
                stats.failed += 1;
                match e {
                    SignError::Author(reason) => {
                        log::debug!("DKIM: message stored unsigned: {reason}")
                    }
                    other => log::warn!("DKIM: message stored unsigned: {other}"),
                }
                SignOutcome::Unsigned(room)
            }
        };
        self.stats.set(stats);
        result
    }
}

/// Puts `signature` right before `buffer[room..]`: into the headroom when
/// it fits (no message byte moves), else by moving the message. Returns the
/// start of the signed record and whether the message moved.
pub fn place(buffer: &mut Vec<u8>, room: usize, signature: &[u8]) -> (usize, bool) {
    assert!(room <= buffer.len(), "headroom beyond the buffer");
    if signature.len() <= room {
        let start = room - signature.len();
        buffer[start..room].copy_from_slice(signature);
        (start, false)
    } else {
        let missing = signature.len() - room;
        buffer.splice(0..0, std::iter::repeat_n(0u8, missing));
        buffer[..signature.len()].copy_from_slice(signature);
        (0, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_fills_the_end_of_the_headroom() {
        let mut buffer = vec![0u8; 8];
        buffer.extend_from_slice(b"Received: x\r\n\r\nbody\r\n");
        let (start, moved) = place(&mut buffer, 8, b"SIG\r\n");
        assert!(!moved);
        assert_eq!(start, 3);
        assert_eq!(&buffer[start..], b"SIG\r\nReceived: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn a_long_signature_moves_the_message_once() {
        let mut buffer = vec![0u8; 2];
        buffer.extend_from_slice(b"M\r\n");
        let (start, moved) = place(&mut buffer, 2, b"LONGSIG\r\n");
        assert!(moved);
        assert_eq!(start, 0);
        assert_eq!(&buffer[start..], b"LONGSIG\r\nM\r\n");
        // Exactly the room: no move, starts at 0.
        let mut exact = b"..M".to_vec();
        assert_eq!(place(&mut exact, 2, b"S\n"), (0, false));
        assert_eq!(exact, b"S\nM");
    }

    #[test]
    fn no_dkim_section_means_no_keys() {
        let mut problems = Vec::new();
        let keys = load_keys(RawDkimConfig::default(), None, &mut |k, r| {
            problems.push(format!("{k}: {r}"))
        });
        assert!(problems.is_empty());
        assert!(!keys.is_enabled());
        assert!(ShardSigner::new(&keys).is_none());
    }

    #[test]
    fn a_missing_or_open_key_file_is_named_with_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open.pem");
        std::fs::write(&open, b"not a key").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = r#"
            [dkim.domains."example.com"]
            selector = "s1"
            key_file = "missing.pem"
            [dkim.domains."example.org"]
            selector = "s1"
            key_file = "open.pem"
        "#;
        let err = crate::config::Config::parse("t.toml", text, Some(dir.path()))
            .expect_err("bad keys refuse the configuration");
        let message = err.to_string();
        assert!(message.contains("t.toml"), "{message}");
        assert!(
            message.contains("dkim.domains.\"example.com\".key_file"),
            "{message}"
        );
        assert!(
            message.contains("dkim.domains.\"example.org\".key_file"),
            "{message}"
        );
        // Resolved against the config's directory, and the fix is named.
        assert!(message.contains(&*open.to_string_lossy()), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
    }

    #[test]
    fn dkim_schema_errors_carry_the_full_path() {
        let text = "[dkim.domains.\"example.com\"]\nselector = \"s1\"\nkey_file = \"k.pem\"\nbody_length = true\n";
        let message = crate::config::Config::parse("t.toml", text, None)
            .expect_err("l= is never configurable")
            .to_string();
        assert!(message.contains("dkim.domains"), "{message}");
        assert!(message.contains("body_length"), "{message}");
        let text = "[dkim]\ndefault_domain = \"nowhere.example\"\n";
        let message = crate::config::Config::parse("t.toml", text, None)
            .expect_err("default without a key")
            .to_string();
        assert!(message.contains("dkim.default_domain"), "{message}");
    }
}
