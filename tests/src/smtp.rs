//! A blocking SMTP client for injecting test mail: one connection, one
//! reply at a time, every unexpected reply a panic naming it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::{loopback, TIMEOUT};

/// One SMTP connection to a `sluice` injection listener on 127.0.0.1.
pub struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    /// Connects, expects `220` and says `EHLO client.test` (`250`).
    pub fn connect(port: u16) -> Smtp {
        Smtp::connect_as(port, "client.test")
    }

    /// Connects, expects `220` and says `EHLO <name>` (`250`).
    pub fn connect_as(port: u16, name: &str) -> Smtp {
        let mut c = Smtp::open(loopback(port));
        assert_eq!(c.reply().0, 220);
        assert_eq!(c.cmd(&format!("EHLO {name}")).0, 250);
        c
    }

    /// Connects until the greeting is `220` (the engine answers `421 4.3.2`
    /// while it recovers its spool), for at most [`TIMEOUT`], then says
    /// `EHLO injector.test` (`250`).
    pub fn connect_ready(port: u16) -> Smtp {
        let start = Instant::now();
        let mut c = loop {
            let mut c = Smtp::open(loopback(port));
            let (code, greeting) = c.reply();
            if code == 220 {
                break c;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "sluice keeps answering {greeting:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        c.expect("EHLO injector.test", 250);
        c
    }

    fn open(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect sluice");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Smtp {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        }
    }

    /// Reads one (possibly multi-line) reply: (code, last line).
    pub fn reply(&mut self) -> (u16, String) {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read reply");
            assert!(line.len() >= 4, "short reply {line:?}");
            if line.as_bytes()[3] == b' ' {
                return (
                    line[..3].parse().expect("code"),
                    line.trim_end().to_string(),
                );
            }
        }
    }

    /// Sends `line` and CRLF; returns the reply.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        self.reply()
    }

    /// Writes `text` as is (several pipelined commands, say); read their
    /// replies with [`Smtp::read`].
    pub fn write(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("write");
    }

    /// Reads one reply and panics unless it has `code`; returns its text.
    pub fn read(&mut self, code: u16) -> String {
        let (got, text) = self.reply();
        assert_eq!(got, code, "expected {code}, got {text:?}");
        text
    }

    /// Sends `line` and panics unless the reply has `code`; returns its text.
    pub fn expect(&mut self, line: &str, code: u16) -> String {
        let (got, text) = self.cmd(line);
        assert_eq!(got, code, "{line:?} answered {text:?}");
        text
    }

    /// Sends one transaction whose message is `data` (headers and body,
    /// CRLF lines, not yet dot-stuffed); returns the `250` reply's text.
    pub fn transaction(&mut self, from: &str, to: &[&str], data: &str) -> String {
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for r in to {
            self.expect(&format!("RCPT TO:<{r}>"), 250);
        }
        self.data(data)
    }

    /// `DATA` (`354`), then `data` (CRLF lines, not yet dot-stuffed) and
    /// the final dot (`250`); returns the `250` reply's text.
    pub fn data(&mut self, data: &str) -> String {
        self.expect("DATA", 354);
        let mut stuffed = data.replace("\r\n.", "\r\n..");
        if stuffed.starts_with('.') {
            stuffed.insert(0, '.');
        }
        if !stuffed.ends_with("\r\n") {
            stuffed.push_str("\r\n");
        }
        stuffed.push('.');
        self.expect(&stuffed, 250)
    }

    /// Sends one message tagged `tag` (subject, `X-Sluice-Id` and
    /// Message-ID); returns the spool id from `250 2.0.0 s<k>.<id> queued`.
    pub fn send(&mut self, from: &str, to: &[&str], tag: &str) -> String {
        let data = format!(
            "From: <{from}>\r\nTo: <{}>\r\nSubject: {tag}\r\nX-Sluice-Id: {tag}\r\nMessage-ID: <{tag}@client.test>\r\n\r\nBody of {tag}.\r\n",
            to.first().copied().unwrap_or("")
        );
        let text = self.transaction(from, to, &data);
        text.split_whitespace()
            .find(|w| w.starts_with('s') && w.contains('.'))
            .unwrap_or("")
            .to_string()
    }

    /// Says `QUIT` and closes (the reply is not checked).
    pub fn quit(mut self) {
        let _ = self.cmd("QUIT");
    }

    /// Says `QUIT` and panics unless the reply is `221`.
    pub fn close(mut self) {
        self.expect("QUIT", 221);
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A one-connection server that answers every command and returns
    /// the raw bytes of the data it received (up to the final dot).
    fn server(listener: TcpListener) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut w = s;
            w.write_all(b"220 test\r\n").expect("greet");
            let mut data = String::new();
            let mut in_data = false;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).expect("read") == 0 {
                    return data;
                }
                let reply: &[u8] = if in_data {
                    if line != ".\r\n" {
                        data.push_str(&line);
                        continue;
                    }
                    in_data = false;
                    b"250 2.0.0 s0.42 queued\r\n"
                } else if line.starts_with("EHLO") {
                    b"250-test\r\n250 PIPELINING\r\n"
                } else if line.starts_with("DATA") {
                    in_data = true;
                    b"354 go\r\n"
                } else if line.starts_with("QUIT") {
                    w.write_all(b"221 bye\r\n").expect("write");
                    return data;
                } else {
                    b"250 ok\r\n"
                };
                w.write_all(reply).expect("write");
            }
        })
    }

    #[test]
    fn a_transaction_is_dot_stuffed_and_send_returns_the_spool_id() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = server(listener);
        let mut c = Smtp::connect(port);
        let text = c.transaction("a@x.test", &["b@y.test"], ".one\r\ntwo\r\n.three");
        assert_eq!(text, "250 2.0.0 s0.42 queued");
        assert_eq!(c.send("a@x.test", &["b@y.test"], "t1"), "s0.42");
        c.close();
        let data = served.join().expect("server");
        assert!(
            data.starts_with("..one\r\ntwo\r\n..three\r\nFrom: <a@x.test>\r\n"),
            "{data:?}"
        );
        assert!(data.ends_with("Body of t1.\r\n"), "{data:?}");
    }
}
