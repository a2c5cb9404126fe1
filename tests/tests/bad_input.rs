//! The bad-input suite: a table of malformed sessions played against the
//! real `sluice` injection listener with a raw `std` socket (issue 10, "Bad
//! input"). Each row sends bytes (possibly in several writes with pauses in
//! between) and names the replies it must get, in order, and how the
//! session ends. After the table the engine must still be alive, accept a
//! normal transaction, and have delivered to the sink exactly the messages
//! it acknowledged: nothing acknowledged is lost, nothing refused (such as
//! a message smuggled behind `LF.LF`) arrives.
//!
//! Limits used (configured short so that the suite stays quick): one shard,
//! `recipients_max = 100`, `message_size_max = 64KiB`, `idle_timeout = 2s`,
//! `connections_per_ip_max = 6`.
//!
//! Build the binaries first (`cargo build --release --bins`).

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest wait for one reply: above the idle timeout, so a row that expects
/// the idle `421` gets it before this fires.
const REPLY_WAIT: Duration = Duration::from_secs(6);
const IDLE: Duration = Duration::from_secs(2);
const PER_IP_MAX: usize = 6;
const SIZE_MAX: usize = 64 * 1024;
const RCPT_MAX: usize = 100;

/// One thing the client does.
enum Step {
    Send(Vec<u8>),
    Pause(Duration),
}

/// How the session ends after the expected replies.
#[derive(Clone, Copy, Debug)]
enum End {
    /// The client sends QUIT and must get `221`, then the server closes.
    Quit,
    /// The server must close the connection (after a `421` or a `QUIT` in the steps).
    Closed,
    /// The client hangs up without a word (the server must cope).
    Hangup,
}

/// An expected reply: `"250"`, `"554 5.6.0"` (prefix of `code text`), or
/// [`QUEUED`] for a `250` that acknowledges a message.
type Want = &'static str;
const QUEUED: Want = "queued";

struct Row {
    name: &'static str,
    steps: Vec<Step>,
    want: Vec<Want>,
    end: End,
    /// `X-Sluice-Id`s that this row gets acknowledged (and so must arrive);
    /// acknowledged messages without an id are counted, not named.
    acked: Vec<&'static str>,
}

fn send(bytes: impl AsRef<[u8]>) -> Step {
    Step::Send(bytes.as_ref().to_vec())
}

fn pause_ms(ms: u64) -> Step {
    Step::Pause(Duration::from_millis(ms))
}

const EHLO: &str = "EHLO bad.test\r\n";
const ENVELOPE: &str = "MAIL FROM:<s@src.test>\r\nRCPT TO:<r@dest.test>\r\n";

fn with_id(id: &str, body: &str) -> String {
    format!("X-Sluice-Id: {id}\r\nSubject: {id}\r\n\r\n{body}")
}

/// A DATA transaction whose body contains a smuggling ending `ending`
/// followed by a whole second transaction; the real end comes after a pause.
/// Only `CRLF.CRLF` ends DATA (RFC 5321 §4.1.1.4), and the bare CR/LF makes
/// the whole message unacceptable (§2.3.8), so neither part is queued.
fn smuggling(name: &'static str, ending: &str, id: &'static str) -> Row {
    let first = with_id(id, "first part");
    let smuggled = format!(
        "{first}{ending}MAIL FROM:<evil@src.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n{}{ending}",
        with_id("smuggled", "smuggled message")
    );
    Row {
        name,
        steps: vec![
            send(format!("{EHLO}{ENVELOPE}DATA\r\n")),
            pause_ms(100),
            send(smuggled),
            // Nothing may be answered here: the message has not ended.
            pause_ms(300),
            send("tail line\r\n.\r\n"),
            send("NOOP\r\n"),
        ],
        want: vec!["250", "250", "250", "354", "554 5.6.0", "250"],
        end: End::Quit,
        acked: vec![],
    }
}

fn table() -> Vec<Row> {
    let long_local = "l".repeat(65);
    let local_64 = "l".repeat(64);
    let long_domain = format!("{}.test", vec!["d".repeat(60); 5].join("."));
    let long_path = format!("{local_64}@{}.test", vec!["p".repeat(60); 4].join("."));
    let mut many_rcpts = String::from("MAIL FROM:<s@src.test>\r\n");
    for i in 0..=RCPT_MAX {
        many_rcpts.push_str(&format!("RCPT TO:<r{i}@many.test>\r\n"));
    }
    let mut many_want = vec!["250", "250"];
    many_want.extend(std::iter::repeat_n("250", RCPT_MAX));
    // RFC 5321 §4.5.3.1.10: the server may refuse recipients beyond its limit with 452.
    many_want.extend(["452", "354", QUEUED, "250", "250"]);
    // Well over the limit, in lines of a legal length.
    let big_body = format!(
        "{}.\r\n",
        ("x".repeat(78) + "\r\n").repeat(SIZE_MAX / 80 + 100)
    );
    vec![
        Row {
            name: "bad syntax",
            steps: vec![send(format!(
                "{EHLO}MAIL FROM:s@src.test\r\nMAIL FROM <s@src.test>\r\nMAIL FROM:<a@@src.test>\r\n\
                 MAIL FROM:<s@src.test> FOO=bar\r\nMAIL FROM:<s@src.test> SIZE=abc\r\n\
                 MAIL FROM:<s@src.test> BODY=9BIT\r\nEHLO\r\n\r\nNOOP\r\n"
            ))],
            want: vec!["250", "501 5.1.7", "501", "501 5.1.7", "555 5.5.4", "501 5.5.4", "501 5.5.4", "501", "500", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            name: "unknown verbs",
            steps: vec![send(format!("{EHLO}FOO bar\r\nXYZZY\r\nEXPN list\r\nNOOP\r\n"))],
            want: vec!["250", "500 5.5.1", "500 5.5.1", "502", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            // The server allows 1024 octets (RFC 5321 §4.5.3.1.4 lets
            // extensions such as SIZE and DSN lengthen MAIL/RCPT); beyond
            // that it refuses the line once, without buffering it.
            name: "overlong command lines",
            steps: vec![
                send(EHLO),
                send(format!("NOOP {}\r\n", "a".repeat(2000))),
                send(format!("NOOP {}", "b".repeat(50_000))),
                pause_ms(100),
                send(format!("{}\r\nNOOP\r\n", "b".repeat(50_000))),
                send(format!("MAIL FROM:<s@src.test> ENVID={}\r\nNOOP\r\n", "e".repeat(1100))),
            ],
            want: vec!["250", "500 5.5.2", "500 5.5.2", "250", "500 5.5.2", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            // RFC 5321 §4.5.3.1.1-3: local part 64, domain 255, path 256.
            name: "overlong paths",
            steps: vec![send(format!(
                "{EHLO}MAIL FROM:<{long_local}@src.test>\r\nMAIL FROM:<s@{long_domain}>\r\n\
                 MAIL FROM:<{long_path}>\r\nMAIL FROM:<{local_64}@src.test>\r\n\
                 RCPT TO:<{long_local}@dest.test>\r\nRCPT TO:<r@{long_domain}>\r\nRSET\r\n"
            ))],
            want: vec!["250", "501 5.1.7", "501 5.1.7", "501 5.1.7", "250", "501 5.1.3", "501 5.1.3", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            name: "bare LF and bare CR in commands",
            steps: vec![
                send("EHLO bad.test\n"),
                pause_ms(100),
                send("NOOP\r\n"),
                send("NO\rOP\r\n"),
                send(format!("{EHLO}MAIL FROM:<s@src.test>\nRCPT TO:<r@dest.test>\r\nNOOP\r\n")),
            ],
            want: vec!["500 5.5.2", "250", "500 5.5.2", "250", "500 5.5.2", "503", "250"],
            end: End::Quit,
            acked: vec![],
        },
        smuggling("DATA ending LF.LF", "\n.\n", "smuggle-lf-lf"),
        smuggling("DATA ending CRLF.LF", "\r\n.\n", "smuggle-crlf-lf"),
        smuggling("DATA ending LF.CRLF", "\n.\r\n", "smuggle-lf-crlf"),
        smuggling("DATA ending CR.CRLF", "\r.\r\n", "smuggle-cr-crlf"),
        Row {
            name: "bare CR and bare LF inside DATA, line over 998",
            steps: vec![
                send(format!("{EHLO}{ENVELOPE}DATA\r\n")),
                send(format!("{}\r\nbare\rcr\r\n.\r\n", with_id("bare-cr", "x"))),
                send(format!("{ENVELOPE}DATA\r\n")),
                send(format!("{}\r\nbare\nlf\r\n.\r\n", with_id("bare-lf", "x"))),
                send(format!("{ENVELOPE}DATA\r\n")),
                send(format!("{}\r\n{}\r\n.\r\n", with_id("long-line", "x"), "y".repeat(1500))),
            ],
            want: vec!["250", "250", "250", "354", "554 5.6.0", "250", "250", "354", "554 5.6.0", "250", "250", "354", "554 5.6.0"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            // The exact ending split across writes, dot-stuffed lines and a
            // line that is only `..`: all acknowledged only at the real end.
            name: "CRLF.CRLF split across reads, dot-stuffing",
            steps: vec![
                send(format!("{EHLO}{ENVELOPE}DATA\r\n")),
                send(with_id("split-1", "..leading dot\r\n..\r\nend")),
                pause_ms(150),
                send("\r\n."),
                pause_ms(150),
                send("\r\n"),
                send(format!("{ENVELOPE}DATA\r\n")),
                send(format!("{}\r", with_id("split-2", "body"))),
                pause_ms(150),
                send("\n.\r"),
                pause_ms(150),
                send("\n"),
            ],
            want: vec!["250", "250", "250", "354", QUEUED, "250", "250", "354", QUEUED],
            end: End::Quit,
            acked: vec!["split-1", "split-2"],
        },
        Row {
            // RFC 3030 §2: after an error reply the chunk's bytes are read
            // and discarded, never executed as commands (`QUIT\r\n` here).
            name: "BDAT without MAIL",
            steps: vec![send(format!("{EHLO}BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"))],
            want: vec!["250", "503 5.5.1", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            name: "BDAT with bad sizes",
            steps: vec![send(format!(
                "{EHLO}{ENVELOPE}BDAT x LAST\r\nBDAT -1\r\nBDAT 99999999999999999999999\r\nBDAT\r\nRSET\r\n"
            ))],
            want: vec!["250", "250", "250", "501 5.5.4", "501 5.5.4", "501 5.5.4", "501", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            // RFC 3030 §3: DATA and BDAT never mix in one transaction; the
            // BDAT transaction itself goes on.
            name: "DATA after BDAT",
            steps: vec![{
                let chunk = with_id("bdat-then-data", "chunked\r\n");
                send(format!("{EHLO}{ENVELOPE}BDAT {}\r\n{chunk}DATA\r\nBDAT 0 LAST\r\n", chunk.len()))
            }],
            want: vec!["250", "250", "250", "250", "503 5.5.1", QUEUED],
            end: End::Quit,
            acked: vec!["bdat-then-data"],
        },
        Row {
            name: "BDAT LAST larger than the bytes sent, then close",
            steps: vec![send(format!("{EHLO}{ENVELOPE}BDAT 500 LAST\r\n{}", with_id("bdat-short", "short")))],
            want: vec!["250", "250", "250"],
            end: End::Hangup,
            acked: vec![],
        },
        Row {
            name: "BDAT chunk without LAST, then close",
            steps: vec![{
                let chunk = with_id("bdat-open", "never finished\r\n");
                send(format!("{EHLO}{ENVELOPE}BDAT {}\r\n{chunk}", chunk.len()))
            }],
            want: vec!["250", "250", "250", "250"],
            end: End::Hangup,
            acked: vec![],
        },
        Row {
            name: "BDAT larger than the size limit",
            steps: vec![
                send(format!("{EHLO}{ENVELOPE}BDAT {} LAST\r\n", SIZE_MAX + 4096)),
                send(vec![b'z'; SIZE_MAX + 4096]),
                send("NOOP\r\n"),
            ],
            want: vec!["250", "250", "250", "552 5.3.4", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            name: "commands out of order",
            steps: vec![send(format!(
                "{EHLO}RCPT TO:<r@dest.test>\r\nDATA\r\nBDAT 0 LAST\r\nMAIL FROM:<s@src.test>\r\nDATA\r\n\
                 MAIL FROM:<s@src.test>\r\nRSET\r\n"
            ))],
            want: vec!["250", "503 5.5.1", "503 5.5.1", "503 5.5.1", "250", "554", "503 5.5.1", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            // One reply per command, in order, even though EHLO never came.
            name: "pipelining before EHLO",
            steps: vec![send(format!("{ENVELOPE}DATA\r\nNOOP\r\nQUIT\r\n"))],
            want: vec!["503 5.5.1", "503 5.5.1", "503 5.5.1", "250", "221"],
            end: End::Closed,
            acked: vec![],
        },
        Row {
            name: "too many recipients, then a new transaction",
            steps: vec![
                send(EHLO),
                send(many_rcpts),
                send("DATA\r\n"),
                pause_ms(100),
                send(format!("{}\r\n.\r\n", with_id("hundred-rcpts", "many"))),
                send("MAIL FROM:<s@src.test>\r\nRSET\r\n"),
            ],
            want: many_want,
            end: End::Quit,
            acked: vec!["hundred-rcpts"],
        },
        Row {
            // RFC 1870 §6.1 (declared) and §6.2 (streamed): 552 5.3.4; the
            // session goes on and accepts a small message.
            name: "oversize messages",
            steps: vec![
                send(format!("{EHLO}MAIL FROM:<s@src.test> SIZE={}\r\n", SIZE_MAX + 1)),
                send(format!("{ENVELOPE}DATA\r\n")),
                pause_ms(100),
                send(format!("{}{big_body}", with_id("too-big", ""))),
                send(format!("{ENVELOPE}DATA\r\n")),
                pause_ms(100),
                send(format!("{}\r\n.\r\n", with_id("after-too-big", "small"))),
            ],
            want: vec!["250", "552 5.3.4", "250", "250", "354", "552 5.3.4", "250", "250", "354", QUEUED],
            end: End::Quit,
            acked: vec!["after-too-big"],
        },
        Row {
            name: "NUL bytes in commands",
            steps: vec![send(format!("{EHLO}NO\0OP\r\nMAIL FROM:<s\0@src.test>\r\nNOOP\r\n"))],
            want: vec!["250", "500", "501 5.1.7", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            // RFC 6531 §3.4: non-ASCII addresses only with SMTPUTF8.
            name: "non-ASCII in commands without SMTPUTF8",
            steps: vec![send(format!(
                "{EHLO}MAIL FROM:<j\u{f6}rg@src.test>\r\nMAIL FROM:<s@src.test>\r\nRCPT TO:<j\u{f6}rg@dest.test>\r\n\
                 RSET\r\nMAIL FROM:<j\u{f6}rg@src.test> SMTPUTF8\r\nRSET\r\n"
            ))],
            want: vec!["250", "553 5.6.7", "250", "553 5.6.7", "250", "250", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            // RFC 5321 §4.1.4: EHLO mid-transaction resets it.
            name: "EHLO resets the transaction",
            steps: vec![send(format!("{EHLO}{ENVELOPE}{EHLO}DATA\r\nRSET\r\n"))],
            want: vec!["250", "250", "250", "250", "503 5.5.1", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            // RFC 2920 §3.1: one bad recipient in a pipelined group does not
            // spoil the others.
            name: "pipelined transaction with one bad recipient",
            steps: vec![{
                let body = with_id("one-bad-rcpt", "ok\r\n");
                send(format!(
                    "{EHLO}MAIL FROM:<s@src.test>\r\nRCPT TO:<bad@@dest.test>\r\nRCPT TO:<r@dest.test>\r\nBDAT {} LAST\r\n{body}",
                    body.len()
                ))
            }],
            want: vec!["250", "250", "501 5.1.3", "250", QUEUED],
            end: End::Quit,
            acked: vec!["one-bad-rcpt"],
        },
        Row {
            // Legal edge cases: an empty DATA body (RFC 5321 §4.1.1.4), a
            // BDAT body without a final CRLF, `BDAT 0 LAST` alone (RFC 3030 §2).
            name: "empty body, body without final CRLF, BDAT 0 LAST",
            steps: vec![{
                let body = with_id("no-final-crlf", "no final crlf");
                send(format!(
                    "{EHLO}{ENVELOPE}DATA\r\n.\r\n{ENVELOPE}BDAT {} LAST\r\n{body}{ENVELOPE}BDAT 0 LAST\r\n",
                    body.len()
                ))
            }],
            want: vec!["250", "250", "250", "354", QUEUED, "250", "250", QUEUED, "250", "250", QUEUED],
            end: End::Quit,
            acked: vec!["no-final-crlf"],
        },
        Row {
            // STARTTLS is not offered yet: refused, and the plaintext after
            // it is an ordinary command, not an injection.
            name: "STARTTLS and AUTH while not offered",
            steps: vec![send(format!("{EHLO}STARTTLS\r\nMAIL FROM:<s@src.test>\r\nAUTH PLAIN AGEAYg==\r\nRSET\r\n"))],
            want: vec!["250", "502 5.5.1", "250", "502", "250"],
            end: End::Quit,
            acked: vec![],
        },
        Row {
            // RFC 5321 §4.5.3.2.7 (configured short here).
            name: "idle client between commands",
            steps: vec![send(EHLO), Step::Pause(IDLE + Duration::from_millis(800))],
            want: vec!["250", "421 4.4.2"],
            end: End::Closed,
            acked: vec![],
        },
        Row {
            name: "slow client stalls in the middle of a command",
            steps: vec![send(format!("{EHLO}MAIL FROM:<s@sr")), Step::Pause(IDLE + Duration::from_millis(800))],
            want: vec!["250", "421 4.4.2"],
            end: End::Closed,
            acked: vec![],
        },
        Row {
            name: "slow client stalls in DATA",
            steps: vec![
                send(format!("{EHLO}{ENVELOPE}DATA\r\n")),
                pause_ms(100),
                send(with_id("stalled", "half a body")),
                Step::Pause(IDLE + Duration::from_millis(800)),
            ],
            want: vec!["250", "250", "250", "354", "421 4.4.2"],
            end: End::Closed,
            acked: vec![],
        },
    ]
}

#[derive(Debug)]
enum Read1 {
    Reply { code: u16, text: String },
    Closed,
    Timeout,
}

/// Reads whole replies off a raw socket.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, REPLY_WAIT).expect("connect to sluice");
        stream.set_read_timeout(Some(REPLY_WAIT)).expect("timeout");
        stream.set_write_timeout(Some(REPLY_WAIT)).expect("timeout");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends; a server that has already closed makes this fail, which some
    /// rows expect, so the error is returned rather than fatal.
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn line(&mut self) -> Result<String, Read1> {
        let deadline = Instant::now() + REPLY_WAIT;
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..p]).into_owned());
            }
            if Instant::now() > deadline {
                return Err(Read1::Timeout);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Read1::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Read1::Timeout)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(Read1::Closed),
            }
        }
    }

    /// One whole reply, multi-line replies joined.
    fn reply(&mut self) -> Read1 {
        let mut text = String::new();
        loop {
            let line = match self.line() {
                Ok(l) => l,
                Err(e) => return e,
            };
            let code: u16 = match line.get(..3).and_then(|c| c.parse().ok()) {
                Some(c) => c,
                None => panic!("malformed reply line {line:?}"),
            };
            text.push_str(line.get(4..).unwrap_or(""));
            if line.as_bytes().get(3) != Some(&b'-') {
                return Read1::Reply { code, text };
            }
            text.push('\n');
        }
    }

    /// Whether the server closes the connection (EOF or reset) within the wait.
    fn closes(&mut self) -> bool {
        matches!(self.reply(), Read1::Closed)
    }
}

fn matches(want: Want, code: u16, text: &str) -> bool {
    if want == QUEUED {
        return code == 250 && text.ends_with(" queued");
    }
    format!("{code} {text}").starts_with(want)
}

/// Plays one row; returns the transcript of replies and the number of
/// messages acknowledged, or a description of the first mismatch.
fn play(addr: SocketAddr, row: &Row) -> Result<usize, String> {
    let mut c = Conn::open(addr);
    match c.reply() {
        Read1::Reply { code: 220, .. } => {}
        other => return Err(format!("greeting: {other:?}")),
    }
    let mut send_failed = false;
    for step in &row.steps {
        match step {
            Step::Send(bytes) => {
                if c.send(bytes).is_err() {
                    send_failed = true;
                }
            }
            Step::Pause(d) => std::thread::sleep(*d),
        }
    }
    let mut queued = 0;
    let mut transcript = Vec::new();
    for (i, want) in row.want.iter().enumerate() {
        match c.reply() {
            Read1::Reply { code, text } => {
                transcript.push(format!("{code} {text}"));
                if !matches(want, code, &text) {
                    return Err(format!(
                        "reply {i}: want {want:?}, got \"{code} {text}\" (send failed: {send_failed}); so far {transcript:#?}"
                    ));
                }
                if want == &QUEUED {
                    queued += 1;
                }
            }
            other => {
                return Err(format!(
                    "reply {i}: want {want:?}, got {other:?}; so far {transcript:#?}"
                ))
            }
        }
    }
    match row.end {
        End::Quit => {
            c.send(b"QUIT\r\n")
                .map_err(|e| format!("QUIT not sendable: {e}"))?;
            match c.reply() {
                Read1::Reply { code: 221, .. } => {}
                other => {
                    return Err(format!(
                        "QUIT: want 221, got {other:?} (an extra or missing reply?); so far {transcript:#?}"
                    ))
                }
            }
            if !c.closes() {
                return Err("the server did not close after 221".into());
            }
        }
        End::Closed => {
            if !c.closes() {
                return Err(format!(
                    "the server did not close the connection; so far {transcript:#?}"
                ));
            }
        }
        End::Hangup => {}
    }
    Ok(queued)
}

/// One transaction that must be acknowledged.
fn normal_transaction(addr: SocketAddr, id: &str) -> Result<usize, String> {
    let row = Row {
        name: "normal",
        steps: vec![
            send(format!("{EHLO}{ENVELOPE}DATA\r\n")),
            pause_ms(50),
            send(format!("{}\r\n.\r\n", with_id(id, "fine"))),
        ],
        want: vec!["250", "250", "250", "354", QUEUED],
        end: End::Quit,
        acked: vec![],
    };
    play(addr, &row)
}

#[test]
fn malformed_sessions_get_their_replies_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = support::sink(dir.path(), "sink", &[]);
    let inject = format!(
        "recipients_max = {RCPT_MAX}\nmessage_size_max = \"{}KiB\"\nidle_timeout = \"{}s\"\nconnections_per_ip_max = {PER_IP_MAX}",
        SIZE_MAX / 1024,
        IDLE.as_secs()
    );
    let engine = support::config(dir.path(), sink.port)
        .inject(&inject)
        .start();
    let addr = engine.addr();

    let rows = table();
    let mut failures = Vec::new();
    let mut queued = 0usize;
    let mut acked: HashSet<&str> = HashSet::new();
    for row in &rows {
        match play(addr, row) {
            Ok(n) => {
                queued += n;
                acked.extend(row.acked.iter().copied());
            }
            Err(e) => failures.push(format!("{}: {e}", row.name)),
        }
        assert!(
            engine.alive(),
            "sluice died during `{}`:\n{}",
            row.name,
            engine.said()
        );
    }
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );

    // A connection flood from one IP: the first PER_IP_MAX are served, the
    // rest get 421 4.7.0 and are closed; once they go, a new one is served.
    flood(addr);

    // Still alive and serving.
    queued +=
        normal_transaction(addr, "after-the-table").expect("a normal transaction after the table");
    acked.insert("after-the-table");
    assert!(engine.alive(), "sluice died:\n{}", engine.said());

    // Exactly the acknowledged messages arrive; nothing refused does.
    let start = std::time::Instant::now();
    while sink.messages() < queued as u64 {
        if start.elapsed() > support::SETTLE {
            let ids = sink.id_counts();
            let missing: Vec<&&str> = acked.iter().filter(|id| !ids.contains_key(**id)).collect();
            let mut log = String::new();
            if let Ok(rd) = std::fs::read_dir(dir.path().join("log")) {
                for e in rd.flatten() {
                    log += &std::fs::read_to_string(e.path()).unwrap_or_default();
                }
            }
            panic!(
                "timed out: {} of {queued} acknowledged messages at the sink; missing {missing:?}\nengine said:\n{}\ndelivery log:\n{log}",
                sink.messages(),
                engine.said()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        sink.messages(),
        queued as u64,
        "messages at the sink vs. acknowledged"
    );
    let ids: HashMap<String, usize> = sink.id_counts();
    for id in &acked {
        assert_eq!(
            ids.get(*id).copied(),
            Some(1),
            "acknowledged {id} arrives exactly once ({ids:?})"
        );
    }
    for id in ids.keys() {
        assert!(
            acked.contains(id.as_str()),
            "{id} arrived but was never acknowledged ({ids:?})"
        );
    }
}

fn flood(addr: SocketAddr) {
    // Connections from earlier rows may still be leaving the per-IP count.
    std::thread::sleep(Duration::from_millis(300));
    let mut served = Vec::new();
    for _ in 0..PER_IP_MAX {
        let mut c = Conn::open(addr);
        match c.reply() {
            Read1::Reply { code: 220, .. } => served.push(c),
            other => panic!("connection {} within the limit: {other:?}", served.len()),
        }
    }
    for i in 0..3 * PER_IP_MAX {
        let mut c = Conn::open(addr);
        match c.reply() {
            Read1::Reply { code: 421, text } => assert!(text.starts_with("4.7.0"), "{text}"),
            other => panic!("flood connection {i}: want 421 4.7.0, got {other:?}"),
        }
        assert!(c.closes(), "flood connection {i} is closed after 421");
    }
    // The served ones still work.
    for c in &mut served {
        c.send(b"NOOP\r\n").expect("NOOP");
        assert!(matches!(c.reply(), Read1::Reply { code: 250, .. }));
    }
    drop(served);
    let start = Instant::now();
    loop {
        let mut c = Conn::open(addr);
        match c.reply() {
            Read1::Reply { code: 220, .. } => break,
            other => assert!(
                start.elapsed() < REPLY_WAIT,
                "after the flood a new connection is served: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The EHLO argument. RFC 5321 §4.1.1.1 asks for a domain or an address
/// literal; RFC 6531 §3.3 extends `sub-domain` with U-labels, and the
/// engine advertises SMTPUTF8, so a UTF-8 host name is accepted (as Exim
/// and Postfix do). What is refused: bytes that are not UTF-8 (`500`),
/// control characters and a second word (`501`).
#[test]
fn ehlo_accepts_a_u_label_and_refuses_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = support::sink(dir.path(), "sink", &[]);
    let engine = support::config(dir.path(), sink.port).start();
    let rows = [
        ("U-label EHLO", b"EHLO h\xc3\xb6.test\r\n".to_vec(), "250"),
        ("not UTF-8", b"EHLO h\xf6.test\r\n".to_vec(), "500 5.5.2"),
        ("control character", b"EHLO a\x01b.test\r\n".to_vec(), "501"),
        ("two words", b"EHLO a.test b.test\r\n".to_vec(), "501"),
    ];
    let mut failures = Vec::new();
    for (name, bytes, want) in rows {
        let row = Row {
            name,
            steps: vec![Step::Send(bytes)],
            want: vec![want],
            end: End::Quit,
            acked: vec![],
        };
        if let Err(e) = play(engine.addr(), &row) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// RELIABILITY.md: "reject bare CR or LF at injection", and the engine does
/// for DATA (554 5.6.0, rows above). Through BDAT the same content is
/// acknowledged and later relayed as is; over DATA to a next hop without
/// CHUNKING a bare CR before a dot (`CR.CRLF`) leaves the engine unstuffed.
#[test]
fn bdat_content_gets_the_same_checks_as_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = support::sink(dir.path(), "sink", &[]);
    let engine = support::config(dir.path(), sink.port).start();
    let mut failures = Vec::new();
    for (name, content) in [
        ("bare LF", "bare\nlf\r\n".to_string()),
        ("bare CR", "bare\rcr\r\n".to_string()),
        (
            "CR.CRLF",
            "x\r.\r\nMAIL FROM:<evil@src.test>\r\n".to_string(),
        ),
        ("line over 998", format!("{}\r\n", "y".repeat(1500))),
    ] {
        let body = with_id("bdat-check", &content);
        let row = Row {
            name,
            steps: vec![send(format!(
                "{EHLO}{ENVELOPE}BDAT {} LAST\r\n{body}",
                body.len()
            ))],
            want: vec!["250", "250", "250", "554 5.6.0"],
            end: End::Quit,
            acked: vec![],
        };
        if let Err(e) = play(engine.addr(), &row) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
