//! Command encoders: each appends one command line with CRLF to a
//! caller-owned buffer (RFC 5321 §4.1.1). Inputs are trusted (our own
//! validated envelopes); CR and LF are still dropped so nothing can split a
//! command.

use crate::command::{Body, MailParams, Notify, RcptParams, Ret};
use crate::reply::{push_decimal, push_sanitized};
use crate::xtext;

/// `EHLO domain`.
pub fn ehlo(out: &mut Vec<u8>, domain: &str) {
    out.extend_from_slice(b"EHLO ");
    push_sanitized(out, domain.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `HELO domain`.
pub fn helo(out: &mut Vec<u8>, domain: &str) {
    out.extend_from_slice(b"HELO ");
    push_sanitized(out, domain.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `MAIL FROM:<from> [params]`; `from` without angle brackets, empty for
/// the null sender.
pub fn mail(out: &mut Vec<u8>, from: &str, params: &MailParams<'_>) {
    out.extend_from_slice(b"MAIL FROM:<");
    push_sanitized(out, from.as_bytes());
    out.push(b'>');
    if let Some(size) = params.size {
        out.extend_from_slice(b" SIZE=");
        push_decimal(out, size);
    }
    match params.body {
        Some(Body::SevenBit) => out.extend_from_slice(b" BODY=7BIT"),
        Some(Body::EightBitMime) => out.extend_from_slice(b" BODY=8BITMIME"),
        Some(Body::BinaryMime) => out.extend_from_slice(b" BODY=BINARYMIME"),
        None => {}
    }
    if params.smtputf8 {
        out.extend_from_slice(b" SMTPUTF8");
    }
    match params.ret {
        Some(Ret::Full) => out.extend_from_slice(b" RET=FULL"),
        Some(Ret::Headers) => out.extend_from_slice(b" RET=HDRS"),
        None => {}
    }
    if let Some(envid) = &params.envid {
        out.extend_from_slice(b" ENVID=");
        xtext::encode(envid.as_bytes(), out);
    }
    if let Some(auth) = &params.auth {
        out.extend_from_slice(b" AUTH=");
        if auth == "<>" {
            out.extend_from_slice(b"<>");
        } else {
            xtext::encode(auth.as_bytes(), out);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `RCPT TO:<to> [params]`.
pub fn rcpt(out: &mut Vec<u8>, to: &str, params: &RcptParams<'_>) {
    out.extend_from_slice(b"RCPT TO:<");
    push_sanitized(out, to.as_bytes());
    out.push(b'>');
    if params.notify.is_some() || params.orcpt.is_some() {
        out.push(b' ');
        rcpt_params(out, params);
    }
    out.extend_from_slice(b"\r\n");
}

/// RCPT's DSN parameters in wire form, space-separated (`NOTIFY=SUCCESS,DELAY
/// ORCPT=rfc822;a+2Bb@example.com`, RFC 3461 §4.1-4.2); appends nothing
/// when there are none. The engine also stores recipients' parameters in
/// this form in the spool.
pub fn rcpt_params(out: &mut Vec<u8>, params: &RcptParams<'_>) {
    let start = out.len();
    if let Some(notify) = params.notify {
        out.extend_from_slice(b"NOTIFY=");
        if notify.is_empty() {
            out.extend_from_slice(b"NEVER");
        } else {
            let mut first = true;
            for (flag, name) in [
                (Notify::SUCCESS, &b"SUCCESS"[..]),
                (Notify::FAILURE, b"FAILURE"),
                (Notify::DELAY, b"DELAY"),
            ] {
                if notify.contains(flag) {
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(name);
                    first = false;
                }
            }
        }
    }
    if let Some(orcpt) = &params.orcpt {
        if out.len() > start {
            out.push(b' ');
        }
        out.extend_from_slice(b"ORCPT=");
        push_sanitized(out, orcpt.addr_type.as_bytes());
        out.push(b';');
        xtext::encode(orcpt.address.as_bytes(), out);
    }
}

/// `DATA`.
pub fn data(out: &mut Vec<u8>) {
    out.extend_from_slice(b"DATA\r\n");
}

/// `BDAT size [LAST]` (RFC 3030 §2); the chunk's bytes follow it.
pub fn bdat(out: &mut Vec<u8>, size: u64, last: bool) {
    out.extend_from_slice(b"BDAT ");
    push_decimal(out, size);
    if last {
        out.extend_from_slice(b" LAST");
    }
    out.extend_from_slice(b"\r\n");
}

/// `RSET`.
pub fn rset(out: &mut Vec<u8>) {
    out.extend_from_slice(b"RSET\r\n");
}

/// `NOOP`.
pub fn noop(out: &mut Vec<u8>) {
    out.extend_from_slice(b"NOOP\r\n");
}

/// `QUIT`.
pub fn quit(out: &mut Vec<u8>) {
    out.extend_from_slice(b"QUIT\r\n");
}

/// `STARTTLS`.
pub fn starttls(out: &mut Vec<u8>) {
    out.extend_from_slice(b"STARTTLS\r\n");
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::command::{parse_command_bytes, Command, Orcpt};

    #[test]
    fn mail_and_rcpt_round_trip() {
        let params = MailParams {
            size: Some(2048),
            body: Some(Body::EightBitMime),
            smtputf8: true,
            ret: Some(Ret::Full),
            envid: Some(Cow::Borrowed("id+1 x")),
            auth: Some(Cow::Borrowed("<>")),
        };
        let mut out = Vec::new();
        mail(&mut out, "a@b.example", &params);
        assert_eq!(
            out,
            b"MAIL FROM:<a@b.example> SIZE=2048 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=id+2B1+20x AUTH=<>\r\n"
        );
        let Command::Mail {
            from,
            params: parsed,
        } = parse_command_bytes(&out[..out.len() - 2]).unwrap()
        else {
            panic!("not MAIL")
        };
        assert_eq!(from.unwrap().as_str(), "a@b.example");
        assert_eq!(parsed, params);

        let params = RcptParams {
            notify: Some(Notify::FAILURE | Notify::DELAY),
            orcpt: Some(Orcpt {
                addr_type: "rfc822",
                address: Cow::Borrowed("x=y@z.example"),
            }),
        };
        out.clear();
        rcpt(&mut out, "u@z.example", &params);
        assert_eq!(
            out,
            b"RCPT TO:<u@z.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;x+3Dy@z.example\r\n"
        );
        let Command::Rcpt { params: parsed, .. } =
            parse_command_bytes(&out[..out.len() - 2]).unwrap()
        else {
            panic!("not RCPT")
        };
        assert_eq!(parsed, params);
    }

    #[test]
    fn simple_commands() {
        let mut out = Vec::new();
        bdat(&mut out, 0, true);
        bdat(&mut out, 12, false);
        ehlo(&mut out, "me\r\nRSET");
        assert_eq!(out, b"BDAT 0 LAST\r\nBDAT 12\r\nEHLO meRSET\r\n");
    }
}
