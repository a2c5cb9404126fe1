//! Settling one recipient: the spool record, the queues and the log line,
//! in that order, exactly once per attempt outcome.

// std
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

// external
use sluice_outcomes::Category;
use sluice_spool::Outcome as SpoolOutcome;

// crate
use super::Shared;
use crate::accounting::read_facts;
use crate::bounce::Why;
use crate::log::{one_line, LogRecord, RecordKind};
use crate::queue::{DestId, Entry};

/// What the other side (or we, for synthesized failures) said.
#[derive(Debug, Clone, Copy)]
pub struct Said<'a> {
    /// Reply code.
    pub code: u16,
    /// Enhanced status code text.
    pub enhanced: Option<&'a str>,
    /// Reply text.
    pub text: &'a str,
    /// Peer the reply came from.
    pub peer: Option<SocketAddr>,
    /// TLS of the connection, for the delivery log.
    pub tls: Option<&'a crate::tls::TlsInfo>,
    /// Our end of the connection, when there was one.
    pub local: Option<Local<'a>>,
}

/// Our end of the connection an attempt used.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    /// The bound source's name (`[source.NAME]`); `None` when unbound.
    pub source: Option<&'a str>,
    /// The pool the source was drawn from.
    pub pool: Option<&'a str>,
    /// The local address: the bound source's, or the one the kernel chose.
    pub ip: Option<IpAddr>,
    /// The shaping destination of the connection's source (see
    /// `Shaping::destination_for_source`): outcomes feed its backoff rules.
    pub shaping: Option<&'a sluice_shaping::Destination>,
}

/// Who the outcome is about.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Destination.
    pub dest: DestId,
    /// The queue entry (attempts before this one).
    pub entry: Entry,
    /// Recipient address.
    pub recipient: &'a str,
    /// Message arrival, ms since the Unix epoch.
    pub arrival_ms: u64,
}

fn log(shared: &Shared, kind: RecordKind, s: &Subject<'_>, said: Option<&Said<'_>>, now: u64) {
    let queues = shared.ctx.queues.borrow();
    let site = queues.site_of(s.dest);
    let site_name = queues.sites().name(site);
    let text = said.map(|x| one_line(x.text));
    let acct = &shared.acct;
    let facts = acct.facts(s.entry.id, || {
        read_facts(&shared.ctx.spool, s.entry.id, &shared.locate(&s.entry))
    });
    // Every failure carries its bounce category (an expiry is always
    // `message-expired`, whatever the last reply said).
    let category = match (kind, said) {
        (RecordKind::Expiration, _) => Some(Category::MessageExpired),
        (RecordKind::TransientFailure | RecordKind::Bounce | RecordKind::AdminBounce, Some(x)) => {
            Some(acct.classify(x.code, x.enhanced, x.text))
        }
        _ => None,
    };
    {
        let mut m = acct.metrics.borrow_mut();
        match kind {
            RecordKind::Delivery => m.latency.observe(now.saturating_sub(s.arrival_ms)),
            RecordKind::Bounce
            | RecordKind::Expiration
            | RecordKind::AdminBounce
            | RecordKind::TransientFailure => {
                // By site, source (the bound source's name; else the
                // site's pool; else none) and category.
                let source = said
                    .and_then(|x| x.local)
                    .and_then(|l| l.source)
                    .or(queues.sites().pool(site))
                    .unwrap_or("");
                let key = (
                    site_name.clone(),
                    source.to_string(),
                    category.unwrap_or(Category::Other),
                );
                let counts = if kind == RecordKind::TransientFailure {
                    &mut m.transient
                } else {
                    &mut m.bounced
                };
                *counts.entry(key).or_insert(0) += 1;
            }
            RecordKind::Reception => {}
        }
    }
    if let (RecordKind::TransientFailure | RecordKind::Bounce, Some(x)) = (kind, said) {
        acct.note_error(
            queues.domain(s.dest),
            now,
            x.code,
            text.as_deref().unwrap_or(""),
        );
    }
    shared.log.record(&LogRecord {
        kind,
        id: s.entry.id,
        sender: &facts.sender,
        recipient: s.recipient,
        queue: queues.domain(s.dest),
        site: Some(&site_name),
        // The message's X-virtualMTA (the site's pool), else the pool the
        // connection drew its source from (the rule's).
        pool: queues
            .sites()
            .pool(site)
            .or(said.and_then(|x| x.local).and_then(|l| l.pool)),
        source: said.and_then(|x| x.local).and_then(|l| l.source),
        source_ip: said.and_then(|x| x.local).and_then(|l| l.ip),
        size: facts.size,
        code: said.map(|x| x.code),
        enhanced: said.and_then(|x| x.enhanced),
        text: text.as_deref().unwrap_or(""),
        peer: said.and_then(|x| x.peer),
        attempt: s.entry.attempts + 1,
        arrival_ms: s.arrival_ms,
        at_ms: now,
        shard: shared.ctx.index,
        category,
        tenant: facts.tenant.as_deref(),
        campaign: facts.campaign.as_deref(),
        tls: said
            .and_then(|x| x.tls)
            .map(crate::tls::TlsInfo::log)
            .unwrap_or_default(),
    });
}

fn complete(shared: &Shared, s: &Subject<'_>, outcome: SpoolOutcome) {
    complete_in_spool(shared, &s.entry, outcome);
    shared.ctx.queues.borrow_mut().finish(s.dest);
}

/// Writes a recipient's completion record.
fn complete_in_spool(shared: &Shared, entry: &Entry, outcome: SpoolOutcome) {
    if let Err(e) = shared.ctx.spool.complete(entry.id, entry.index, outcome) {
        // The recipient stays live in the spool: after a restart it is
        // delivered again (a duplicate, never a loss).
        log::error!(
            "shard {}: recording {outcome:?} for message {} recipient {}: {e}",
            shared.ctx.index,
            entry.id,
            entry.index
        );
        shared.count(|c| c.spool_errors += 1);
    }
}

/// Feeds an attempt outcome to the destination's backoff rules; returns
/// the reason when a rule says to bounce it.
fn feed(shared: &Shared, s: &Subject<'_>, said: &Said<'_>) -> Option<String> {
    let shaping = shared.shaping.as_ref()?;
    let queues = shared.ctx.queues.borrow();
    match said.local {
        // A bound connection's outcomes feed its source's destination.
        Some(Local {
            shaping: Some(d),
            source,
            ..
        }) => shaping.feed_at(d, queues.domain(s.dest), source, said),
        _ => shaping.feed(&queues, s.dest, said),
    }
}

/// `2xx`: delivered.
pub fn delivered(shared: &Shared, s: &Subject<'_>, said: &Said<'_>, now: u64) {
    feed(shared, s, said);
    complete(shared, s, SpoolOutcome::Delivered);
    shared.count(|c| c.delivered += 1);
    log(shared, RecordKind::Delivery, s, Some(said), now);
}

/// `5xx`: bounced.
pub fn bounced(shared: &Shared, s: &Subject<'_>, said: &Said<'_>, now: u64) {
    feed(shared, s, said);
    bounce(shared, s, said, now);
}

fn bounce(shared: &Shared, s: &Subject<'_>, said: &Said<'_>, now: u64) {
    // With DSNs on, the batch writes the completion after the DSN (see
    // `crate::bounce`).
    if !crate::bounce::queue(
        shared,
        &s.entry,
        said,
        Why::Failed,
        SpoolOutcome::Failed,
        now,
    ) {
        complete_in_spool(shared, &s.entry, SpoolOutcome::Failed);
    }
    shared.ctx.queues.borrow_mut().finish(s.dest);
    shared.count(|c| c.bounced += 1);
    log(shared, RecordKind::Bounce, s, Some(said), now);
}

/// `4xx` or a lost connection: deferred per the retry schedule.
pub fn deferred(shared: &Shared, s: &Subject<'_>, said: &Said<'_>, now: u64) {
    if let Some(rule) = feed(shared, s, said) {
        // A backoff rule turns this temporary failure into a bounce.
        let text = format!("{} (bounced by shaping rule {rule})", said.text);
        let said = Said {
            text: &text,
            ..*said
        };
        bounce(shared, s, &said, now);
        return;
    }
    let attempts = s.entry.attempts.saturating_add(1);
    let random = shared.random();
    let delay = match &shared.shaping {
        Some(shaping) => shaping.retry_delay(
            &shared.ctx.queues.borrow(),
            s.dest,
            s.entry.attempts,
            random,
        ),
        None => shared.settings.retry.delay(s.entry.attempts, random),
    };
    let due = now.saturating_add(delay.as_millis().min(u128::from(u64::MAX)) as u64);
    if let Err(e) = shared.ctx.spool.defer(s.entry.id, attempts, due) {
        // Only the retry state is lost: after a restart it is retried at once.
        log::warn!(
            "shard {}: recording the retry of message {}: {e}",
            shared.ctx.index,
            s.entry.id
        );
        shared.count(|c| c.spool_errors += 1);
    }
    shared.ctx.queues.borrow_mut().defer(
        s.dest,
        Entry {
            attempts,
            ..s.entry
        },
        due,
    );
    shared.count(|c| c.deferred += 1);
    log(shared, RecordKind::TransientFailure, s, Some(said), now);
}

/// The address and arrival of a queued recipient, read from the spool
/// (for outcomes decided without a connection at hand).
fn recipient_of(shared: &Shared, entry: &Entry) -> (String, u64) {
    match shared.ctx.spool.message(&shared.locate(entry)) {
        Ok(record) => match record.parts() {
            Ok(parts) => {
                let address = parts
                    .recipients
                    .get(entry.index as usize)
                    .map(|r| String::from_utf8_lossy(r.address).into_owned())
                    .unwrap_or_default();
                (address, parts.fixed.arrival_unix_ms)
            }
            Err(_) => (String::new(), 0),
        },
        Err(_) => (String::new(), 0),
    }
}

/// A recipient without a connection at hand was deferred (no route,
/// connect failure).
pub fn defer(shared: &Shared, dest: DestId, entry: Entry, said: &Said<'_>, now: u64) {
    let (recipient, arrival_ms) = recipient_of(shared, &entry);
    let s = Subject {
        dest,
        entry,
        recipient: &recipient,
        arrival_ms,
    };
    deferred(shared, &s, said, now);
}

/// A recipient outlived its max age: completed as expired. (The queues
/// already removed it.)
pub fn expire(shared: &Shared, dest: DestId, entry: Entry, now: u64) {
    let (recipient, arrival_ms) = recipient_of(shared, &entry);
    let s = Subject {
        dest,
        entry,
        recipient: &recipient,
        arrival_ms,
    };
    let waited = Duration::from_millis(now.saturating_sub(arrival_ms));
    let text = format!("expired after {}s in the queue", waited.as_secs());
    let said = Said {
        code: 554,
        enhanced: Some("4.4.7"),
        text: &text,
        peer: None,
        tls: None,
        local: None,
    };
    if !crate::bounce::queue(
        shared,
        &entry,
        &said,
        Why::Expired,
        SpoolOutcome::Expired,
        now,
    ) {
        complete_in_spool(shared, &entry, SpoolOutcome::Expired);
    }
    shared.count(|c| c.expired += 1);
    log(shared, RecordKind::Expiration, &s, Some(&said), now);
}

/// An operator bounced a queued (not in-flight) recipient: a DSN to the
/// sender, the spool completion, one `AdminBounce` record. (The queues
/// already removed it.)
pub fn admin_bounce(shared: &Shared, dest: DestId, entry: Entry, reason: &str, now: u64) {
    let (recipient, arrival_ms) = recipient_of(shared, &entry);
    let s = Subject {
        dest,
        entry,
        recipient: &recipient,
        arrival_ms,
    };
    let said = Said {
        code: 554,
        enhanced: Some("5.0.0"),
        text: reason,
        peer: None,
        tls: None,
        local: None,
    };
    if !crate::bounce::queue(shared, &entry, &said, Why::Admin, SpoolOutcome::Failed, now) {
        complete_in_spool(shared, &entry, SpoolOutcome::Failed);
    }
    shared.count(|c| c.bounced += 1);
    log(shared, RecordKind::AdminBounce, &s, Some(&said), now);
}
