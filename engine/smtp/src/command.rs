//! SMTP commands (RFC 5321 §4.1.1) and their ESMTP parameters, parsed from
//! one command line without copying.

use std::borrow::Cow;

use bitflags::bitflags;

use crate::address::{parse_path, Mailbox, PathError};
use crate::reply::Reply;
use crate::xtext;

/// One parsed command. Strings borrow from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `HELO domain` (RFC 5321 §4.1.1.1).
    Helo {
        /// The client's claimed name.
        domain: &'a str,
    },
    /// `EHLO domain`.
    Ehlo {
        /// The client's claimed name.
        domain: &'a str,
    },
    /// `MAIL FROM:<path> [params]` (§4.1.1.2).
    Mail {
        /// The reverse path; `None` for the null sender `<>`.
        from: Option<Mailbox<'a>>,
        /// ESMTP parameters.
        params: MailParams<'a>,
    },
    /// `RCPT TO:<path> [params]` (§4.1.1.3).
    Rcpt {
        /// The forward path.
        to: Mailbox<'a>,
        /// ESMTP parameters.
        params: RcptParams<'a>,
    },
    /// `DATA` (§4.1.1.4).
    Data,
    /// `BDAT size [LAST]` (RFC 3030 §2).
    Bdat {
        /// Octets of message data that follow the command line.
        size: u64,
        /// True for the final chunk.
        last: bool,
    },
    /// `RSET` (§4.1.1.5).
    Rset,
    /// `VRFY string` (§4.1.1.6).
    Vrfy {
        /// The argument.
        argument: &'a str,
    },
    /// `EXPN string` (§4.1.1.7).
    Expn {
        /// The argument.
        argument: &'a str,
    },
    /// `HELP [topic]` (§4.1.1.8).
    Help {
        /// The topic, if any.
        topic: Option<&'a str>,
    },
    /// `NOOP [string]` (§4.1.1.9); the argument is ignored.
    Noop,
    /// `QUIT` (§4.1.1.10).
    Quit,
    /// `STARTTLS` (RFC 3207 §4).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    Auth {
        /// SASL mechanism name as sent.
        mechanism: &'a str,
        /// Base64 initial response, `=` for an empty one.
        initial_response: Option<&'a str>,
    },
    /// A verb this parser does not know.
    Unknown {
        /// The verb as sent.
        verb: &'a str,
    },
}

/// `BODY=` (RFC 6152 §2, RFC 3030 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    /// `7BIT`.
    SevenBit,
    /// `8BITMIME`.
    EightBitMime,
    /// `BINARYMIME`; needs BDAT (RFC 3030 §3).
    BinaryMime,
}

/// `RET=` (RFC 3461 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `FULL`: return the whole message in a bounce.
    Full,
    /// `HDRS`: return only the headers.
    Headers,
}

bitflags! {
    /// `NOTIFY=` (RFC 3461 §4.1). The empty set is `NEVER`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Notify: u8 {
        /// `SUCCESS`.
        const SUCCESS = 1;
        /// `FAILURE`.
        const FAILURE = 2;
        /// `DELAY`.
        const DELAY = 4;
    }
}

/// `ORCPT=addr-type;xtext` (RFC 3461 §4.2), with the address decoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Orcpt<'a> {
    /// Address type, usually `rfc822`.
    pub addr_type: &'a str,
    /// The original recipient, xtext-decoded.
    pub address: Cow<'a, str>,
}

/// Parameters of `MAIL FROM`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MailParams<'a> {
    /// `SIZE=` (RFC 1870 §6).
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531 §3.4).
    pub smtputf8: bool,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded (RFC 3461 §4.4).
    pub envid: Option<Cow<'a, str>>,
    /// `AUTH=`, xtext-decoded; `<>` is kept as `<>` (RFC 4954 §5).
    pub auth: Option<Cow<'a, str>>,
}

/// Parameters of `RCPT TO`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RcptParams<'a> {
    /// `NOTIFY=`; `Some(Notify::empty())` is `NEVER`.
    pub notify: Option<Notify>,
    /// `ORCPT=`.
    pub orcpt: Option<Orcpt<'a>>,
}

/// Why a command line was refused; each maps to one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CommandError {
    /// Empty line or not valid UTF-8.
    #[error("syntax error")]
    Syntax,
    /// Known verb, bad arguments.
    #[error("syntax error in arguments")]
    Arguments,
    /// The sender path is malformed or too long.
    #[error("bad sender address: {0}")]
    Sender(PathError),
    /// The recipient path is malformed or too long.
    #[error("bad recipient address: {0}")]
    Recipient(PathError),
    /// A parameter this server does not know (RFC 5321 §4.1.1.11: 555).
    #[error("unrecognized parameter")]
    UnknownParameter,
    /// A known parameter with a bad or repeated value.
    #[error("invalid parameter value")]
    ParameterValue,
}

impl CommandError {
    /// The reply for this error (RFC 5321 §4.2.2 and §4.5.3.1.10, RFC 3463).
    pub fn reply(self) -> Reply {
        match self {
            Self::Syntax => Reply::fixed(500, (5, 5, 2), "Syntax error, command unrecognized"),
            Self::Arguments => {
                Reply::fixed(501, (5, 5, 4), "Syntax error in parameters or arguments")
            }
            Self::Sender(PathError::Syntax) => {
                Reply::fixed(501, (5, 1, 7), "Bad sender address syntax")
            }
            Self::Sender(_) => Reply::fixed(501, (5, 1, 7), "Path too long"),
            Self::Recipient(PathError::Syntax) => {
                Reply::fixed(501, (5, 1, 3), "Bad recipient address syntax")
            }
            Self::Recipient(_) => Reply::fixed(501, (5, 1, 3), "Path too long"),
            Self::UnknownParameter => Reply::fixed(555, (5, 5, 4), "Parameter not recognized"),
            Self::ParameterValue => Reply::fixed(501, (5, 5, 4), "Invalid parameter value"),
        }
    }
}

/// Splits at the first `byte` (an ASCII byte, so both halves stay valid
/// UTF-8). Byte search: `str::find(char)` is several times slower on the
/// short strings of a command line.
pub(crate) fn split_at_byte(s: &str, byte: u8) -> Option<(&str, &str)> {
    debug_assert!(byte.is_ascii());
    let i = s.bytes().position(|b| b == byte)?;
    Some((&s[..i], &s[i + 1..]))
}

/// Space-separated words, skipping empty ones.
pub(crate) fn words(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let (word, tail) = split_at_byte(rest, b' ').unwrap_or((rest, ""));
        rest = tail;
        if !word.is_empty() {
            return Some(word);
        }
    })
}

/// Parses a command line given without its CRLF.
pub fn parse_command_bytes(line: &[u8]) -> Result<Command<'_>, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Syntax)?;
    parse_command(line)
}

/// Parses a command line given without its CRLF. Verbs and keywords match
/// case-insensitively (RFC 5321 §2.4).
pub fn parse_command(line: &str) -> Result<Command<'_>, CommandError> {
    let (verb, args) = split_at_byte(line, b' ').unwrap_or((line, ""));
    if verb.is_empty() {
        return Err(CommandError::Syntax);
    }
    let no_args = |command: Command<'static>| {
        if args.trim_matches(' ').is_empty() {
            Ok(command)
        } else {
            Err(CommandError::Arguments)
        }
    };
    if verb.len() == 8 && verb.eq_ignore_ascii_case("STARTTLS") {
        return no_args(Command::StartTls);
    }
    let Ok(mut key) = <[u8; 4]>::try_from(verb.as_bytes()) else {
        return Ok(Command::Unknown { verb });
    };
    key.make_ascii_uppercase();
    match &key {
        b"MAIL" => parse_mail(args),
        b"RCPT" => parse_rcpt(args),
        b"BDAT" => parse_bdat(args),
        b"DATA" => no_args(Command::Data),
        b"EHLO" => Ok(Command::Ehlo {
            domain: parse_helo_argument(args)?,
        }),
        b"HELO" => Ok(Command::Helo {
            domain: parse_helo_argument(args)?,
        }),
        b"RSET" => no_args(Command::Rset),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_args(Command::Quit),
        b"VRFY" => Ok(Command::Vrfy {
            argument: required(args)?,
        }),
        b"EXPN" => Ok(Command::Expn {
            argument: required(args)?,
        }),
        b"HELP" => {
            let topic = args.trim_matches(' ');
            Ok(Command::Help {
                topic: (!topic.is_empty()).then_some(topic),
            })
        }
        b"AUTH" => parse_auth(args),
        _ => Ok(Command::Unknown { verb }),
    }
}

fn required(args: &str) -> Result<&str, CommandError> {
    let argument = args.trim_matches(' ');
    if argument.is_empty() {
        Err(CommandError::Arguments)
    } else {
        Ok(argument)
    }
}

fn parse_helo_argument(args: &str) -> Result<&str, CommandError> {
    // RFC 5321 §4.1.1.1: one domain or address literal; RFC 6531 §3.3 lets
    // sub-domains be U-labels, so non-ASCII UTF-8 passes. No controls.
    let domain = args.trim_matches(' ');
    if domain.is_empty() || domain.contains(' ') || domain.bytes().any(|b| b < 0x21 || b == 0x7f) {
        return Err(CommandError::Arguments);
    }
    Ok(domain)
}

/// Strips `keyword:` (case-insensitive) and tolerates one space after the
/// colon, which many clients send though RFC 5321 §4.1.1.2 forbids it.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = &args[keyword.len()..];
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

fn parse_mail(args: &str) -> Result<Command<'_>, CommandError> {
    let rest = strip_keyword(args, "FROM:").ok_or(CommandError::Arguments)?;
    let (from, rest) = parse_path(rest).map_err(CommandError::Sender)?;
    let mut params = MailParams::default();
    for (key, value) in parameters(rest)? {
        let duplicate = match key.len() {
            4 if key.eq_ignore_ascii_case("SIZE") => {
                let size = value
                    .and_then(parse_decimal)
                    .ok_or(CommandError::ParameterValue)?;
                params.size.replace(size).is_some()
            }
            4 if key.eq_ignore_ascii_case("BODY") => {
                let body = match value {
                    Some(v) if v.eq_ignore_ascii_case("7BIT") => Body::SevenBit,
                    Some(v) if v.eq_ignore_ascii_case("8BITMIME") => Body::EightBitMime,
                    Some(v) if v.eq_ignore_ascii_case("BINARYMIME") => Body::BinaryMime,
                    _ => return Err(CommandError::ParameterValue),
                };
                params.body.replace(body).is_some()
            }
            8 if key.eq_ignore_ascii_case("SMTPUTF8") => {
                if value.is_some() {
                    return Err(CommandError::ParameterValue);
                }
                std::mem::replace(&mut params.smtputf8, true)
            }
            3 if key.eq_ignore_ascii_case("RET") => {
                let ret = match value {
                    Some(v) if v.eq_ignore_ascii_case("FULL") => Ret::Full,
                    Some(v) if v.eq_ignore_ascii_case("HDRS") => Ret::Headers,
                    _ => return Err(CommandError::ParameterValue),
                };
                params.ret.replace(ret).is_some()
            }
            5 if key.eq_ignore_ascii_case("ENVID") => {
                // RFC 3461 §4.4: at most 100 characters.
                let raw = value
                    .filter(|v| v.len() <= 100)
                    .ok_or(CommandError::ParameterValue)?;
                let envid = xtext::decode(raw).ok_or(CommandError::ParameterValue)?;
                params.envid.replace(envid).is_some()
            }
            4 if key.eq_ignore_ascii_case("AUTH") => {
                let raw = value.ok_or(CommandError::ParameterValue)?;
                let auth = if raw == "<>" {
                    Cow::Borrowed(raw)
                } else {
                    xtext::decode(raw).ok_or(CommandError::ParameterValue)?
                };
                params.auth.replace(auth).is_some()
            }
            _ => return Err(CommandError::UnknownParameter),
        };
        if duplicate {
            return Err(CommandError::ParameterValue);
        }
    }
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(args: &str) -> Result<Command<'_>, CommandError> {
    let rest = strip_keyword(args, "TO:").ok_or(CommandError::Arguments)?;
    let (to, rest) = parse_path(rest).map_err(CommandError::Recipient)?;
    let to = to.ok_or(CommandError::Recipient(PathError::Syntax))?;
    let mut params = RcptParams::default();
    for (key, value) in parameters(rest)? {
        let duplicate = match key.len() {
            6 if key.eq_ignore_ascii_case("NOTIFY") => {
                let notify = parse_notify(value.ok_or(CommandError::ParameterValue)?)?;
                params.notify.replace(notify).is_some()
            }
            5 if key.eq_ignore_ascii_case("ORCPT") => {
                let raw = value.ok_or(CommandError::ParameterValue)?;
                let (addr_type, address) =
                    split_at_byte(raw, b';').ok_or(CommandError::ParameterValue)?;
                if addr_type.is_empty()
                    || !addr_type
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(CommandError::ParameterValue);
                }
                let address = xtext::decode(address).ok_or(CommandError::ParameterValue)?;
                params.orcpt.replace(Orcpt { addr_type, address }).is_some()
            }
            _ => return Err(CommandError::UnknownParameter),
        };
        if duplicate {
            return Err(CommandError::ParameterValue);
        }
    }
    Ok(Command::Rcpt { to, params })
}

fn parse_notify(value: &str) -> Result<Notify, CommandError> {
    if value.eq_ignore_ascii_case("NEVER") {
        return Ok(Notify::empty());
    }
    let mut notify = Notify::empty();
    for item in value.split(',') {
        let flag = if item.eq_ignore_ascii_case("SUCCESS") {
            Notify::SUCCESS
        } else if item.eq_ignore_ascii_case("FAILURE") {
            Notify::FAILURE
        } else if item.eq_ignore_ascii_case("DELAY") {
            Notify::DELAY
        } else {
            // Includes NEVER combined with others (RFC 3461 §4.1).
            return Err(CommandError::ParameterValue);
        };
        notify |= flag;
    }
    Ok(notify)
}

/// Splits ` KEY[=VALUE] KEY...` after a path. The path must be followed by
/// a space or the end of the line.
fn parameters(rest: &str) -> Result<impl Iterator<Item = (&str, Option<&str>)>, CommandError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::Arguments);
    }
    let mut bad = false;
    for item in words(rest) {
        let key = split_at_byte(item, b'=').map_or(item, |(key, _)| key);
        // RFC 5321 §4.1.2 esmtp-keyword: ALPHA / DIGIT, then also "-".
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            bad = true;
        }
    }
    if bad {
        return Err(CommandError::Arguments);
    }
    Ok(words(rest).map(|item| match split_at_byte(item, b'=') {
        Some((key, value)) => (key, Some(value)),
        None => (item, None),
    }))
}

/// Parses 1 to 20 ASCII digits into a u64; `None` on overflow or other bytes.
pub(crate) fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_bdat(args: &str) -> Result<Command<'_>, CommandError> {
    let mut words = words(args);
    let size = words
        .next()
        .and_then(parse_decimal)
        .ok_or(CommandError::Arguments)?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Arguments),
    };
    if words.next().is_some() {
        return Err(CommandError::Arguments);
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(args: &str) -> Result<Command<'_>, CommandError> {
    let mut words = words(args);
    let mechanism = words.next().ok_or(CommandError::Arguments)?;
    let initial_response = words.next();
    if words.next().is_some() {
        return Err(CommandError::Arguments);
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mail_with_params() {
        let cmd = parse_command(
            "mail FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x+2By AUTH=<>",
        )
        .unwrap();
        let Command::Mail { from, params } = cmd else {
            panic!("not MAIL")
        };
        assert_eq!(from.unwrap().as_str(), "a@b.example");
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, Some(Body::EightBitMime));
        assert!(params.smtputf8);
        assert_eq!(params.ret, Some(Ret::Headers));
        assert_eq!(params.envid.as_deref(), Some("x+y"));
        assert_eq!(params.auth.as_deref(), Some("<>"));
    }

    #[test]
    fn parses_rcpt_with_dsn() {
        let cmd = parse_command(
            "RCPT TO:<u@x.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;u+2Bt@x.example",
        )
        .unwrap();
        let Command::Rcpt { to, params } = cmd else {
            panic!("not RCPT")
        };
        assert_eq!(to.domain(), "x.example");
        assert_eq!(params.notify, Some(Notify::SUCCESS | Notify::DELAY));
        let orcpt = params.orcpt.unwrap();
        assert_eq!(
            (orcpt.addr_type, orcpt.address.as_ref()),
            ("rfc822", "u+t@x.example")
        );
        let never = parse_command("RCPT TO:<u@x.example> NOTIFY=NEVER").unwrap();
        assert!(
            matches!(never, Command::Rcpt { params: RcptParams { notify: Some(n), .. }, .. } if n.is_empty())
        );
    }

    #[test]
    fn refuses_bad_params() {
        assert_eq!(
            parse_command("MAIL FROM:<> FOO=1").unwrap_err(),
            CommandError::UnknownParameter
        );
        assert_eq!(
            parse_command("MAIL FROM:<> SIZE=x").unwrap_err(),
            CommandError::ParameterValue
        );
        assert_eq!(
            parse_command("MAIL FROM:<> SIZE=1 SIZE=2").unwrap_err(),
            CommandError::ParameterValue
        );
        assert_eq!(
            parse_command("MAIL FROM:<> SIZE=99999999999999999999999").unwrap_err(),
            CommandError::ParameterValue
        );
        assert_eq!(
            parse_command("RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS").unwrap_err(),
            CommandError::ParameterValue
        );
        assert_eq!(
            parse_command("RCPT TO:<>").unwrap_err(),
            CommandError::Recipient(PathError::Syntax)
        );
        assert_eq!(
            parse_command("MAIL FROM:<a@b>x").unwrap_err(),
            CommandError::Arguments
        );
        assert_eq!(
            parse_command("MAIL TO:<a@b>").unwrap_err(),
            CommandError::Arguments
        );
        assert_eq!(
            parse_command("DATA x").unwrap_err(),
            CommandError::Arguments
        );
        assert_eq!(parse_command("").unwrap_err(), CommandError::Syntax);
    }

    #[test]
    fn parses_simple_verbs() {
        assert_eq!(
            parse_command("EHLO client.example").unwrap(),
            Command::Ehlo {
                domain: "client.example"
            }
        );
        assert_eq!(parse_command("ehlo").unwrap_err(), CommandError::Arguments);
        assert_eq!(
            parse_command("BDAT 100 LAST").unwrap(),
            Command::Bdat {
                size: 100,
                last: true
            }
        );
        assert_eq!(
            parse_command("BDAT 0").unwrap(),
            Command::Bdat {
                size: 0,
                last: false
            }
        );
        assert_eq!(
            parse_command("BDAT x").unwrap_err(),
            CommandError::Arguments
        );
        assert_eq!(parse_command("starttls").unwrap(), Command::StartTls);
        assert_eq!(parse_command("NOOP anything").unwrap(), Command::Noop);
        assert_eq!(
            parse_command("XFOO bar").unwrap(),
            Command::Unknown { verb: "XFOO" }
        );
        assert_eq!(
            parse_command("AUTH PLAIN AGEAYg==").unwrap(),
            Command::Auth {
                mechanism: "PLAIN",
                initial_response: Some("AGEAYg==")
            }
        );
        assert_eq!(
            parse_command("MAIL FROM: <a@b.example>").unwrap(),
            Command::Mail {
                from: Some(Mailbox::parse("a@b.example").unwrap()),
                params: MailParams::default()
            }
        );
    }
}
