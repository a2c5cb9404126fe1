//! DNS wire format: building queries and classifying responses.
//!
//! Everything here is bytes in, typed values out, through `hickory-proto`'s
//! encoder and decoder. A response is accepted only when it answers the
//! exact query that was sent (id, opcode, one question with the same name,
//! type and class); anything else is [`WireError::Mismatch`] and the driver
//! keeps waiting for the real answer (RFC 5452 §9.1, spoofing resistance).

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

/// Longest CNAME chain followed inside one response. Real chains are one
/// or two links; anything longer is a loop or an attack.
pub const CNAME_HOPS_MAX: usize = 8;

/// The UDP payload size advertised with EDNS(0): the 2020 DNS flag day
/// value, small enough to avoid IP fragmentation on any path.
pub const EDNS_PAYLOAD_BYTES: u16 = 1232;

/// Longest presentation-form domain name without the trailing dot
/// (RFC 1035 §2.3.4: 255 octets on the wire).
pub const NAME_BYTES_MAX: usize = 253;

/// The record types the MX logic asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueryType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// Mail exchangers.
    Mx,
}

impl QueryType {
    /// Every query type, in index order.
    pub const ALL: [QueryType; 3] = [QueryType::A, QueryType::Aaaa, QueryType::Mx];

    /// The hickory record type.
    pub fn record_type(self) -> RecordType {
        match self {
            QueryType::A => RecordType::A,
            QueryType::Aaaa => RecordType::AAAA,
            QueryType::Mx => RecordType::MX,
        }
    }

    /// A dense index (0..3) for per-type tables.
    pub fn index(self) -> usize {
        match self {
            QueryType::A => 0,
            QueryType::Aaaa => 1,
            QueryType::Mx => 2,
        }
    }
}

/// One question: a normalised name (ASCII, lower case, no trailing dot;
/// see [`normalize_name`]) and a type. Class is always IN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    /// Normalised owner name.
    pub name: String,
    /// Record type asked for.
    pub qtype: QueryType,
}

impl Question {
    /// A question for an already normalised name.
    pub fn new(name: impl Into<String>, qtype: QueryType) -> Self {
        Question {
            name: name.into(),
            qtype,
        }
    }
}

/// One piece of answer data the MX logic uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdata {
    /// An A or AAAA address.
    Addr(IpAddr),
    /// A mail exchanger; `exchange` is normalised, and empty for the root
    /// name (a null MX, RFC 7505).
    Mx {
        /// Lower is preferred (RFC 5321 §5.1).
        preference: u16,
        /// The host name, normalised.
        exchange: String,
    },
}

/// What a name server said about one question, after CNAMEs were followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Records of the asked type (never empty).
    Records(Rc<[Rdata]>),
    /// The name exists but has no records of this type (RFC 2308 §2.2).
    NoData,
    /// The name does not exist (RFC 2308 §2.1).
    NxDomain,
    /// The answer was a CNAME chain ending at `target` without records of
    /// the asked type and without a negative answer for the target: ask
    /// again for the target (RFC 1034 §3.6.2).
    Alias(Rc<str>),
}

/// A final answer and how long it may be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The classified answer.
    pub lookup: Lookup,
    /// Cache lifetime: the minimum TTL over the answer records used
    /// (RFC 2181 §5.2), or for negative answers the minimum of the SOA's
    /// TTL and its MINIMUM field (RFC 2308 §5). `None`: do not cache (a
    /// negative answer without an SOA, RFC 2308 §5).
    pub ttl: Option<Duration>,
}

/// The classification of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A definitive answer (positive or negative).
    Final(Parsed),
    /// The TC bit was set: ask the same server again over TCP
    /// (RFC 1035 §4.2.1, RFC 7766 §5).
    Truncated,
    /// The server could not answer: SERVFAIL, REFUSED, FORMERR, NOTIMP or
    /// another RCODE. Try the next server.
    ServerError {
        /// The RCODE (extended with EDNS bits when present).
        rcode: u16,
    },
}

/// Why bytes could not be used as an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message did not decode.
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    /// A well-formed message that does not answer our query (wrong id,
    /// question or opcode, or not a response). Ignore it and keep waiting.
    #[error("response does not match the query")]
    Mismatch,
    /// The query could not be encoded (a name hickory rejects).
    #[error("cannot encode query: {0}")]
    Encode(String),
}

/// Why a domain name is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or only a dot.
    #[error("empty domain name")]
    Empty,
    /// Longer than [`NAME_BYTES_MAX`] in ASCII (punycode) form.
    #[error("domain name longer than {NAME_BYTES_MAX} bytes")]
    TooLong,
    /// Rejected by the IDNA/label rules (empty label, label over 63
    /// bytes, invalid Unicode for IDNA).
    #[error("invalid domain name: {0}")]
    Invalid(String),
}

/// Normalises a domain as written in an address (possibly Unicode, with or
/// without a trailing dot) into the key form used everywhere in this
/// crate: IDNA ASCII, lower case, no trailing dot.
pub fn normalize_name(input: &str) -> Result<String, NameError> {
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(NameError::Empty);
    }
    if trimmed.is_ascii() && trimmed.len() > NAME_BYTES_MAX {
        return Err(NameError::TooLong);
    }
    let name = Name::from_utf8(trimmed).map_err(|e| NameError::Invalid(e.to_string()))?;
    let key = name_key(&name);
    if key.is_empty() {
        return Err(NameError::Empty);
    }
    if key.len() > NAME_BYTES_MAX {
        return Err(NameError::TooLong);
    }
    Ok(key)
}

/// The normalised form of a decoded name; the root becomes `""`.
pub fn name_key(name: &Name) -> String {
    let mut key = name.to_ascii();
    if key.ends_with('.') {
        key.pop();
    }
    key.make_ascii_lowercase();
    key
}

/// Appends a recursive query for `question` with message id `id` to `out`
/// (which is cleared first). Advertises EDNS(0) with
/// [`EDNS_PAYLOAD_BYTES`] so most answers fit one UDP datagram.
pub fn encode_query(id: u16, question: &Question, out: &mut Vec<u8>) -> Result<(), WireError> {
    let mut name =
        Name::from_ascii(&question.name).map_err(|e| WireError::Encode(e.to_string()))?;
    name.set_fqdn(true);
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    let mut query = Query::query(name, question.qtype.record_type());
    query.set_query_class(DNSClass::IN);
    message.add_query(query);
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD_BYTES);
    message.set_edns(edns);
    out.clear();
    let mut encoder = BinEncoder::new(out);
    message
        .emit(&mut encoder)
        .map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes `bytes` and classifies them as the answer to `question` sent
/// with id `id`.
pub fn parse_response(bytes: &[u8], id: u16, question: &Question) -> Result<Response, WireError> {
    let message = Message::from_vec(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    let meta = &message.metadata;
    if meta.id != id || meta.message_type != MessageType::Response || meta.op_code != OpCode::Query
    {
        return Err(WireError::Mismatch);
    }
    // RFC 5452 §9.1: the question section must echo ours exactly.
    match message.queries.as_slice() {
        [q] if q.query_type() == question.qtype.record_type()
            && q.query_class() == DNSClass::IN
            && name_key(q.name()) == question.name => {}
        _ => return Err(WireError::Mismatch),
    }
    if meta.truncation {
        return Ok(Response::Truncated);
    }
    match meta.response_code {
        ResponseCode::NoError => Ok(Response::Final(classify_answer(&message, question))),
        // RFC 2308 §2.1: NXDOMAIN applies to the last name of any CNAME
        // chain in the answer; for us the whole lookup fails either way.
        ResponseCode::NXDomain => Ok(Response::Final(Parsed {
            lookup: Lookup::NxDomain,
            ttl: negative_ttl(&message),
        })),
        other => Ok(Response::ServerError {
            rcode: u16::from(other),
        }),
    }
}

/// Follows the CNAME chain from the question name through the answer
/// section and collects the records of the asked type at its end.
fn classify_answer(message: &Message, question: &Question) -> Parsed {
    let rtype = question.qtype.record_type();
    let mut owner = question.name.clone();
    let mut ttl_s: Option<u32> = None;
    let mut data: Vec<Rdata> = Vec::new();
    for _ in 0..=CNAME_HOPS_MAX {
        for record in message.answers.iter().filter(|r| r.record_type() == rtype) {
            if name_key(&record.name) == owner {
                if let Some(rdata) = convert(record) {
                    ttl_s = Some(ttl_s.map_or(record.ttl, |t| t.min(record.ttl)));
                    data.push(rdata);
                }
            }
        }
        if !data.is_empty() {
            break;
        }
        let next = message.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if name_key(&r.name) == owner => {
                Some((name_key(&target.0), r.ttl))
            }
            _ => None,
        });
        match next {
            Some((target, ttl)) if target != owner => {
                ttl_s = Some(ttl_s.map_or(ttl, |t| t.min(ttl)));
                owner = target;
            }
            _ => break,
        }
    }
    if !data.is_empty() {
        return Parsed {
            lookup: Lookup::Records(data.into()),
            ttl: ttl_s.map(|s| Duration::from_secs(u64::from(s))),
        };
    }
    let soa_ttl = negative_ttl(message);
    if owner != question.name && soa_ttl.is_none() {
        // A chain the server did not finish (no data, no SOA for the
        // target): the caller asks for the target itself.
        return Parsed {
            lookup: Lookup::Alias(owner.into()),
            ttl: ttl_s.map(|s| Duration::from_secs(u64::from(s))),
        };
    }
    Parsed {
        lookup: Lookup::NoData,
        ttl: soa_ttl,
    }
}

fn convert(record: &Record) -> Option<Rdata> {
    match &record.data {
        RData::A(a) => Some(Rdata::Addr(IpAddr::V4(a.0))),
        RData::AAAA(aaaa) => Some(Rdata::Addr(IpAddr::V6(aaaa.0))),
        RData::MX(mx) => Some(Rdata::Mx {
            preference: mx.preference,
            exchange: name_key(&mx.exchange),
        }),
        _ => None,
    }
}

/// RFC 2308 §5: the negative TTL is the minimum of the SOA record's own
/// TTL and its MINIMUM field; without an SOA in the authority section a
/// negative answer is not cached.
fn negative_ttl(message: &Message) -> Option<Duration> {
    message.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(Duration::from_secs(u64::from(r.ttl.min(soa.minimum)))),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
