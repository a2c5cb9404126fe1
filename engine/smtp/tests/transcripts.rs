//! Tier 1 table tests: recorded server transcripts replayed to the client
//! session at several chunk sizes, with CRLF and with bare LF line endings.
//! The client's output and the outcomes must be the same in every replay.

use sluice_smtp::client::{
    BodyEncoding, ClientConfig, ClientEvent, ClientSession, CloseCause, Envelope, Outcome,
    Recipient, TlsPolicy,
};
use sluice_smtp::DotStuffer;

const BODY: &[u8] = b"From: a@b.test\r\nSubject: hi\r\n\r\n.hidden dot\r\nbye";

struct Transcript {
    name: &'static str,
    /// Server replies, in the order the client reads them, one read per item.
    server: &'static [&'static str],
    recipients: &'static [&'static str],
    /// Expected outcome letters per recipient: D, T or P.
    expected: &'static str,
    /// Expected client bytes (bodies written as `<BODY>`).
    client: &'static str,
}

const TRANSCRIPTS: &[Transcript] = &[
    Transcript {
        name: "postfix, pipelining and chunking",
        server: &[
            "220 mx.example.net ESMTP Postfix (Debian/GNU)\r\n",
            "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <b@x.test>: Recipient address rejected: User unknown\r\n250 2.0.0 Ok: 51 bytes queued as 4Xyz\r\n",
            "221 2.0.0 Bye\r\n",
        ],
        recipients: &["a@x.test", "b@x.test"],
        expected: "DP",
        client: "EHLO client.test\r\nMAIL FROM:<s@a.test> SIZE=47\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 47 LAST\r\n<BODY>QUIT\r\n",
    },
    Transcript {
        name: "exim style, pipelining without chunking, multi-line greeting",
        server: &[
            "220-mail.example.org ESMTP Exim 4.96\r\n220-We do not authorize the use of this system\r\n220 to transport unsolicited mail\r\n",
            "250-mail.example.org Hello client.test [192.0.2.1]\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-PRDR\r\n250 HELP\r\n",
            "250 OK\r\n250 Accepted\r\n354 Enter message, ending with \".\" on a line by itself\r\n",
            "250 OK id=1qXyZ-000abc-00\r\n221 mail.example.org closing connection\r\n",
        ],
        recipients: &["a@x.test"],
        expected: "D",
        client: "EHLO client.test\r\nMAIL FROM:<s@a.test> SIZE=47\r\nRCPT TO:<a@x.test>\r\nDATA\r\n<BODY>QUIT\r\n",
    },
    Transcript {
        name: "old server: EHLO refused, HELO, one command at a time",
        server: &[
            "220 old.example SMTP ready\r\n",
            "500 Command unrecognized\r\n",
            "250 old.example\r\n",
            "250 Sender ok\r\n",
            "250 Recipient ok\r\n",
            "452 Too many recipients\r\n",
            "354 Send data\r\n",
            "250 Message accepted\r\n",
            "221 Goodbye\r\n",
        ],
        recipients: &["a@x.test", "b@x.test", "c@x.test"],
        expected: "DTT",
        client: "EHLO client.test\r\nHELO client.test\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n<BODY>QUIT\r\n",
    },
    Transcript {
        name: "gmail style 421 in the middle of the pipeline",
        server: &[
            "220 mx.google.test ESMTP\r\n",
            "250-mx.google.test at your service\r\n250-SIZE 157286400\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n",
            "250 2.1.0 OK\r\n421-4.7.0 Try again later, closing connection.\r\n421 4.7.0 See https://support.example/smtp\r\n",
        ],
        recipients: &["a@x.test", "b@x.test"],
        expected: "TT",
        client: "EHLO client.test\r\nMAIL FROM:<s@a.test> SIZE=47\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 47 LAST\r\n<BODY>",
    },
    Transcript {
        name: "all recipients refused, DATA still gets 354: a lone dot",
        server: &[
            "220 mx ESMTP\r\n",
            "250-mx\r\n250 PIPELINING\r\n",
            "250 ok\r\n550 5.1.1 unknown\r\n354 go ahead\r\n",
            "554 5.5.1 no valid recipients\r\n221 bye\r\n",
        ],
        recipients: &["a@x.test"],
        expected: "P",
        client: "EHLO client.test\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n.\r\nQUIT\r\n",
    },
];

#[derive(Debug, PartialEq)]
struct Replay {
    client: String,
    outcomes: String,
    closed: Option<CloseCause>,
}

fn replay(t: &Transcript, chunk: usize, lf_only: bool) -> Replay {
    let mut config = ClientConfig::new("client.test");
    config.tls = TlsPolicy::Disabled;
    let mut session = ClientSession::new(config);
    let recipients = t.recipients.iter().map(|r| Recipient::new(*r)).collect();
    session
        .queue(Envelope::new(7, "s@a.test", recipients, BODY.len() as u64))
        .unwrap();
    session.quit();
    let mut client = Vec::new();
    let mut outcomes = vec!['?'; t.recipients.len()];
    let mut closed = None;
    let drain = |session: &mut ClientSession, client: &mut Vec<u8>| {
        while let Some(body) = session.poll_transmit(client) {
            assert_eq!(body.id, 7);
            let mut stuffed = Vec::new();
            match body.encoding {
                BodyEncoding::DotStuffed => DotStuffer::stuff_into(BODY, &mut stuffed),
                BodyEncoding::Raw => stuffed.extend_from_slice(BODY),
            }
            // Check the body bytes, then abbreviate them in the transcript.
            let expected_len = match body.encoding {
                BodyEncoding::DotStuffed => DotStuffer::stuffed_len(BODY),
                BodyEncoding::Raw => BODY.len(),
            };
            assert_eq!(stuffed.len(), expected_len);
            client.extend_from_slice(b"<BODY>");
        }
    };
    for read in t.server {
        drain(&mut session, &mut client);
        let text = if lf_only {
            read.replace("\r\n", "\n")
        } else {
            read.to_string()
        };
        for piece in text.as_bytes().chunks(chunk) {
            session.feed(piece);
        }
    }
    drain(&mut session, &mut client);
    if !session.is_closed() {
        session.connection_lost();
    }
    while let Some(event) = session.poll_event() {
        match event {
            ClientEvent::Recipient { index, outcome, .. } => {
                outcomes[index] = match outcome {
                    Outcome::Delivered(_) => 'D',
                    Outcome::TempFail(_) => 'T',
                    Outcome::PermFail(_) => 'P',
                }
            }
            ClientEvent::Closed(cause) => closed = Some(cause),
            _ => {}
        }
    }
    Replay {
        client: String::from_utf8(client).unwrap(),
        outcomes: outcomes.into_iter().collect(),
        closed,
    }
}

#[test]
fn recorded_transcripts_at_every_chunking() {
    for t in TRANSCRIPTS {
        let reference = replay(t, usize::MAX, false);
        assert_eq!(reference.outcomes, t.expected, "{}", t.name);
        assert_eq!(reference.client, t.client, "{}", t.name);
        for chunk in [1, 2, 3, 5, 7, 16, 64, 1000] {
            for lf_only in [false, true] {
                assert_eq!(
                    replay(t, chunk, lf_only),
                    reference,
                    "{} chunk {chunk} lf {lf_only}",
                    t.name
                );
            }
        }
    }
}
