//! Bounce messages: an RFC 3464 delivery status notification to the
//! envelope sender when recipients fail permanently, expire, or are
//! bounced by an operator.
//!
//! The DSN is written by `sluice-outcomes` ([`sluice_outcomes::dsn::build`],
//! which refuses to bounce a message whose sender is `<>` and honours
//! NOTIFY, RET, ENVID and ORCPT as stored at injection) and then travels
//! like injected mail: appended to the shard's spool with the null reverse
//! path, committed by the same group commit, and only then handed to the
//! queues (so it is logged with a `Reception` record and delivered,
//! retried and expired like any message).
//!
//! # One DSN per message, not per recipient
//! A failed recipient is handed to the shard's [`Batch`] ([`queue`]) with
//! the spool outcome it must be completed with. The shard's flusher task
//! ([`flusher`]) runs as soon as the task that settled it yields, so every
//! recipient that failed in the same turn of the shard (the recipients of
//! one transaction refused together, a message's recipients expiring in
//! the same sweep, an operator's bounce of a queue) is reported in one
//! DSN per message. Recipients of one message that fail at different
//! times (on different connections, after different retries) still get
//! separate DSNs: waiting for them would hold the sender's news back.
//!
//! # Crash ordering
//! The flusher appends the DSN *before* the failed recipients' completion
//! records, so a completion that survived a crash implies a DSN that
//! survived too. A crash before the flush leaves the recipients live in
//! the spool: they are attempted again after the restart (a duplicate
//! attempt, never a lost bounce).
//!
//! Turned off with `[delivery] dsn = false` (then the callers complete the
//! recipients themselves) or per tenant with `[tenants.NAME] dsn`, which
//! wins over `[delivery] dsn` for the tenant's messages.

// std
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, UNIX_EPOCH};

// external
use sluice_outcomes::dsn::{self, Action, DsnRecipient, DsnRequest, OriginalRecipient};
use sluice_smtp::{EnhancedCode, MailParams, Mailbox, RcptParams, Reply, ReplyCode};
use sluice_spool::Outcome as SpoolOutcome;

// crate
use crate::deliver::outcome::Said;
use crate::deliver::Shared;
use crate::inject::envelope::{parse_envelope_dsn, parse_recipient_dsn, Envelope};
use crate::queue::Entry;

/// Why a failure bounced (the DSN's status when the reply gives none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A permanent (`5xx`) reply or a rule turned into one.
    Failed,
    /// The recipient outlived its max age (RFC 3463 5.4.7).
    Expired,
    /// An operator bounced the queue.
    Admin,
}

/// A failed recipient waiting for its message's DSN (owned: the reply it
/// got may come from a buffer that is gone by the flush).
#[derive(Debug)]
struct Failed {
    entry: Entry,
    code: u16,
    enhanced: Option<String>,
    text: String,
    peer: Option<SocketAddr>,
    why: Why,
    /// The spool completion written after the DSN.
    outcome: SpoolOutcome,
    at: u64,
}

/// The shard's failed recipients waiting for the flusher, and the
/// flusher's waker.
#[derive(Debug, Default)]
pub struct Batch {
    failed: Vec<Failed>,
    waker: Option<Waker>,
    /// DSNs written by this shard, for unique `Message-ID`s.
    written: u64,
}

impl Batch {
    /// Recipients waiting for the flusher.
    pub fn len(&self) -> usize {
        self.failed.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Hands failed recipient `entry` to the shard's DSN batch, which writes
/// the DSN (if the sender and the recipient's NOTIFY want one) and then
/// the recipient's spool completion `outcome`. Returns `false` when DSNs
/// are off: the caller then completes the recipient itself.
pub fn queue(
    shared: &Shared,
    entry: &Entry,
    said: &Said<'_>,
    why: Why,
    outcome: SpoolOutcome,
    now: u64,
) -> bool {
    // The message's tenant may still turn DSNs off (or on): decided at
    // the flush, from the record.
    if !shared.ctx.config.dsn_possible() {
        return false;
    }
    let mut batch = shared.bounces.borrow_mut();
    batch.failed.push(Failed {
        entry: *entry,
        code: said.code,
        enhanced: said.enhanced.map(str::to_owned),
        text: said.text.to_owned(),
        peer: said.peer,
        why,
        outcome,
        at: now,
    });
    if let Some(w) = batch.waker.take() {
        w.wake();
    }
    true
}

/// The shard's flusher: writes the batch whenever it has recipients (one
/// DSN per message, then their completions) until the shard stops. The
/// driver calls [`flush`] once more after its connections have drained.
pub async fn flusher(shared: Rc<Shared>) {
    loop {
        std::future::poll_fn(|cx| {
            let mut batch = shared.bounces.borrow_mut();
            if !batch.failed.is_empty() || shared.ctx.stopping() {
                Poll::Ready(())
            } else {
                batch.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        flush(&shared);
        if shared.ctx.stopping() {
            return;
        }
    }
}

/// Wakes the flusher (at shutdown, so it sees the stop).
pub fn wake_flusher(shared: &Shared) {
    if let Some(w) = shared.bounces.borrow_mut().waker.take() {
        w.wake();
    }
}

/// Writes every waiting recipient: per message, the DSN (appended to the
/// spool, queued once its commit is durable), then the completions.
pub fn flush(shared: &Shared) {
    let mut failed = std::mem::take(&mut shared.bounces.borrow_mut().failed);
    if failed.is_empty() {
        return;
    }
    // Stable: each message's recipients keep their settling order.
    failed.sort_by_key(|f| f.entry.id);
    for group in failed.chunk_by(|a, b| a.entry.id == b.entry.id) {
        let seq = {
            let mut batch = shared.bounces.borrow_mut();
            batch.written += 1;
            batch.written
        };
        match build_and_append(shared, group, seq) {
            Ok(Some(pending)) => enqueue_when_durable(shared, pending),
            Ok(None) => {}
            Err(e) => {
                log::warn!(
                    "shard {}: no bounce for message {} ({} recipients): {e}",
                    shared.ctx.index,
                    group[0].entry.id,
                    group.len()
                );
                shared.acct.metrics.borrow_mut().dsns_failed += 1;
            }
        }
        for f in group {
            if let Err(e) = shared
                .ctx
                .spool
                .complete(f.entry.id, f.entry.index, f.outcome)
            {
                // The recipient stays live in the spool: after a restart
                // it is attempted again (a duplicate, never a loss).
                log::error!(
                    "shard {}: recording {:?} for message {} recipient {}: {e}",
                    shared.ctx.index,
                    f.outcome,
                    f.entry.id,
                    f.entry.index
                );
                shared.count(|c| c.spool_errors += 1);
            }
        }
    }
}

/// Hands an appended DSN to the queues once the group commit covering it
/// is durable.
fn enqueue_when_durable(shared: &Shared, pending: Pending) {
    let spool = shared.ctx.spool.clone();
    let queues = Rc::clone(&shared.ctx.queues);
    let acct = Rc::clone(&shared.acct);
    let shard = shared.ctx.index;
    let now = pending.at;
    glommio::spawn_local(async move {
        match spool.commit().await {
            Ok(()) => {
                let accepted = pending
                    .env
                    .accepted(pending.id, pending.rec, now, pending.expiry);
                queues.borrow_mut().enqueue(accepted);
                acct.metrics.borrow_mut().dsns_queued += 1;
            }
            Err(e) => {
                log::error!(
                    "shard {shard}: the bounce for message {} was not committed: {e}",
                    pending.original
                );
                acct.metrics.borrow_mut().dsns_failed += 1;
            }
        }
    })
    .detach();
}

/// A DSN appended to the spool, waiting for its commit.
struct Pending {
    original: u64,
    env: Envelope,
    id: u64,
    rec: sluice_spool::RecordRef,
    expiry: u64,
    at: u64,
}

/// One failed recipient's DSN fields, owned.
struct Reported {
    address: String,
    orcpt: Option<(String, String)>,
    notify: Option<sluice_smtp::Notify>,
    status: EnhancedCode,
    diagnostic: Option<Reply>,
    remote: Option<String>,
    at: u64,
}

fn build_and_append(
    shared: &Shared,
    group: &[Failed],
    seq: u64,
) -> Result<Option<Pending>, String> {
    let Some(first) = group.first() else {
        return Ok(None);
    };
    let record = shared
        .ctx
        .spool
        .message(&shared.locate(&first.entry))
        .map_err(|e| format!("reading the original: {e}"))?;
    let parts = record
        .parts()
        .map_err(|e| format!("parsing the original: {e}"))?;
    if parts.sender.is_empty() {
        // RFC 3461 §6.2: never bounce a bounce.
        return Ok(None);
    }
    if !shared.ctx.config.dsn_for_tenant(parts.tenant) {
        // `[tenants.NAME] dsn = false` (or `[delivery] dsn = false` and
        // the tenant does not turn it on).
        return Ok(None);
    }
    let sender = String::from_utf8_lossy(parts.sender);
    let env_dsn = parse_envelope_dsn(parts.dsn).unwrap_or_default();
    let mut reported = Vec::with_capacity(group.len());
    for f in group {
        let Some(rcpt) = parts.recipients.get(f.entry.index as usize) else {
            log::warn!(
                "shard {}: message {} has no recipient {} (left out of its bounce)",
                shared.ctx.index,
                f.entry.id,
                f.entry.index
            );
            continue;
        };
        let rcpt_dsn = parse_recipient_dsn(rcpt.dsn).unwrap_or_default();
        let said = Said {
            code: f.code,
            enhanced: f.enhanced.as_deref(),
            text: &f.text,
            peer: f.peer,
            tls: None,
            local: None,
        };
        reported.push(Reported {
            address: String::from_utf8_lossy(rcpt.address).into_owned(),
            orcpt: rcpt_dsn.orcpt,
            notify: rcpt_dsn.notify,
            status: status_of(&said, f.why),
            // The remote server's words, when there were any.
            diagnostic: f.peer.map(|_| reply_of(&said)),
            remote: f.peer.map(|p| p.ip().to_string()),
            at: f.at,
        });
    }
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    let recipients: Vec<DsnRecipient<'_>> = reported
        .iter()
        .map(|r| DsnRecipient {
            final_recipient: &r.address,
            original_recipient: r.orcpt.as_ref().map(|(t, a)| OriginalRecipient {
                addr_type: t,
                address: a,
            }),
            notify: r.notify,
            action: Action::Failed,
            status: r.status,
            diagnostic: r.diagnostic.as_ref(),
            remote_mta: r.remote.as_deref(),
            last_attempt: Some(at(r.at)),
            will_retry_until: None,
        })
        .collect();
    let now = group.iter().map(|f| f.at).max().unwrap_or(first.at);
    let host = &shared.ctx.config.hostname;
    let from = format!("MAILER-DAEMON@{host}");
    let message_id = format!(
        "<dsn.{now}.{}.{}.{seq}@{host}>",
        shared.ctx.index, first.entry.id
    );
    let req = DsnRequest {
        reporting_mta: host,
        from: &from,
        original_sender: &sender,
        envid: env_dsn.envid.as_deref(),
        ret: env_dsn.ret,
        arrival_date: at(parts.fixed.arrival_unix_ms),
        date: at(now),
        message_id: &message_id,
        recipients: &recipients,
        original: parts.body,
    };
    let Some(dsn) = dsn::build(&req) else {
        // NOTIFY=NEVER, or a NOTIFY without FAILURE, for every recipient.
        return Ok(None);
    };
    let to = Mailbox::parse(&dsn.recipient)
        .map_err(|e| format!("the sender `{}` is not an address: {e}", dsn.recipient))?;
    let mut env = Envelope::new();
    env.begin(None, &MailParams::default());
    env.add_recipient(&to, &RcptParams::default());
    let expiry = now.saturating_add(shared.settings.max_age.as_millis() as u64);
    let (id, rec) = {
        let rcpts = env.spool_recipients();
        let new = env.new_message(&rcpts, &dsn.message, now, expiry);
        shared
            .ctx
            .spool
            .append(&new)
            .map_err(|e| format!("appending the bounce: {e}"))?
    };
    Ok(Some(Pending {
        original: first.entry.id,
        env,
        id,
        rec,
        expiry,
        at: now,
    }))
}

/// The DSN status: the reply's enhanced code when it is a failure code,
/// else the generic one for the reason (RFC 3463).
fn status_of(said: &Said<'_>, why: Why) -> EnhancedCode {
    let fallback = match why {
        // X.4.7: delivery time expired.
        Why::Expired => (5, 4, 7),
        Why::Failed | Why::Admin => (5, 0, 0),
    };
    let generic = EnhancedCode::new(fallback.0, fallback.1, fallback.2).unwrap_or(EnhancedCode {
        class: 5,
        subject: 0,
        detail: 0,
    });
    if why == Why::Expired {
        return generic;
    }
    said.enhanced
        .and_then(|e| EnhancedCode::parse_prefix(e.as_bytes()))
        .map(|(e, _)| e)
        .filter(|e| e.class == 5)
        .unwrap_or(generic)
}

fn reply_of(said: &Said<'_>) -> Reply {
    let code = ReplyCode::new(said.code).unwrap_or(ReplyCode::from_literal(554));
    let text = crate::log::one_line(said.text).into_owned();
    match said
        .enhanced
        .and_then(|e| EnhancedCode::parse_prefix(e.as_bytes()))
    {
        Some((e, _)) => Reply::new(code, e, text),
        None => Reply::plain(code, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said<'a>(code: u16, enhanced: Option<&'a str>) -> Said<'a> {
        Said {
            code,
            enhanced,
            text: "no\r\nsuch user",
            peer: None,
            tls: None,
            local: None,
        }
    }

    #[test]
    fn status_follows_the_reply_or_the_reason() {
        let s = status_of(&said(550, Some("5.1.1")), Why::Failed);
        assert_eq!(s.to_string(), "5.1.1");
        // A 4xx code turned permanent by a rule is reported as 5.0.0.
        assert_eq!(
            status_of(&said(451, Some("4.4.1")), Why::Failed).to_string(),
            "5.0.0"
        );
        assert_eq!(
            status_of(&said(550, Some("5.1.1")), Why::Expired).to_string(),
            "5.4.7"
        );
        assert_eq!(status_of(&said(554, None), Why::Admin).to_string(), "5.0.0");
        let r = reply_of(&said(550, Some("5.1.1")));
        assert_eq!(r.code.value(), 550);
        assert!(!r.text.contains('\r') && !r.text.contains('\n'));
    }
}
