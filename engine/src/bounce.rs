//! Bounce messages: an RFC 3464 delivery status notification to the
//! envelope sender when a recipient fails permanently, expires, or is
//! bounced by an operator.
//!
//! The DSN is written by `sluice-outcomes` ([`sluice_outcomes::dsn::build`],
//! which refuses to bounce a message whose sender is `<>` and honours
//! NOTIFY, RET, ENVID and ORCPT as stored at injection) and then travels
//! like injected mail: appended to the shard's spool with the null reverse
//! path, committed by the same group commit, and only then handed to the
//! queues (so it is logged with a `Reception` record and delivered,
//! retried and expired like any message). It is appended *before* the
//! original recipient's completion record, so a completion that survived
//! a crash implies a DSN that survived too.
//!
//! One DSN per failed recipient: recipients of one message settle at
//! different times (on different connections, after different retries),
//! and waiting to gather them would hold the sender's news back. Turned
//! off with `[delivery] dsn = false`.

// std
use std::time::{Duration, UNIX_EPOCH};

// external
use sluice_outcomes::dsn::{self, Action, DsnRecipient, DsnRequest, OriginalRecipient};
use sluice_smtp::{EnhancedCode, MailParams, Mailbox, RcptParams, Reply, ReplyCode};

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

/// Queues a DSN about recipient `entry` to the message's sender, if the
/// configuration, the sender and the recipient's NOTIFY allow one.
/// Returns whether one was queued.
pub fn queue(shared: &Shared, entry: &Entry, said: &Said<'_>, why: Why, now: u64) -> bool {
    if !shared.ctx.config.dsn_bounces {
        return false;
    }
    match build_and_append(shared, entry, said, why, now) {
        Ok(Some(pending)) => {
            let spool = shared.ctx.spool.clone();
            let queues = std::rc::Rc::clone(&shared.ctx.queues);
            let acct = std::rc::Rc::clone(&shared.acct);
            let shard = shared.ctx.index;
            glommio::spawn_local(async move {
                match spool.commit().await {
                    Ok(()) => {
                        let accepted =
                            pending
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
            true
        }
        Ok(None) => false,
        Err(e) => {
            log::warn!(
                "shard {}: no bounce for message {} recipient {}: {e}",
                shared.ctx.index,
                entry.id,
                entry.index
            );
            shared.acct.metrics.borrow_mut().dsns_failed += 1;
            false
        }
    }
}

/// A DSN appended to the spool, waiting for its commit.
struct Pending {
    original: u64,
    env: Envelope,
    id: u64,
    rec: sluice_spool::RecordRef,
    expiry: u64,
}

fn build_and_append(
    shared: &Shared,
    entry: &Entry,
    said: &Said<'_>,
    why: Why,
    now: u64,
) -> Result<Option<Pending>, String> {
    let record = shared
        .ctx
        .spool
        .message(&shared.locate(entry))
        .map_err(|e| format!("reading the original: {e}"))?;
    let parts = record
        .parts()
        .map_err(|e| format!("parsing the original: {e}"))?;
    if parts.sender.is_empty() {
        // RFC 3461 §6.2: never bounce a bounce.
        return Ok(None);
    }
    let sender = String::from_utf8_lossy(parts.sender);
    let rcpt = parts
        .recipients
        .get(entry.index as usize)
        .ok_or("recipient index outside the record")?;
    let address = String::from_utf8_lossy(rcpt.address);
    let env_dsn = parse_envelope_dsn(parts.dsn).unwrap_or_default();
    let rcpt_dsn = parse_recipient_dsn(rcpt.dsn).unwrap_or_default();
    let status = status_of(said, why);
    // The remote server's words, when there were any.
    let diagnostic = said.peer.map(|_| reply_of(said));
    let remote = said.peer.map(|p| p.ip().to_string());
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    let recipients = [DsnRecipient {
        final_recipient: &address,
        original_recipient: rcpt_dsn.orcpt.as_ref().map(|(t, a)| OriginalRecipient {
            addr_type: t,
            address: a,
        }),
        notify: rcpt_dsn.notify,
        action: Action::Failed,
        status,
        diagnostic: diagnostic.as_ref(),
        remote_mta: remote.as_deref(),
        last_attempt: Some(at(now)),
        will_retry_until: None,
    }];
    let host = &shared.ctx.config.hostname;
    let from = format!("MAILER-DAEMON@{host}");
    let message_id = format!(
        "<dsn.{now}.{}.{}.{}@{host}>",
        shared.ctx.index, entry.id, entry.index
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
        // NOTIFY=NEVER, or a NOTIFY without FAILURE.
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
        original: entry.id,
        env,
        id,
        rec,
        expiry,
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
