//! The sink over real loopback sockets: pipelining, DATA, BDAT, STARTTLS,
//! Python's smtplib, id recording, capture and the latency outputs.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;

use common::*;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use sluice_sink::config::Capture;
use sluice_sink::Outputs;

#[test]
fn pipelined_data_and_bdat_are_counted_exactly() {
    let sink = start(config());
    let mut c = sink.client();
    let (code, ehlo) = c.cmd("EHLO client.test");
    assert_eq!(code, 250);
    for ext in [
        "PIPELINING",
        "CHUNKING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }

    // Two whole DATA transactions in one write (RFC 2920), with a line that
    // needs dot-stuffing and a fake end marker inside a line.
    let body1 = format!("{}.dot line\r\nnot the end .\r\n", message("m1"));
    let body2 = message("m2");
    let mut wire = Vec::new();
    wire.extend_from_slice(
        b"MAIL FROM:<t@client.test> BODY=8BITMIME SIZE=5000\r\nRCPT TO:<a@one.test>\r\n\
          RCPT TO:<b@one.test> NOTIFY=SUCCESS,FAILURE\r\nRCPT TO:<c@two.test>\r\nDATA\r\n",
    );
    wire.extend_from_slice(&data_payload(&body1));
    wire.extend_from_slice(b"MAIL FROM:<>\r\nRCPT TO:<d@two.test>\r\nDATA\r\n");
    wire.extend_from_slice(&data_payload(&body2));
    c.send(&wire);
    let codes: Vec<u16> = (0..10).map(|_| c.reply().0).collect();
    assert_eq!(codes, [250, 250, 250, 250, 354, 250, 250, 250, 354, 250]);

    // BDAT in two chunks, then BDAT 0 LAST for an empty message, all pipelined.
    let body3 = message("m3");
    let (h1, h2) = body3.as_bytes().split_at(10);
    let mut wire = Vec::new();
    wire.extend_from_slice(b"MAIL FROM:<t@client.test>\r\nRCPT TO:<e@one.test>\r\n");
    wire.extend_from_slice(format!("BDAT {}\r\n", h1.len()).as_bytes());
    wire.extend_from_slice(h1);
    wire.extend_from_slice(format!("BDAT {} LAST\r\n", h2.len()).as_bytes());
    wire.extend_from_slice(h2);
    wire.extend_from_slice(b"MAIL FROM:<t@client.test>\r\nRCPT TO:<f@one.test>\r\nBDAT 0 LAST\r\n");
    wire.extend_from_slice(b"RSET\r\nNOOP\r\n");
    c.send(&wire);
    let codes: Vec<u16> = (0..9).map(|_| c.reply().0).collect();
    assert_eq!(codes, [250, 250, 250, 250, 250, 250, 250, 250, 250]);
    assert_eq!(c.cmd("QUIT").0, 221);

    let s = sink.stop();
    assert_eq!(n(&s, &["messages"]), 4);
    assert_eq!(n(&s, &["recipients"]), 6);
    assert_eq!(n(&s, &["transactions"]), 4);
    assert_eq!(
        n(&s, &["bytes"]),
        (body1.len() + body2.len() + body3.len()) as u64
    );
    assert_eq!(n(&s, &["connections"]), 1);
    assert_eq!(n(&s, &["replies", "220"]), 1);
    assert_eq!(n(&s, &["replies", "250"]), 18);
    assert_eq!(n(&s, &["replies", "354"]), 2);
    assert_eq!(n(&s, &["replies", "221"]), 1);
    assert_eq!(n(&s, &["domains", "one.test", "messages"]), 3);
    assert_eq!(n(&s, &["domains", "one.test", "recipients"]), 4);
    assert_eq!(n(&s, &["domains", "two.test", "messages"]), 2);
    assert_eq!(n(&s, &["domains", "one.test", "peak_connections"]), 1);
    // Three messages carried the injection header; the empty one did not.
    assert_eq!(n(&s, &["latency_ms", "count"]), 3);
    assert!(s["latency_ms"]["p99"].as_f64().unwrap() >= 0.0);
    assert!(s["latency_ms"]["max"].is_number());
}

#[test]
fn protocol_errors_are_answered_by_the_session_and_counted() {
    let sink = start(config());
    let mut c = sink.client();
    assert_eq!(c.cmd("MAIL FROM:<a@b.test>").0, 503);
    assert_eq!(c.cmd("HELO client.test").0, 250);
    assert_eq!(c.cmd("BOGUS").0, 500);
    assert_eq!(c.cmd("MAIL FROM:<a@b.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 554);
    // Bare LF inside the content: refused after the end marker (smuggling).
    assert_eq!(c.cmd("MAIL FROM:<a@b.test>").0, 503);
    assert_eq!(c.cmd("RCPT TO:<x@y.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: x\r\n\r\nbad\nline\r\n.\r\n");
    assert_eq!(c.reply().0, 554);
    assert_eq!(c.cmd("QUIT").0, 221);
    let s = sink.stop();
    assert_eq!(n(&s, &["messages"]), 0);
    assert_eq!(n(&s, &["replies", "503"]), 2);
    assert_eq!(n(&s, &["replies", "500"]), 1);
    assert_eq!(n(&s, &["replies", "554"]), 2);
}

fn tls_client(
    sink: &Running,
    cert_pem: &str,
) -> Client<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut c = sink.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("STARTTLS").0, 220);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    Client::over(rustls::StreamOwned::new(conn, c.stream))
}

#[test]
fn starttls_with_a_rustls_client_trusting_the_generated_certificate() {
    let cfg = config();
    let cert_pem = cfg.tls.as_ref().unwrap().cert_pem.clone();
    let sink = start(cfg);
    let mut c = tls_client(&sink, &cert_pem);
    // RFC 3207 §4.2: the session forgot the EHLO; STARTTLS is not offered again.
    assert_eq!(c.cmd("MAIL FROM:<a@b.test>").0, 503);
    let (code, ehlo) = c.cmd("EHLO client.test");
    assert_eq!(code, 250);
    assert!(!ehlo.contains("STARTTLS"));
    let body = message("tls-1");
    assert_eq!(send_one(&mut c, &["a@tls.test"], &body), 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    let s = sink.stop();
    assert_eq!(n(&s, &["tls", "handshakes"]), 1);
    assert_eq!(n(&s, &["messages"]), 1);
    assert_eq!(n(&s, &["bytes"]), body.len() as u64);
}

#[test]
fn plaintext_pipelined_after_starttls_closes_the_connection() {
    let sink = start(config());
    let mut c = sink.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n");
    assert_eq!(c.reply().0, 421);
    assert!(c.is_closed());
    let s = sink.stop();
    assert_eq!(n(&s, &["tls", "handshakes"]), 0);
    assert_eq!(n(&s, &["replies", "421"]), 1);
}

#[test]
fn python_smtplib_starttls_pipelining_and_bdat() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    let cafile = dir.path().join("ca.pem");
    std::fs::write(&cafile, &cfg.tls.as_ref().unwrap().cert_pem).unwrap();
    let sink = start(cfg);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtplib_client.py");
    let out = match std::process::Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(sink.addr.port().to_string())
        .arg(&cafile)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            sink.stop();
            panic!("python3 is needed for this interop test: {e}");
        }
    };
    let s = sink.stop();
    assert!(
        out.status.success(),
        "smtplib client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["messages", "recipients", "bytes"] {
        assert_eq!(s[key], sent[key], "{key}: sink {s} vs client {sent}");
    }
    assert_eq!(n(&s, &["tls", "handshakes"]), 1);
}

#[test]
fn record_ids_and_capture_after_the_250() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("ids.txt");
    let cap = dir.path().join("cap");
    std::fs::create_dir(&cap).unwrap();
    let mut cfg = config_with_profile("[data.reject]\n550 = 0.0\n");
    cfg.record_ids = Some(ids.clone());
    cfg.capture = Some(Capture {
        dir: cap.clone(),
        messages_max: 2,
    });
    let sink = start(cfg);
    let mut c = sink.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    let bodies: Vec<String> = (0..3).map(|i| message(&format!("id-{i}"))).collect();
    for b in &bodies {
        assert_eq!(send_one(&mut c, &["r@ids.test"], b), 250);
    }
    // A message without X-Sluice-Id falls back to Message-ID.
    let body = "Message-ID: <fallback@client.test>\r\n\r\nx\r\n";
    assert_eq!(send_one(&mut c, &["r@ids.test"], body), 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    let s = sink.stop();
    assert_eq!(n(&s, &["messages"]), 4);
    assert_eq!(n(&s, &["captured"]), 2);
    let recorded = std::fs::read_to_string(&ids).unwrap();
    assert_eq!(
        recorded.lines().collect::<Vec<_>>(),
        ["id-0", "id-1", "id-2", "<fallback@client.test>"]
    );
    let mut files: Vec<_> = std::fs::read_dir(&cap)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    for (f, b) in files.iter().zip(&bodies) {
        assert_eq!(&std::fs::read_to_string(f).unwrap(), b);
    }
}

#[test]
fn summary_file_and_hlog_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let hlog = dir.path().join("latency.hlog");
    let outputs = Outputs {
        summary: Some(summary.clone()),
        summary_interval: std::time::Duration::from_millis(50),
        stats_interval: std::time::Duration::ZERO,
        hlog: Some(hlog.clone()),
        hlog_interval: std::time::Duration::from_millis(50),
    };
    let sink = start_with(config(), outputs);
    let mut c = sink.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    for i in 0..5 {
        assert_eq!(
            send_one(&mut c, &["r@h.test"], &message(&i.to_string())),
            250
        );
    }
    // The periodic summary shows the messages while the sink still runs.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let live = std::fs::read(&summary)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if live.as_ref().is_some_and(|v| n(v, &["messages"]) == 5) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "live summary never showed 5 messages"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    c.cmd("QUIT");
    let s = sink.stop();
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(on_disk["messages"], s["messages"]);
    let log = std::fs::read(&hlog).unwrap();
    let mut total = 0;
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(&log) {
        if let LogEntry::Interval(h) = entry.expect("valid hlog entry") {
            let bytes = base64_decode(h.encoded_histogram());
            let hist: hdrhistogram::Histogram<u64> =
                de.deserialize(&mut &bytes[..]).expect("V2 histogram");
            total += hist.len();
        }
    }
    assert_eq!(total, 5);
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &b in s.as_bytes() {
        let Some(v) = ALPHA.iter().position(|&a| a == b) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn many_connections_across_two_shards() {
    let mut cfg = config();
    cfg.cores = sluice_sink::config::allowed_cpus()
        .into_iter()
        .take(2)
        .collect();
    let sink = start(cfg);
    let addr = sink.addr;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                assert_eq!(c.reply().0, 220);
                assert_eq!(c.cmd("EHLO client.test").0, 250);
                for i in 0..10 {
                    let body = message(&format!("{t}-{i}"));
                    assert_eq!(
                        send_one(&mut c, &["a@many.test", "b@many.test"], &body),
                        250
                    );
                }
                assert_eq!(c.cmd("QUIT").0, 221);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = sink.stop();
    assert_eq!(n(&s, &["messages"]), 80);
    assert_eq!(n(&s, &["recipients"]), 160);
    assert_eq!(n(&s, &["connections"]), 8);
    assert_eq!(n(&s, &["connections_current"]), 0);
    assert!(n(&s, &["connections_peak"]) >= 1);
    assert_eq!(n(&s, &["domains", "many.test", "connections"]), 8);
    let _ = std::io::stderr().flush();
}

#[test]
fn a_huge_pipeline_is_answered_in_order_with_backpressure() {
    let sink = start(config());
    let mut c = sink.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    // 20 000 pipelined commands: the sink stops reading while its replies
    // cannot be written, so the client must read while it writes.
    const COMMANDS: usize = 20_000;
    let mut writer = c.stream.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut burst = Vec::new();
        for i in 0..COMMANDS {
            burst.extend_from_slice(if i % 2 == 0 { b"NOOP\r\n" } else { b"RSET\r\n" });
        }
        writer.write_all(&burst).unwrap();
    });
    for _ in 0..COMMANDS {
        assert_eq!(c.reply().0, 250);
    }
    feeder.join().unwrap();
    assert_eq!(c.cmd("QUIT").0, 221);
    let s = sink.stop();
    assert_eq!(n(&s, &["replies", "250"]), COMMANDS as u64 + 1);
}

#[test]
fn an_idle_connection_gets_421_and_is_closed() {
    let mut cfg = config();
    cfg.idle_timeout = std::time::Duration::from_millis(200);
    let sink = start(cfg);
    let mut c = sink.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    let (code, text) = c.reply();
    assert_eq!(code, 421);
    assert!(text.contains("4.4.2"), "{text}");
    assert!(c.is_closed());
    let s = sink.stop();
    assert_eq!(n(&s, &["replies", "421"]), 1);
}
