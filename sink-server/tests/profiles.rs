//! Every receiver profile: what the client sees and what the sink counted.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn connect_554_leaves_only_quit_and_421_closes() {
    let sink = start(config_with_profile("[connect.reject]\n554 = 1.0\n"));
    let mut c = Client::connect(sink.addr);
    assert_eq!(c.reply().0, 554);
    assert_eq!(c.cmd("EHLO client.test").0, 503);
    assert_eq!(c.cmd("QUIT").0, 221);
    let s = sink.stop();
    assert_eq!(n(&s, &["profile_actions", "connect_554"]), 1);

    let sink = start(config_with_profile("[connect.reject]\n421 = 1.0\n"));
    let mut c = Client::connect(sink.addr);
    assert_eq!(c.reply().0, 421);
    assert!(c.is_closed());
    let s = sink.stop();
    assert_eq!(n(&s, &["profile_actions", "connect_421"]), 1);
    assert_eq!(n(&s, &["replies", "421"]), 1);
}

#[test]
fn mail_rcpt_and_data_rejections() {
    let sink = start(config_with_profile("[mail.reject]\n550 = 1.0\n"));
    let mut c = sink.client();
    c.cmd("EHLO client.test");
    assert_eq!(c.cmd("MAIL FROM:<a@b.test>").0, 550);
    // The refused MAIL opened no transaction.
    assert_eq!(c.cmd("RCPT TO:<x@y.test>").0, 503);
    c.cmd("QUIT");
    let s = sink.stop();
    assert_eq!(n(&s, &["profile_actions", "mail_550"]), 1);
    assert_eq!(n(&s, &["transactions"]), 0);

    let sink = start(config_with_profile("[rcpt.reject]\n451 = 1.0\n"));
    let mut c = sink.client();
    c.cmd("EHLO client.test");
    c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<z@y.test>\r\nDATA\r\n");
    let codes: Vec<u16> = (0..4).map(|_| c.reply().0).collect();
    // RFC 2920 §3.1: DATA with no accepted recipient is refused.
    assert_eq!(codes, [250, 451, 451, 554]);
    c.cmd("QUIT");
    let s = sink.stop();
    assert_eq!(n(&s, &["profile_actions", "rcpt_451"]), 2);
    assert_eq!(n(&s, &["replies", "451"]), 2);

    let sink = start(config_with_profile("[data.reject]\n452 = 1.0\n"));
    let mut c = sink.client();
    c.cmd("EHLO client.test");
    assert_eq!(send_one(&mut c, &["x@y.test"], &message("d")), 452);
    c.cmd("QUIT");
    let s = sink.stop();
    assert_eq!(n(&s, &["profile_actions", "data_452"]), 1);
    assert_eq!(n(&s, &["messages"]), 0);

    let sink = start(config_with_profile("[rcpt.reject]\n421 = 1.0\n"));
    let mut c = sink.client();
    c.cmd("EHLO client.test");
    c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<z@y.test>\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 421);
    assert!(c.is_closed(), "421 closes the connection");
    let s = sink.stop();
    assert_eq!(n(&s, &["profile_actions", "rcpt_421"]), 1);
}

#[test]
fn seeded_probabilities_are_counted_and_match_the_replies() {
    let profile = "[rcpt.reject]\n451 = 0.3\n550 = 0.2\n";
    let run = |seed: u64| {
        let mut cfg = config_with_profile(profile);
        cfg.seed = seed;
        let sink = start(cfg);
        let mut c = sink.client();
        c.cmd("EHLO client.test");
        assert_eq!(c.cmd("MAIL FROM:<a@b.test>").0, 250);
        let codes: Vec<u16> = (0..200)
            .map(|i| c.cmd(&format!("RCPT TO:<r{i}@y.test>")).0)
            .collect();
        c.cmd("QUIT");
        (codes, sink.stop())
    };
    let (codes, s) = run(42);
    let count = |code| codes.iter().filter(|&&c| c == code).count() as u64;
    assert_eq!(count(451), n(&s, &["profile_actions", "rcpt_451"]));
    assert_eq!(count(550), n(&s, &["profile_actions", "rcpt_550"]));
    assert_eq!(count(451) + count(550) + count(250), 200);
    assert!(count(451) > 0 && count(550) > 0 && count(250) > 0);
    // The same seed makes the same decisions.
    let (again, _) = run(42);
    assert_eq!(codes, again);
}

#[test]
fn reply_delays_hold_the_reply_back() {
    let sink = start(config_with_profile(
        "[data]\ndelay = \"300ms\"\n[mail]\ndelay = \"100ms\"\n",
    ));
    let mut c = sink.client();
    c.cmd("EHLO client.test");
    let t = Instant::now();
    assert_eq!(c.cmd("MAIL FROM:<a@b.test>").0, 250);
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(c.cmd("RCPT TO:<x@y.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let t = Instant::now();
    c.send(&data_payload(&message("slow")));
    assert_eq!(c.reply().0, 250);
    assert!(t.elapsed() >= Duration::from_millis(300));
    c.cmd("QUIT");
    let s = sink.stop();
    assert_eq!(n(&s, &["profile_actions", "delayed_data"]), 1);
    assert_eq!(n(&s, &["profile_actions", "delayed_mail"]), 1);
    assert_eq!(n(&s, &["messages"]), 1);
}

#[test]
fn domain_rate_limit_answers_421_and_caps_every_second() {
    let limit = 3;
    let sink = start(config_with_profile(&format!(
        "[domains.\"rate.test\"]\nrate_per_second = {limit}\n"
    )));
    let (mut accepted, mut limited) = (0u64, 0u64);
    // Keep sending until the limit has been hit at least twice.
    let deadline = Instant::now() + IO_TIMEOUT;
    while limited < 2 {
        assert!(Instant::now() < deadline, "rate limit never hit");
        let mut c = sink.client();
        c.cmd("EHLO client.test");
        loop {
            match send_one(&mut c, &["x@rate.test"], &message("r")) {
                250 => accepted += 1,
                421 => {
                    limited += 1;
                    assert!(c.is_closed());
                    break;
                }
                other => panic!("unexpected {other}"),
            }
        }
    }
    let s = sink.stop();
    assert_eq!(n(&s, &["profile_actions", "rate_limited"]), limited);
    assert_eq!(n(&s, &["messages"]), accepted);
    let per_second = s["domains"]["rate.test"]["messages_per_s"]
        .as_array()
        .unwrap();
    let total: u64 = per_second.iter().map(|p| p[1].as_u64().unwrap()).sum();
    assert_eq!(total, accepted);
    assert!(per_second.iter().all(|p| p[1].as_u64().unwrap() <= limit));
    assert!(n(&s, &["domains", "rate.test", "max_messages_per_s"]) <= limit);
    // Other domains are not limited.
    let sink2 = start(config_with_profile(
        "[domains.\"rate.test\"]\nrate_per_second = 1\n",
    ));
    let mut c = sink2.client();
    c.cmd("EHLO client.test");
    for _ in 0..5 {
        assert_eq!(send_one(&mut c, &["x@free.test"], &message("f")), 250);
    }
    c.cmd("QUIT");
    assert_eq!(n(&sink2.stop(), &["messages"]), 5);
}

#[test]
fn domain_connection_limit_counts_peak_and_refuses_beyond() {
    let sink = start(config_with_profile(
        "[domains.\"busy.test\"]\nmax_connections = 1\n",
    ));
    let mut a = sink.client();
    a.cmd("EHLO a.test");
    a.cmd("MAIL FROM:<a@a.test>");
    assert_eq!(a.cmd("RCPT TO:<x@busy.test>").0, 250);
    let mut b = sink.client();
    b.cmd("EHLO b.test");
    b.cmd("MAIL FROM:<b@b.test>");
    assert_eq!(b.cmd("RCPT TO:<y@busy.test>").0, 421);
    assert!(b.is_closed());
    // Another domain is free.
    let mut other = sink.client();
    other.cmd("EHLO o.test");
    assert_eq!(send_one(&mut other, &["z@calm.test"], &message("o")), 250);
    assert_eq!(a.cmd("QUIT").0, 221);
    assert!(a.is_closed());
    // Once the first left, the domain has room again.
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let mut c = sink.client();
        c.cmd("EHLO c.test");
        c.cmd("MAIL FROM:<c@c.test>");
        if c.cmd("RCPT TO:<w@busy.test>").0 == 250 {
            c.cmd("QUIT");
            break;
        }
        // The sink may not have seen the first connection's close yet.
        assert!(Instant::now() < deadline, "domain never had room again");
        std::thread::sleep(Duration::from_millis(20));
    }
    other.cmd("QUIT");
    let s = sink.stop();
    assert!(n(&s, &["profile_actions", "connection_limited"]) >= 1);
    assert_eq!(n(&s, &["domains", "busy.test", "peak_connections"]), 1);
    assert_eq!(n(&s, &["domains", "calm.test", "peak_connections"]), 1);
}

#[test]
fn listed_local_parts_get_550_5_1_1() {
    let sink = start(config_with_profile(
        "reject_local_parts = [\"nobody\"]\n[domains.\"lp.test\"]\nreject_local_parts = [\"Bounce\"]\n",
    ));
    let mut c = sink.client();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@b.test>");
    let (code, text) = c.cmd("RCPT TO:<nobody@any.test>");
    assert_eq!(code, 550);
    assert!(text.contains("5.1.1"), "{text}");
    assert_eq!(c.cmd("RCPT TO:<BOUNCE@lp.test>").0, 550);
    assert_eq!(c.cmd("RCPT TO:<bounce@other.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<ok@lp.test>").0, 250);
    c.cmd("QUIT");
    let s = sink.stop();
    assert_eq!(n(&s, &["profile_actions", "local_part_rejected"]), 2);
}

#[test]
fn drop_after_messages_closes_after_the_nth_250() {
    let sink = start(config_with_profile("drop_after_messages = 2\n"));
    let mut c = sink.client();
    c.cmd("EHLO client.test");
    assert_eq!(send_one(&mut c, &["x@y.test"], &message("1")), 250);
    assert_eq!(send_one(&mut c, &["x@y.test"], &message("2")), 250);
    assert!(c.is_closed());
    let s = sink.stop();
    assert_eq!(n(&s, &["messages"]), 2);
    assert_eq!(n(&s, &["profile_actions", "dropped_after_messages"]), 1);
    assert_eq!(n(&s, &["replies", "221"]), 0);
}

#[test]
fn drop_in_data_closes_without_a_reply() {
    let sink = start(config_with_profile("drop_in_data = 1.0\n"));
    let mut c = sink.client();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@b.test>");
    c.cmd("RCPT TO:<x@y.test>");
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(&data_payload(&message("lost")));
    assert_eq!(c.reply().0, 0, "no reply, the connection is gone");
    let s = sink.stop();
    assert_eq!(n(&s, &["messages"]), 0);
    assert_eq!(n(&s, &["profile_actions", "dropped_in_data"]), 1);
}

#[test]
fn never_greet_accepts_tcp_and_stays_silent() {
    let sink = start(config_with_profile("never_greet = true\n"));
    let mut c = Client::connect(sink.addr);
    c.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 16];
    match c.stream.read(&mut b) {
        Err(e) => assert!(matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        Ok(n) => panic!("the sink sent {n} bytes"),
    }
    drop(c);
    let s = sink.stop();
    assert_eq!(n(&s, &["profile_actions", "never_greeted"]), 1);
    assert_eq!(n(&s, &["connections"]), 1);
}
