//! Which message a connection sends next, and (open loop) when.
//!
//! A load of `N` messages over `C` connection slots gives slot `i` the message
//! indices `i, i + C, i + 2C, ...` below `N`, so the slots split the batch
//! evenly and every index is sent exactly once. In open-loop mode message `n`
//! is due at `n / rate` seconds after the start: the union of all slots is one
//! constant arrival schedule, and each send's latency is measured from its due
//! time, not from when the connection got round to it (no coordinated
//! omission). Time is passed in as a `Duration` since the run started, so the
//! logic is tested with a virtual clock.

use std::time::Duration;

/// The message sequence of one connection slot.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotSequence {
    next_index: u64,
    stride: u64,
    limit: Option<u64>,
    rate_per_sec: Option<f64>,
    deadline: Option<Duration>,
}

/// What a slot should do now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Send message `index`; latency counts from `scheduled` (open loop) or
    /// from the moment it is written (closed loop: `scheduled` is `None`).
    Send {
        /// Message index within the group.
        index: u64,
        /// Due time since the run started, in open-loop mode.
        scheduled: Option<Duration>,
    },
    /// Nothing is due before this time since the start (open loop).
    WaitUntil(Duration),
    /// This slot has sent all its messages (count reached or duration over).
    Done,
}

impl SlotSequence {
    /// Slot `slot` of `slots`, sending indices below `limit` (if any), at
    /// `rate_per_sec` across all slots (open loop, if any), and nothing due
    /// at or after `deadline` (if any).
    pub fn new(
        slot: u64,
        slots: u64,
        limit: Option<u64>,
        rate_per_sec: Option<f64>,
        deadline: Option<Duration>,
    ) -> Self {
        assert!(slot < slots, "slot {slot} out of {slots}");
        assert!(rate_per_sec.is_none_or(|r| r > 0.0 && r.is_finite()));
        SlotSequence {
            next_index: slot,
            stride: slots,
            limit,
            rate_per_sec,
            deadline,
        }
    }

    /// Due time of message `index` since the start (open loop only).
    pub fn due(&self, index: u64) -> Option<Duration> {
        self.rate_per_sec
            .map(|r| Duration::from_secs_f64(index as f64 / r))
    }

    /// Decides what to do at time `now` (since the run started); on `Send`
    /// the message is taken (the next call moves on).
    pub fn poll(&mut self, now: Duration) -> Next {
        if self.limit.is_some_and(|l| self.next_index >= l) {
            return Next::Done;
        }
        let index = self.next_index;
        match self.due(index) {
            Some(due) => {
                if self.deadline.is_some_and(|d| due >= d) {
                    return Next::Done;
                }
                if due > now {
                    return Next::WaitUntil(due);
                }
                self.next_index += self.stride;
                Next::Send {
                    index,
                    scheduled: Some(due),
                }
            }
            None => {
                if self.deadline.is_some_and(|d| now >= d) {
                    return Next::Done;
                }
                self.next_index += self.stride;
                Next::Send {
                    index,
                    scheduled: None,
                }
            }
        }
    }

    /// How many messages this slot sends in total, when bounded by a count.
    pub fn planned(&self) -> Option<u64> {
        self.limit.map(|l| {
            if self.next_index >= l {
                0
            } else {
                (l - self.next_index).div_ceil(self.stride)
            }
        })
    }
}

/// Splits `total` into `parts` proportional to `weights` (largest remainder),
/// so the parts sum to `total` exactly.
pub fn apportion(total: u64, weights: &[f64]) -> Vec<u64> {
    let sum: f64 = weights.iter().sum();
    if weights.is_empty() || sum <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut parts: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let assigned: u64 = parts.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().take(total.saturating_sub(assigned) as usize) {
        parts[i] += 1;
    }
    debug_assert_eq!(parts.iter().sum::<u64>(), total);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives all slots with a virtual clock stepping `step`; returns
    /// (index, scheduled, sent_at) for every send.
    fn simulate(
        slots: u64,
        limit: Option<u64>,
        rate: f64,
        deadline: Option<Duration>,
        step: Duration,
    ) -> Vec<(u64, Duration, Duration)> {
        let mut seqs: Vec<SlotSequence> = (0..slots)
            .map(|s| SlotSequence::new(s, slots, limit, Some(rate), deadline))
            .collect();
        let mut done = vec![false; slots as usize];
        let mut now = Duration::ZERO;
        let mut sends = Vec::new();
        while done.iter().any(|d| !d) {
            for (i, seq) in seqs.iter_mut().enumerate() {
                loop {
                    match seq.poll(now) {
                        Next::Send { index, scheduled } => {
                            sends.push((index, scheduled.unwrap(), now))
                        }
                        Next::WaitUntil(t) => {
                            assert!(t > now);
                            break;
                        }
                        Next::Done => {
                            done[i] = true;
                            break;
                        }
                    }
                }
            }
            now += step;
            assert!(now < Duration::from_secs(3600), "schedule never finished");
        }
        sends
    }

    #[test]
    fn open_loop_keeps_its_schedule() {
        // 1000 msg/s over 7 slots, virtual clock in 1 ms steps.
        let sends = simulate(7, Some(5000), 1000.0, None, Duration::from_millis(1));
        assert_eq!(sends.len(), 5000);
        let mut indices: Vec<u64> = sends.iter().map(|s| s.0).collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..5000).collect::<Vec<_>>());
        for (index, scheduled, sent) in &sends {
            assert_eq!(*scheduled, Duration::from_secs_f64(*index as f64 / 1000.0));
            // Sent at the first tick at or after its due time, never before.
            assert!(sent >= scheduled && *sent - *scheduled < Duration::from_millis(1));
        }
        // Sends up to time t are exactly floor(t * rate) + 1.
        for t_ms in [0u64, 1, 250, 999, 4999] {
            let t = Duration::from_millis(t_ms);
            let count = sends.iter().filter(|s| s.2 <= t).count() as u64;
            assert_eq!(count, t_ms + 1, "at {t_ms} ms");
        }
    }

    #[test]
    fn open_loop_catches_up_with_original_due_times() {
        // A coarse clock (a stalled connection): due times are kept, so the
        // latency of late sends includes the wait (no coordinated omission).
        let sends = simulate(2, Some(100), 100.0, None, Duration::from_millis(250));
        assert_eq!(sends.len(), 100);
        let late = sends.iter().filter(|(_, sch, sent)| sent > sch).count();
        assert!(late > 90);
        for (index, scheduled, _) in &sends {
            assert_eq!(*scheduled, Duration::from_secs_f64(*index as f64 / 100.0));
        }
    }

    #[test]
    fn open_loop_duration_bound() {
        let sends = simulate(
            3,
            None,
            200.0,
            Some(Duration::from_secs(2)),
            Duration::from_millis(5),
        );
        // Due times 0, 5 ms, ..., 1995 ms: exactly 400 messages.
        assert_eq!(sends.len(), 400);
    }

    #[test]
    fn closed_loop_slots_partition_the_batch() {
        for (slots, limit) in [(1u64, 10u64), (3, 10), (16, 5), (64, 1000)] {
            let mut all = Vec::new();
            let mut planned = 0;
            for s in 0..slots {
                let mut seq = SlotSequence::new(s, slots, Some(limit), None, None);
                planned += seq.planned().unwrap();
                while let Next::Send { index, scheduled } = seq.poll(Duration::ZERO) {
                    assert!(scheduled.is_none());
                    all.push(index);
                }
            }
            all.sort_unstable();
            assert_eq!(all, (0..limit).collect::<Vec<_>>());
            assert_eq!(planned, limit);
        }
    }

    #[test]
    fn closed_loop_deadline() {
        let mut seq = SlotSequence::new(0, 1, None, None, Some(Duration::from_secs(1)));
        assert!(matches!(
            seq.poll(Duration::from_millis(999)),
            Next::Send { .. }
        ));
        assert_eq!(seq.poll(Duration::from_secs(1)), Next::Done);
    }

    #[test]
    fn apportion_is_exact() {
        assert_eq!(apportion(10, &[1.0, 1.0, 1.0]), vec![4, 3, 3]);
        assert_eq!(apportion(7, &[0.5, 0.25, 0.25]), vec![3, 2, 2]);
        assert_eq!(apportion(5, &[0.0, 1.0]), vec![0, 5]);
        assert_eq!(apportion(5, &[0.0, 0.0]), vec![0, 0]);
        let parts = apportion(1_000_003, &[0.1, 0.2, 0.3, 0.4]);
        assert_eq!(parts.iter().sum::<u64>(), 1_000_003);
    }
}
