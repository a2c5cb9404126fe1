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
    fn slot_for(&mut self, key: &str, base: LimitSpec, generation: u64, now: Nanos) -> u32 {
        self.register(key, base, generation, now, false).0
    }

    /// A configured value from rules of `generation`: taken when newer
    /// than the slot's. The home publishes the new effective value; any
    /// other shard keeps it for its own requests and tells the home.
    /// Returns whether the value changed.
    pub(super) fn adopt_base(
        &mut self,
        id: u32,
        base: LimitSpec,
        generation: u64,
        now: Nanos,
    ) -> bool {
        let (changed, home, key) = match (&mut self.slots[id as usize], base) {
            (Slot::Rate(s), LimitSpec::Rate(rate)) if generation > s.generation => {
                s.generation = generation;
                let changed = s.base != rate;
                s.base = rate;
                (changed, s.home, s.key.clone())
            }
            (Slot::Conn(s), LimitSpec::Connections(max)) if generation > s.generation => {
                s.generation = generation;
                let changed = s.base != max;
                s.base = max;
                if s.home != self.shard && max < s.max {
                    // Lower at once, without waiting for the home's word
                    // (stricter is always safe), and keep no spare permit.
                    s.max = max;
                    s.shrunk = true;
                }
                (changed, s.home, s.key.clone())
            }
            _ => return false,
        };
        if changed {
            if home == self.shard {
                self.publish(id, now);
            } else {
                self.stage(
                    home,
                    Message::Rebase {
                        key,
                        base,
                        generation,
                    },
                );
            }
        }
        changed
    }

    pub(super) fn handle(&mut self, message: Message, now: Nanos) {
        match message {
            Message::RateRequest {
                key,
                from,
                base,
                generation,
                demand_milli,
            } => {
                let id = self.slot_for(&key, LimitSpec::Rate(base), generation, now);
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
                generation,
                want,
            } => {
                let id = self.slot_for(&key, LimitSpec::Connections(base), generation, now);
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
                        // The home lends only within its maximum: the
                        // books are back under it.
                        slot.shrunk = false;
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
                generation,
                spec,
            } => {
                let id = self.slot_for(&key, base, generation, now);
                self.restrict_at_home(id, from, spec, now);
            }
            Message::Rebase {
                key,
                base,
                generation,
            } => {
                // A limit the home does not hold needs no change: whoever
                // creates it next brings its own (generation-stamped) base.
                if let Some(LimitId(id)) = self.ids.get(&*key).copied() {
                    self.adopt_base(id, base, generation, now);
                }
            }
            Message::LimitChange { key, epoch, spec } => {
                if let Some(LimitId(id)) = self.ids.get(&*key).copied() {
                    match (&mut self.slots[id as usize], spec) {
                        (Slot::Rate(slot), LimitSpec::Rate(rate)) => slot.adopt(epoch, rate, now),
                        (Slot::Conn(slot), LimitSpec::Connections(max)) if epoch >= slot.epoch => {
                            slot.epoch = epoch;
                            if max < slot.max {
                                // Until the home grants again, every permit
                                // that goes idle here goes home at once: a
                                // spare one kept could be handed out while
                                // other shards' permits still count over
                                // the lower maximum.
                                slot.shrunk = true;
                            }
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
        match &mut self.slots[id as usize] {
            Slot::Rate(slot) => {
                let Some(home) = &mut slot.home_state else {
                    return;
                };
                home.mark_known(from);
                home.restrictions[from as usize] = match spec {
                    Some(LimitSpec::Rate(rate)) => Some(rate),
                    _ => None,
                };
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
            }
            Slot::Free => return,
        }
        self.publish(id, now);
    }

    /// On the home: recomputes the effective value from the base and the
    /// restrictions and, when it changed, broadcasts it to every
    /// participant (and itself) and serves waiting permit requests.
    fn publish(&mut self, id: u32, now: Nanos) {
        let (key, epoch, change, participants) = match &mut self.slots[id as usize] {
            Slot::Rate(slot) => {
                let Some(home) = &mut slot.home_state else {
                    return;
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
