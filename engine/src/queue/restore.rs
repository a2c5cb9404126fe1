//! Rebuilding the queues from the spool after a restart.

// external
use sluice_spool::storage::Storage;
use sluice_spool::{LiveMessage, Spool, SpoolError};

// crate
use super::{Entry, Queues};

/// Why a live message could not be put back in the queues.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The record could not be read or parsed.
    #[error("message {id}: cannot read its spool record: {source}")]
    Spool {
        /// The message id.
        id: u64,
        /// The spool's error.
        source: SpoolError,
    },
    /// The recovery index names a recipient the record does not have.
    #[error("message {id}: recipient {index} is not in its record of {count} recipients")]
    NoSuchRecipient {
        /// The message id.
        id: u64,
        /// The recipient index.
        index: u32,
        /// Recipients in the record.
        count: usize,
    },
}

/// The domain of an address (after its last `@`), or empty when it has
/// none (such a recipient goes to the unrouted site and expires).
pub fn domain_of(address: &[u8]) -> &[u8] {
    match address.iter().rposition(|&b| b == b'@') {
        Some(at) => &address[at + 1..],
        None => &[],
    }
}

impl Queues {
    /// Puts a message that survived a restart back in the queues: one entry
    /// per recipient still pending, with the stored retry state (attempt
    /// count; scheduled at the stored next attempt if that is in the
    /// future, ready otherwise). Returns how many recipients were queued.
    pub fn restore<S: Storage>(
        &mut self,
        spool: &Spool<S>,
        live: &LiveMessage,
        now_unix_ms: u64,
    ) -> Result<usize, RestoreError> {
        let spool_err = |source| RestoreError::Spool {
            id: live.id,
            source,
        };
        let record = spool.message(&live.rec).map_err(spool_err)?;
        let parts = record.parts().map_err(spool_err)?;
        // The record's queue field holds the source pool the message asked
        // for (X-virtualMTA), empty when none.
        let pool = (!parts.queue.is_empty()).then(|| String::from_utf8_lossy(parts.queue));
        let tenant = (!parts.tenant.is_empty()).then(|| String::from_utf8_lossy(parts.tenant));
        let mut queued = 0;
        for &index in &live.pending {
            let Some(r) = parts.recipients.get(index as usize) else {
                return Err(RestoreError::NoSuchRecipient {
                    id: live.id,
                    index,
                    count: parts.recipients.len(),
                });
            };
            let domain = String::from_utf8_lossy(domain_of(r.address));
            let dest = self.destination_for(&domain, pool.as_deref(), tenant.as_deref());
            let expiry = self.expiry_in(
                dest,
                parts.fixed.arrival_unix_ms,
                parts.fixed.expiry_unix_ms,
            );
            let entry = Entry {
                id: live.id,
                rec: live.rec,
                expiry_unix_ms: expiry,
                index,
                attempts: live.attempts,
            };
            if live.next_attempt_unix_ms > now_unix_ms || expiry <= now_unix_ms {
                // Already expired entries become due at once and expire.
                self.schedule(dest, entry, live.next_attempt_unix_ms);
            } else {
                self.push_ready(dest, entry);
            }
            queued += 1;
        }
        Ok(queued)
    }
}
