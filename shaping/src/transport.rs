//! The thin adapter from shapers to bounded crossbeam channels.
//!
//! Each shard owns one [`ShardLink`]: a receiver for its inbox and a sender
//! to every shard. [`ShardLink::pump`] drains up to a bounded number of
//! inbound messages into the shaper, polls it, and sends what it produced.
//! A full channel hands the message back (`TrySendError::Full`); it waits in
//! a per-peer backlog, in order, and goes first at the next pump. Nothing is
//! dropped: grants and returns must arrive for the books to balance. The
//! backlog stays small because the protocol has at most one request in
//! flight per limit and shard, one grant per request, and one broadcast per
//! restriction change.

use std::collections::VecDeque;

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use thiserror::Error;

use crate::lease::{Envelope, Message, ShardShaper};
use crate::shaper::Shaper;
use crate::units::Nanos;

/// Something that exchanges shaping messages: a [`Shaper`] or a bare
/// [`ShardShaper`].
pub trait Endpoint {
    /// Feeds one inbound message.
    fn receive(&mut self, message: Message, now: Nanos);
    /// Runs timers and returns outbound messages (drained by the caller).
    fn poll(&mut self, now: Nanos) -> &mut Vec<Envelope>;
}

impl Endpoint for ShardShaper {
    fn receive(&mut self, message: Message, now: Nanos) {
        ShardShaper::receive(self, message, now);
    }
    fn poll(&mut self, now: Nanos) -> &mut Vec<Envelope> {
        ShardShaper::poll(self, now)
    }
}

impl Endpoint for Shaper {
    fn receive(&mut self, message: Message, now: Nanos) {
        Shaper::receive(self, message, now);
    }
    fn poll(&mut self, now: Nanos) -> &mut Vec<Envelope> {
        Shaper::poll(self, now)
    }
}

/// The transport failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TransportError {
    /// A peer shard's inbox is gone (that shard stopped).
    #[error("shard {0} has stopped: its shaping inbox is closed")]
    Disconnected(u32),
    /// A message named a shard that does not exist (a bug in the caller's
    /// shard count).
    #[error("message for shard {0}, but there are only {1} shards")]
    NoSuchShard(u32, u32),
}

/// What one pump did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PumpStats {
    /// Messages received.
    pub received: usize,
    /// Messages sent.
    pub sent: usize,
    /// Messages waiting because a channel was full.
    pub backlog: usize,
}

/// One shard's end of the mesh.
#[derive(Debug)]
pub struct ShardLink {
    shard: u32,
    inbox: Receiver<Message>,
    peers: Vec<Sender<Message>>,
    backlog: Vec<VecDeque<Message>>,
    receive_max: usize,
}

/// Builds the links of `shards` shards; each inbox holds `capacity`
/// messages. Hand link `i` to shard `i`.
pub fn mesh(shards: u32, capacity: usize) -> Vec<ShardLink> {
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..shards).map(|_| bounded(capacity.max(1))).unzip();
    receivers
        .into_iter()
        .enumerate()
        .map(|(shard, inbox)| ShardLink {
            shard: shard as u32,
            inbox,
            peers: senders.clone(),
            backlog: (0..shards).map(|_| VecDeque::new()).collect(),
            receive_max: capacity.max(1),
        })
        .collect()
}

impl ShardLink {
    /// This link's shard.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Receives up to one inbox's worth of messages, polls the endpoint and
    /// sends its output.
    pub fn pump<E: Endpoint>(
        &mut self,
        endpoint: &mut E,
        now: Nanos,
    ) -> Result<PumpStats, TransportError> {
        let mut stats = PumpStats::default();
        for _ in 0..self.receive_max {
            match self.inbox.try_recv() {
                Ok(message) => {
                    endpoint.receive(message, now);
                    stats.received += 1;
                }
                // Disconnected here means every sender is gone, including
                // our own clone: impossible while `self` lives.
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        self.flush(&mut stats)?;
        let shards = self.peers.len() as u32;
        for envelope in endpoint.poll(now).drain(..) {
            if envelope.to >= shards {
                return Err(TransportError::NoSuchShard(envelope.to, shards));
            }
            self.backlog[envelope.to as usize].push_back(envelope.message);
        }
        self.flush(&mut stats)?;
        stats.backlog = self.backlog.iter().map(VecDeque::len).sum();
        Ok(stats)
    }

    fn flush(&mut self, stats: &mut PumpStats) -> Result<(), TransportError> {
        for (peer, queue) in self.backlog.iter_mut().enumerate() {
            while let Some(message) = queue.pop_front() {
                match self.peers[peer].try_send(message) {
                    Ok(()) => stats.sent += 1,
                    Err(TrySendError::Full(message)) => {
                        // Handed back: keep it first in line for this peer.
                        queue.push_front(message);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        return Err(TransportError::Disconnected(peer as u32));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lease::{Acquire, LeaseConfig};
    use crate::units::Rate;

    /// Real channels, real threads, a shared virtual clock per step: a remote
    /// shard gets a share through the home and spends it.
    #[test]
    fn tokens_flow_over_real_channels() {
        let shards = 2;
        let key = "provider:test/max_message_rate";
        let home = crate::lease::limit_home(key, shards);
        let remote = 1 - home;
        // Capacity 1 forces the hand-back path.
        let mut links = mesh(shards, 1);
        let rate = Rate::new(1000, Duration::from_secs(1));
        let handles: Vec<_> = links
            .drain(..)
            .map(|mut link| {
                std::thread::spawn(move || {
                    let mut shaper = ShardShaper::new(link.shard(), shards, LeaseConfig::default());
                    let id = shaper.rate_limit(key, rate, Nanos(0));
                    let mut granted = 0u32;
                    for step in 0..20_000u64 {
                        let now = Nanos(step * 10_000);
                        if link.shard() == remote
                            && shaper.try_acquire_message(&[id], now) == Acquire::Ok
                        {
                            granted += 1;
                        }
                        link.pump(&mut shaper, now).expect("peers alive");
                        std::thread::yield_now();
                    }
                    (link, granted)
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect();
        let remote_granted = results
            .iter()
            .find(|(l, _)| l.shard() == remote)
            .map(|r| r.1);
        // 200ms of virtual time at 1000/s: some tokens, never more than the
        // burst plus the rate allows.
        let got = remote_granted.unwrap_or(0);
        assert!(got > 0 && u64::from(got) <= rate.max_in_window(Duration::from_millis(200)));
        let _ = home;
    }

    #[test]
    fn closed_peer_is_reported() {
        let mut links = mesh(2, 4);
        let second = links.pop();
        drop(second);
        let mut first = links.pop().expect("two links");
        let mut shaper = ShardShaper::new(0, 2, LeaseConfig::default());
        // Provoke a message to shard 1: a connection limit homed there.
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| crate::lease::limit_home(k, 2) == 1)
            .expect("some key hashes to shard 1");
        let id = shaper.connection_limit(&key, 3, Nanos(0));
        let _ = shaper.try_acquire_connection(id, Nanos(0));
        // Shard 1's inbox receiver is gone: the send reports it.
        assert_eq!(
            first.pump(&mut shaper, Nanos(1)),
            Err(TransportError::Disconnected(1))
        );
    }
}
