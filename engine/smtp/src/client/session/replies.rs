//! Replies to transaction commands: MAIL, RCPT, DATA, the final dot and
//! BDAT, each turned into per-recipient outcomes.

use std::collections::VecDeque;

use super::{ClientSession, Expect, MailStatus, SendStep, Txn};
use crate::client::{BodyEncoding, BodyTransmit, ClientEvent, Failure, Outcome, ProtocolFault};
use crate::reply::{Reply, Severity};

impl ClientSession {
    pub(super) fn on_transaction_reply(&mut self, expect: Expect, seq: u64, reply: Reply) {
        let pipelining = self.pipelining;
        let code = reply.code.value();
        let positive = reply.severity() == Severity::PositiveCompletion;
        // Invariant: an Expect naming a transaction exists only while the
        // transaction is in `txns` (it leaves once it owes no reply).
        let txn = self
            .txns
            .iter_mut()
            .find(|t| t.seq == seq)
            .expect("reply for a transaction in flight");
        assert!(
            txn.replies_owed > 0,
            "reply for a transaction that owes none"
        );
        txn.replies_owed -= 1;
        let mut need_rset = false;
        let mut body = None;
        match expect {
            Expect::Mail(_) => {
                if positive {
                    txn.mail = MailStatus::Accepted;
                } else {
                    txn.mail = MailStatus::Failed;
                    // A 503 to MAIL means the server still had a transaction
                    // open (ours pipelined behind a failed one): our fault,
                    // retry, and reset first.
                    let outcome = if code == 503 {
                        need_rset = true;
                        Outcome::TempFail(Failure::Reply(reply))
                    } else {
                        failure_outcome(reply)
                    };
                    for index in 0..txn.outcomes.len() {
                        if txn.outcomes[index].is_none() {
                            set_outcome(&mut self.events, txn, index, outcome.clone());
                        }
                    }
                    txn.rcpts_stopped = true;
                    if matches!(
                        txn.step,
                        SendStep::Mail | SendStep::Rcpt(_) | SendStep::Body
                    ) {
                        txn.step = SendStep::Sent;
                    }
                }
            }
            Expect::Rcpt(_, index) => {
                if txn.mail == MailStatus::Failed {
                    // Outcome already given by the MAIL reply.
                } else if positive {
                    txn.accepted[index] = true;
                } else {
                    // RFC 5321 §4.5.3.1.10: 452 too many recipients; the
                    // rest go in a later transaction (TempFail).
                    if code == 452 && !pipelining {
                        txn.rcpts_stopped = true;
                        for later in index + 1..txn.outcomes.len() {
                            if txn.outcomes[later].is_none() {
                                let outcome = Outcome::TempFail(Failure::Reply(reply.clone()));
                                set_outcome(&mut self.events, txn, later, outcome);
                            }
                        }
                    }
                    set_outcome(&mut self.events, txn, index, failure_outcome(reply));
                }
            }
            Expect::Data(_) => {
                txn.step = SendStep::Sent;
                if code == 354 {
                    txn.replies_owed += 1;
                    if txn.mail == MailStatus::Accepted && txn.accepted_count() > 0 {
                        body = Some(BodyTransmit {
                            id: txn.envelope.id,
                            encoding: BodyEncoding::DotStuffed,
                        });
                    }
                } else {
                    need_rset = txn.mail == MailStatus::Accepted;
                    if positive {
                        // A 2xx to DATA: no body was taken. Not delivered.
                        let fault = Failure::Protocol(ProtocolFault::UnexpectedCode);
                        for index in 0..txn.outcomes.len() {
                            if txn.accepted[index] && txn.outcomes[index].is_none() {
                                set_outcome(
                                    &mut self.events,
                                    txn,
                                    index,
                                    Outcome::TempFail(fault.clone()),
                                );
                            }
                        }
                    } else {
                        settle_accepted(&mut self.events, txn, &reply);
                    }
                }
            }
            Expect::DataEnd(_) | Expect::Bdat(_) => {
                if txn.mail == MailStatus::Accepted {
                    if txn.accepted_count() == 0 || !positive {
                        // RFC 3030 §2: after a failed chunk the state is
                        // unclear; a transaction without recipients may
                        // still be open. Reset before the next MAIL.
                        need_rset = matches!(expect, Expect::Bdat(_));
                    }
                    settle_accepted(&mut self.events, txn, &reply);
                }
            }
            _ => unreachable!("not a transaction reply"),
        }
        if code == 354 && matches!(expect, Expect::Data(_)) {
            match body {
                Some(body) => self.bodies.push_back((self.wbuf.len(), body)),
                // RFC 2920 §3.1: every RCPT failed but DATA got 354: a lone
                // dot ends the empty message.
                None => self.wbuf.extend_from_slice(b".\r\n"),
            }
            self.expects.push_back(Expect::DataEnd(seq));
        }
        self.need_rset |= need_rset;
    }
}

fn failure_outcome(reply: Reply) -> Outcome {
    if reply.severity() == Severity::PermanentNegative {
        Outcome::PermFail(Failure::Reply(reply))
    } else {
        Outcome::TempFail(Failure::Reply(reply))
    }
}

/// Gives every accepted recipient still open the outcome of `reply` (the
/// final dot, BDAT LAST, or a refused DATA).
fn settle_accepted(events: &mut VecDeque<ClientEvent>, txn: &mut Txn, reply: &Reply) {
    for index in 0..txn.outcomes.len() {
        if txn.accepted[index] && txn.outcomes[index].is_none() {
            let outcome = match reply.severity() {
                Severity::PositiveCompletion => Outcome::Delivered(reply.clone()),
                Severity::PermanentNegative => Outcome::PermFail(Failure::Reply(reply.clone())),
                Severity::TransientNegative => Outcome::TempFail(Failure::Reply(reply.clone())),
                Severity::PositiveIntermediate => {
                    Outcome::TempFail(Failure::Protocol(ProtocolFault::UnexpectedCode))
                }
            };
            set_outcome(events, txn, index, outcome);
        }
    }
}

pub(super) fn set_outcome(
    events: &mut VecDeque<ClientEvent>,
    txn: &mut Txn,
    index: usize,
    outcome: Outcome,
) {
    assert!(
        txn.outcomes[index].is_none(),
        "recipient {index} given two outcomes"
    );
    txn.outcomes[index] = Some(outcome.clone());
    events.push_back(ClientEvent::Recipient {
        id: txn.envelope.id,
        index,
        outcome,
    });
}
