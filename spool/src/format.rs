//! The on-disk record format: framing, CRC32C, and the payload layouts.
//!
//! Every record is `header (16 bytes) + payload`, padded with zeros to a
//! multiple of 8 bytes so every header starts 8-aligned (the recovery scan
//! only looks for the magic at aligned offsets). All integers are little
//! endian.
//!
//! ```text
//! header   0..4   magic  "SLCR" (0x52434C53 read as u32 LE)
//!          4      kind   1 segment header, 2 message, 3 completion,
//!                        4 deferral, 5 segment end
//!          5      format version (2; version 1 is still read)
//!          6..8   segment tag: the low 16 bits of the segment's sequence
//!                 number (version 1: zero)
//!          8..12  payload length in bytes (padding excluded)
//!          12..16 CRC32C over header bytes 0..12 followed by the payload,
//!                 seeded with CRC32C(segment sequence number as u64 LE)
//!                 (version 1: unseeded)
//! ```
//!
//! # Why the seed (format version 2)
//! Segment files are recycled: a file whose records are all dead is renamed
//! to a new sequence number and written again from the start, without
//! zeroing, so beyond the new records lie the old ones. Sequence numbers
//! are never reused, and every record's CRC is seeded with its segment's
//! number, so a record left from an earlier life of the file fails its
//! checksum in the new one and can never be read back as valid. The tag
//! lets the scan tell such a stale record from a corrupt one without
//! computing a CRC ([`Check::Stale`]). The segment header also carries the
//! file's generation (how many lives it had before this one).
//!
//! A version 1 segment (written before recycling existed) is recognised by
//! its header and read with the version 1 rules; it is never appended to,
//! and when it is recycled its new life is version 2.
//!
//! This module is pure: byte slices in, byte slices out. It never panics on
//! bytes read back from a file; a malformed record is a [`FormatError`].

// std
use std::ops::Range;

// external
use thiserror::Error;

/// Magic at the start of every record header.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SLCR");
/// Format version written into every header.
pub const FORMAT_VERSION: u8 = 2;
/// The first format: no segment tag, unseeded CRC. Read, never written.
pub const FORMAT_VERSION_V1: u8 = 1;
/// Size of the record header in bytes.
pub const HEADER_BYTES: usize = 16;
/// Every record starts at a multiple of this.
pub const RECORD_ALIGN: usize = 8;
/// Fixed part of a message payload, before the envelope section.
pub const MESSAGE_FIXED_BYTES: usize = 48;
/// Segment header payload size.
pub const SEGMENT_HEADER_PAYLOAD_BYTES: usize = 32;
/// Completion entry: recipient index u32 + outcome u8.
pub const COMPLETION_ENTRY_BYTES: usize = 5;
/// Deferral payload: id u64, attempts u32, next attempt ms u64.
pub const DEFERRAL_PAYLOAD_BYTES: usize = 20;
/// Message flag: this record is a relocated copy of an older one.
pub const FLAG_RELOCATED: u32 = 1;

const _: () = assert!(HEADER_BYTES % RECORD_ALIGN == 0);
const _: () = assert!(MESSAGE_FIXED_BYTES % RECORD_ALIGN == 0);
const _: () = assert!(RECORD_ALIGN.is_power_of_two());

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// First record of every segment: sequence number and id floor.
    SegmentHeader = 1,
    /// An accepted message: envelope and body.
    Message = 2,
    /// Final outcomes for some recipients of one message.
    Completion = 3,
    /// Retry state of one message after a temporary failure.
    Deferral = 4,
    /// Nothing follows in this segment.
    SegmentEnd = 5,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::SegmentHeader,
            2 => Self::Message,
            3 => Self::Completion,
            4 => Self::Deferral,
            5 => Self::SegmentEnd,
            _ => return None,
        })
    }
}

/// The final outcome of one recipient. Temporary failures are not outcomes:
/// they are deferrals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// The remote server accepted it (`250`).
    Delivered = 1,
    /// Permanent failure (`5xx`): bounced.
    Failed = 2,
    /// Gave up after the maximum queue time.
    Expired = 3,
}

impl Outcome {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Delivered,
            2 => Self::Failed,
            3 => Self::Expired,
            _ => return None,
        })
    }
}

/// A malformed record or a field that cannot be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// A field is longer than its length prefix can say.
    #[error("{field} is {len_bytes} bytes; at most {max_bytes} fit")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The payload ends before a field it announces.
    #[error("{what} runs past the end of the record")]
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// A field holds a value the format does not allow.
    #[error("invalid {what}")]
    Invalid {
        /// What was wrong.
        what: &'static str,
    },
}

/// Total bytes a record with `payload_len` bytes occupies, padding included.
pub const fn record_len(payload_len: usize) -> usize {
    (HEADER_BYTES + payload_len + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// What makes a record belong to one life of one segment file: the format
/// version, the tag in the header and the CRC seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegKey {
    /// Format version of the segment.
    pub version: u8,
    /// Header bytes 6..8.
    pub tag: u16,
    /// Initial CRC32C value.
    pub seed: u32,
}

impl SegKey {
    /// The key of segment `seq` in the current format.
    pub fn for_seq(seq: u64) -> SegKey {
        SegKey {
            version: FORMAT_VERSION,
            tag: seq as u16,
            seed: crc32c::crc32c(&seq.to_le_bytes()),
        }
    }

    /// The key of every version 1 segment.
    pub const V1: SegKey = SegKey {
        version: FORMAT_VERSION_V1,
        tag: 0,
        seed: 0,
    };
}

/// Writes the header for the payload already in `rec[HEADER_BYTES..]` and
/// zeroes the padding. `rec` is exactly `record_len(payload_len)` bytes.
pub fn seal_record(rec: &mut [u8], kind: RecordKind, payload_len: usize, key: &SegKey) {
    assert_eq!(rec.len(), record_len(payload_len), "record buffer size");
    let len32 = u32::try_from(payload_len).expect("caller bounds payload by segment size");
    rec[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    rec[4] = kind as u8;
    rec[5] = key.version;
    rec[6..8].copy_from_slice(&key.tag.to_le_bytes());
    rec[8..12].copy_from_slice(&len32.to_le_bytes());
    rec[HEADER_BYTES + payload_len..].fill(0);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(key.seed, &rec[0..12]),
        &rec[HEADER_BYTES..HEADER_BYTES + payload_len],
    );
    rec[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// Result of looking at the bytes at one aligned offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A complete record with a good checksum.
    Valid {
        /// Its kind.
        kind: RecordKind,
        /// Payload length.
        payload_len: usize,
        /// Bytes occupied, padding included.
        total_len: usize,
    },
    /// Sixteen zero bytes: unwritten space (or a zeroed header).
    Zero,
    /// The header is plausible (magic, known kind, length fits) but the
    /// checksum fails: the length can be used to try to skip it.
    BadChecksum {
        /// Bytes it claims to occupy.
        total_len: usize,
    },
    /// Not a record header at all, or its length runs past the segment.
    Garbage,
    /// A record header of another life of the file (another version or
    /// segment tag): left over from before the file was recycled.
    Stale,
}

/// Checks the record starting at `pos` in `seg`, a segment whose records
/// are sealed with `key`.
pub fn check_at(seg: &[u8], pos: usize, key: &SegKey) -> Check {
    debug_assert!(pos % RECORD_ALIGN == 0);
    let Some(h) = seg.get(pos..pos + HEADER_BYTES) else {
        return Check::Garbage;
    };
    if h.iter().all(|&b| b == 0) {
        return Check::Zero;
    }
    if read_u32(h, 0) != RECORD_MAGIC {
        return Check::Garbage;
    }
    if h[5] != key.version || u16::from_le_bytes([h[6], h[7]]) != key.tag {
        return Check::Stale;
    }
    let Some(kind) = RecordKind::from_u8(h[4]) else {
        return Check::Garbage;
    };
    let payload_len = read_u32(h, 8) as usize;
    let total_len = record_len(payload_len);
    if pos + total_len > seg.len() {
        return Check::Garbage;
    }
    let payload = &seg[pos + HEADER_BYTES..pos + HEADER_BYTES + payload_len];
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(key.seed, &h[0..12]), payload);
    if crc != read_u32(h, 12) {
        return Check::BadChecksum { total_len };
    }
    Check::Valid {
        kind,
        payload_len,
        total_len,
    }
}

/// The sequence number a segment header record at offset 0 claims, if the
/// bytes there are a valid current-format header of *some* segment (its
/// CRC checked with that segment's seed).
pub fn claimed_header_seq(seg: &[u8]) -> Option<u64> {
    let p = seg.get(HEADER_BYTES..HEADER_BYTES + SEGMENT_HEADER_PAYLOAD_BYTES)?;
    let seq = read_u64(p, 8);
    match check_at(seg, 0, &SegKey::for_seq(seq)) {
        Check::Valid {
            kind: RecordKind::SegmentHeader,
            payload_len: SEGMENT_HEADER_PAYLOAD_BYTES,
            ..
        } => Some(seq),
        _ => None,
    }
}

/// The payload range of a record at `pos` whose header says `payload_len`.
pub fn payload_range(pos: usize, payload_len: usize) -> Range<usize> {
    pos + HEADER_BYTES..pos + HEADER_BYTES + payload_len
}

/// One recipient of a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipient<'a> {
    /// The forward path (address bytes as received).
    pub address: &'a [u8],
    /// Opaque DSN parameters for this recipient (NOTIFY, ORCPT), as the
    /// engine encodes them.
    pub dsn: &'a [u8],
}

/// A message to append: borrowed, copied once into the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMessage<'a> {
    /// The reverse path (empty for `<>`).
    pub sender: &'a [u8],
    /// Opaque envelope-level DSN parameters (RET, ENVID).
    pub dsn: &'a [u8],
    /// Tenant this message is accounted to.
    pub tenant: &'a [u8],
    /// Campaign or job id.
    pub campaign: &'a [u8],
    /// Queue name override (empty: derive from the recipient domain).
    pub queue: &'a [u8],
    /// Recipients, at least one.
    pub recipients: &'a [Recipient<'a>],
    /// Arrival time, milliseconds since the Unix epoch.
    pub arrival_unix_ms: u64,
    /// Give up after this time, milliseconds since the Unix epoch.
    pub expiry_unix_ms: u64,
    /// The message content (header and body, as it goes on the wire).
    pub body: &'a [u8],
}

const U16_MAX: usize = u16::MAX as usize;

fn check_field(field: &'static str, v: &[u8]) -> Result<(), FormatError> {
    if v.len() > U16_MAX {
        return Err(FormatError::FieldTooLong {
            field,
            len_bytes: v.len(),
            max_bytes: U16_MAX,
        });
    }
    Ok(())
}

/// Bytes of the envelope section of `m` (without the fixed part and body).
pub fn envelope_len(m: &NewMessage<'_>) -> Result<usize, FormatError> {
    check_field("sender", m.sender)?;
    check_field("dsn", m.dsn)?;
    check_field("tenant", m.tenant)?;
    check_field("campaign", m.campaign)?;
    check_field("queue", m.queue)?;
    if m.recipients.is_empty() {
        return Err(FormatError::Invalid {
            what: "recipient list (empty)",
        });
    }
    if m.recipients.len() > u32::MAX as usize {
        return Err(FormatError::Invalid {
            what: "recipient count",
        });
    }
    let mut len = 2 * 5 + m.sender.len() + m.dsn.len() + m.tenant.len();
    len += m.campaign.len() + m.queue.len();
    for r in m.recipients {
        check_field("recipient address", r.address)?;
        check_field("recipient dsn", r.dsn)?;
        len += 4 + r.address.len() + r.dsn.len();
    }
    len += m.recipients.len().div_ceil(8);
    Ok(len)
}

/// Payload bytes of the message record for `m`.
pub fn message_payload_len(m: &NewMessage<'_>) -> Result<usize, FormatError> {
    Ok(MESSAGE_FIXED_BYTES + envelope_len(m)? + m.body.len())
}

/// Encodes the message payload into `dst`, which is exactly
/// `message_payload_len(m)` bytes.
pub fn encode_message(dst: &mut [u8], id: u64, m: &NewMessage<'_>, env_len: usize) {
    assert_eq!(dst.len(), MESSAGE_FIXED_BYTES + env_len + m.body.len());
    let rcpt_count = m.recipients.len() as u32;
    dst[0..8].copy_from_slice(&id.to_le_bytes());
    dst[8..16].copy_from_slice(&m.arrival_unix_ms.to_le_bytes());
    dst[16..24].copy_from_slice(&m.expiry_unix_ms.to_le_bytes());
    dst[24..32].copy_from_slice(&0u64.to_le_bytes());
    dst[32..36].copy_from_slice(&0u32.to_le_bytes());
    dst[36..40].copy_from_slice(&0u32.to_le_bytes());
    dst[40..44].copy_from_slice(&(env_len as u32).to_le_bytes());
    dst[44..48].copy_from_slice(&rcpt_count.to_le_bytes());
    let mut p = MESSAGE_FIXED_BYTES;
    for f in [m.sender, m.dsn, m.tenant, m.campaign, m.queue] {
        p = put16(dst, p, f);
    }
    for r in m.recipients {
        p = put16(dst, p, r.address);
        p = put16(dst, p, r.dsn);
    }
    let mask = m.recipients.len().div_ceil(8);
    dst[p..p + mask].fill(0);
    p += mask;
    assert_eq!(p, MESSAGE_FIXED_BYTES + env_len, "envelope length");
    dst[p..].copy_from_slice(m.body);
}

fn put16(dst: &mut [u8], p: usize, v: &[u8]) -> usize {
    dst[p..p + 2].copy_from_slice(&(v.len() as u16).to_le_bytes());
    dst[p + 2..p + 2 + v.len()].copy_from_slice(v);
    p + 2 + v.len()
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A cursor that turns a short read into [`FormatError::Truncated`].
struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let end = self
            .p
            .checked_add(n)
            .ok_or(FormatError::Truncated { what })?;
        let s = self
            .b
            .get(self.p..end)
            .ok_or(FormatError::Truncated { what })?;
        self.p = end;
        Ok(s)
    }

    fn field16(&mut self, what: &'static str) -> Result<&'a [u8], FormatError> {
        let l = self.take(2, what)?;
        let n = u16::from_le_bytes([l[0], l[1]]) as usize;
        self.take(n, what)
    }
}

/// The fixed fields of a message payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageFixed {
    /// Spool-assigned message id.
    pub id: u64,
    /// Arrival, ms since the Unix epoch.
    pub arrival_unix_ms: u64,
    /// Expiry, ms since the Unix epoch.
    pub expiry_unix_ms: u64,
    /// Next delivery attempt, ms since the Unix epoch (0: as soon as possible).
    pub next_attempt_unix_ms: u64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Envelope section length.
    pub envelope_len: usize,
    /// Number of recipients.
    pub recipient_count: u32,
}

/// Reads and checks the fixed part of a message payload.
pub fn message_fixed(payload: &[u8]) -> Result<MessageFixed, FormatError> {
    if payload.len() < MESSAGE_FIXED_BYTES {
        return Err(FormatError::Truncated {
            what: "message fixed fields",
        });
    }
    let f = MessageFixed {
        id: read_u64(payload, 0),
        arrival_unix_ms: read_u64(payload, 8),
        expiry_unix_ms: read_u64(payload, 16),
        next_attempt_unix_ms: read_u64(payload, 24),
        attempts: read_u32(payload, 32),
        flags: read_u32(payload, 36),
        envelope_len: read_u32(payload, 40) as usize,
        recipient_count: read_u32(payload, 44),
    };
    if MESSAGE_FIXED_BYTES + f.envelope_len > payload.len() {
        return Err(FormatError::Truncated { what: "envelope" });
    }
    if f.recipient_count == 0 {
        return Err(FormatError::Invalid {
            what: "recipient count (zero)",
        });
    }
    Ok(f)
}

/// The done-mask byte range inside a message payload.
pub fn done_mask_range(f: &MessageFixed) -> Range<usize> {
    let end = MESSAGE_FIXED_BYTES + f.envelope_len;
    end - (f.recipient_count as usize).div_ceil(8)..end
}

/// A parsed message payload, borrowing from the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageParts<'a> {
    /// Fixed fields.
    pub fixed: MessageFixed,
    /// Reverse path.
    pub sender: &'a [u8],
    /// Envelope DSN parameters.
    pub dsn: &'a [u8],
    /// Tenant.
    pub tenant: &'a [u8],
    /// Campaign.
    pub campaign: &'a [u8],
    /// Queue override.
    pub queue: &'a [u8],
    /// Recipients in order.
    pub recipients: Vec<Recipient<'a>>,
    /// Bit `i` set: recipient `i` was already complete when this copy was
    /// written (relocated copies only).
    pub done_mask: &'a [u8],
    /// Message content.
    pub body: &'a [u8],
}

/// Parses a whole message payload.
pub fn parse_message(payload: &[u8]) -> Result<MessageParts<'_>, FormatError> {
    let fixed = message_fixed(payload)?;
    let env_end = MESSAGE_FIXED_BYTES + fixed.envelope_len;
    let mut r = Reader {
        b: &payload[..env_end],
        p: MESSAGE_FIXED_BYTES,
    };
    let sender = r.field16("sender")?;
    let dsn = r.field16("dsn")?;
    let tenant = r.field16("tenant")?;
    let campaign = r.field16("campaign")?;
    let queue = r.field16("queue")?;
    // Each recipient needs at least 4 bytes: bound the allocation by the
    // bytes actually present, not by the count field.
    let count = fixed.recipient_count as usize;
    if count > (env_end - r.p) / 4 {
        return Err(FormatError::Truncated { what: "recipients" });
    }
    let mut recipients = Vec::with_capacity(count);
    for _ in 0..count {
        let address = r.field16("recipient address")?;
        let dsn = r.field16("recipient dsn")?;
        recipients.push(Recipient { address, dsn });
    }
    let done_mask = r.take(count.div_ceil(8), "done mask")?;
    if r.p != env_end {
        return Err(FormatError::Invalid {
            what: "envelope length",
        });
    }
    Ok(MessageParts {
        fixed,
        sender,
        dsn,
        tenant,
        campaign,
        queue,
        recipients,
        done_mask,
        body: &payload[env_end..],
    })
}

/// Segment header payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Shard that owns the segment.
    pub shard: u32,
    /// Lives the file had before this one (0: a new file). Version 1: 0.
    pub generation: u32,
    /// Segment sequence number (also in the file name).
    pub seq: u64,
    /// The next message id at the time the segment was created: ids are
    /// never reused even after every older segment is deleted.
    pub id_floor: u64,
    /// Segment size in bytes.
    pub segment_bytes: u64,
}

/// Encodes a segment header payload.
pub fn encode_segment_header(dst: &mut [u8], h: &SegmentHeader) {
    assert_eq!(dst.len(), SEGMENT_HEADER_PAYLOAD_BYTES);
    dst[0..4].copy_from_slice(&h.shard.to_le_bytes());
    dst[4..8].copy_from_slice(&h.generation.to_le_bytes());
    dst[8..16].copy_from_slice(&h.seq.to_le_bytes());
    dst[16..24].copy_from_slice(&h.id_floor.to_le_bytes());
    dst[24..32].copy_from_slice(&h.segment_bytes.to_le_bytes());
}

/// Parses a segment header payload.
pub fn parse_segment_header(p: &[u8]) -> Result<SegmentHeader, FormatError> {
    if p.len() != SEGMENT_HEADER_PAYLOAD_BYTES {
        return Err(FormatError::Invalid {
            what: "segment header length",
        });
    }
    Ok(SegmentHeader {
        shard: read_u32(p, 0),
        generation: read_u32(p, 4),
        seq: read_u64(p, 8),
        id_floor: read_u64(p, 16),
        segment_bytes: read_u64(p, 24),
    })
}

/// Encodes a completion payload: id, count, entries.
pub fn encode_completion(dst: &mut [u8], id: u64, entries: &[(u32, Outcome)]) {
    assert_eq!(dst.len(), 12 + entries.len() * COMPLETION_ENTRY_BYTES);
    dst[0..8].copy_from_slice(&id.to_le_bytes());
    dst[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, (rcpt, outcome)) in entries.iter().enumerate() {
        let p = 12 + i * COMPLETION_ENTRY_BYTES;
        dst[p..p + 4].copy_from_slice(&rcpt.to_le_bytes());
        dst[p + 4] = *outcome as u8;
    }
}

/// Parses a completion payload.
pub fn parse_completion(p: &[u8]) -> Result<(u64, Vec<(u32, Outcome)>), FormatError> {
    if p.len() < 12 {
        return Err(FormatError::Truncated { what: "completion" });
    }
    let id = read_u64(p, 0);
    let n = read_u32(p, 8) as usize;
    if p.len() != 12 + n.saturating_mul(COMPLETION_ENTRY_BYTES) {
        return Err(FormatError::Invalid {
            what: "completion length",
        });
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let q = 12 + i * COMPLETION_ENTRY_BYTES;
        let outcome = Outcome::from_u8(p[q + 4]).ok_or(FormatError::Invalid {
            what: "completion outcome",
        })?;
        out.push((read_u32(p, q), outcome));
    }
    Ok((id, out))
}

/// Retry state after a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deferral {
    /// Message id.
    pub id: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Next attempt, ms since the Unix epoch.
    pub next_attempt_unix_ms: u64,
}

/// Encodes a deferral payload.
pub fn encode_deferral(dst: &mut [u8], d: &Deferral) {
    assert_eq!(dst.len(), DEFERRAL_PAYLOAD_BYTES);
    dst[0..8].copy_from_slice(&d.id.to_le_bytes());
    dst[8..12].copy_from_slice(&d.attempts.to_le_bytes());
    dst[12..20].copy_from_slice(&d.next_attempt_unix_ms.to_le_bytes());
}

/// Parses a deferral payload.
pub fn parse_deferral(p: &[u8]) -> Result<Deferral, FormatError> {
    if p.len() != DEFERRAL_PAYLOAD_BYTES {
        return Err(FormatError::Invalid {
            what: "deferral length",
        });
    }
    Ok(Deferral {
        id: read_u64(p, 0),
        attempts: read_u32(p, 8),
        next_attempt_unix_ms: read_u64(p, 12),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, usize) {
        let rcpts = [
            Recipient {
                address: b"a@example.org",
                dsn: b"NOTIFY=FAILURE",
            },
            Recipient {
                address: b"b@example.net",
                dsn: b"",
            },
        ];
        let m = NewMessage {
            sender: b"s@example.com",
            dsn: b"RET=HDRS",
            tenant: b"t1",
            campaign: b"c9",
            queue: b"",
            recipients: &rcpts,
            arrival_unix_ms: 7,
            expiry_unix_ms: 99,
            body: b"Subject: x\r\n\r\nhello\r\n",
        };
        let plen = message_payload_len(&m).unwrap();
        let mut rec = vec![0xAA; record_len(plen)];
        let env = envelope_len(&m).unwrap();
        encode_message(&mut rec[HEADER_BYTES..HEADER_BYTES + plen], 42, &m, env);
        seal_record(&mut rec, RecordKind::Message, plen, &SegKey::for_seq(7));
        (rec, plen)
    }

    #[test]
    fn message_round_trip() {
        let (rec, plen) = sample();
        assert_eq!(
            check_at(&rec, 0, &SegKey::for_seq(7)),
            Check::Valid {
                kind: RecordKind::Message,
                payload_len: plen,
                total_len: rec.len()
            }
        );
        let parts = parse_message(&rec[payload_range(0, plen)]).unwrap();
        assert_eq!(parts.fixed.id, 42);
        assert_eq!(parts.sender, b"s@example.com");
        assert_eq!(parts.recipients.len(), 2);
        assert_eq!(parts.recipients[0].dsn, b"NOTIFY=FAILURE");
        assert_eq!(parts.body, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(parts.done_mask, &[0]);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let (rec, plen) = sample();
        for i in 0..rec.len() * 8 {
            let mut bad = rec.clone();
            bad[i / 8] ^= 1 << (i % 8);
            if let Check::Valid { .. } = check_at(&bad, 0, &SegKey::for_seq(7)) {
                // Only flips inside the zero padding can keep a record valid.
                assert!(i / 8 >= HEADER_BYTES + plen, "flip of bit {i} undetected");
            }
        }
    }

    #[test]
    fn truncated_payloads_are_errors() {
        let (rec, plen) = sample();
        let payload = &rec[payload_range(0, plen)];
        let full = parse_message(payload).unwrap().body.len();
        for cut in 0..payload.len() {
            // Any prefix either fails to parse or parses to a shorter body.
            if let Ok(p) = parse_message(&payload[..cut]) {
                assert!(p.body.len() < full);
            }
        }
        assert!(parse_completion(&[1, 2, 3]).is_err());
        assert!(parse_deferral(&[0; 19]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Arbitrary bytes (as a corrupt file would hold) never panic the
        /// checker or the parsers.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            for pos in (0..bytes.len()).step_by(RECORD_ALIGN) {
                let _ = check_at(&bytes, pos, &SegKey::for_seq(1));
                let _ = check_at(&bytes, pos, &SegKey::V1);
                let _ = claimed_header_seq(&bytes[pos..]);
            }
            let _ = parse_message(&bytes);
            let _ = parse_completion(&bytes);
            let _ = parse_deferral(&bytes);
            let _ = parse_segment_header(&bytes);
        }

        /// A record with its magic and a fixed prefix put in front of
        /// arbitrary envelope bytes: parsing fails cleanly or round-trips.
        #[test]
        fn mutated_messages_parse_or_fail_cleanly(flip in 0usize..4096, val in proptest::prelude::any::<u8>()) {
            let (mut rec, plen) = sample();
            let at = HEADER_BYTES + flip % plen;
            rec[at] = val;
            let _ = parse_message(&rec[payload_range(0, plen)]);
        }
    }

    #[test]
    fn a_record_of_another_life_never_validates() {
        let (rec, plen) = sample();
        let total = rec.len();
        // The same bytes read as part of segment 8 (the file recycled from
        // segment 7): stale, by tag; and with a colliding tag (7 + 2^16),
        // the seeded CRC still refuses it.
        assert_eq!(check_at(&rec, 0, &SegKey::for_seq(8)), Check::Stale);
        assert_eq!(check_at(&rec, 0, &SegKey::V1), Check::Stale);
        assert_eq!(
            check_at(&rec, 0, &SegKey::for_seq(7 + (1 << 16))),
            Check::BadChecksum { total_len: total }
        );
        assert!(matches!(
            check_at(&rec, 0, &SegKey::for_seq(7)),
            Check::Valid { payload_len, .. } if payload_len == plen
        ));
        // A version 1 record is read with the version 1 key only.
        let mut v1 = rec.clone();
        seal_record(&mut v1, RecordKind::Message, plen, &SegKey::V1);
        assert_eq!(v1[5], FORMAT_VERSION_V1);
        assert_eq!(&v1[6..8], &[0, 0]);
        assert!(matches!(check_at(&v1, 0, &SegKey::V1), Check::Valid { .. }));
        assert_eq!(check_at(&v1, 0, &SegKey::for_seq(7)), Check::Stale);
    }

    #[test]
    fn a_header_names_its_own_segment() {
        let plen = SEGMENT_HEADER_PAYLOAD_BYTES;
        let mut rec = vec![0u8; record_len(plen)];
        let h = SegmentHeader {
            shard: 1,
            generation: 3,
            seq: 42,
            id_floor: 9,
            segment_bytes: 1 << 20,
        };
        encode_segment_header(&mut rec[payload_range(0, plen)], &h);
        seal_record(
            &mut rec,
            RecordKind::SegmentHeader,
            plen,
            &SegKey::for_seq(42),
        );
        assert_eq!(claimed_header_seq(&rec), Some(42));
        assert_eq!(
            parse_segment_header(&rec[payload_range(0, plen)]).unwrap(),
            h
        );
        rec[20] ^= 1;
        assert_eq!(claimed_header_seq(&rec), None);
    }

    #[test]
    fn completion_and_deferral_round_trip() {
        let e = [(0, Outcome::Delivered), (5, Outcome::Expired)];
        let mut b = vec![0; 12 + 2 * COMPLETION_ENTRY_BYTES];
        encode_completion(&mut b, 9, &e);
        assert_eq!(parse_completion(&b).unwrap(), (9, e.to_vec()));
        let d = Deferral {
            id: 3,
            attempts: 2,
            next_attempt_unix_ms: 1234,
        };
        let mut b = [0; DEFERRAL_PAYLOAD_BYTES];
        encode_deferral(&mut b, &d);
        assert_eq!(parse_deferral(&b).unwrap(), d);
    }
}
