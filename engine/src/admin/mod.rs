//! The admin listener: Prometheus `/metrics` and a JSON admin API over
//! one small HTTP/1.1 server on its own thread, restricted to configured
//! networks.
//!
//! Shards are single-threaded and share nothing, so the admin thread
//! never reads shard state directly: it sends a [`mailbox::Command`] to
//! each shard's bounded mailbox and waits (bounded) for the reply; a task
//! on each shard drains its mailbox off the hot path. Admin mailboxes are
//! the one exception to "only shaping's leases cross shard boundaries":
//! they carry operator commands and counter snapshots, never message
//! bytes, and nothing on the delivery path waits on them.

pub mod mailbox;
pub mod server;
pub mod state;

// std
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

// external
use ipnet::IpNet;
use serde::Deserialize;

/// `[admin]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `ADDR:PORT` of the HTTP listener, or `"off"` (default
    /// `"127.0.0.1:8025"`).
    pub listen: Option<String>,
    /// Networks allowed to use it (default loopback only).
    pub allow: Option<Vec<String>>,
}

/// Validated `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where to listen; `None`: off.
    pub listen: Option<SocketAddr>,
    /// Who may connect.
    pub allow: Vec<IpNet>,
}

/// The default admin address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8025";

impl AdminSettings {
    /// Validates `[admin]`, reporting problems under `admin.KEY`.
    pub fn from_raw(raw: &RawAdmin, bad: &mut dyn FnMut(&str, String)) -> AdminSettings {
        let listen = match raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN) {
            "off" => None,
            text => match text.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(e) => {
                    bad(
                        "admin.listen",
                        format!("`{text}`: {e}; expected ADDR:PORT or \"off\""),
                    );
                    None
                }
            },
        };
        let mut allow = Vec::new();
        let default_allow = vec!["127.0.0.0/8".to_string(), "::1/128".to_string()];
        for (i, n) in raw
            .allow
            .as_ref()
            .unwrap_or(&default_allow)
            .iter()
            .enumerate()
        {
            let parsed = n
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => allow.push(net),
                Err(_) => bad(
                    &format!("admin.allow[{i}]"),
                    format!("`{n}`: expected an address or CIDR like 127.0.0.0/8"),
                ),
            }
        }
        AdminSettings { listen, allow }
    }

    /// Whether a client at `ip` may use the admin listener.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// One mailbox per shard: the senders for the admin thread, the receivers
/// for the shards.
pub fn mailboxes(
    shards: u32,
) -> (
    Vec<SyncSender<mailbox::Request>>,
    Vec<Receiver<mailbox::Request>>,
) {
    (0..shards)
        .map(|_| sync_channel(mailbox::MAILBOX_CAPACITY))
        .unzip()
}

/// The running admin listener.
pub struct Admin {
    /// The address it listens on.
    pub addr: SocketAddr,
    thread: std::thread::JoinHandle<()>,
}

impl Admin {
    /// Binds `[admin] listen` and starts the server thread; `None` when
    /// the listener is off or cannot be bound (said on stderr: delivery
    /// does not depend on it).
    pub fn start(
        settings: &AdminSettings,
        shards: Vec<SyncSender<mailbox::Request>>,
        bounce_rules: Option<PathBuf>,
        shaping_rules: Option<PathBuf>,
        stop: Arc<AtomicBool>,
        state: state::Store,
    ) -> Option<Admin> {
        let listen = settings.listen?;
        let listener = match std::net::TcpListener::bind(listen) {
            Ok(l) => l,
            Err(e) => {
                log::error!(
                    "admin listener {listen}: {e}; running without /metrics and the admin API \
                     (set [admin] listen to a free address, or \"off\")"
                );
                return None;
            }
        };
        let addr = listener.local_addr().unwrap_or(listen);
        let server = server::Server {
            settings: settings.clone(),
            shards,
            bounce_rules,
            shaping_rules,
            stop,
            state,
        };
        let thread = std::thread::Builder::new()
            .name("sluice-admin".into())
            .spawn(move || {
                // Off the shard CPUs when there are spare ones.
                crate::runtime::helpers::place_current_thread();
                server.run(listener)
            })
            .ok()?;
        Some(Admin { addr, thread })
    }

    /// Waits for the thread (after the stop flag was set).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}
