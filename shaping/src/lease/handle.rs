//! Inbound message handling of [`ShardShaper`]: the home's ledgers answer
//! requests, returns and restrictions; other shards apply grants and limit
//! changes.

use super::conn::ConnSlot;
use super::rate::RateSlot;
use super::{LimitId, LimitSpec, Message, ShardShaper, Slot};
use crate::units::Nanos;

/// Epochs are times: a home reclaimed and created again later still
/// numbers its changes above everything it sent before.
fn next_epoch(epoch: u64, now: Nanos) -> u64 {
    (epoch + 1).max(now.0)
}

impl ShardShaper {
    fn slot_for(&mut self, key: &str, base: LimitSpec, now: Nanos) -> u32 {
        self.register(key, base, now, false).0
    }

    pub(super) fn handle(&mut self, message: Message, now: Nanos) {
        match message {
            Message::RateRequest {
                key,
                from,
                base,
                demand_milli,
            } => {
                let id = self.slot_for(&key, LimitSpec::Rate(base), now);
                if let Slot::Rate(RateSlot {
                    home_state: Some(home),
                    ..
                }) = &mut self.slots[id as usize]
                {
                    home.request(from, demand_milli, now);
                }
                self.service(id, now);
            }
            Message::RateGrant {
                key,
                epoch,
                rate,
                lease,
            } => {
                if let Some(LimitId(id)) = self.ids.get(&*key).copied() {
                    if let Slot::Rate(slot) = &mut self.slots[id as usize] {
                        slot.grant(epoch, rate, lease, now);
                    }
                    self.service(id, now);
                }
            }
            Message::RateRelease { key, from } => {
                if let Some(LimitId(id)) = self.ids.get(&*key).copied() {
                    if let Slot::Rate(RateSlot {
                        home_state: Some(home),
                        ..
                    }) = &mut self.slots[id as usize]
                    {
                        home.release(from, now);
                    }
                    self.service(id, now);
                }
            }
            Message::PermitRequest {
                key,
                from,
                base,
                want,
            } => {
                let id = self.slot_for(&key, LimitSpec::Connections(base), now);
                if let Slot::Conn(slot) = &mut self.slots[id as usize] {
                    if let Some(home) = &mut slot.home_state {
                        let grants = home.request(from, want);
                        self.permit_grants(id, grants);
                    }
                }
            }
            Message::PermitGrant {
                key,
                epoch,
                max,
                count,
            } => {
                if let Some(LimitId(id)) = self.ids.get(&*key).copied() {
                    if let Slot::Conn(slot) = &mut self.slots[id as usize] {
                        slot.held += count;
                        slot.requested = false;
                        // Fresh permits are for this shard's waiting demand:
                        // they get a full idle period before going back.
                        slot.recalled = false;
                        slot.last_activity = now;
                        if epoch >= slot.epoch {
                            slot.epoch = epoch;
                            slot.max = max;
                        }
                    }
                    self.service(id, now);
                }
            }
            Message::PermitRecall { key } => {
                if let Some(LimitId(id)) = self.ids.get(&*key).copied() {
                    if let Slot::Conn(slot) = &mut self.slots[id as usize] {
                        slot.recalled = true;
                    }
                    self.service(id, now);
                }
            }
            Message::PermitReturn { key, from, count } => {
                if let Some(LimitId(id)) = self.ids.get(&*key).copied() {
                    if let Slot::Conn(ConnSlot {
                        home_state: Some(home),
                        ..
                    }) = &mut self.slots[id as usize]
                    {
                        let grants = home.returned(from, count);
                        self.permit_grants(id, grants);
                    }
                }
            }
            Message::Restrict {
                key,
                from,
                base,
                spec,
            } => {
                let id = self.slot_for(&key, base, now);
                self.restrict_at_home(id, from, spec, now);
            }
            Message::LimitChange { key, epoch, spec } => {
                if let Some(LimitId(id)) = self.ids.get(&*key).copied() {
                    match (&mut self.slots[id as usize], spec) {
                        (Slot::Rate(slot), LimitSpec::Rate(rate)) => slot.adopt(epoch, rate, now),
                        (Slot::Conn(slot), LimitSpec::Connections(max)) if epoch >= slot.epoch => {
                            slot.epoch = epoch;
                            slot.max = max;
                        }
                        _ => {}
                    }
                    self.service(id, now);
                }
            }
        }
    }

    fn permit_grants(&mut self, id: u32, grants: Vec<(u32, u32)>) {
        let Slot::Conn(slot) = &self.slots[id as usize] else {
            return;
        };
        let (key, epoch) = (slot.key.clone(), slot.epoch);
        let max = slot.home_state.as_ref().map_or(slot.max, |h| h.effective);
        let recalls = slot
            .home_state
            .as_ref()
            .map(|h| h.recall_targets())
            .unwrap_or_default();
        for &(to, count) in &grants {
            let key = key.clone();
            self.stage(
                to,
                Message::PermitGrant {
                    key,
                    epoch,
                    max,
                    count,
                },
            );
        }
        for to in recalls {
            if grants.iter().any(|(granted, _)| *granted == to) {
                continue;
            }
            let key = key.clone();
            self.stage(to, Message::PermitRecall { key });
        }
    }

    fn restrict_at_home(&mut self, id: u32, from: u32, spec: Option<LimitSpec>, now: Nanos) {
        let (key, epoch, change, participants) = match &mut self.slots[id as usize] {
            Slot::Rate(slot) => {
                let Some(home) = &mut slot.home_state else {
                    return;
                };
                home.mark_known(from);
                home.restrictions[from as usize] = match spec {
                    Some(LimitSpec::Rate(rate)) => Some(rate),
                    _ => None,
                };
                let Some(rate) = home.recompute(slot.base) else {
                    return;
                };
                let participants: Vec<u32> = home.participants().collect();
                slot.epoch = next_epoch(slot.epoch, now);
                (
                    slot.key.clone(),
                    slot.epoch,
                    LimitSpec::Rate(rate),
                    participants,
                )
            }
            Slot::Conn(slot) => {
                let Some(home) = &mut slot.home_state else {
                    return;
                };
                home.mark_known(from);
                home.restrictions[from as usize] = match spec {
                    Some(LimitSpec::Connections(max)) => Some(max),
                    _ => None,
                };
                let Some(max) = home.recompute(slot.base) else {
                    return;
                };
                let participants: Vec<u32> = home.participants().collect();
                slot.epoch = next_epoch(slot.epoch, now);
                (
                    slot.key.clone(),
                    slot.epoch,
                    LimitSpec::Connections(max),
                    participants,
                )
            }
            Slot::Free => return,
        };
        let mut targets = participants;
        if !targets.contains(&self.shard) {
            targets.push(self.shard);
        }
        for to in targets {
            let key = key.clone();
            self.stage(
                to,
                Message::LimitChange {
                    key,
                    epoch,
                    spec: change,
                },
            );
        }
        if let Slot::Conn(slot) = &mut self.slots[id as usize] {
            if let Some(home) = &mut slot.home_state {
                let grants = home.serve();
                self.permit_grants(id, grants);
            }
        }
        self.service(id, now);
    }
}
