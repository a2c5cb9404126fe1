//! The admin HTTP/1.1 server: one thread, one connection at a time
//! (operators and a Prometheus scraper, not traffic), every read and
//! write bounded by [`IO_TIMEOUT`], requests bounded by
//! [`REQUEST_BYTES_MAX`]. Clients outside `[admin] allow` get `403`.
//!
//! Routes (JSON unless noted):
//! - `GET /metrics`: Prometheus text format 0.0.4;
//! - `GET /api/queues`: totals per shard and in all;
//! - `GET /api/top?limit=N`: destinations by depth, with the oldest
//!   message's age, the last error and any suspension;
//! - `POST /api/suspend` `{"domain", "who", "why", "for_s"?}`, or
//!   `{"tenant", ...}` to hold a tenant's mail on every destination;
//! - `POST /api/resume` `{"domain"}` or `{"tenant"}`;
//! - `POST /api/bounce` `{"domain", "who", "why", "for_s"?}`;
//! - `POST /api/reroute` `{"domain", "to": ["HOST:PORT", ...]}`, or
//!   `{"domain", "clear": true}` to end it;
//! - `GET /api/inspect?id=s<k>.<n>`;
//! - `POST /api/reload`: the bounce rules and the `[delivery] shaping`
//!   file re-read and validated here, once; on any problem (answered
//!   `422` naming the file, key and reason) nothing changes anywhere,
//!   else every shard swaps both (shaping: `Shaper::replace_rules`, limits
//!   re-based under live leases and permits, cached destinations
//!   dropped) and the answer counts what changed on how many shards.

// std
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

// external
use sluice_shaping::config::Rules;

// crate
use super::mailbox::{Answer, Command, Request, REPLY_TIMEOUT};
use super::AdminSettings;
use crate::metrics::{render, ShardSnapshot};

/// Longest a read or write on an admin connection may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request (line, headers and body) read.
pub const REQUEST_BYTES_MAX: usize = 64 << 10;
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// What the server needs.
pub struct Server {
    /// Settings (allow list).
    pub settings: AdminSettings,
    /// One mailbox per shard, by index.
    pub shards: Vec<SyncSender<Request>>,
    /// The bounce rules file to re-read on reload (`None`: the shipped rules).
    pub bounce_rules: Option<PathBuf>,
    /// The shaping rules file to re-read on reload (`None`: built-in rules
    /// from `[delivery]`, which only a restart changes).
    pub shaping_rules: Option<PathBuf>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// The standing orders and their file (`admin::state`).
    pub state: super::state::Store,
}

/// What `reload` did to the shaping rules, summed over the shards'
/// answers.
fn shaping_summary(file: Option<&Path>, answers: &[serde_json::Value]) -> serde_json::Value {
    let Some(file) = file else {
        return serde_json::json!(
            "not reloaded: no [delivery] shaping file; the built-in rules from [delivery] change only with a restart"
        );
    };
    let reloaded: Vec<&serde_json::Value> = answers
        .iter()
        .map(|a| &a["shaping"])
        .filter(|s| s.is_object())
        .collect();
    let sum = |k: &str| reloaded.iter().filter_map(|s| s[k].as_u64()).sum::<u64>();
    serde_json::json!({
        "file": file.display().to_string(),
        "shards": reloaded.len(),
        "limits_changed": sum("limits_changed"),
        "limits_unused": sum("limits_unused"),
        "modes_ended": sum("modes_ended"),
        "modes_kept": sum("modes_kept"),
    })
}

/// A parsed request.
struct HttpRequest {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
}

impl Server {
    /// Serves `listener` until the stop flag is set.
    pub fn run(self, listener: TcpListener) {
        if let Err(e) = listener.set_nonblocking(true) {
            log::error!("admin listener: {e}; it is off");
            return;
        }
        while !self.stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if !self.settings.allows(peer.ip()) {
                        // Read the request first: closing with unread
                        // input would reset the connection and lose the 403.
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                        let _ = read_request(&stream);
                        let _ = respond(
                            stream,
                            403,
                            "text/plain",
                            b"forbidden: not in [admin] allow\n",
                        );
                        continue;
                    }
                    self.serve(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(ACCEPT_POLL)
                }
                Err(e) => {
                    log::warn!("admin listener: accept: {e}");
                    std::thread::sleep(ACCEPT_POLL);
                }
            }
        }
    }

    fn serve(&self, stream: TcpStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let req = match read_request(&stream) {
            Ok(r) => r,
            Err(e) => {
                let _ = respond(stream, 400, "text/plain", format!("{e}\n").as_bytes());
                return;
            }
        };
        let (status, kind, body) = self.route(&req);
        let _ = respond(stream, status, kind, &body);
    }

    fn route(&self, req: &HttpRequest) -> (u16, &'static str, Vec<u8>) {
        const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
        const JSON: &str = "application/json";
        let json = |status: u16, v: serde_json::Value| {
            let mut b = serde_json::to_vec_pretty(&v).unwrap_or_default();
            b.push(b'\n');
            (status, JSON, b)
        };
        let body: serde_json::Value = if req.body.is_empty() {
            serde_json::Value::Null
        } else {
            match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => return json(400, serde_json::json!({"error": format!("body: {e}")})),
            }
        };
        let s = |k: &str| body[k].as_str().unwrap_or("").to_string();
        let until = || {
            body["for_s"]
                .as_f64()
                .map(|f| crate::deliver::now_unix_ms() + (f * 1000.0) as u64)
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/metrics") => match self.snapshots() {
                Ok(snaps) => (200, TEXT, render(&snaps).into_bytes()),
                Err(e) => (503, "text/plain", format!("{e}\n").into_bytes()),
            },
            ("GET", "/api/queues") => match self.snapshots() {
                Ok(snaps) => {
                    let mut v = queues_json(&snaps);
                    v["orders"] = self.state.orders_json(crate::deliver::now_unix_ms());
                    json(200, v)
                }
                Err(e) => json(503, serde_json::json!({"error": e})),
            },
            ("GET", "/api/top") => {
                let limit = query(&req.query, "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(20usize);
                match self.all(|| Command::Top) {
                    Ok(answers) => {
                        let mut rows: Vec<serde_json::Value> = answers
                            .into_iter()
                            .flat_map(|a| a.as_array().cloned().unwrap_or_default())
                            .collect();
                        rows.sort_by_key(|r| std::cmp::Reverse(r["depth"].as_u64().unwrap_or(0)));
                        rows.truncate(limit);
                        json(200, serde_json::Value::Array(rows))
                    }
                    Err(e) => json(503, serde_json::json!({"error": e})),
                }
            }
            ("POST", "/api/suspend") | ("POST", "/api/resume") if !s("tenant").is_empty() => {
                let tenant = s("tenant");
                if !crate::inject::tenant::valid_tenant(tenant.as_bytes()) {
                    return json(
                        400,
                        serde_json::json!({"error": format!("`{tenant}` is not a tenant name (1 to 64 visible ASCII characters)")}),
                    );
                }
                let (who, why, until_ms) = (s("who"), s("why"), until());
                let suspend = req.path == "/api/suspend";
                let cmd = || {
                    if suspend {
                        Command::SuspendTenant {
                            tenant: tenant.clone(),
                            who: who.clone(),
                            why: why.clone(),
                            until_ms,
                        }
                    } else {
                        Command::ResumeTenant {
                            tenant: tenant.clone(),
                        }
                    }
                };
                match self.all(cmd) {
                    Ok(a) => json(200, serde_json::json!({"shards": a})),
                    Err(e) => json(503, serde_json::json!({"error": e})),
                }
            }
            ("POST", "/api/suspend") | ("POST", "/api/bounce") => {
                let domain = s("domain");
                if domain.is_empty() {
                    return json(400, serde_json::json!({"error": "`domain` is required"}));
                }
                let (who, why) = (s("who"), s("why"));
                let until_ms = until();
                let suspend = req.path == "/api/suspend";
                let cmd = || {
                    if suspend {
                        Command::Suspend {
                            domain: domain.clone(),
                            who: who.clone(),
                            why: why.clone(),
                            until_ms,
                        }
                    } else {
                        Command::Bounce {
                            domain: domain.clone(),
                            who: who.clone(),
                            why: why.clone(),
                            until_ms,
                        }
                    }
                };
                match self.all(cmd) {
                    Ok(a) => json(200, serde_json::json!({"shards": a})),
                    Err(e) => json(503, serde_json::json!({"error": e})),
                }
            }
            ("POST", "/api/resume") => {
                let domain = s("domain");
                if domain.is_empty() {
                    return json(400, serde_json::json!({"error": "`domain` is required"}));
                }
                match self.all(|| Command::Resume {
                    domain: domain.clone(),
                }) {
                    Ok(a) => json(200, serde_json::json!({"shards": a})),
                    Err(e) => json(503, serde_json::json!({"error": e})),
                }
            }
            ("POST", "/api/reroute") => {
                let domain = s("domain");
                let mut hosts = Vec::new();
                for h in body["to"].as_array().into_iter().flatten() {
                    match h
                        .as_str()
                        .and_then(|t| t.parse::<std::net::SocketAddr>().ok())
                    {
                        Some(a) => hosts.push(a),
                        None => {
                            return json(
                                400,
                                serde_json::json!({"error": format!("`to`: {h} is not HOST:PORT (an IP address and a port)")}),
                            )
                        }
                    }
                }
                // `"clear": true` ends a reroute (the queue goes back to its
                // own route or MX, and the state file forgets it).
                let clear = body["clear"].as_bool() == Some(true);
                if domain.is_empty() || hosts.is_empty() != clear {
                    return json(
                        400,
                        serde_json::json!({"error": "`domain` and either `to` (a list of HOST:PORT) or `clear: true` are required"}),
                    );
                }
                match self.all(|| Command::Reroute {
                    domain: domain.clone(),
                    hosts: hosts.clone(),
                }) {
                    Ok(a) => json(200, serde_json::json!({"shards": a})),
                    Err(e) => json(503, serde_json::json!({"error": e})),
                }
            }
            ("GET", "/api/inspect") => {
                let id = query(&req.query, "id").unwrap_or_default();
                let Some((shard, n)) = parse_id(&id) else {
                    return json(
                        400,
                        serde_json::json!({"error": format!("`{id}`: expected an id like s0.42 (the 250 reply names it)")}),
                    );
                };
                match self.ask(shard, Command::Inspect { id: n }) {
                    Ok(Answer::Json(v)) => json(200, v),
                    Ok(Answer::Error(e)) => json(404, serde_json::json!({"error": e})),
                    Ok(Answer::Snapshot(_)) => {
                        json(500, serde_json::json!({"error": "unexpected answer"}))
                    }
                    Err(e) => json(503, serde_json::json!({"error": e})),
                }
            }
            ("POST", "/api/reload") => {
                let rules = match crate::accounting::load_bounce_rules(self.bounce_rules.as_deref())
                {
                    Ok(r) => r,
                    Err(e) => {
                        return json(
                            422,
                            serde_json::json!({"error": format!("bounce rules: {e}; the old rules stay")}),
                        )
                    }
                };
                // Both files are validated before any shard changes.
                let shaping = match self.shaping_rules.as_deref().map(Rules::load) {
                    None => None,
                    Some(Ok(r)) => Some(r),
                    Some(Err(e)) => {
                        return json(
                            422,
                            serde_json::json!({"error": format!("shaping rules: {e}\nnothing was reloaded; the old rules stay")}),
                        )
                    }
                };
                let file = self
                    .bounce_rules
                    .as_ref()
                    .map_or("(shipped rules)".to_string(), |p| p.display().to_string());
                // Same on every shard, above any earlier reload's.
                let generation = crate::deliver::shape::now_nanos().0;
                match self.all(|| Command::Reload {
                    rules: Box::new(rules.clone()),
                    shaping: shaping.clone().map(|r| (Box::new(r), generation)),
                }) {
                    Ok(answers) => json(
                        200,
                        serde_json::json!({
                            "bounce_rules": file,
                            "patterns": rules.pattern_count(),
                            "shaping": shaping_summary(self.shaping_rules.as_deref(), &answers),
                        }),
                    ),
                    Err(e) => json(503, serde_json::json!({"error": e})),
                }
            }
            _ => json(
                404,
                serde_json::json!({"error": format!("no route {} {}", req.method, req.path)}),
            ),
        }
    }

    fn ask(&self, shard: u32, command: Command) -> Result<Answer, String> {
        let tx = self
            .shards
            .get(shard as usize)
            .ok_or_else(|| format!("there is no shard {shard}"))?;
        let (reply, rx) = sync_channel(1);
        tx.try_send(Request { command, reply })
            .map_err(|e| format!("shard {shard}'s mailbox: {e}"))?;
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| format!("shard {shard} did not answer within {REPLY_TIMEOUT:?}"))
    }

    /// Sends the command to every shard (all at once, then collects).
    fn all(&self, command: impl Fn() -> Command) -> Result<Vec<serde_json::Value>, String> {
        let mut waiting = Vec::with_capacity(self.shards.len());
        for (i, tx) in self.shards.iter().enumerate() {
            let (reply, rx) = sync_channel(1);
            tx.try_send(Request {
                command: command(),
                reply,
            })
            .map_err(|e| format!("shard {i}'s mailbox: {e}"))?;
            waiting.push(rx);
        }
        let mut out = Vec::with_capacity(waiting.len());
        for (i, rx) in waiting.into_iter().enumerate() {
            match rx.recv_timeout(REPLY_TIMEOUT) {
                Ok(Answer::Json(v)) => out.push(v),
                Ok(Answer::Error(e)) => out.push(serde_json::json!({"shard": i, "error": e})),
                Ok(Answer::Snapshot(_)) => {}
                Err(_) => return Err(format!("shard {i} did not answer within {REPLY_TIMEOUT:?}")),
            }
        }
        // Every shard carried it out: the order goes to the state file
        // (a write failure is said on stderr; the order stays in force).
        let _ = self.state.record(&command(), crate::deliver::now_unix_ms());
        Ok(out)
    }

    fn snapshots(&self) -> Result<Vec<ShardSnapshot>, String> {
        let mut waiting = Vec::with_capacity(self.shards.len());
        for (i, tx) in self.shards.iter().enumerate() {
            let (reply, rx) = sync_channel(1);
            tx.try_send(Request {
                command: Command::Snapshot,
                reply,
            })
            .map_err(|e| format!("shard {i}'s mailbox: {e}"))?;
            waiting.push(rx);
        }
        let mut out = Vec::with_capacity(waiting.len());
        for (i, rx) in waiting.into_iter().enumerate() {
            match rx.recv_timeout(REPLY_TIMEOUT) {
                Ok(Answer::Snapshot(s)) => out.push(*s),
                Ok(_) => return Err(format!("shard {i}: unexpected answer")),
                Err(_) => return Err(format!("shard {i} did not answer within {REPLY_TIMEOUT:?}")),
            }
        }
        Ok(out)
    }
}

/// `s3.42` (or a bare number, meaning shard 0) → (3, 42).
pub fn parse_id(text: &str) -> Option<(u32, u64)> {
    let t = text.trim();
    match t.strip_prefix('s').and_then(|r| r.split_once('.')) {
        Some((s, n)) => Some((s.parse().ok()?, n.parse().ok()?)),
        None => Some((0, t.parse().ok()?)),
    }
}

fn queues_json(snaps: &[ShardSnapshot]) -> serde_json::Value {
    let shard = |s: &ShardSnapshot| {
        serde_json::json!({
            "shard": s.shard,
            "ready": s.queues.ready,
            "scheduled": s.queues.scheduled,
            "in_flight": s.queues.in_flight,
            "destinations": s.queues.destinations,
            "received": s.inject.accepted,
            "delivered": s.delivery.delivered,
            "bounced": s.delivery.bounced,
            "expired": s.delivery.expired,
            "transient_failures": s.delivery.deferred,
            "spool_live_messages": s.spool_live,
            "log_records_lost": s.log.lost,
            "log_records_dropped": s.log.dropped,
        })
    };
    let sum = |f: &dyn Fn(&ShardSnapshot) -> u64| snaps.iter().map(f).sum::<u64>();
    serde_json::json!({
        "total": {
            "ready": sum(&|s| s.queues.ready as u64),
            "scheduled": sum(&|s| s.queues.scheduled as u64),
            "in_flight": sum(&|s| s.queues.in_flight as u64),
            "received": sum(&|s| s.inject.accepted),
            "delivered": sum(&|s| s.delivery.delivered),
            "bounced": sum(&|s| s.delivery.bounced),
            "expired": sum(&|s| s.delivery.expired),
            "transient_failures": sum(&|s| s.delivery.deferred),
        },
        "shards": snaps.iter().map(shard).collect::<Vec<_>>(),
    })
}

fn query(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%2E", ".").replace("%40", "@"))
    })
}

fn read_request(mut stream: &TcpStream) -> Result<HttpRequest, String> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() >= REQUEST_BYTES_MAX {
            return Err("request header too large".into());
        }
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the request ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut words = line.split(' ');
    let method = words.next().unwrap_or("").to_string();
    let target = words.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut length = 0usize;
    for h in lines {
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| "bad Content-Length")?;
            }
        }
    }
    if length > REQUEST_BYTES_MAX {
        return Err("request body too large".into());
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed in the body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(HttpRequest {
        method,
        path: path.to_string(),
        query: query.to_string(),
        body,
    })
}

fn respond(mut stream: TcpStream, status: u16, kind: &str, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_queries_parse() {
        assert_eq!(parse_id("s3.42"), Some((3, 42)));
        assert_eq!(parse_id("42"), Some((0, 42)));
        assert_eq!(parse_id("s3"), None);
        assert_eq!(query("a=1&id=s0%2E5", "id").as_deref(), Some("s0.5"));
    }
}
