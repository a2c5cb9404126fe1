//! The byte pipe of one connection: a glommio TCP stream, optionally wrapped
//! in rustls after STARTTLS. It only moves bytes; every SMTP decision is the
//! protocol crate's.
//!
//! Buffers are allocated once per connection. Reads go into `rx_wire`; with
//! TLS the plaintext is appended to the caller's buffer. glommio's stream
//! reads are readiness based (a `recv` once the socket is readable), so a
//! pending `recv` future can be dropped (for a timer) without losing bytes.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// Wire read buffer size: several pipelined replies or TLS records per read.
pub const RX_BYTES: usize = 16 * 1024;

/// The connection's byte pipe.
pub struct Wire {
    stream: TcpStream,
    tls: Option<Box<ClientConnection>>,
    rx_wire: Vec<u8>,
    tx_wire: Vec<u8>,
}

/// Why a wire operation failed.
#[derive(Debug)]
pub enum WireError {
    /// Socket error.
    Io(io::Error),
    /// TLS failure.
    Tls(rustls::Error),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

impl Wire {
    /// Connects with a timeout.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Wire> {
        let stream = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(io::Error::from)?;
        // Small writes (pipelined commands) must not wait for Nagle.
        stream.set_nodelay(true).map_err(io::Error::from)?;
        Ok(Wire {
            stream,
            tls: None,
            rx_wire: vec![0; RX_BYTES],
            tx_wire: Vec::with_capacity(RX_BYTES + 1024),
        })
    }

    /// True once STARTTLS completed.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sends `plain` (encrypted when TLS is on), waiting until the kernel took all of it.
    pub async fn send(&mut self, plain: &[u8]) -> Result<(), WireError> {
        match self.tls.as_mut() {
            None => self.stream.write_all(plain).await?,
            Some(tls) => {
                tls.writer().write_all(plain)?;
                self.tx_wire.clear();
                while tls.wants_write() {
                    tls.write_tls(&mut self.tx_wire)?;
                }
                self.stream.write_all(&self.tx_wire).await?;
            }
        }
        Ok(())
    }

    /// Waits for bytes and appends the plaintext to `out`; returns how many
    /// were appended, 0 at end of stream.
    pub async fn recv(&mut self, out: &mut Vec<u8>) -> Result<usize, WireError> {
        loop {
            let n = self.stream.read(&mut self.rx_wire).await?;
            let Some(tls) = self.tls.as_mut() else {
                out.extend_from_slice(&self.rx_wire[..n]);
                return Ok(n);
            };
            if n == 0 {
                return Ok(0);
            }
            let before = out.len();
            let mut input = &self.rx_wire[..n];
            while !input.is_empty() {
                tls.read_tls(&mut input)?;
                let state = tls.process_new_packets().map_err(WireError::Tls)?;
                let mut avail = state.plaintext_bytes_to_read();
                while avail > 0 {
                    let start = out.len();
                    out.resize(start + avail, 0);
                    let got = tls.reader().read(&mut out[start..])?;
                    out.truncate(start + got);
                    avail -= got.min(avail);
                    if got == 0 {
                        break;
                    }
                }
            }
            // Post-handshake records (session tickets) may need an answer.
            if tls.wants_write() {
                self.tx_wire.clear();
                while tls.wants_write() {
                    tls.write_tls(&mut self.tx_wire)?;
                }
                self.stream.write_all(&self.tx_wire).await?;
            }
            if out.len() > before {
                return Ok(out.len() - before);
            }
            // Only TLS records without application data: read again.
        }
    }

    /// Runs the TLS handshake (after the server's `220` to STARTTLS).
    pub async fn start_tls(
        &mut self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<(), WireError> {
        let mut tls = Box::new(ClientConnection::new(config, name).map_err(WireError::Tls)?);
        while tls.is_handshaking() {
            if tls.wants_write() {
                self.tx_wire.clear();
                while tls.wants_write() {
                    tls.write_tls(&mut self.tx_wire)?;
                }
                self.stream.write_all(&self.tx_wire).await?;
                continue;
            }
            let n = self.stream.read(&mut self.rx_wire).await?;
            if n == 0 {
                return Err(WireError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed during the TLS handshake",
                )));
            }
            let mut input = &self.rx_wire[..n];
            while !input.is_empty() {
                tls.read_tls(&mut input)?;
                tls.process_new_packets().map_err(WireError::Tls)?;
            }
        }
        if tls.wants_write() {
            self.tx_wire.clear();
            while tls.wants_write() {
                tls.write_tls(&mut self.tx_wire)?;
            }
            self.stream.write_all(&self.tx_wire).await?;
        }
        self.tls = Some(tls);
        Ok(())
    }

    /// Closes the connection (TLS close_notify first when on).
    pub async fn close(mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            self.tx_wire.clear();
            while tls.wants_write() {
                if tls.write_tls(&mut self.tx_wire).is_err() {
                    break;
                }
            }
            let _ = self.stream.write_all(&self.tx_wire).await;
        }
        let _ = self.stream.close().await;
    }
}
