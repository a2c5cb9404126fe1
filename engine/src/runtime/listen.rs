//! Binding the injection sockets on the main thread, before any shard starts:
//! a bad address or a port in use fails at once with the address named, and
//! port 0 on the shared listener resolves to one port every shard shares.

// std
use std::io;
use std::net::{SocketAddr, TcpListener};

// external
use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections per listening socket.
pub const BACKLOG: i32 = 1024;

/// One shard's listening sockets.
#[derive(Debug)]
pub struct ShardListeners {
    /// Its member of the shared SO_REUSEPORT group on `inject.listen`.
    pub shared: TcpListener,
    /// Its own port (`shard_port_base + shard`), when configured.
    pub own: Option<TcpListener>,
}

impl ShardListeners {
    /// Every socket, shared first.
    pub fn into_vec(self) -> Vec<TcpListener> {
        let mut v = vec![self.shared];
        v.extend(self.own);
        v
    }

    /// Rebuilds from [`ShardListeners::into_vec`]'s order.
    pub fn from_vec(mut v: Vec<TcpListener>) -> Option<ShardListeners> {
        if v.is_empty() || v.len() > 2 {
            return None;
        }
        let own = if v.len() == 2 { v.pop() } else { None };
        let shared = v.pop()?;
        Some(ShardListeners { shared, own })
    }
}

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source} (is the port in use, or the address not local?)")]
pub struct ListenError {
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// Port of shard `index` when per-shard listeners start at `base`.
pub fn shard_port(base: u16, index: u32) -> Option<u16> {
    u16::try_from(u32::from(base) + index).ok()
}

/// Binds the sockets of `shards` shards: every shard joins the SO_REUSEPORT
/// group on `listen` (the kernel spreads connections across them), and with
/// `port_base` shard `n` also listens alone on `port_base + n` at the same
/// address.
pub fn bind_all(
    listen: SocketAddr,
    port_base: Option<u16>,
    shards: u32,
) -> Result<Vec<ShardListeners>, ListenError> {
    let mut out = Vec::with_capacity(shards as usize);
    let mut shared_addr = listen;
    for index in 0..shards {
        let shared = bind(shared_addr, true)?;
        if shared_addr.port() == 0 {
            shared_addr = shared.local_addr().map_err(|source| ListenError {
                addr: listen,
                source,
            })?;
        }
        let own = match port_base {
            Some(base) => {
                let port = shard_port(base, index).ok_or_else(|| ListenError {
                    addr: listen,
                    source: io::Error::other(format!(
                        "shard_port_base {base} + shard {index} is beyond port 65535"
                    )),
                })?;
                let mut addr = listen;
                addr.set_port(port);
                Some(bind(addr, false)?)
            }
            None => None,
        };
        out.push(ShardListeners { shared, own });
    }
    Ok(out)
}

fn bind(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener, ListenError> {
    let err = |source| ListenError { addr, source };
    let sock =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    if reuse_port {
        sock.set_reuse_port(true).map_err(err)?;
    }
    sock.set_nodelay(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(BACKLOG).map_err(err)?;
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_port_zero_resolves_once_and_own_ports_follow_the_base() {
        let base = {
            // A free pair of consecutive ports is likely near a fresh one.
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let Ok(sets) = bind_all(listen, Some(base), 2) else {
            // The neighbour port was taken meanwhile: nothing to check.
            return;
        };
        let a = sets[0].shared.local_addr().expect("addr");
        let b = sets[1].shared.local_addr().expect("addr");
        assert_ne!(a.port(), 0);
        assert_eq!(a, b, "every shard shares one port");
        let own: Vec<u16> = sets
            .iter()
            .map(|s| {
                s.own
                    .as_ref()
                    .expect("own")
                    .local_addr()
                    .expect("addr")
                    .port()
            })
            .collect();
        assert_eq!(own, vec![base, base + 1]);
        // A second process-level bind of an own port fails: it is exclusive.
        assert!(bind_all(
            format!("127.0.0.1:{}", own[0]).parse().expect("addr"),
            None,
            1
        )
        .is_err());
    }

    #[test]
    fn shard_port_overflow_is_refused() {
        assert_eq!(shard_port(65535, 0), Some(65535));
        assert_eq!(shard_port(65535, 1), None);
    }
}
