//! The envelope of the transaction being received, and what injection
//! stores with a message: DSN parameters as bytes, the `Received:` trace
//! header, recipients grouped by domain. Pure: no I/O, no clock (times are
//! passed in), so it is tested by value.
//!
//! # Stored DSN bytes (the contract with delivery and bounces)
//! The spool keeps DSN parameters as opaque bytes; injection writes them
//! in their ESMTP wire form so a relay can pass them on verbatim when the
//! next hop offers DSN (RFC 3461 §5.2) and [`parse_envelope_dsn`] /
//! [`parse_recipient_dsn`] read them back:
//! - envelope: `RET=FULL|HDRS` and `ENVID=<xtext>`, space separated, each
//!   only when given;
//! - recipient: `NOTIFY=NEVER` or `NOTIFY=` a comma list of `SUCCESS`,
//!   `FAILURE`, `DELAY`, and `ORCPT=<addr-type>;<xtext>`, likewise.

// std
use std::borrow::Cow;

// external
use sluice_smtp::{xtext, MailParams, Mailbox, Notify, RcptParams, Ret};
use sluice_spool::{NewMessage, Recipient, RecordRef};

// crate
use crate::queue::{Accepted, AcceptedRecipient, DomainRecipients};

/// One accepted recipient of the open transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rcpt {
    address: String,
    dsn: Vec<u8>,
}

/// The envelope of the open transaction: reverse path, DSN parameters and
/// accepted recipients. Reused across transactions of a connection.
#[derive(Debug, Default)]
pub struct Envelope {
    open: bool,
    sender: String,
    dsn: Vec<u8>,
    smtputf8: bool,
    recipients: Vec<Rcpt>,
    /// The source pool named by `X-virtualMTA` (stored in the record's
    /// queue field; empty when none).
    pool: Vec<u8>,
    /// The tenant (`inject::tenant`; empty when none).
    tenant: Vec<u8>,
    /// The campaign label (empty when none).
    campaign: Vec<u8>,
}

impl Envelope {
    /// An empty envelope.
    pub fn new() -> Envelope {
        Envelope::default()
    }

    /// Starts a transaction after an accepted `MAIL FROM` (`None`: `<>`).
    pub fn begin(&mut self, from: Option<&Mailbox<'_>>, params: &MailParams<'_>) {
        self.clear();
        self.open = true;
        if let Some(m) = from {
            self.sender.push_str(m.as_str());
        }
        self.smtputf8 = params.smtputf8;
        encode_envelope_dsn(params, &mut self.dsn);
    }

    /// Adds an accepted recipient.
    pub fn add_recipient(&mut self, to: &Mailbox<'_>, params: &RcptParams<'_>) {
        debug_assert!(self.open, "RCPT accepted outside a transaction");
        let mut dsn = Vec::new();
        encode_recipient_dsn(params, &mut dsn);
        self.recipients.push(Rcpt {
            address: to.as_str().to_string(),
            dsn,
        });
    }

    /// Ends the transaction (message stored or refused, RSET, EHLO).
    pub fn clear(&mut self) {
        self.open = false;
        self.sender.clear();
        self.dsn.clear();
        self.smtputf8 = false;
        self.recipients.clear();
        self.pool.clear();
        self.tenant.clear();
        self.campaign.clear();
    }

    /// Sets the source pool the message asked for (`X-virtualMTA`);
    /// names that are not 1 to 64 visible ASCII characters are ignored.
    pub fn set_pool(&mut self, pool: Option<&[u8]>) {
        self.pool.clear();
        if let Some(p) = pool.filter(|p| crate::deliver::source::valid_name(p)) {
            self.pool.extend_from_slice(p);
        }
    }

    /// The source pool set so far (empty: none).
    pub fn pool(&self) -> &[u8] {
        &self.pool
    }

    /// Sets the message's tenant; names that are not 1 to 64 visible
    /// ASCII characters are ignored.
    pub fn set_tenant(&mut self, tenant: &[u8]) {
        self.tenant.clear();
        if super::tenant::valid_tenant(tenant) {
            self.tenant.extend_from_slice(tenant);
        }
    }

    /// Sets the message's campaign; labels that are not 1 to 128
    /// printable ASCII characters are ignored.
    pub fn set_campaign(&mut self, campaign: Option<&[u8]>) {
        self.campaign.clear();
        if let Some(c) = campaign.filter(|c| super::tenant::valid_campaign(c)) {
            self.campaign.extend_from_slice(c);
        }
    }

    /// Whether a transaction is open (MAIL accepted, not yet ended).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Recipients accepted so far.
    pub fn recipient_count(&self) -> usize {
        self.recipients.len()
    }

    /// Whether the client asked for SMTPUTF8 (RFC 6531).
    pub fn smtputf8(&self) -> bool {
        self.smtputf8
    }

    /// The single recipient, if there is exactly one (for `Received: for`).
    pub fn only_recipient(&self) -> Option<&str> {
        match self.recipients.as_slice() {
            [one] => Some(&one.address),
            _ => None,
        }
    }

    /// The spool records' recipient list, in acceptance order (their index
    /// is their position).
    pub fn spool_recipients(&self) -> Vec<Recipient<'_>> {
        self.recipients
            .iter()
            .map(|r| Recipient {
                address: r.address.as_bytes(),
                dsn: &r.dsn,
            })
            .collect()
    }

    /// The record to append.
    pub fn new_message<'a>(
        &'a self,
        recipients: &'a [Recipient<'a>],
        body: &'a [u8],
        arrival_unix_ms: u64,
        expiry_unix_ms: u64,
    ) -> NewMessage<'a> {
        NewMessage {
            sender: self.sender.as_bytes(),
            dsn: &self.dsn,
            tenant: &self.tenant,
            campaign: &self.campaign,
            queue: &self.pool,
            recipients,
            arrival_unix_ms,
            expiry_unix_ms,
            body,
        }
    }

    /// What the queues take once the record is durable: recipients grouped
    /// by lower-cased domain, each keeping its index in the record. Groups
    /// come in order of first appearance.
    pub fn accepted(
        &self,
        id: u64,
        rec: RecordRef,
        arrival_unix_ms: u64,
        expiry_unix_ms: u64,
    ) -> Accepted {
        let mut domains: Vec<DomainRecipients> = Vec::new();
        for (index, r) in self.recipients.iter().enumerate() {
            let domain = domain_of(&r.address).to_ascii_lowercase();
            let recipient = AcceptedRecipient {
                // Bounded by recipients_max (a u32) through the session.
                index: u32::try_from(index).unwrap_or(u32::MAX),
                address: r.address.clone(),
                dsn: r.dsn.clone(),
            };
            match domains.iter_mut().find(|g| g.domain == domain) {
                Some(g) => g.recipients.push(recipient),
                None => domains.push(DomainRecipients {
                    domain,
                    recipients: vec![recipient],
                }),
            }
        }
        Accepted {
            id,
            rec,
            arrival_unix_ms,
            expiry_unix_ms,
            sender: self.sender.clone(),
            pool: (!self.pool.is_empty()).then(|| String::from_utf8_lossy(&self.pool).into_owned()),
            tenant: (!self.tenant.is_empty())
                .then(|| String::from_utf8_lossy(&self.tenant).into_owned()),
            domains,
        }
    }
}

/// The domain of an address: after the last `@` (empty for `postmaster`).
pub fn domain_of(address: &str) -> &str {
    address.rfind('@').map_or("", |at| &address[at + 1..])
}

/// Appends the envelope DSN parameters in wire form (see the module docs).
pub fn encode_envelope_dsn(params: &MailParams<'_>, out: &mut Vec<u8>) {
    if let Some(ret) = params.ret {
        out.extend_from_slice(match ret {
            Ret::Full => b"RET=FULL",
            Ret::Headers => b"RET=HDRS",
        });
    }
    if let Some(envid) = &params.envid {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(b"ENVID=");
        xtext::encode(envid.as_bytes(), out);
    }
}

/// Appends a recipient's DSN parameters in wire form (the encoder the
/// delivery client uses, so what is stored is what is sent).
pub fn encode_recipient_dsn(params: &RcptParams<'_>, out: &mut Vec<u8>) {
    sluice_smtp::client::encode::rcpt_params(out, params);
}

/// Envelope DSN parameters read back from a spool record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeDsn {
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, decoded.
    pub envid: Option<String>,
}

/// A recipient's DSN parameters read back from a spool record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientDsn {
    /// `NOTIFY=`; `Some(empty)` is `NEVER`.
    pub notify: Option<Notify>,
    /// `ORCPT=`: address type and decoded address.
    pub orcpt: Option<(String, String)>,
}

/// Why stored DSN bytes did not parse (a record not written by injection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored DSN parameters do not parse: {0}")]
pub struct DsnParseError(pub String);

fn words(bytes: &[u8]) -> Result<impl Iterator<Item = (&str, &str)>, DsnParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DsnParseError("not UTF-8".into()))?;
    let mut pairs = Vec::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| DsnParseError(format!("`{word}` is not KEY=VALUE")))?;
        pairs.push((k, v));
    }
    Ok(pairs.into_iter())
}

fn decode(value: &str) -> Result<String, DsnParseError> {
    xtext::decode(value)
        .map(Cow::into_owned)
        .ok_or_else(|| DsnParseError(format!("bad xtext `{value}`")))
}

/// Reads envelope DSN bytes written by [`encode_envelope_dsn`].
pub fn parse_envelope_dsn(bytes: &[u8]) -> Result<EnvelopeDsn, DsnParseError> {
    let mut dsn = EnvelopeDsn::default();
    for (k, v) in words(bytes)? {
        match k {
            "RET" => {
                dsn.ret = Some(match v {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Headers,
                    _ => return Err(DsnParseError(format!("RET={v}"))),
                })
            }
            "ENVID" => dsn.envid = Some(decode(v)?),
            _ => return Err(DsnParseError(format!("unknown key {k}"))),
        }
    }
    Ok(dsn)
}

/// Reads recipient DSN bytes written by [`encode_recipient_dsn`].
pub fn parse_recipient_dsn(bytes: &[u8]) -> Result<RecipientDsn, DsnParseError> {
    let mut dsn = RecipientDsn::default();
    for (k, v) in words(bytes)? {
        match k {
            "NOTIFY" => {
                let mut n = Notify::empty();
                if v != "NEVER" {
                    for w in v.split(',') {
                        n |= match w {
                            "SUCCESS" => Notify::SUCCESS,
                            "FAILURE" => Notify::FAILURE,
                            "DELAY" => Notify::DELAY,
                            _ => return Err(DsnParseError(format!("NOTIFY={v}"))),
                        };
                    }
                }
                dsn.notify = Some(n);
            }
            "ORCPT" => {
                let (t, a) = v
                    .split_once(';')
                    .ok_or_else(|| DsnParseError(format!("ORCPT={v}")))?;
                dsn.orcpt = Some((t.to_string(), decode(a)?));
            }
            _ => return Err(DsnParseError(format!("unknown key {k}"))),
        }
    }
    Ok(dsn)
}

/// What the `Received:` header says about a transaction.
#[derive(Debug, Clone, Copy)]
pub struct Trace<'a> {
    /// The name the client gave in HELO/EHLO.
    pub helo: &'a str,
    /// The client's address.
    pub peer: std::net::IpAddr,
    /// Our host name.
    pub hostname: &'a str,
    /// Whether EHLO (not HELO) was used.
    pub esmtp: bool,
    /// Whether the transaction used SMTPUTF8.
    pub smtputf8: bool,
    /// Whether the session ran under TLS (RFC 3848 `…S`).
    pub tls: bool,
    /// Whether the client authenticated (RFC 3848 `…A`).
    pub authenticated: bool,
    /// The single recipient, if exactly one.
    pub for_recipient: Option<&'a str>,
    /// When, seconds since the Unix epoch.
    pub unix_s: u64,
}

/// Appends a `Received:` trace header (RFC 5321 §4.4; protocol names from
/// RFC 3848 and RFC 6531 §3.7.3). Client-supplied text is reduced to
/// printable ASCII without parentheses, so no CR, LF or comment breakout
/// ever reaches the header.
pub fn push_received(t: &Trace<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"Received: from ");
    push_clean(t.helo, 255, out);
    out.extend_from_slice(b" ([");
    out.extend_from_slice(t.peer.to_string().as_bytes());
    out.extend_from_slice(b"])\r\n\tby ");
    push_clean(t.hostname, 255, out);
    out.extend_from_slice(b" (Sluice) with ");
    out.extend_from_slice(match (t.smtputf8, t.esmtp) {
        (true, _) => b"UTF8SMTP".as_slice(),
        (false, true) => b"ESMTP",
        (false, false) => b"SMTP",
    });
    // RFC 3848 §1 / RFC 6531 §3.7.3: ESMTPS, ESMTPA, ESMTPSA, UTF8SMTPSA…
    // (TLS and AUTH exist only after EHLO).
    if t.esmtp || t.smtputf8 {
        if t.tls {
            out.push(b'S');
        }
        if t.authenticated {
            out.push(b'A');
        }
    }
    if let Some(r) = t.for_recipient {
        out.extend_from_slice(b"\r\n\tfor <");
        push_clean(r, 256, out);
        out.push(b'>');
    }
    out.extend_from_slice(b"; ");
    push_rfc5322_date(t.unix_s, out);
    out.extend_from_slice(b"\r\n");
}

fn push_clean(text: &str, max: usize, out: &mut Vec<u8>) {
    if text.is_empty() {
        out.extend_from_slice(b"unknown");
        return;
    }
    for &b in text.as_bytes().iter().take(max) {
        let ok = b.is_ascii_graphic() && !matches!(b, b'(' | b')' | b'\\' | b';' | b'<' | b'>');
        out.push(if ok || b >= 0x80 { b } else { b'?' });
    }
}

/// Appends an RFC 5322 §3.3 date in UTC: `Mon, 23 Nov 2026 10:48:44 +0000`.
pub fn push_rfc5322_date(unix_s: u64, out: &mut Vec<u8>) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_s / 86_400;
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let text = format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_smtp::Orcpt;

    fn mailbox(s: &str) -> Mailbox<'_> {
        Mailbox::parse(s).expect("valid test address")
    }

    #[test]
    fn dates_match_known_instants() {
        let cases = [
            (0, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (1_795_430_924, "Mon, 23 Nov 2026 10:48:44 +0000"),
        ];
        for (t, want) in cases {
            let mut out = Vec::new();
            push_rfc5322_date(t, &mut out);
            assert_eq!(String::from_utf8(out).expect("ascii"), want, "t={t}");
        }
    }

    #[test]
    fn recipients_group_by_lower_cased_domain_keeping_record_indices() {
        let mut env = Envelope::new();
        env.begin(Some(&mailbox("s@src.test")), &MailParams::default());
        for a in ["a@One.test", "b@two.test", "c@ONE.TEST"] {
            env.add_recipient(&mailbox(a), &RcptParams::default());
        }
        let rec = RecordRef {
            segment: 1,
            offset: 64,
            len: 128,
        };
        let acc = env.accepted(7, rec, 1000, 2000);
        assert_eq!(acc.sender, "s@src.test");
        assert_eq!(acc.domains.len(), 2);
        assert_eq!(acc.domains[0].domain, "one.test");
        let idx: Vec<u32> = acc.domains[0].recipients.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![0, 2]);
        assert_eq!(acc.domains[1].domain, "two.test");
        assert_eq!(acc.domains[1].recipients[0].index, 1);
        // The spool record lists them in the same order.
        let list = env.spool_recipients();
        assert_eq!(list[2].address, b"c@ONE.TEST");
        env.clear();
        assert!(!env.is_open());
        assert_eq!(env.recipient_count(), 0);
    }

    #[test]
    fn dsn_parameters_round_trip_through_the_stored_bytes() {
        let params = MailParams {
            ret: Some(Ret::Headers),
            envid: Some(Cow::Borrowed("id+with=odd chars")),
            ..MailParams::default()
        };
        let mut env_bytes = Vec::new();
        encode_envelope_dsn(&params, &mut env_bytes);
        assert!(!env_bytes.contains(&b'\r') && !env_bytes.contains(&b'\n'));
        let back = parse_envelope_dsn(&env_bytes).expect("parses");
        assert_eq!(back.ret, Some(Ret::Headers));
        assert_eq!(back.envid.as_deref(), Some("id+with=odd chars"));

        for notify in [
            None,
            Some(Notify::empty()),
            Some(Notify::SUCCESS | Notify::DELAY),
            Some(Notify::all()),
        ] {
            let rp = RcptParams {
                notify,
                orcpt: Some(Orcpt {
                    addr_type: "rfc822",
                    address: Cow::Borrowed("Orig+1@example.test"),
                }),
            };
            let mut b = Vec::new();
            encode_recipient_dsn(&rp, &mut b);
            let back = parse_recipient_dsn(&b).expect("parses");
            assert_eq!(back.notify, notify);
            assert_eq!(
                back.orcpt,
                Some(("rfc822".to_string(), "Orig+1@example.test".to_string()))
            );
        }
        assert_eq!(
            parse_recipient_dsn(b"").expect("empty"),
            RecipientDsn::default()
        );
        assert!(parse_recipient_dsn(b"NOTIFY=SOMETIMES").is_err());
        assert!(parse_envelope_dsn(b"garbage").is_err());
    }

    #[test]
    fn received_header_is_one_clean_folded_field() {
        let t = Trace {
            helo: "evil\r\nX-Injected: yes (comment)",
            peer: "127.0.0.1".parse().expect("ip"),
            hostname: "mta.example.test",
            esmtp: true,
            smtputf8: false,
            tls: false,
            authenticated: false,
            for_recipient: Some("rcpt@example.test"),
            unix_s: 0,
        };
        let mut out = Vec::new();
        push_received(&t, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.starts_with("Received: from evil??X-Injected:?yes??comment? ([127.0.0.1])\r\n")
        );
        assert!(text
            .contains("\tby mta.example.test (Sluice) with ESMTP\r\n\tfor <rcpt@example.test>; "));
        assert!(text.ends_with("Thu, 1 Jan 1970 00:00:00 +0000\r\n"));
        // Every line break is CRLF followed by folding whitespace but the last.
        let breaks = text.matches("\r\n").count();
        assert_eq!(breaks, text.matches("\r\n\t").count() + 1);
    }

    #[test]
    fn received_names_tls_and_auth_per_rfc_3848() {
        let with = |esmtp, smtputf8, tls, authenticated| {
            let t = Trace {
                helo: "c",
                peer: "127.0.0.1".parse().expect("ip"),
                hostname: "m",
                esmtp,
                smtputf8,
                tls,
                authenticated,
                for_recipient: None,
                unix_s: 0,
            };
            let mut out = Vec::new();
            push_received(&t, &mut out);
            let text = String::from_utf8(out).expect("ascii");
            let after = text.split(" with ").nth(1).expect("with");
            after.split(';').next().expect("name").to_string()
        };
        assert_eq!(with(true, false, true, false), "ESMTPS");
        assert_eq!(with(true, false, false, true), "ESMTPA");
        assert_eq!(with(true, false, true, true), "ESMTPSA");
        assert_eq!(with(true, true, true, true), "UTF8SMTPSA");
        assert_eq!(with(false, false, false, false), "SMTP");
    }
}
