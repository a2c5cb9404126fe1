//! The default bounce rules against real reply texts of large providers.
//!
//! Texts are written down from the providers' public documentation (the
//! IP addresses are replaced by documentation addresses, session ids
//! shortened):
//! - Google: "Gmail SMTP errors and codes",
//!   <https://support.google.com/a/answer/3726730>
//! - Microsoft: "Non-delivery reports and SMTP errors in Exchange Online",
//!   <https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online>
//!   and KB 3028012 (`550 4.4.7 QUEUE.Expired`)
//! - Yahoo: "SMTP error codes", <https://senders.yahooinc.com/smtp-error-codes/>
//!   and <https://help.yahoo.com/kb/review-xx-smtp-sln26151.html>
//! - Apple iCloud: "Mail server error codes" in Apple's iCloud Mail support
//!   for senders, <https://support.apple.com/en-us/102322>
//! - Comcast: <https://postmaster.comcast.net/smtp-error-codes.php>
//! - GMX / web.de: the postmaster pages <https://postmaster.gmx.net/en/error-messages>
//! - Orange: <https://postmaster.orange.fr> (OFR codes)
//! - Mimecast: "Mimecast SMTP Error Codes",
//!   <https://community.mimecast.com/docs/DOC-1369>
//! - Proofpoint: <https://ipcheck.proofpoint.com> block notices
//! - Barracuda: "Barracuda Email Security Gateway SMTP reply codes",
//!   <https://campus.barracuda.com/product/emailsecuritygateway/>
//! - Postfix/Exim defaults that many of the above front-ends pass on.

use sluice_outcomes::{Category, Classifier};
use sluice_smtp::{EnhancedCode, Reply, ReplyCode};

use Category::*;

/// (provider, code, enhanced code, text, expected category).
type Row = (
    &'static str,
    u16,
    Option<(u8, u16, u16)>,
    &'static str,
    Category,
);

const ROWS: &[Row] = &[
    // Google
    ("gmail", 550, Some((5, 1, 1)), "The email account that you tried to reach does not exist. Please try\ndouble-checking the recipient's email address for typos or\nunnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp", BadMailbox),
    ("gmail", 550, Some((5, 2, 1)), "The email account that you tried to reach is disabled. - gsmtp", InactiveMailbox),
    ("gmail", 552, Some((5, 2, 2)), "The email account that you tried to reach is over quota. Please direct\nthe recipient to https://support.google.com/mail/?p=OverQuotaPerm - gsmtp", QuotaIssues),
    ("gmail", 452, Some((4, 2, 2)), "The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp", QuotaIssues),
    ("gmail", 550, Some((5, 7, 1)), "Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been blocked. - gsmtp", SpamRelated),
    ("gmail", 421, Some((4, 7, 0)), "Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. - gsmtp", SpamRelated),
    ("gmail", 550, Some((5, 7, 1)), "Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. - gsmtp", SpamRelated),
    ("gmail", 552, Some((5, 7, 0)), "This message was blocked because its content presents a potential security issue. Please visit https://support.google.com/mail/?p=BlockedMessage to review our message content and attachment content guidelines. - gsmtp", ContentRelated),
    ("gmail", 550, Some((5, 7, 26)), "This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM. - gsmtp", PolicyRelated),
    ("gmail", 550, Some((5, 7, 26)), "Unauthenticated email from example.com is not accepted due to domain's DMARC policy. - gsmtp", PolicyRelated),
    ("gmail", 421, Some((4, 7, 0)), "TLS required for RCPT domain, closing connection. - gsmtp", PolicyRelated),
    ("gmail", 450, Some((4, 2, 1)), "The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time. - gsmtp", PolicyRelated),
    ("gmail", 552, Some((5, 3, 4)), "Your message exceeded Google's message size limits. - gsmtp", ContentRelated),
    ("gmail", 421, Some((4, 4, 5)), "Server busy, try again later. - gsmtp", Other),
    ("gmail", 550, Some((5, 7, 1)), "The IP you're using to send mail is not authorized to send email directly to our servers. Please use the SMTP relay at your service provider instead. - gsmtp", PolicyRelated),
    ("gmail", 553, Some((5, 1, 2)), "We weren't able to find the recipient domain. Please check for any spelling errors, and make sure you didn't enter any spaces, periods, or other punctuation after the recipient's email address. - gsmtp", BadDomain),
    ("gmail", 550, Some((5, 7, 25)), "The IP address sending this message does not have a PTR record setup, or the corresponding forward DNS entry does not point to the sending IP. - gsmtp", PolicyRelated),
    ("gmail", 550, Some((5, 7, 1)), "[2001:db8::1] Our system has detected that this message does not meet IPv6 sending guidelines regarding PTR records and authentication. - gsmtp", PolicyRelated),
    ("gmail", 554, Some((5, 6, 0)), "Mail message is malformed. Not accepted. - gsmtp", ContentRelated),
    ("gmail", 451, Some((4, 3, 0)), "Mail server temporarily rejected message. - gsmtp", Other),
    ("gmail", 550, Some((5, 7, 0)), "Mail relay denied 192.0.2.10. Invalid credentials for relay for one of the domains in: example.com - gsmtp", RelayingIssues),
    ("gmail", 555, Some((5, 5, 2)), "Syntax error. - gsmtp", ProtocolErrors),
    // Microsoft (Exchange Online, Outlook.com)
    ("microsoft", 550, Some((5, 1, 10)), "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", BadMailbox),
    ("microsoft", 550, Some((5, 1, 1)), "RESOLVER.ADR.RecipNotFound; not found", BadMailbox),
    ("microsoft", 550, Some((5, 4, 1)), "Recipient address rejected: Access denied. AS(201806281) [DM6NAM10FT015.eop-nam10.prod.protection.outlook.com]", BadMailbox),
    ("microsoft", 550, Some((5, 7, 1)), "Service unavailable, Client host [192.0.2.10] blocked using Spamhaus. To request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.10 AS(1450)", SpamRelated),
    ("microsoft", 550, Some((5, 7, 606)), "Access denied, banned sending IP [192.0.2.10]. To request removal from this list please visit https://sender.office.com/ and follow the directions.", SpamRelated),
    ("microsoft", 550, Some((5, 7, 708)), "Service unavailable. Access denied, traffic not accepted from this IP.", PolicyRelated),
    ("microsoft", 554, Some((5, 2, 2)), "mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded", QuotaIssues),
    ("microsoft", 550, Some((5, 7, 1)), "RESOLVER.RST.AuthRequired; authentication required", PolicyRelated),
    ("microsoft", 550, Some((5, 7, 509)), "Access denied, sending domain example.com does not pass DMARC verification and has a DMARC policy of reject.", PolicyRelated),
    ("microsoft", 550, Some((5, 7, 520)), "Access denied, Your organization does not allow external forwarding.", PolicyRelated),
    ("microsoft", 554, Some((5, 4, 14)), "Hop count exceeded - possible mail loop ATTR34", RoutingErrors),
    ("microsoft", 554, Some((5, 4, 4)), "SMTPSEND.DNS.NonExistentDomain; nonexistent domain", BadDomain),
    ("microsoft", 550, Some((5, 7, 750)), "Service unavailable. Client blocked from sending from unregistered domains.", PolicyRelated),
    ("microsoft", 451, Some((4, 7, 650)), "The mail server [192.0.2.10] has been temporarily rate limited due to IP reputation.", SpamRelated),
    ("microsoft", 550, Some((5, 7, 1)), "Unfortunately, messages from [192.0.2.10] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).", SpamRelated),
    ("microsoft", 552, Some((5, 3, 4)), "Message size exceeds fixed maximum message size", ContentRelated),
    ("microsoft", 550, Some((5, 1, 8)), "Access denied, bad outbound sender", InvalidSender),
    ("microsoft", 550, Some((4, 4, 7)), "QUEUE.Expired; message expired", MessageExpired),
    ("microsoft", 550, Some((5, 6, 11)), "SMTPSEND.BareLinefeedsAreIllegal; remote server doesn't support bare linefeeds", ContentRelated),
    ("microsoft", 530, Some((5, 7, 57)), "Client not authenticated to send mail. Error: 535 5.7.139 Authentication unsuccessful", PolicyRelated),
    ("microsoft", 550, Some((5, 4, 316)), "Message expired, connection refused(Socket error code 10061)", MessageExpired),
    // Yahoo / AOL
    ("yahoo", 421, Some((4, 7, 0)), "[TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", SpamRelated),
    ("yahoo", 553, Some((5, 7, 2)), "[TSS09] All messages from 192.0.2.10 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes", PolicyRelated),
    ("yahoo", 554, Some((5, 7, 9)), "Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes", PolicyRelated),
    ("yahoo", 554, None, "delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com", BadMailbox),
    ("yahoo", 552, None, "1 Requested mail action aborted, mailbox not found", BadMailbox),
    ("yahoo", 554, None, "delivery error: dd Sorry your message to someone@yahoo.com cannot be delivered. This mailbox is disabled (554.30). - mta1234.mail.ne1.yahoo.com", InactiveMailbox),
    ("yahoo", 553, Some((5, 7, 1)), "[BL21] Connections will not be accepted from 192.0.2.10, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes", SpamRelated),
    ("yahoo", 421, Some((4, 7, 1)), "[TS03] All messages from 192.0.2.10 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes", PolicyRelated),
    ("yahoo", 550, Some((5, 7, 9)), "This mail has been blocked because the sender is unauthenticated. Yahoo requires all senders to authenticate with either SPF or DKIM.", PolicyRelated),
    ("yahoo", 451, None, "Message temporarily deferred due to unresolvable RFC.5321 from domain; see https://postmaster.yahooinc.com/error-codes", InvalidSender),
    // Apple iCloud
    ("icloud", 550, Some((5, 1, 1)), "<someone@icloud.com>: user does not exist", BadMailbox),
    ("icloud", 554, Some((5, 7, 1)), "[CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137", PolicyRelated),
    ("icloud", 552, Some((5, 2, 2)), "<someone@icloud.com>: user is over quota", QuotaIssues),
    ("icloud", 550, Some((5, 7, 0)), "Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=192.0.2.10", SpamRelated),
    // Comcast
    ("comcast", 554, Some((5, 7, 1)), "192.0.2.10 found on one or more DNSBLs, see http://postmaster.comcast.net/smtp-error-codes.php#BL000001", SpamRelated),
    ("comcast", 550, Some((5, 1, 1)), "<someone@comcast.net> recipient does not exist here.", BadMailbox),
    ("comcast", 421, Some((4, 7, 0)), "Too many sessions opened from 192.0.2.10 RL000001", PolicyRelated),
    ("comcast", 550, Some((5, 1, 8)), "Sender domain does not resolve RL000010", InvalidSender),
    ("comcast", 554, Some((5, 7, 1)), "The IP address 192.0.2.10 has no reverse DNS BL000010", PolicyRelated),
    // GMX / web.de
    ("gmx", 550, None, "Requested action not taken: mailbox unavailable", BadMailbox),
    ("gmx", 554, None, "gmx.net (mxgmx017) Nemesis ESMTP Service not available\nNo SMTP service\nIP address is black listed.", SpamRelated),
    ("gmx", 552, None, "Requested mail action aborted: exceeded storage allocation", QuotaIssues),
    ("web.de", 554, None, "Transaction failed\nReject due to policy restrictions.", PolicyRelated),
    // Orange
    ("orange", 421, None, "mwinf5c10 ME Trop de connexions, veuillez verifier votre configuration. Too many connections, slow down. OFR005_104 [104]", PolicyRelated),
    ("orange", 550, None, "mwinf5c40 ME Adresse IP source bloquee pour incident de spam. Client host blocked for spamming issues. OFR006_102 Ref http://csi.cloudmark.com/reset-request/?ip=192.0.2.10 [102]", SpamRelated),
    ("orange", 552, Some((5, 2, 2)), "mwinf5d05 ME Boite du destinataire pleine. Recipient mailbox full. OFR_417 [417]", QuotaIssues),
    ("orange", 550, Some((5, 1, 1)), "mwinf5c12 ME Adresse d'au moins un destinataire invalide. Invalid recipient. OFR_416 [416]", BadMailbox),
    // Mimecast
    ("mimecast", 550, None, "Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550", BadMailbox),
    ("mimecast", 554, None, "Email rejected due to security policies - https://community.mimecast.com/docs/DOC-1369#554", PolicyRelated),
    ("mimecast", 550, None, "Rejected by header based Anti-Spoofing policy: someone@example.com - https://community.mimecast.com/docs/DOC-1369#550", PolicyRelated),
    ("mimecast", 451, None, "Open relay not allowed - https://community.mimecast.com/docs/DOC-1369#451", RelayingIssues),
    ("mimecast", 550, None, "Administrative prohibition - envelope blocked - https://community.mimecast.com/docs/DOC-1369#550", PolicyRelated),
    ("mimecast", 554, None, "Message rejected: a virus was detected in the message - https://community.mimecast.com/docs/DOC-1369#554", VirusRelated),
    // Proofpoint
    ("proofpoint", 554, Some((5, 7, 0)), "Blocked - see https://ipcheck.proofpoint.com/?ip=192.0.2.10", SpamRelated),
    ("proofpoint", 550, Some((5, 1, 1)), "User Unknown", BadMailbox),
    ("proofpoint", 554, Some((5, 7, 1)), "Message rejected as spam by Content Filtering.", SpamRelated),
    // Barracuda
    ("barracuda", 554, None, "Service unavailable; Client host [192.0.2.10] blocked using Barracuda Reputation; http://www.barracudanetworks.com/reputation/?r=1&ip=192.0.2.10", SpamRelated),
    ("barracuda", 550, None, "permanent failure for one or more recipients (someone@example.com:blocked)", PolicyRelated),
    ("barracuda", 554, Some((5, 6, 0)), "Message contains invalid header", ContentRelated),
    ("barracuda", 550, Some((5, 7, 1)), "Message rejected: infected with Win.Trojan.Agent", VirusRelated),
    // Postfix / Exim texts passed on by many receivers
    ("postfix", 550, Some((5, 1, 1)), "<someone@example.com>: Recipient address rejected: User unknown in virtual mailbox table", BadMailbox),
    ("postfix", 554, Some((5, 7, 1)), "<someone@example.com>: Relay access denied", RelayingIssues),
    ("postfix", 450, Some((4, 1, 8)), "<bounce@example.com>: Sender address rejected: Domain not found", InvalidSender),
    ("postfix", 550, Some((5, 1, 2)), "Host unknown (Name server: example.invalid: host not found)", BadDomain),
    ("postfix", 450, Some((4, 2, 0)), "<someone@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/", PolicyRelated),
    ("postfix", 500, Some((5, 5, 1)), "Command unrecognized", ProtocolErrors),
    ("postfix", 451, Some((4, 3, 5)), "Server configuration problem", BadConfiguration),
    ("exim", 550, None, "Unrouteable address", BadDomain),
    ("exim", 550, None, "Too many recipients", PolicyRelated),
    // Replies the engine synthesises for connection-level failures.
    ("sluice", 421, Some((4, 4, 1)), "connect to 192.0.2.25:25: connection refused", NoAnswerFromHost),
    ("sluice", 421, Some((4, 4, 1)), "no greeting from 192.0.2.25: timed out after 300s", NoAnswerFromHost),
    ("sluice", 451, Some((4, 4, 2)), "connection reset by peer after DATA", BadConnection),
    ("sluice", 421, Some((4, 4, 2)), "TLS handshake failed: certificate expired", BadConnection),
    // Enhanced-code and reply-code fallbacks (no rule matches these texts).
    ("fallback", 550, Some((5, 2, 2)), "x", QuotaIssues),
    ("fallback", 550, Some((5, 1, 10)), "x", BadDomain),
    ("fallback", 421, Some((4, 4, 1)), "x", NoAnswerFromHost),
    ("fallback", 421, None, "x", BadConnection),
];

#[test]
fn default_rules_classify_provider_replies() {
    const _: () = assert!(ROWS.len() >= 60);
    let classifier = Classifier::default_rules();
    let mut failures = Vec::new();
    let mut scratch = String::new();
    for (i, &(provider, code, enhanced, text, expected)) in ROWS.iter().enumerate() {
        let reply = Reply {
            code: ReplyCode::new(code).unwrap(),
            enhanced: enhanced.map(|(c, s, d)| EnhancedCode::new(c, s, d).unwrap()),
            text: text.into(),
        };
        let got = classifier.classify_with(&reply, &mut scratch);
        if got.category != expected {
            failures.push(format!(
                "row {i} ({provider}) {scratch}: expected {expected}, got {} via {:?}",
                got.category, got.source
            ));
        }
        assert_eq!(got.permanent, code >= 500, "row {i}");
    }
    assert!(
        failures.is_empty(),
        "{} misclassified:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_category_is_reachable_by_rules() {
    // Each category has at least one rule in the default file, so an
    // operator sees every name in practice and not only through fallbacks.
    let text = sluice_outcomes::classify::DEFAULT_RULES_TOML;
    for c in Category::ALL {
        if c == Other {
            continue;
        }
        assert!(
            text.contains(&format!("\n{} = [", c.name())),
            "no rules for {c}"
        );
    }
}
