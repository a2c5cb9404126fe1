//! Client session tests: scripted servers replaying transcripts.

use std::collections::HashMap;

use super::*;
use crate::data::DotStuffer;

const BODY: &[u8] = b"Subject: t\r\n\r\n.dot\r\nbody\r\n";

fn envelope(id: u64, rcpts: &[&str]) -> Envelope {
    Envelope::new(
        id,
        "s@a.test",
        rcpts.iter().map(|r| Recipient::new(*r)).collect(),
        BODY.len() as u64,
    )
}

/// Everything the client wrote so far, bodies expanded.
fn written(session: &mut ClientSession) -> String {
    let mut out = Vec::new();
    while let Some(body) = session.poll_transmit(&mut out) {
        match body.encoding {
            BodyEncoding::Raw => out.extend_from_slice(BODY),
            BodyEncoding::DotStuffed => DotStuffer::stuff_into(BODY, &mut out),
        }
    }
    String::from_utf8(out).unwrap()
}

fn events(session: &mut ClientSession) -> Vec<ClientEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

/// Outcomes by (id, index), checking there is exactly one each.
fn outcomes(events: &[ClientEvent]) -> HashMap<(u64, usize), Outcome> {
    let mut map = HashMap::new();
    for event in events {
        if let ClientEvent::Recipient { id, index, outcome } = event {
            assert!(
                map.insert((*id, *index), outcome.clone()).is_none(),
                "two outcomes"
            );
        }
    }
    map
}

fn code(outcome: &Outcome) -> (char, Option<u16>) {
    match outcome {
        Outcome::Delivered(r) => ('D', Some(r.code.value())),
        Outcome::TempFail(f) => ('T', f.reply().map(|r| r.code.value())),
        Outcome::PermFail(f) => ('P', f.reply().map(|r| r.code.value())),
    }
}

fn greeted(ehlo: &str) -> ClientSession {
    let mut session = ClientSession::new(ClientConfig::new("me.test"));
    session.feed(b"220-mx.test ESMTP\r\n220 second greeting line\r\n");
    assert_eq!(written(&mut session), "EHLO me.test\r\n");
    session.feed(ehlo.as_bytes());
    session
}

const FULL: &str = "250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SIZE 1000\r\n";

#[test]
fn transactions_back_to_back_with_bdat() {
    let mut session = greeted(FULL);
    assert_eq!(events(&mut session), [ClientEvent::Ready]);
    session
        .queue(envelope(1, &["a@x.test", "b@x.test"]))
        .unwrap();
    session.queue(envelope(2, &["c@x.test"])).unwrap();
    let body = std::str::from_utf8(BODY).unwrap();
    assert_eq!(
        written(&mut session),
        format!(
            "MAIL FROM:<s@a.test> SIZE=26\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 26 LAST\r\n{body}\
             MAIL FROM:<s@a.test> SIZE=26\r\nRCPT TO:<c@x.test>\r\nBDAT 26 LAST\r\n{body}"
        )
    );
    assert_eq!(session.timeout(), Some(TimeoutClass::Mail));
    // Replies split at every boundary arrive together.
    session.feed(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 2.0.0 queued\r\n250 ok\r\n2");
    session.feed(b"50 ok\r\n250 2.0.0 queued as 2\r\n");
    let ev = events(&mut session);
    let map = outcomes(&ev);
    assert_eq!(code(&map[&(1, 0)]), ('D', Some(250)));
    assert_eq!(code(&map[&(1, 1)]), ('P', Some(550)));
    assert_eq!(code(&map[&(2, 0)]), ('D', Some(250)));
    assert!(ev.contains(&ClientEvent::TransactionDone { id: 1 }));
    assert!(ev.contains(&ClientEvent::TransactionDone { id: 2 }));
    session.quit();
    assert_eq!(written(&mut session), "QUIT\r\n");
    session.feed(b"221 bye\r\n");
    assert_eq!(
        events(&mut session),
        [ClientEvent::Closed(CloseCause::Quit)]
    );
}

#[test]
fn data_pipelining_waits_for_354_then_pipelines_the_next_mail() {
    let mut session = greeted("250-mx.test\r\n250 PIPELINING\r\n");
    events(&mut session);
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    session.queue(envelope(2, &["b@x.test"])).unwrap();
    assert_eq!(
        written(&mut session),
        "MAIL FROM:<s@a.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n"
    );
    assert_eq!(session.timeout(), Some(TimeoutClass::Mail));
    session.feed(b"250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(
        written(&mut session),
        "Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    );
    assert_eq!(session.timeout(), Some(TimeoutClass::FinalDot));
    // 4xx after the final dot: TempFail; 5xx for the next.
    session.feed(b"451 4.3.0 try later\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    written(&mut session);
    session.feed(b"554 5.7.1 rejected\r\n");
    let map = outcomes(&events(&mut session));
    assert_eq!(code(&map[&(1, 0)]), ('T', Some(451)));
    assert_eq!(code(&map[&(2, 0)]), ('P', Some(554)));
}

#[test]
fn every_rcpt_failed_but_354_sends_a_lone_dot() {
    let mut session = greeted("250-mx.test\r\n250 PIPELINING\r\n");
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    written(&mut session);
    session.feed(b"250 ok\r\n550 no\r\n354 go\r\n");
    assert_eq!(written(&mut session), ".\r\n");
    session.feed(b"554 no valid recipients\r\n");
    let ev = events(&mut session);
    assert_eq!(code(&outcomes(&ev)[&(1, 0)]), ('P', Some(550)));
    assert!(ev.contains(&ClientEvent::TransactionDone { id: 1 }));
}

#[test]
fn refused_data_leads_to_rset_before_the_next_transaction() {
    let mut session = greeted("250-mx.test\r\n250 PIPELINING\r\n");
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    session.queue(envelope(2, &["b@x.test"])).unwrap();
    written(&mut session);
    session.feed(b"250 ok\r\n450 busy\r\n554 no valid recipients\r\n");
    assert_eq!(
        written(&mut session),
        "RSET\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    );
}

#[test]
fn reply_421_mid_pipeline_fails_in_flight_as_tempfail() {
    let mut session = greeted(FULL);
    session
        .queue(envelope(1, &["a@x.test", "b@x.test"]))
        .unwrap();
    written(&mut session);
    session.feed(b"250 ok\r\n421 4.7.0 closing\r\n");
    let ev = events(&mut session);
    let map = outcomes(&ev);
    assert_eq!(code(&map[&(1, 0)]), ('T', Some(421)));
    assert_eq!(code(&map[&(1, 1)]), ('T', Some(421)));
    assert!(
        matches!(ev.last(), Some(ClientEvent::Closed(CloseCause::ServerClosed(r))) if r.code.value() == 421)
    );
    assert!(session.is_closed());
}

#[test]
fn rcpt_550_then_close() {
    let mut session = greeted(FULL);
    session
        .queue(envelope(1, &["a@x.test", "b@x.test"]))
        .unwrap();
    session.queue(envelope(2, &["c@x.test"])).unwrap();
    written(&mut session);
    session.feed(b"250 ok\r\n550 5.1.1 unknown\r\n");
    session.connection_lost();
    let ev = events(&mut session);
    let map = outcomes(&ev);
    assert_eq!(code(&map[&(1, 0)]), ('P', Some(550)));
    assert_eq!(map[&(1, 1)], Outcome::TempFail(Failure::ConnectionLost));
    assert_eq!(map[&(2, 0)], Outcome::TempFail(Failure::ConnectionLost));
    assert_eq!(
        ev.last(),
        Some(&ClientEvent::Closed(CloseCause::ConnectionLost))
    );
}

#[test]
fn one_reply_too_many_is_a_protocol_fault() {
    let mut session = greeted(FULL);
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    written(&mut session);
    session.feed(b"250 ok\r\n250 ok\r\n250 ok\r\n250 extra\r\n");
    let ev = events(&mut session);
    assert_eq!(code(&outcomes(&ev)[&(1, 0)]), ('D', Some(250)));
    assert_eq!(
        ev.last(),
        Some(&ClientEvent::Closed(CloseCause::Protocol(
            ProtocolFault::UnexpectedReply
        )))
    );
}

#[test]
fn one_reply_too_few_times_out_as_tempfail() {
    let mut session = greeted(FULL);
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    written(&mut session);
    session.feed(b"250 ok\r\n250 ok\r\n");
    assert_eq!(session.timeout(), Some(TimeoutClass::FinalDot));
    session.timed_out();
    let map = outcomes(&events(&mut session));
    assert_eq!(
        map[&(1, 0)],
        Outcome::TempFail(Failure::TimedOut(TimeoutClass::FinalDot))
    );
}

#[test]
fn server_without_esmtp_gets_helo_and_no_pipelining() {
    let mut session = ClientSession::new(ClientConfig::new("me.test"));
    session.feed(b"220 old.test SMTP\r\n");
    written(&mut session);
    session.feed(b"500 5.5.1 what?\r\n");
    assert_eq!(written(&mut session), "HELO me.test\r\n");
    session.feed(b"250 old.test\r\n");
    session
        .queue(envelope(1, &["a@x.test", "b@x.test"]))
        .unwrap();
    assert_eq!(written(&mut session), "MAIL FROM:<s@a.test>\r\n");
    session.feed(b"250 ok\r\n");
    assert_eq!(written(&mut session), "RCPT TO:<a@x.test>\r\n");
    session.feed(b"250 ok\r\n");
    assert_eq!(written(&mut session), "RCPT TO:<b@x.test>\r\n");
    session.feed(b"250 ok\r\n");
    assert_eq!(written(&mut session), "DATA\r\n");
    session.feed(b"354 go\r\n");
    assert_eq!(
        written(&mut session),
        "Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\n"
    );
    session.feed(b"250 ok\r\n");
    let map = outcomes(&events(&mut session));
    assert_eq!(map.len(), 2);
}

#[test]
fn recipient_452_without_pipelining_defers_the_rest() {
    let mut session = ClientSession::new(ClientConfig::new("me.test"));
    session.feed(b"220 mx\r\n250 mx\r\n");
    session
        .queue(envelope(1, &["a@x.test", "b@x.test", "c@x.test"]))
        .unwrap();
    written(&mut session);
    session.feed(b"250 ok\r\n250 ok\r\n");
    session.feed(b"452 4.5.3 too many recipients\r\n");
    assert_eq!(
        written(&mut session),
        "RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    );
    session.feed(b"354 go\r\n");
    written(&mut session);
    session.feed(b"250 ok\r\n");
    let map = outcomes(&events(&mut session));
    assert_eq!(code(&map[&(1, 0)]), ('D', Some(250)));
    assert_eq!(code(&map[&(1, 1)]), ('T', Some(452)));
    assert_eq!(code(&map[&(1, 2)]), ('T', Some(452)));
}

#[test]
fn no_body_when_every_rcpt_failed_without_pipelining() {
    let mut session = ClientSession::new(ClientConfig::new("me.test"));
    session.feed(b"220 mx\r\n250-mx\r\n250 CHUNKING\r\n");
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    session.queue(envelope(2, &["b@x.test"])).unwrap();
    written(&mut session);
    session.feed(b"250 ok\r\n");
    written(&mut session);
    session.feed(b"550 no\r\n");
    // No BDAT: RSET, then the next transaction.
    assert_eq!(written(&mut session), "RSET\r\n");
    session.feed(b"250 ok\r\n");
    assert_eq!(written(&mut session), "MAIL FROM:<s@a.test>\r\n");
}

#[test]
fn starttls_then_ehlo_again_and_injection_detected() {
    let ehlo = "250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n";
    let mut session = greeted(ehlo);
    assert_eq!(written(&mut session), "STARTTLS\r\n");
    session.feed(b"220 go ahead\r\n");
    assert_eq!(events(&mut session), [ClientEvent::StartTls]);
    session.tls_established();
    assert!(session.capabilities().extensions.is_empty());
    assert_eq!(written(&mut session), "EHLO me.test\r\n");
    session.feed(b"250-mx\r\n250 PIPELINING\r\n");
    assert!(session.is_tls() && session.is_ready());

    let mut session = greeted(ehlo);
    written(&mut session);
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    session.feed(b"220 go ahead\r\n250-injected\r\n");
    let ev = events(&mut session);
    assert_eq!(outcomes(&ev)[&(1, 0)], Outcome::TempFail(Failure::NotSent));
    assert_eq!(
        ev.last(),
        Some(&ClientEvent::Closed(CloseCause::Protocol(
            ProtocolFault::StartTlsInjection
        )))
    );
}

#[test]
fn tls_required_but_not_offered() {
    let mut config = ClientConfig::new("me.test");
    config.tls = TlsPolicy::Required;
    let mut session = ClientSession::new(config);
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    session.feed(b"220 mx\r\n250 mx\r\n");
    let ev = events(&mut session);
    assert_eq!(
        outcomes(&ev)[&(1, 0)],
        Outcome::TempFail(Failure::TlsUnavailable)
    );
    assert_eq!(
        ev.last(),
        Some(&ClientEvent::Closed(CloseCause::TlsUnavailable))
    );
}

#[test]
fn capability_driven_refusals() {
    let mut session = greeted(FULL);
    let mut big = envelope(1, &["a@x.test"]);
    big.body_bytes = 5000;
    session.queue(big).unwrap();
    let mut eight = envelope(2, &["a@x.test"]);
    eight.eight_bit = true;
    session.queue(eight).unwrap();
    let map = outcomes(&events(&mut session));
    assert_eq!(
        map[&(1, 0)],
        Outcome::PermFail(Failure::TooBig { size_max: 1000 })
    );
    assert_eq!(
        map[&(2, 0)],
        Outcome::PermFail(Failure::ExtensionMissing(
            crate::extensions::Extensions::EIGHT_BIT_MIME
        ))
    );
    assert_eq!(written(&mut session), "");
}

#[test]
fn greeting_554_fails_everything() {
    let mut session = ClientSession::new(ClientConfig::new("me.test"));
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    session.feed(b"554 5.7.1 go away\r\n");
    assert_eq!(written(&mut session), "QUIT\r\n");
    let ev = events(&mut session);
    assert_eq!(code(&outcomes(&ev)[&(1, 0)]), ('T', Some(554)));
    assert!(session.is_closed());
}

#[test]
fn server_that_never_greets_times_out() {
    let mut session = ClientSession::new(ClientConfig::new("me.test"));
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    assert_eq!(session.timeout(), Some(TimeoutClass::Greeting));
    assert_eq!(
        TimeoutClass::Greeting.rfc_default(),
        std::time::Duration::from_secs(300)
    );
    // A slow drip of a partial greeting does not change the timer class.
    session.feed(b"22");
    assert_eq!(session.timeout(), Some(TimeoutClass::Greeting));
    session.timed_out();
    let ev = events(&mut session);
    assert_eq!(outcomes(&ev)[&(1, 0)], Outcome::TempFail(Failure::NotSent));
    assert_eq!(
        ev.last(),
        Some(&ClientEvent::Closed(CloseCause::TimedOut(
            TimeoutClass::Greeting
        )))
    );
}

#[test]
fn queue_limits_and_closed_sessions_give_envelopes_back() {
    let mut config = ClientConfig::new("me.test");
    config.transactions_queued_max = 1;
    let mut session = ClientSession::new(config);
    session.queue(envelope(1, &["a@x.test"])).unwrap();
    assert!(
        matches!(session.queue(envelope(2, &["a@x.test"])), Err(QueueError::Full(e)) if e.id == 2)
    );
    session.connection_lost();
    assert!(
        matches!(session.queue(envelope(3, &["a@x.test"])), Err(QueueError::Closed(e)) if e.id == 3)
    );
}
