//! DATA and BDAT handling of the server session (RFC 5321 §4.1.1.4,
//! RFC 3030 §2): message bytes stream out as borrowed chunks, limits are
//! checked as they arrive, and refusals are answered after the message end.

use super::{Greeted, Input, MailState, Outcome, ServerSession, SlotKind};
use crate::data::{LineChecker, Violations};
use crate::extensions::Extensions;
use crate::reply::{push_decimal, EnhancedCode, Reply, ReplyCode};
use crate::server::{BareLineEnding, Event, ProtocolError};

impl ServerSession {
    /// Checks common to DATA and BDAT; `Some` when the command cannot go on.
    pub(super) fn check_body_start<'a>(&mut self) -> Option<Outcome<'a>> {
        let error = match self.txn.mail {
            _ if self.helo == Greeted::None => ProtocolError::NoHelo,
            MailState::None => ProtocolError::NoMail,
            // Whether any recipient was accepted is still open.
            MailState::Pending => return Some(Outcome::Blocked),
            MailState::Open if self.txn.rcpts_pending > 0 => return Some(Outcome::Blocked),
            // RFC 2920 §3.1 / RFC 5321 §3.3: no valid recipients.
            MailState::Open if self.txn.rcpts_accepted == 0 => ProtocolError::NoValidRecipients,
            MailState::Open => return None,
        };
        Some(Outcome::Event(self.refuse(error)))
    }

    pub(super) fn bdat_command<'a>(
        &mut self,
        ext: Extensions,
        size: u64,
        last: bool,
    ) -> Outcome<'a> {
        let error = if !ext.contains(Extensions::CHUNKING) {
            Some(ProtocolError::NotImplemented)
        } else {
            match self.check_body_start() {
                Some(Outcome::Event(event)) => {
                    // Refused by check_body_start; the chunk that follows is
                    // read and discarded (RFC 3030 §2).
                    self.input = Input::Bdat {
                        remaining: size,
                        size,
                        last,
                        discard: true,
                    };
                    return Outcome::Event(event);
                }
                Some(other) => return other,
                None => self.txn.failed.or_else(|| {
                    let total = self.txn.bytes.saturating_add(size);
                    (total > self.config.message_bytes_max).then_some(ProtocolError::MessageTooBig)
                }),
            }
        };
        self.input = Input::Bdat {
            remaining: size,
            size,
            last,
            discard: error.is_some(),
        };
        match error {
            Some(error) => {
                let first_failure =
                    error == ProtocolError::MessageTooBig && self.txn.failed.is_none();
                let event = self.refuse(error);
                if first_failure {
                    self.txn.failed = Some(ProtocolError::BdatAfterFailure);
                    self.deferred = Some(event);
                    return Outcome::Event(Event::MessageAborted { error });
                }
                Outcome::Event(event)
            }
            None => {
                self.txn.bdat = true;
                self.txn.bytes += size;
                Outcome::Event(Event::Bdat { size, last })
            }
        }
    }

    pub(super) fn bdat_step<'a>(&mut self, input: &'a [u8]) -> (usize, Option<Event<'a>>) {
        let Input::Bdat {
            remaining,
            size,
            last,
            discard,
        } = &mut self.input
        else {
            unreachable!("bdat_step outside BDAT");
        };
        if *remaining == 0 {
            let (size, last, discard) = (*size, *last, *discard);
            self.input = Input::Commands;
            if discard {
                if last && self.txn.mail == MailState::Open {
                    self.reset_transaction();
                }
                return (0, None);
            }
            if last {
                // The same content rules as DATA (RFC 5321 §2.3.8,
                // §4.5.3.1.6), chosen by the same priority, so BDAT cannot
                // carry what DATA refuses to a lenient next hop.
                let violations = self
                    .txn
                    .bdat_lines
                    .as_mut()
                    .map(LineChecker::finish)
                    .unwrap_or_default();
                let reject_bare = self.config.bare_line_ending == BareLineEnding::Reject;
                let failure = if reject_bare
                    && violations.intersects(Violations::BARE_CR | Violations::BARE_LF)
                {
                    Some(ProtocolError::ContentBareLineEnding)
                } else if violations.contains(Violations::LINE_TOO_LONG) {
                    Some(ProtocolError::ContentLineTooLong)
                } else {
                    None
                };
                self.reset_transaction();
                if let Some(error) = failure {
                    // As in DATA: tell the application first (it drops the
                    // body it collected), then the refusal follows.
                    let event = self.refuse(error);
                    self.deferred = Some(event);
                    return (0, Some(Event::MessageAborted { error }));
                }
                let token = self.push_pending(SlotKind::MessageEnd);
                return (0, Some(Event::MessageEnd { token }));
            }
            let mut text = Vec::with_capacity(32);
            push_decimal(&mut text, size);
            text.extend_from_slice(b" octets received");
            // Invariant: ASCII digits and text.
            let text = String::from_utf8(text).expect("ASCII");
            self.push_fixed(Reply::new(ReplyCode::OK, EnhancedCode::OK, text));
            return (0, None);
        }
        if input.is_empty() {
            return (0, Some(Event::NeedInput));
        }
        let take = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
        *remaining -= take as u64;
        if *discard {
            return (take, None);
        }
        let chunk = &input[..take];
        let line_bytes_max = self.config.text_line_bytes_max;
        self.txn
            .bdat_lines
            .get_or_insert_with(|| LineChecker::new(line_bytes_max))
            .feed(chunk);
        (take, Some(Event::BodyChunk(chunk)))
    }

    pub(super) fn data_step<'a>(&mut self, input: &'a [u8]) -> (usize, Option<Event<'a>>) {
        let Input::Data(receiver) = &mut self.input else {
            unreachable!("data_step outside DATA");
        };
        if input.is_empty() {
            return (0, Some(Event::NeedInput));
        }
        let step = receiver.feed(input);
        let violations = receiver.violations();
        let ended = step.ended;
        // Every byte is counted and the violations accumulate, so the
        // refusal chosen at the end (by priority, not by which problem was
        // seen first) never depends on how the input was split.
        self.txn.bytes += step.chunk.len() as u64;
        let reject_bare = self.config.bare_line_ending == BareLineEnding::Reject;
        let failure = if self.txn.bytes > self.config.message_bytes_max {
            Some(ProtocolError::MessageTooBig)
        } else if reject_bare && violations.intersects(Violations::BARE_CR | Violations::BARE_LF) {
            Some(ProtocolError::ContentBareLineEnding)
        } else if violations.contains(Violations::LINE_TOO_LONG) {
            Some(ProtocolError::ContentLineTooLong)
        } else {
            None
        };
        let newly_failed = self.txn.failed.is_none() && failure.is_some();
        if newly_failed {
            self.txn.failed = failure;
        }
        if ended {
            self.input = Input::Commands;
            let event = match failure {
                Some(error) => {
                    self.reset_transaction();
                    let event = self.refuse(error);
                    if newly_failed {
                        self.deferred = Some(event);
                        Event::MessageAborted { error }
                    } else {
                        event
                    }
                }
                None => {
                    assert!(
                        self.txn.rcpts_accepted > 0,
                        "DATA ended without an accepted recipient"
                    );
                    let token = self.push_pending(SlotKind::MessageEnd);
                    self.reset_transaction();
                    Event::MessageEnd { token }
                }
            };
            return (step.consumed, Some(event));
        }
        if let (true, Some(error)) = (newly_failed, failure) {
            return (step.consumed, Some(Event::MessageAborted { error }));
        }
        if step.chunk.is_empty() || self.txn.failed.is_some() {
            return (step.consumed, None);
        }
        (step.consumed, Some(Event::BodyChunk(step.chunk)))
    }
}
