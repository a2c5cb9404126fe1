//! The client session against a scripted random server: whatever the server
//! says (temporary and permanent failures, 421 at any point, one reply too
//! many, a dropped connection, silence), every recipient ends with exactly
//! one outcome and every transaction completes exactly once.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use sluice_smtp::client::{
    BodyEncoding, ClientConfig, ClientEvent, ClientSession, Envelope, Outcome, Recipient, TlsPolicy,
};
use sluice_smtp::{DataReceiver, DotStuffer};

const BODY: &[u8] = b"Subject: x\r\n\r\n.line\r\nend\r\n";

/// A server whose every choice comes from a script of random bytes.
struct Scripted {
    script: Vec<u8>,
    next: usize,
    buf: Vec<u8>,
    mode: Mode,
    tls: bool,
    /// Closed after 421/221 or a drop.
    closed: bool,
}

enum Mode {
    Commands,
    Data(DataReceiver),
    Bdat(usize),
}

enum Action {
    Reply(Vec<u8>),
    Drop,
    Silence,
}

impl Scripted {
    fn choose<'a>(&mut self, options: &[&'a str]) -> &'a str {
        let byte = self.script.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        options[usize::from(byte) % options.len()]
    }

    /// Consumes client bytes; returns what the server does.
    fn receive(&mut self, bytes: &[u8]) -> Action {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            if self.closed {
                break;
            }
            match &mut self.mode {
                Mode::Data(rx) => {
                    let mut pos = 0;
                    let mut ended = false;
                    while pos < self.buf.len() {
                        let step = rx.feed(&self.buf[pos..]);
                        pos += step.consumed;
                        if step.ended {
                            ended = true;
                            break;
                        }
                    }
                    self.buf.drain(..pos);
                    if !ended {
                        break;
                    }
                    self.mode = Mode::Commands;
                    let reply = self.choose(&[
                        "250 ok",
                        "250 ok",
                        "250 ok",
                        "451 later",
                        "554 no",
                        "421 bye",
                    ]);
                    self.say(&mut out, reply);
                }
                Mode::Bdat(remaining) => {
                    let take = (*remaining).min(self.buf.len());
                    self.buf.drain(..take);
                    *remaining -= take;
                    if *remaining > 0 {
                        break;
                    }
                    self.mode = Mode::Commands;
                    let reply = self.choose(&[
                        "250 ok", "250 ok", "250 ok", "452 full", "552 big", "421 bye",
                    ]);
                    self.say(&mut out, reply);
                }
                Mode::Commands => {
                    let Some(lf) = self.buf.iter().position(|&b| b == b'\n') else {
                        break;
                    };
                    let line: Vec<u8> = self.buf.drain(..=lf).collect();
                    let line = String::from_utf8_lossy(&line).trim_end().to_string();
                    match self.choose(
                        &["normal"; 30]
                            .iter()
                            .copied()
                            .chain(["drop", "silence", "extra"])
                            .collect::<Vec<_>>(),
                    ) {
                        "drop" => return Action::Drop,
                        "silence" => {
                            self.closed = true;
                            return if out.is_empty() {
                                Action::Silence
                            } else {
                                Action::Reply(out)
                            };
                        }
                        "extra" => self.say(&mut out, "250 unsolicited"),
                        _ => {}
                    }
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let reply: String = match verb.as_str() {
                        "EHLO" => {
                            let ehlo = self.choose(&["full", "plain", "data", "refuse", "tls"]);
                            match ehlo {
                                "full" => {
                                    "250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SIZE 100000"
                                        .into()
                                }
                                "plain" => "250 mx".into(),
                                "data" => "250-mx\r\n250 PIPELINING".into(),
                                "tls" if !self.tls => {
                                    "250-mx\r\n250-PIPELINING\r\n250 STARTTLS".into()
                                }
                                "tls" => "250-mx\r\n250 CHUNKING".into(),
                                _ => "502 no ESMTP".into(),
                            }
                        }
                        "HELO" => self.choose(&["250 mx", "250 mx", "554 no"]).into(),
                        "STARTTLS" => {
                            let reply = self.choose(&["220 go", "220 go", "454 not now"]);
                            if reply.starts_with("220") {
                                self.tls = true;
                            }
                            reply.into()
                        }
                        "MAIL" | "RCPT" => self
                            .choose(&[
                                "250 ok",
                                "250 ok",
                                "250 ok",
                                "250 ok",
                                "451 later",
                                "452 full",
                                "550 no",
                                "503 seq",
                                "421 bye",
                            ])
                            .into(),
                        "DATA" => {
                            let reply = self.choose(&[
                                "354 go",
                                "354 go",
                                "354 go",
                                "554 none",
                                "451 later",
                                "421 bye",
                            ]);
                            if reply.starts_with("354") {
                                self.mode = Mode::Data(DataReceiver::new(usize::MAX));
                            }
                            reply.into()
                        }
                        "BDAT" => {
                            let size = line
                                .split(' ')
                                .nth(1)
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(0);
                            self.mode = Mode::Bdat(size);
                            // The reply comes once the chunk is read.
                            continue;
                        }
                        "RSET" => "250 ok".into(),
                        "QUIT" => "221 bye".into(),
                        _ => "500 what".into(),
                    };
                    self.say(&mut out, &reply);
                }
            }
        }
        Action::Reply(out)
    }

    fn say(&mut self, out: &mut Vec<u8>, reply: &str) {
        out.extend_from_slice(reply.as_bytes());
        out.extend_from_slice(b"\r\n");
        if reply.starts_with("421") || reply.starts_with("221") {
            self.closed = true;
        }
    }
}

fn run(
    script: Vec<u8>,
    envelopes: usize,
    rcpts: usize,
    chunk: usize,
    tls: TlsPolicy,
) -> Result<(), TestCaseError> {
    let mut config = ClientConfig::new("c.test");
    config.tls = tls;
    config.transactions_in_flight_max = 3;
    let mut client = ClientSession::new(config);
    let mut expected = HashSet::new();
    for id in 0..envelopes as u64 {
        let recipients = (0..rcpts)
            .map(|r| Recipient::new(format!("r{r}@x.test")))
            .collect();
        client
            .queue(Envelope::new(id, "s@a.test", recipients, BODY.len() as u64))
            .unwrap();
        for index in 0..rcpts {
            expected.insert((id, index));
        }
    }
    client.quit();
    let mut server = Scripted {
        script,
        next: 0,
        buf: Vec::new(),
        mode: Mode::Commands,
        tls: false,
        closed: false,
    };
    let mut outcomes: HashMap<(u64, usize), Outcome> = HashMap::new();
    let mut done = HashSet::new();
    let mut closed = false;
    // The server greets.
    let mut to_client = b"220 mx.test\r\n".to_vec();
    for _ in 0..10_000 {
        let mut out = Vec::new();
        while let Some(body) = client.poll_transmit(&mut out) {
            match body.encoding {
                BodyEncoding::DotStuffed => DotStuffer::stuff_into(BODY, &mut out),
                BodyEncoding::Raw => out.extend_from_slice(BODY),
            }
        }
        let mut dropped = false;
        if !server.closed {
            match server.receive(&out) {
                Action::Reply(bytes) => to_client.extend_from_slice(&bytes),
                Action::Drop => dropped = true,
                Action::Silence => {}
            }
        }
        if dropped {
            client.connection_lost();
        } else if to_client.is_empty() {
            if server.closed {
                client.connection_lost();
            } else {
                // Nothing moves: the driver's timer fires.
                client.timed_out();
            }
        } else {
            for piece in to_client.chunks(chunk) {
                client.feed(piece);
            }
            to_client.clear();
        }
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Recipient { id, index, outcome } => {
                    prop_assert!(
                        outcomes.insert((id, index), outcome).is_none(),
                        "two outcomes for {id}/{index}"
                    );
                }
                ClientEvent::TransactionDone { id } => {
                    prop_assert!(done.insert(id), "done twice: {id}")
                }
                ClientEvent::StartTls => client.tls_established(),
                ClientEvent::Closed(_) => closed = true,
                ClientEvent::Ready => {}
            }
        }
        if closed {
            break;
        }
    }
    prop_assert!(closed, "session never closed");
    let got: HashSet<_> = outcomes.keys().copied().collect();
    prop_assert_eq!(got, expected);
    prop_assert_eq!(done.len(), envelopes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_recipient_gets_exactly_one_outcome(
        script in prop::collection::vec(any::<u8>(), 0..200),
        envelopes in 0usize..6,
        rcpts in 1usize..4,
        chunk in 1usize..64,
        tls in prop::sample::select(vec![TlsPolicy::Disabled, TlsPolicy::Opportunistic, TlsPolicy::Required]),
    ) {
        run(script, envelopes, rcpts, chunk, tls)?;
    }
}

#[test]
fn a_cooperative_script_delivers_everything() {
    // Script byte 0 picks the first option everywhere: full ESMTP, 250s.
    let mut config = ClientConfig::new("c.test");
    config.tls = TlsPolicy::Disabled;
    let mut client = ClientSession::new(config);
    for id in 0..4 {
        let recipients = vec![Recipient::new("a@x.test"), Recipient::new("b@x.test")];
        client
            .queue(Envelope::new(id, "s@a.test", recipients, BODY.len() as u64))
            .unwrap();
    }
    client.quit();
    let mut server = Scripted {
        script: vec![0; 1000],
        next: 0,
        buf: Vec::new(),
        mode: Mode::Commands,
        tls: false,
        closed: false,
    };
    client.feed(b"220 mx.test\r\n");
    let mut delivered = 0;
    let mut round_trips = 0;
    while !client.is_closed() && round_trips < 100 {
        round_trips += 1;
        let mut out = Vec::new();
        while let Some(body) = client.poll_transmit(&mut out) {
            assert_eq!(body.encoding, BodyEncoding::Raw);
            out.extend_from_slice(BODY);
        }
        let Action::Reply(bytes) = server.receive(&out) else {
            panic!("server quit")
        };
        client.feed(&bytes);
        while let Some(event) = client.poll_event() {
            if let ClientEvent::Recipient {
                outcome: Outcome::Delivered(_),
                ..
            } = event
            {
                delivered += 1;
            }
        }
    }
    assert_eq!(delivered, 8);
    // Greeting+EHLO, all four transactions pipelined back to back (three in
    // flight at most), QUIT.
    assert!(round_trips <= 5, "{round_trips} round trips");
}
