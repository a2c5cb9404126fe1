//! STARTTLS for the sink: rustls configuration and a small adapter that
//! drives a [`rustls::ServerConnection`] over a glommio `TcpStream`.
//!
//! rustls does no I/O itself; [`TlsState`] moves ciphertext between the
//! socket and rustls through two buffers allocated once per connection
//! (`read_tls` from a slice, `write_tls` into a reused `Vec`).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// Bytes of ciphertext read from the socket at a time (one TLS record and a
/// header fit: RFC 8446 §5.1 caps a record at 2^14 + 256 bytes).
pub const TLS_READ_BYTES: usize = 16 * 1024 + 512;

/// A certificate problem at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{path}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate {
        /// The file.
        path: String,
    },
    /// The key file holds no private key.
    #[error("{path}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey {
        /// The file.
        path: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the certificate and key.
    #[error("certificate and key rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's TLS material: the rustls config and the certificate in PEM
/// (so tests and `--tls-cert-out` can hand it to clients as a trust root).
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// Shared, immutable rustls server configuration.
    pub config: Arc<ServerConfig>,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
}

impl TlsMaterial {
    /// Loads a certificate chain and key from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let cert_bytes = read(cert)?;
        let key_bytes = read(key)?;
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_bytes[..])
            .collect::<Result<_, _>>()
            .map_err(|source| TlsError::Read {
                path: cert.display().to_string(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert.display().to_string(),
            });
        }
        let key_der = rustls_pemfile::private_key(&mut &key_bytes[..])
            .map_err(|source| TlsError::Read {
                path: key.display().to_string(),
                source,
            })?
            .ok_or_else(|| TlsError::NoKey {
                path: key.display().to_string(),
            })?;
        let cert_pem = String::from_utf8_lossy(&cert_bytes).into_owned();
        Ok(TlsMaterial {
            config: server_config(certs, key_der)?,
            cert_pem,
        })
    }

    /// Generates a self-signed certificate for `names` (e.g. `localhost`).
    pub fn self_signed(names: &[String]) -> Result<TlsMaterial, TlsError> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        Ok(TlsMaterial {
            config: server_config(vec![ck.cert.der().clone()], key)?,
            cert_pem: ck.cert.pem(),
        })
    }

    /// Testing: a self-signed certificate whose handshakes are signed with
    /// another key, so every handshake fails at the client's signature
    /// check (`--tls-broken`).
    pub fn broken(names: &[String]) -> Result<TlsMaterial, TlsError> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let other = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
        let provider = rustls::crypto::ring::default_provider();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(other.serialize_der()));
        let signer = provider.key_provider.load_private_key(key)?;
        let certified = rustls::sign::CertifiedKey::new(vec![ck.cert.der().clone()], signer);
        let config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(Arc::new(certified))));
        Ok(TlsMaterial {
            config: Arc::new(config),
            cert_pem: ck.cert.pem(),
        })
    }
}

/// Always the same certified key, unchecked (see [`TlsMaterial::broken`]).
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// One connection's TLS session and its ciphertext buffers.
pub struct TlsState {
    conn: rustls::ServerConnection,
    cipher_in: Box<[u8]>,
    cipher_out: Vec<u8>,
    handshake_done: bool,
}

/// What a TLS read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRead {
    /// `n` plaintext bytes were written into the caller's buffer.
    Data(usize),
    /// The peer closed (close_notify or TCP end of stream).
    Closed,
}

impl TlsState {
    /// Starts a server-side TLS session.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsState, rustls::Error> {
        Ok(TlsState {
            conn: rustls::ServerConnection::new(config)?,
            cipher_in: vec![0; TLS_READ_BYTES].into_boxed_slice(),
            cipher_out: Vec::with_capacity(TLS_READ_BYTES),
            handshake_done: false,
        })
    }

    /// Whether the handshake has completed.
    pub fn handshake_done(&self) -> bool {
        self.handshake_done
    }

    /// Runs the handshake to completion. `Ok(false)`: the peer closed first.
    pub async fn handshake(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
        while self.conn.is_handshaking() {
            self.flush(stream).await?;
            let n = stream.read(&mut self.cipher_in).await?;
            if n == 0 {
                return Ok(false);
            }
            self.absorb(stream, n).await?;
        }
        self.flush(stream).await?;
        self.handshake_done = true;
        Ok(true)
    }

    async fn absorb(&mut self, stream: &mut TcpStream, n: usize) -> io::Result<()> {
        let mut input = &self.cipher_in[..n];
        while !input.is_empty() {
            self.conn.read_tls(&mut input)?;
            if let Err(e) = self.conn.process_new_packets() {
                // Send the alert rustls queued, then fail the connection.
                let _ = self.flush(stream).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
        Ok(())
    }

    /// Reads plaintext into `buf`, driving the handshake as needed.
    /// Returns `Ok(true)` in `.1` the first time the handshake completes.
    pub async fn read(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut [u8],
    ) -> io::Result<(TlsRead, bool)> {
        let mut just_finished = false;
        loop {
            match self.conn.reader().read(buf) {
                Ok(0) if !buf.is_empty() => return Ok((TlsRead::Closed, just_finished)),
                Ok(n) => return Ok((TlsRead::Data(n), just_finished)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Handshake messages or alerts rustls wants to send first.
            self.flush(stream).await?;
            let n = stream.read(&mut self.cipher_in).await?;
            if n == 0 {
                return Ok((TlsRead::Closed, just_finished));
            }
            self.absorb(stream, n).await?;
            if !self.handshake_done && !self.conn.is_handshaking() {
                self.handshake_done = true;
                just_finished = true;
            }
            self.flush(stream).await?;
        }
    }

    /// Encrypts `data` and writes it to the socket.
    pub async fn write_all(&mut self, stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(data)?;
        self.flush(stream).await
    }

    /// Sends close_notify (best effort).
    pub async fn close(&mut self, stream: &mut TcpStream) {
        self.conn.send_close_notify();
        let _ = self.flush(stream).await;
    }

    async fn flush(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        while self.conn.wants_write() {
            self.cipher_out.clear();
            self.conn.write_tls(&mut self.cipher_out)?;
            stream.write_all(&self.cipher_out).await?;
        }
        Ok(())
    }
}
