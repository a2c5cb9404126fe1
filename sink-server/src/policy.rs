//! Per-connection decisions: which reply each MAIL, RCPT and end of data
//! gets, what the profile does, and what is counted. All synchronous; the
//! driver in `conn` only moves bytes and applies these answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_smtp::{Mailbox, Reply, ReplyCode};

use crate::headers::HeaderScan;
use crate::profile::Phase;
use crate::shard::{CaptureFile, Shard};
use crate::stats::Admit;

/// What the driver does after queueing a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Go on.
    Continue,
    /// The reply ends the session (`421`): `ServerSession::shutdown` with it.
    Shutdown,
    /// Write the reply, then close without `221` (`drop_after_messages`).
    DropAfterWrite,
}

/// A decided reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The reply.
    pub reply: Reply,
    /// Wait this long before giving it.
    pub delay: Duration,
    /// What follows.
    pub then: Then,
}

/// What to do with a body chunk or a message end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Reply (message end) or go on (chunk: `Answer` unused).
    Go(Option<Answer>),
    /// Close the connection now, without a reply (`drop_in_data`).
    Drop,
}

/// Domains of the accepted recipients of the open transaction, lower-cased
/// in one reused buffer.
#[derive(Debug, Default)]
struct TxnDomains {
    text: String,
    /// `(start, end, recipients)` into `text`.
    entries: Vec<(usize, usize, u64)>,
}

impl TxnDomains {
    fn clear(&mut self) {
        self.text.clear();
        self.entries.clear();
    }

    fn position(&self, domain: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|&(s, e, _)| self.text[s..e].eq_ignore_ascii_case(domain))
    }

    fn push(&mut self, domain: &str) -> usize {
        let start = self.text.len();
        self.text
            .extend(domain.chars().map(|c| c.to_ascii_lowercase()));
        self.entries.push((start, self.text.len(), 0));
        self.entries.len() - 1
    }

    fn name(&self, i: usize) -> &str {
        let (s, e, _) = self.entries[i];
        &self.text[s..e]
    }
}

/// One connection's decision state.
pub struct ConnPolicy {
    /// The connection's domain (its first RCPT's), joined on the board.
    domain: Option<String>,
    domain_joined: bool,
    messages_accepted: u64,
    txn: TxnDomains,
    /// A recipient was answered positively in this transaction (by us).
    txn_rcpts: u64,
    body_bytes: u64,
    body_started: bool,
    drop_this_message: bool,
    scan: HeaderScan,
    capture: Option<CaptureFile>,
    /// Ids whose `250` is queued but not yet written.
    ids_pending: Vec<u8>,
}

impl ConnPolicy {
    /// Fresh state; buffers are allocated here, once per connection.
    /// `want_ids`: `--record-ids` is on, so the header scan looks for ids.
    pub fn new(want_ids: bool) -> ConnPolicy {
        ConnPolicy {
            domain: None,
            domain_joined: false,
            messages_accepted: 0,
            txn: TxnDomains {
                text: String::with_capacity(64),
                entries: Vec::with_capacity(4),
            },
            txn_rcpts: 0,
            body_bytes: 0,
            body_started: false,
            drop_this_message: false,
            scan: HeaderScan::with_ids(want_ids),
            capture: None,
            ids_pending: Vec::new(),
        }
    }

    /// The greeting, or `None` when the profile never greets.
    pub fn greeting(&mut self, shard: &Shard) -> Option<Answer> {
        let profile = &shard.cfg.profile;
        let mut stats = shard.stats.borrow_mut();
        if profile.never_greet {
            stats.counters.actions.never_greeted += 1;
            return None;
        }
        let rule = profile.phase(Phase::Connect);
        let delay = count_delay(&mut stats.counters.actions, Phase::Connect, rule.delay);
        let code = rule.decide(|| shard.draw());
        let (reply, then) = match code {
            None => (Reply::greeting(&shard.cfg.hostname), Then::Continue),
            Some(code) => {
                stats.counters.actions.count_injected(Phase::Connect, code);
                // RFC 5321 §3.1: 554 instead of the greeting leaves only QUIT;
                // anything else refuses the connection (the session closes it).
                let text = match code {
                    554 => "No SMTP service here (profile)",
                    _ => "Service not available, closing transmission channel (profile)",
                };
                let code = ReplyCode::new(code).unwrap_or(ReplyCode::SERVICE_UNAVAILABLE);
                (Reply::plain(code, text), Then::Continue)
            }
        };
        Some(Answer { reply, delay, then })
    }

    /// `MAIL FROM` was valid: a new transaction.
    pub fn mail(&mut self, shard: &Shard) -> Answer {
        self.reset_transaction(shard);
        let rule = shard.cfg.profile.phase(Phase::Mail);
        let mut stats = shard.stats.borrow_mut();
        let delay = count_delay(&mut stats.counters.actions, Phase::Mail, rule.delay);
        match rule.decide(|| shard.draw()) {
            Some(code) => {
                stats.counters.actions.count_injected(Phase::Mail, code);
                injected(code, Phase::Mail, delay)
            }
            None => {
                stats.counters.transactions += 1;
                Answer {
                    reply: Reply::fixed(250, (2, 1, 0), "Sender OK"),
                    delay,
                    then: Then::Continue,
                }
            }
        }
    }

    /// A valid `RCPT TO`.
    pub fn rcpt(&mut self, shard: &Shard, to: &Mailbox<'_>) -> Answer {
        let profile = &shard.cfg.profile;
        let rule = profile.phase(Phase::Rcpt);
        let delay = {
            let mut stats = shard.stats.borrow_mut();
            count_delay(&mut stats.counters.actions, Phase::Rcpt, rule.delay)
        };
        let index = match self.txn.position(to.domain()) {
            Some(i) => i,
            None => self.txn.push(to.domain()),
        };
        let (ds, de, _) = self.txn.entries[index];
        let domain = &self.txn.text[ds..de];
        // The connection's domain is the first RCPT's (counted once).
        if self.domain.is_none() {
            let admit = shard.shared.with_board(|b| b.join(domain, profile));
            let mut stats = shard.stats.borrow_mut();
            stats.counters.domain(domain).connections += 1;
            self.domain = Some(domain.to_string());
            if admit == Admit::OverLimit {
                stats.counters.actions.connection_limited += 1;
                return limit_421("Too many connections for this domain, try later", delay);
            }
            self.domain_joined = true;
        }
        if profile.rejects_local_part(to.local_part(), domain) {
            shard
                .stats
                .borrow_mut()
                .counters
                .actions
                .local_part_rejected += 1;
            // RFC 3463 §3.2: X.1.1 bad destination mailbox address.
            return Answer {
                reply: Reply::fixed(550, (5, 1, 1), "Mailbox unavailable (profile)"),
                delay,
                then: Then::Continue,
            };
        }
        if let Some(code) = rule.decide(|| shard.draw()) {
            shard
                .stats
                .borrow_mut()
                .counters
                .actions
                .count_injected(Phase::Rcpt, code);
            return injected(code, Phase::Rcpt, delay);
        }
        // A message slot of a rate-limited domain is taken by its first
        // accepted recipient in the transaction.
        let first_in_txn = self.txn.entries[index].2 == 0;
        let limit = profile.domains.get(domain).and_then(|d| d.rate_per_second);
        if let (true, Some(limit)) = (first_in_txn, limit) {
            let sec = unix_now().as_secs();
            if shard
                .shared
                .with_board(|b| b.take_message(domain, limit, sec))
                == Admit::OverLimit
            {
                shard.stats.borrow_mut().counters.actions.rate_limited += 1;
                return limit_421("Too many messages for this domain, slow down", delay);
            }
        }
        self.txn.entries[index].2 += 1;
        self.txn_rcpts += 1;
        Answer {
            reply: Reply::fixed(250, (2, 1, 5), "Recipient OK"),
            delay,
            then: Then::Continue,
        }
    }

    /// DATA got `354` or a BDAT chunk started; only the first of a
    /// transaction starts the message.
    pub fn body_start(&mut self, shard: &Shard) {
        if self.body_started {
            return;
        }
        self.body_started = true;
        self.body_bytes = 0;
        self.scan.reset();
        let p = shard.cfg.profile.drop_in_data;
        self.drop_this_message = p > 0.0 && shard.draw() < p;
        if self.capture.is_none() {
            self.capture = shard.capture_begin();
        }
    }

    /// Un-stuffed body bytes.
    pub fn body_chunk(&mut self, shard: &Shard, chunk: &[u8]) -> Decision {
        if self.drop_this_message {
            shard.stats.borrow_mut().counters.actions.dropped_in_data += 1;
            return Decision::Drop;
        }
        self.body_bytes += chunk.len() as u64;
        if !self.scan.is_done() {
            self.scan.feed(chunk);
        }
        if let Some(c) = self.capture.as_mut() {
            c.write(chunk);
        }
        Decision::Go(None)
    }

    /// The message ended cleanly: decide its reply.
    pub fn message_end(&mut self, shard: &Shard) -> Decision {
        if self.drop_this_message {
            // An empty body (BDAT 0 LAST) had no chunk to drop in.
            shard.stats.borrow_mut().counters.actions.dropped_in_data += 1;
            return Decision::Drop;
        }
        self.scan.finish();
        self.body_started = false;
        let profile = &shard.cfg.profile;
        let rule = profile.phase(Phase::Data);
        let now = unix_now();
        let mut stats = shard.stats.borrow_mut();
        let delay = count_delay(&mut stats.counters.actions, Phase::Data, rule.delay);
        if let Some(code) = rule.decide(|| shard.draw()) {
            stats.counters.actions.count_injected(Phase::Data, code);
            drop(stats);
            self.abort_capture(shard);
            return Decision::Go(Some(injected(code, Phase::Data, delay)));
        }
        let c = &mut stats.counters;
        c.messages += 1;
        c.recipients += self.txn_rcpts;
        c.bytes += self.body_bytes;
        for i in 0..self.txn.entries.len() {
            let rcpts = self.txn.entries[i].2;
            if rcpts == 0 {
                continue;
            }
            let d = stats.counters.domain(self.txn.name(i));
            d.messages += 1;
            d.recipients += rcpts;
            stats.count_rate(self.txn.name(i), now.as_secs());
        }
        if let Some(injected_ns) = self.scan.injected_ns() {
            let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
            let latency_us = now_ns.saturating_sub(injected_ns) / 1000;
            stats.latency.saturating_record(latency_us);
            stats.counters.latency_samples += 1;
        }
        drop(stats);
        if let Some(cap) = self.capture.take() {
            shard.capture_commit(cap);
        }
        if shard.ids.borrow().enabled() {
            if let Some(id) = self.scan.id() {
                self.ids_pending.extend_from_slice(id);
                self.ids_pending.push(b'\n');
            }
        }
        self.messages_accepted += 1;
        let then = match profile.drop_after_messages {
            Some(n) if self.messages_accepted >= n => {
                shard
                    .stats
                    .borrow_mut()
                    .counters
                    .actions
                    .dropped_after_messages += 1;
                Then::DropAfterWrite
            }
            _ => Then::Continue,
        };
        Decision::Go(Some(Answer {
            reply: Reply::fixed(250, (2, 0, 0), "Message accepted"),
            delay,
            then,
        }))
    }

    /// The session refused the message by itself (too big, bad endings).
    pub fn message_aborted(&mut self, shard: &Shard) {
        self.body_started = false;
        self.abort_capture(shard);
    }

    /// RSET, HELO/EHLO or a new MAIL: forget the transaction.
    pub fn reset_transaction(&mut self, shard: &Shard) {
        self.txn.clear();
        self.txn_rcpts = 0;
        self.body_bytes = 0;
        self.body_started = false;
        self.drop_this_message = false;
        self.abort_capture(shard);
    }

    /// Every queued reply was written: record the ids of accepted messages.
    pub fn after_write(&mut self, shard: &Shard) {
        if self.ids_pending.is_empty() {
            return;
        }
        let mut ids = shard.ids.borrow_mut();
        for line in self
            .ids_pending
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            if let Err(e) = ids.push(line) {
                eprintln!("sluice-sink: --record-ids write failed: {e}");
            }
        }
        self.ids_pending.clear();
    }

    /// The connection is over.
    pub fn close(&mut self, shard: &Shard) {
        self.abort_capture(shard);
        if let (true, Some(d)) = (self.domain_joined, &self.domain) {
            shard.shared.with_board(|b| b.leave(d));
        }
        self.domain_joined = false;
    }

    fn abort_capture(&mut self, shard: &Shard) {
        if let Some(cap) = self.capture.take() {
            shard.capture_abort(cap);
        }
    }
}

fn count_delay(actions: &mut crate::stats::ProfileActions, phase: Phase, d: Duration) -> Duration {
    if !d.is_zero() {
        actions.delayed[phase.index()] += 1;
    }
    d
}

/// `421 4.7.0` for a domain limit; the connection closes (RFC 5321 §3.8).
fn limit_421(text: &'static str, delay: Duration) -> Answer {
    Answer {
        reply: Reply::fixed(421, (4, 7, 0), text),
        delay,
        then: Then::Shutdown,
    }
}

/// The reply for a code drawn from the profile.
fn injected(code: u16, phase: Phase, delay: Duration) -> Answer {
    let reply = match (code, phase) {
        (421, _) => Reply::fixed(
            421,
            (4, 3, 2),
            "Service not available, closing channel (profile)",
        ),
        (451, _) => Reply::fixed(
            451,
            (4, 3, 0),
            "Temporary local problem, try later (profile)",
        ),
        (452, _) => Reply::fixed(452, (4, 3, 1), "Insufficient system storage (profile)"),
        (550, Phase::Rcpt) => Reply::fixed(550, (5, 1, 1), "Mailbox unavailable (profile)"),
        (550, _) => Reply::fixed(550, (5, 7, 1), "Rejected by policy (profile)"),
        _ => Reply::fixed(554, (5, 7, 0), "Transaction failed (profile)"),
    };
    let then = if code == 421 {
        Then::Shutdown
    } else {
        Then::Continue
    };
    Answer { reply, delay, then }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
