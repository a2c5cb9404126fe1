//! Loading private keys: permission check, PEM decoding, key type.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::config::Algorithm;

/// Largest key file read; a 16384-bit RSA key in PEM is under 13 KiB.
pub const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be opened or read.
    #[error("{}: cannot read the DKIM key: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Group or others may access the file (RELIABILITY.md: keys are 0600).
    #[error(
        "{}: DKIM key is mode {mode:04o}, readable by others; run `chmod 600 {}` (and make the \
         sluice user its owner)",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file, or larger than [`KEY_FILE_BYTES_MAX`].
    #[error("{}: {reason}", path.display())]
    NotAKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No PEM private key, or one that is neither RSA nor Ed25519.
    #[error(
        "{}: {reason}; expected a PEM `RSA PRIVATE KEY` (PKCS#1) or `PRIVATE KEY` (PKCS#8, RSA \
         or Ed25519), e.g. from `openssl genpkey -algorithm ed25519`",
        path.display()
    )]
    Format {
        /// The key file.
        path: PathBuf,
        /// What the decoder found.
        reason: String,
    },
    /// The key's type differs from the configured `algorithm`.
    #[error("{}: the key is {found} but the configuration asks for {configured}", path.display())]
    AlgorithmMismatch {
        /// The key file.
        path: PathBuf,
        /// The algorithm of the key.
        found: &'static str,
        /// The configured algorithm.
        configured: &'static str,
    },
}

/// A decoded private key and its algorithm.
pub struct LoadedKey {
    /// The key, ready for mail-auth's signer.
    pub key: DkimKey,
    /// Its algorithm.
    pub algorithm: Algorithm,
}

/// Reads and decodes `path`, refusing files that group or others can read
/// or write. The mode is checked on the opened descriptor, so a file swapped
/// in between the check and the read is still the one checked.
pub fn load_key(path: &Path, configured: Option<Algorithm>) -> Result<LoadedKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    if !metadata.is_file() {
        return Err(KeyError::NotAKeyFile {
            path: path.to_path_buf(),
            reason: "not a regular file".to_string(),
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if metadata.len() > KEY_FILE_BYTES_MAX {
        return Err(KeyError::NotAKeyFile {
            path: path.to_path_buf(),
            reason: format!(
                "{} bytes is too large for a private key file",
                metadata.len()
            ),
        });
    }
    let mut pem = Vec::with_capacity(metadata.len() as usize);
    let read = file
        .take(KEY_FILE_BYTES_MAX)
        .read_to_end(&mut pem)
        .map_err(io);
    let decoded = read.and_then(|_| decode(path, &pem, configured));
    // Best effort: do not leave the PEM text in freed memory.
    pem.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&pem);
    decoded
}

fn decode(path: &Path, pem: &[u8], configured: Option<Algorithm>) -> Result<LoadedKey, KeyError> {
    let format = |reason: String| KeyError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let der =
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| format(format!("no private key ({e})")))?;
    let loaded = match &der {
        PrivateKeyDer::Pkcs1(_) => rsa(path, der.clone_key())?,
        PrivateKeyDer::Pkcs8(pkcs8) => {
            if is_ed25519_pkcs8(pkcs8.secret_pkcs8_der()) {
                // OpenSSL writes PKCS#8 v1 (no public key), which the checked
                // constructor refuses; the public key is derived from the seed.
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                    .map_err(|e| format(format!("bad Ed25519 key ({e})")))?;
                LoadedKey {
                    key: DkimKey::Ed25519(key),
                    algorithm: Algorithm::Ed25519Sha256,
                }
            } else {
                rsa(path, der.clone_key())?
            }
        }
        _ => return Err(format("an EC (SEC1) key cannot sign DKIM".to_string())),
    };
    match configured {
        Some(configured) if configured != loaded.algorithm => Err(KeyError::AlgorithmMismatch {
            path: path.to_path_buf(),
            found: loaded.algorithm.name(),
            configured: configured.name(),
        }),
        _ => Ok(loaded),
    }
}

fn rsa(path: &Path, der: PrivateKeyDer<'static>) -> Result<LoadedKey, KeyError> {
    // The backend (aws-lc) refuses moduli under 2048 bits, above RFC 8301
    // §3.2's floor of 1024.
    let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| KeyError::Format {
        path: path.to_path_buf(),
        reason: format!("not an RSA or Ed25519 key ({e})"),
    })?;
    Ok(LoadedKey {
        key: DkimKey::Rsa(key),
        algorithm: Algorithm::RsaSha256,
    })
}

/// True when the PKCS#8 AlgorithmIdentifier is id-Ed25519 (1.3.101.112,
/// RFC 8410 §3), whose DER is `06 03 2B 65 70`. It sits right after the
/// version in the first few bytes, so only the prefix is searched.
fn is_ed25519_pkcs8(der: &[u8]) -> bool {
    const OID: [u8; 5] = [0x06, 0x03, 0x2B, 0x65, 0x70];
    der.get(..16.min(der.len()))
        .is_some_and(|head| head.windows(OID.len()).any(|w| w == OID))
}
