//! TLS for both sides of the engine (rustls 0.23, ring provider): the
//! injection listener's certificate, the delivery client's verifiers, and
//! [`Tls`], the adapter that drives a rustls connection over a glommio
//! `TcpStream` (the approach of `sluice-sink`'s `tls.rs`).
//!
//! rustls does no I/O: [`Tls`] moves ciphertext between the socket and
//! rustls through two buffers allocated once per connection. Reading is
//! split so that the only awaited step is the raw socket read
//! ([`Tls::read_socket`]); decrypting ([`Tls::absorb`]) and taking plaintext
//! ([`Tls::take_plaintext`]) are synchronous. A driver that races a read
//! against timers (injection) therefore never loses ciphertext when the
//! read future is dropped.
//!
//! Outbound verification: the handshake accepts any certificate but still
//! checks the handshake signatures (the server holds the certificate's
//! key); then the chain is verified against WebPKI roots (plus `[delivery]
//! tls_ca_file`) for each MX name of the site (or the route's address),
//! because which of a site's names an address belongs to is not known.
//! `required-verified` closes the connection before EHLO when none
//! verifies; `opportunistic` and `required` go on (RFC 7435) and the
//! delivery log says whether the name was verified.

// std
use std::fmt;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

// external
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sluice_shaping::config::TlsPolicy;

/// Ciphertext read from the socket at a time. At most one TLS record's
/// plaintext (2^14 bytes, RFC 8446 §5.1) comes out of one read, so rustls's
/// received-plaintext buffer (16 KiB) never overflows while the driver
/// drains plaintext before reading again.
pub const TLS_READ_BYTES: usize = 16 * 1024;
const _: () = assert!(TLS_READ_BYTES <= 1 << 14);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a PEM certificate chain and key into a server config.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let cert_bytes = read(cert)?;
    let key_bytes = read(key)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_bytes[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_bytes[..])
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| {
            format!(
                "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                key.display()
            )
        })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("certificate and key rejected: {e}"))?;
    Ok(Arc::new(config))
}

/// The delivery client's TLS settings, built once from the configuration
/// and shared (read-only) by every shard.
#[derive(Clone)]
pub struct OutboundTls {
    /// Policy for destinations whose shaping rules say nothing
    /// (`[delivery] tls`).
    pub default_policy: TlsPolicy,
    /// Accepts any certificate during the handshake, checks handshake
    /// signatures; the chain is verified after it ([`OutboundTls::verifies`])
    /// against every MX name of the site.
    pub any_certificate: Arc<ClientConfig>,
    verifier: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for OutboundTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundTls")
            .field("default_policy", &self.default_policy)
            .finish_non_exhaustive()
    }
}

impl OutboundTls {
    /// WebPKI roots plus the certificates of `ca_file` (PEM), if any.
    pub fn new(default_policy: TlsPolicy, ca_file: Option<&Path>) -> Result<OutboundTls, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut &bytes[..]) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!("{}: no PEM certificate", path.display()));
            }
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| e.to_string())?;
        let base = || {
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())
        };
        let any_certificate = base()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(Arc::clone(&verifier))))
            .with_no_client_auth();
        Ok(OutboundTls {
            default_policy,
            any_certificate: Arc::new(any_certificate),
            verifier,
        })
    }

    /// `[delivery] tls` and `tls_ca_file`, validated (problems through `bad`).
    pub fn from_raw(
        raw: &crate::config::RawDelivery,
        base: Option<&Path>,
        bad: &mut impl FnMut(&str, String),
    ) -> OutboundTls {
        let policy = match raw.tls.as_deref().map(parse_policy) {
            None => TlsPolicy::Opportunistic,
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                bad("delivery.tls", e);
                TlsPolicy::Opportunistic
            }
        };
        let ca = raw.tls_ca_file.as_ref().map(|p| match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p.clone(),
        });
        match OutboundTls::new(policy, ca.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                bad("delivery.tls_ca_file", e);
                // Invariant: the WebPKI roots alone always build.
                OutboundTls::new(policy, None).expect("WebPKI roots build a verifier")
            }
        }
    }

    /// Whether the peer's chain verifies for `name` (after a handshake that
    /// accepted any certificate).
    pub fn verifies(&self, tls: &Tls, name: &ServerName<'_>) -> bool {
        let Some(certs) = tls.conn.peer_certificates() else {
            return false;
        };
        let Some((leaf, intermediates)) = certs.split_first() else {
            return false;
        };
        self.verifier
            .verify_server_cert(leaf, intermediates, name, &[], UnixTime::now())
            .is_ok()
    }
}

/// The name a certificate is checked against: the MX host name when known,
/// else the address the route names.
pub fn server_name(host: Option<&str>, ip: IpAddr) -> ServerName<'static> {
    host.and_then(|h| ServerName::try_from(h.trim_end_matches('.').to_string()).ok())
        .unwrap_or(ServerName::IpAddress(ip.into()))
}

/// Accepts any certificate chain, but checks that the server holds the key
/// of the certificate it sent (the handshake signatures).
#[derive(Debug)]
struct AnyCertificate(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What a finished handshake negotiated, for the delivery log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: &'static str,
    /// The IANA cipher suite name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: &'static str,
    /// The name the certificate was checked against.
    pub peer_name: String,
    /// Whether the chain verified for that name.
    pub verified: bool,
}

impl TlsInfo {
    /// The delivery log's view of it.
    pub fn log(&self) -> crate::log::LogTls<'_> {
        crate::log::LogTls {
            tls_version: Some(self.version),
            tls_cipher: Some(self.cipher),
            tls_peer_name: Some(&self.peer_name),
            tls_verified: Some(self.verified),
        }
    }
}

/// One connection's TLS session and its ciphertext buffers.
pub struct Tls {
    conn: rustls::Connection,
    cipher_in: Box<[u8]>,
    cipher_out: Vec<u8>,
    /// The peer closed the socket (read returned 0).
    eof: bool,
}

impl Tls {
    /// A server-side session.
    pub fn server(config: Arc<ServerConfig>) -> Result<Tls, rustls::Error> {
        Ok(Tls::with(rustls::ServerConnection::new(config)?.into()))
    }

    /// A client-side session for `name`.
    pub fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Tls, rustls::Error> {
        Ok(Tls::with(
            rustls::ClientConnection::new(config, name)?.into(),
        ))
    }

    fn with(conn: rustls::Connection) -> Tls {
        Tls {
            conn,
            cipher_in: vec![0; TLS_READ_BYTES].into_boxed_slice(),
            cipher_out: Vec::with_capacity(TLS_READ_BYTES + 512),
            eof: false,
        }
    }

    /// Runs the handshake to completion. The peer closing first is an
    /// `UnexpectedEof` error; a TLS failure is `InvalidData` (its alert is
    /// sent first).
    pub async fn handshake(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        while self.conn.is_handshaking() {
            self.flush(stream).await?;
            if !self.conn.is_handshaking() {
                break;
            }
            let n = self.read_socket(stream).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during the TLS handshake",
                ));
            }
            if let Err(e) = self.absorb(n) {
                let _ = self.flush(stream).await;
                return Err(e);
            }
        }
        self.flush(stream).await
    }

    /// The negotiated parameters (empty strings before the handshake).
    pub fn info(&self, peer_name: String, verified: bool) -> TlsInfo {
        TlsInfo {
            version: self
                .conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or(""),
            cipher: self
                .conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or(""),
            peer_name,
            verified,
        }
    }

    /// Reads ciphertext into the connection's buffer; cancel-safe (nothing
    /// is consumed until [`Tls::absorb`]). 0 means end of stream.
    pub async fn read_socket(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        let n = stream.read(&mut self.cipher_in).await?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Decrypts the `n` bytes [`Tls::read_socket`] read.
    pub fn absorb(&mut self, n: usize) -> io::Result<()> {
        let mut input = &self.cipher_in[..n];
        while !input.is_empty() {
            self.conn.read_tls(&mut input)?;
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Ok(())
    }

    /// Plaintext already decrypted: `Some(n)` bytes copied into `buf`
    /// (`Some(0)`: the peer closed), `None` when more ciphertext is needed.
    pub fn take_plaintext(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        debug_assert!(!buf.is_empty());
        match self.conn.reader().read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(self.eof.then_some(0)),
            // TCP closed without close_notify: the end of the stream here.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }

    /// Reads plaintext into `buf`; 0 means the peer closed.
    pub async fn read(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(n) = self.take_plaintext(buf)? {
                return Ok(n);
            }
            self.flush(stream).await?;
            let n = self.read_socket(stream).await?;
            if n == 0 {
                continue;
            }
            if let Err(e) = self.absorb(n) {
                let _ = self.flush(stream).await;
                return Err(e);
            }
        }
    }

    /// Encrypts `data` and writes it to the socket. rustls copies the
    /// plaintext into records (bounded by its buffer limit, so a large body
    /// goes out in pieces) and `write_tls` into our ciphertext buffer.
    pub async fn write_all(&mut self, stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
        self.queue(stream, data).await?;
        self.flush(stream).await
    }

    /// Encrypts `data` into rustls's outgoing records without sending
    /// them, except when its buffer is full: a batch of commands and
    /// bodies then leaves in one socket write at the next [`Tls::flush`]
    /// instead of one per piece.
    pub async fn queue(&mut self, stream: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.conn.writer().write(data)?;
            data = &data[n..];
            if data.is_empty() {
                break;
            }
            if n == 0 && !self.conn.wants_write() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "TLS writer accepted nothing",
                ));
            }
            // rustls's buffer is full: send what it holds, then go on.
            self.flush(stream).await?;
        }
        Ok(())
    }

    /// Writes every TLS record rustls has queued.
    pub async fn flush(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        while self.conn.wants_write() {
            self.cipher_out.clear();
            self.conn.write_tls(&mut self.cipher_out)?;
            stream.write_all(&self.cipher_out).await?;
        }
        Ok(())
    }

    /// Sends close_notify (best effort).
    pub async fn close(&mut self, stream: &mut TcpStream) {
        self.conn.send_close_notify();
        let _ = self.flush(stream).await;
    }
}

/// Parses a policy name of `[delivery] tls` or a shaping rule.
pub fn parse_policy(text: &str) -> Result<TlsPolicy, String> {
    TlsPolicy::parse(text).ok_or_else(|| {
        format!("`{text}`: expected \"disabled\", \"opportunistic\", \"required\" or \"required-verified\"")
    })
}
