//! The operator's standing orders on disk: suspensions (of destinations
//! and tenants), timed bounces and reroutes, kept in
//! `<spool dir>/admin-state.json` so that a restart does not silently
//! resume a suspended destination or tenant.
//!
//! The admin thread owns the file: after every order a shard carried out
//! it updates its copy ([`Store::record`]) and rewrites the file
//! atomically (temporary file, fsync, rename, directory fsync; mode
//! 0600). At start the engine reads it once ([`load`]) and every shard
//! applies it to its queues after restoring the spool and before delivery
//! starts; orders whose time is up are dropped then.
//!
//! A file that cannot be read or parsed is not fatal: the engine says so
//! on stderr, naming the path, moves it aside (`admin-state.json.bad`, so
//! the next write does not destroy it) and starts without standing
//! orders. Refusing to start would stop all mail over a file the operator
//! can fix while mail flows; the log line says which orders to re-issue.

// std
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

// external
use serde::{Deserialize, Serialize};

// crate
use super::mailbox::{Command, Suspension};

/// The file's name in the spool directory.
pub const FILE_NAME: &str = "admin-state.json";
/// The format version written.
pub const VERSION: u32 = 1;
/// Largest state file read (a corrupt or foreign file is not slurped).
const FILE_BYTES_MAX: u64 = 16 << 20;

/// Every standing order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminState {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Suspended destinations (recipient domain, lower-cased).
    #[serde(default)]
    pub suspended: BTreeMap<String, Suspension>,
    /// Suspended tenants.
    #[serde(default)]
    pub suspended_tenants: BTreeMap<String, Suspension>,
    /// Queues bounced for a while (`bounce --for`): new arrivals bounce.
    #[serde(default)]
    pub bouncing: BTreeMap<String, Suspension>,
    /// Rerouted destinations and their next hops.
    #[serde(default)]
    pub rerouted: BTreeMap<String, Vec<SocketAddr>>,
}

impl AdminState {
    /// Drops the orders whose time is up at `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        let live = |s: &Suspension| s.until_ms.is_none_or(|u| u > now_ms);
        self.suspended.retain(|_, s| live(s));
        self.suspended_tenants.retain(|_, s| live(s));
        self.bouncing.retain(|_, s| live(s));
    }

    /// Whether there is no order at all.
    pub fn is_empty(&self) -> bool {
        self.suspended.is_empty()
            && self.suspended_tenants.is_empty()
            && self.bouncing.is_empty()
            && self.rerouted.is_empty()
    }

    /// Updates the state after every shard carried out `command` at
    /// `now_ms`; returns whether it changed.
    pub fn apply(&mut self, command: &Command, now_ms: u64) -> bool {
        let order = |who: &str, why: &str, until_ms: Option<u64>| Suspension {
            who: who.to_string(),
            why: why.to_string(),
            since_ms: now_ms,
            until_ms,
        };
        match command {
            Command::Suspend {
                domain,
                who,
                why,
                until_ms,
            } => {
                self.suspended
                    .insert(domain.to_ascii_lowercase(), order(who, why, *until_ms));
            }
            Command::Resume { domain } => {
                return self
                    .suspended
                    .remove(&domain.to_ascii_lowercase())
                    .is_some()
            }
            Command::SuspendTenant {
                tenant,
                who,
                why,
                until_ms,
            } => {
                self.suspended_tenants
                    .insert(tenant.clone(), order(who, why, *until_ms));
            }
            Command::ResumeTenant { tenant } => {
                return self.suspended_tenants.remove(tenant).is_some()
            }
            Command::Bounce {
                domain,
                who,
                why,
                until_ms: Some(until),
            } => {
                self.bouncing
                    .insert(domain.to_ascii_lowercase(), order(who, why, Some(*until)));
            }
            Command::Reroute { domain, hosts } if hosts.is_empty() => {
                return self.rerouted.remove(&domain.to_ascii_lowercase()).is_some()
            }
            Command::Reroute { domain, hosts } => {
                self.rerouted
                    .insert(domain.to_ascii_lowercase(), hosts.clone());
            }
            _ => return false,
        }
        true
    }
}

/// The state file's path under `spool_dir`.
pub fn path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(FILE_NAME)
}

/// Why the state file was not used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It is not a state file of this version.
    #[error("{path}: not a valid admin state file: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Reads the state file (no file: no orders), dropping orders whose time
/// is up at `now_ms`.
pub fn read(spool_dir: &Path, now_ms: u64) -> Result<AdminState, StateError> {
    let path = path(spool_dir);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AdminState::default()),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, FILE_BYTES_MAX), &mut text).map_err(
        |source| StateError::Read {
            path: path.clone(),
            source,
        },
    )?;
    let mut state: AdminState = serde_json::from_slice(&text).map_err(|e| StateError::Parse {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if state.version != VERSION {
        return Err(StateError::Parse {
            path,
            reason: format!("version {} (this engine reads {VERSION})", state.version),
        });
    }
    state.prune(now_ms);
    Ok(state)
}

/// Reads the state file at start; a bad one is reported on stderr, moved
/// aside and ignored (see the module docs). Never fails.
pub fn load(spool_dir: &Path, now_ms: u64) -> AdminState {
    match read(spool_dir, now_ms) {
        Ok(state) => {
            if !state.is_empty() {
                log::info!(
                    "admin: {} standing order(s) from {}: {} suspended destination(s), {} suspended tenant(s), {} bouncing queue(s), {} reroute(s)",
                    state.suspended.len()
                        + state.suspended_tenants.len()
                        + state.bouncing.len()
                        + state.rerouted.len(),
                    path(spool_dir).display(),
                    state.suspended.len(),
                    state.suspended_tenants.len(),
                    state.bouncing.len(),
                    state.rerouted.len()
                );
            }
            state
        }
        Err(e) => {
            let file = path(spool_dir);
            let aside = file.with_extension("json.bad");
            let moved = std::fs::rename(&file, &aside)
                .map(|()| format!("moved to {}", aside.display()))
                .unwrap_or_else(|e| format!("could not be moved aside: {e}"));
            log::error!(
                "admin: {e}; STARTING WITHOUT STANDING ORDERS: suspensions, timed bounces and \
                 reroutes given before this start are NOT in force; re-issue them \
                 (`sluice suspend`, ...). The bad file was {moved}."
            );
            AdminState::default()
        }
    }
}

/// Writes `state` to the file atomically: a temporary file (mode 0600)
/// written and fsynced, renamed over the file, then the directory fsynced.
pub fn save(spool_dir: &Path, state: &AdminState) -> std::io::Result<()> {
    let file = path(spool_dir);
    let tmp = spool_dir.join(format!("{FILE_NAME}.tmp"));
    let mut text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    text.push(b'\n');
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &file)?;
    std::fs::File::open(spool_dir)?.sync_all()
}

/// The admin thread's copy of the state and where it is written.
#[derive(Debug)]
pub struct Store {
    /// The spool directory holding the file.
    pub dir: PathBuf,
    /// The orders in force.
    pub state: RefCell<AdminState>,
}

impl Store {
    /// A store for `dir`, starting from `state`.
    pub fn new(dir: PathBuf, state: AdminState) -> Store {
        Store {
            dir,
            state: RefCell::new(state),
        }
    }

    /// The orders in force at `now_ms`, for the queue summary.
    pub fn orders_json(&self, now_ms: u64) -> serde_json::Value {
        let mut state = self.state.borrow().clone();
        state.prune(now_ms);
        serde_json::json!({
            "suspended": state.suspended,
            "suspended_tenants": state.suspended_tenants,
            "bouncing": state.bouncing,
            "rerouted": state.rerouted,
        })
    }

    /// Records `command` (carried out by every shard) and rewrites the
    /// file if the orders changed. An error is said on stderr and
    /// returned: the order is in force but would not survive a restart.
    pub fn record(&self, command: &Command, now_ms: u64) -> Result<(), String> {
        let mut state = self.state.borrow_mut();
        let pruned_before = state.clone();
        state.prune(now_ms);
        if !state.apply(command, now_ms) && *state == pruned_before {
            return Ok(());
        }
        state.version = VERSION;
        save(&self.dir, &state).map_err(|e| {
            let msg = format!(
                "{}: cannot write: {e}; the order is in force but will not survive a restart",
                path(&self.dir).display()
            );
            log::error!("admin: {msg}");
            msg
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn suspend(domain: &str, until_ms: Option<u64>) -> Command {
        Command::Suspend {
            domain: domain.into(),
            who: "alice".into(),
            why: "why".into(),
            until_ms,
        }
    }

    #[test]
    fn orders_round_trip_through_the_file_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf(), AdminState::default());
        store.record(&suspend("A.test", None), 1_000).unwrap();
        store
            .record(&suspend("timed.test", Some(5_000)), 1_000)
            .unwrap();
        let t = Command::SuspendTenant {
            tenant: "acme".into(),
            who: "bob".into(),
            why: "abuse".into(),
            until_ms: None,
        };
        store.record(&t, 1_000).unwrap();
        let hop: SocketAddr = "127.0.0.1:2600".parse().unwrap();
        let r = Command::Reroute {
            domain: "r.test".into(),
            hosts: vec![hop],
        };
        store.record(&r, 1_000).unwrap();
        let b = Command::Bounce {
            domain: "gone.test".into(),
            who: "c".into(),
            why: "d".into(),
            until_ms: Some(9_000),
        };
        store.record(&b, 1_000).unwrap();
        let file = path(dir.path());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = read(dir.path(), 2_000).unwrap();
        assert_eq!(back, *store.state.borrow());
        assert_eq!(back.suspended["a.test"].who, "alice");
        assert_eq!(back.suspended_tenants["acme"].why, "abuse");
        assert_eq!(back.rerouted["r.test"], vec![hop]);
        // Later, the timed ones are gone.
        let later = read(dir.path(), 10_000).unwrap();
        assert!(!later.suspended.contains_key("timed.test"));
        assert!(later.bouncing.is_empty());
        assert!(later.suspended.contains_key("a.test"));
        // Resuming removes.
        store
            .record(
                &Command::ResumeTenant {
                    tenant: "acme".into(),
                },
                3_000,
            )
            .unwrap();
        assert!(read(dir.path(), 3_000)
            .unwrap()
            .suspended_tenants
            .is_empty());
        assert!(!dir.path().join(format!("{FILE_NAME}.tmp")).exists());
    }

    #[test]
    fn a_bad_file_is_moved_aside_and_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), 0), AdminState::default(), "no file");
        std::fs::write(path(dir.path()), b"{\"version\": 1, \"suspended\": [").unwrap();
        let err = read(dir.path(), 0).unwrap_err();
        assert!(err.to_string().contains(FILE_NAME), "{err}");
        assert_eq!(load(dir.path(), 0), AdminState::default());
        assert!(!path(dir.path()).exists());
        assert!(dir.path().join("admin-state.json.bad").exists());
        std::fs::write(path(dir.path()), b"{\"version\": 99}").unwrap();
        assert!(read(dir.path(), 0).unwrap_err().to_string().contains("99"));
    }
}
