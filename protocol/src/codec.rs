//! The one canonical encoding of every message.
//!
//! Wire form: `[PROTOCOL_VERSION, tag, postcard(body)...]`, where `tag` is the message [`Kind`] with the high
//! bit set when the body is a [`Signed`](crate::Signed) envelope. postcard with fixed-size arrays and
//! length-prefixed strings and byte strings gives one byte string per value; [`decode`] enforces that by
//! re-encoding what it decoded and rejecting any input that differs (overlong varints, trailing bytes).
//! Every kind has a size limit, checked before a single byte of the body is parsed.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version byte at the start of every encoded message.
pub const PROTOCOL_VERSION: u8 = 2;

/// High bit of the tag byte: the body is a signed envelope.
const SIGNED_FLAG: u8 = 0x80;

/// Every kind of message that travels between cars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// [`JobOffer`](crate::messages::JobOffer)
    JobOffer = 1,
    /// [`Bid`](crate::messages::Bid)
    Bid = 2,
    /// [`Assignment`](crate::messages::Assignment)
    Assignment = 3,
    /// [`ResultCommit`](crate::messages::ResultCommit)
    ResultCommit = 4,
    /// [`ResultReveal`](crate::messages::ResultReveal)
    ResultReveal = 5,
    /// [`Withdraw`](crate::messages::Withdraw)
    Withdraw = 6,
    /// [`WorkClaim`](crate::messages::WorkClaim)
    WorkClaim = 7,
    /// [`Receipt`](crate::messages::Receipt)
    Receipt = 8,
    /// [`ModelManifest`](crate::messages::ModelManifest)
    ModelManifest = 9,
    /// [`RevealRequest`](crate::messages::RevealRequest)
    RevealRequest = 10,
    /// [`WorkReport`](crate::messages::WorkReport)
    WorkReport = 11,
    /// [`Reply`](crate::messages::Reply)
    Reply = 12,
    /// [`ManifestRequest`](crate::messages::ManifestRequest)
    ManifestRequest = 13,
    /// [`ChunkRequest`](crate::messages::ChunkRequest)
    ChunkRequest = 14,
    /// [`Chunk`](crate::messages::Chunk)
    Chunk = 15,
    /// [`Budget`](crate::messages::Budget)
    Budget = 16,
    /// [`Revocation`](crate::messages::Revocation)
    Revocation = 17,
    /// [`EpochRoot`](crate::messages::EpochRoot)
    EpochRoot = 18,
    /// [`ClaimRequest`](crate::messages::ClaimRequest)
    ClaimRequest = 19,
    /// [`ClaimPage`](crate::messages::ClaimPage)
    ClaimPage = 20,
    /// [`Partial`](crate::messages::Partial)
    Partial = 21,
}

impl Kind {
    /// All kinds, in tag order.
    pub const ALL: [Kind; 21] = [
        Kind::JobOffer,
        Kind::Bid,
        Kind::Assignment,
        Kind::ResultCommit,
        Kind::ResultReveal,
        Kind::Withdraw,
        Kind::WorkClaim,
        Kind::Receipt,
        Kind::ModelManifest,
        Kind::RevealRequest,
        Kind::WorkReport,
        Kind::Reply,
        Kind::ManifestRequest,
        Kind::ChunkRequest,
        Kind::Chunk,
        Kind::Budget,
        Kind::Revocation,
        Kind::EpochRoot,
        Kind::ClaimRequest,
        Kind::ClaimPage,
        Kind::Partial,
    ];

    /// The kind with this tag (signed flag cleared), if any.
    pub fn from_tag(tag: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == tag & !SIGNED_FLAG)
    }

    /// The signature domain of this kind: a signature made for one kind never verifies as another.
    pub const fn domain(self) -> &'static [u8] {
        match self {
            Kind::JobOffer => b"fleetmesh/job-offer/v1",
            Kind::Bid => b"fleetmesh/bid/v1",
            Kind::Assignment => b"fleetmesh/assignment/v1",
            Kind::ResultCommit => b"fleetmesh/result-commit/v1",
            Kind::ResultReveal => b"fleetmesh/result-reveal/v1",
            Kind::Withdraw => b"fleetmesh/withdraw/v1",
            Kind::WorkClaim => b"fleetmesh/work-claim/v1",
            Kind::Receipt => b"fleetmesh/receipt/v1",
            Kind::ModelManifest => b"fleetmesh/model-manifest/v1",
            Kind::RevealRequest => b"fleetmesh/reveal-request/v1",
            Kind::WorkReport => b"fleetmesh/work-report/v1",
            Kind::Reply => b"fleetmesh/reply/v1",
            Kind::ManifestRequest => b"fleetmesh/manifest-request/v1",
            Kind::ChunkRequest => b"fleetmesh/chunk-request/v1",
            Kind::Chunk => b"fleetmesh/chunk/v1",
            Kind::Budget => b"fleetmesh/budget/v1",
            Kind::Revocation => b"fleetmesh/revocation/v2",
            Kind::EpochRoot => b"fleetmesh/epoch-root/v1",
            Kind::ClaimRequest => b"fleetmesh/claim-request/v1",
            Kind::ClaimPage => b"fleetmesh/claim-page/v1",
            Kind::Partial => b"fleetmesh/partial/v1",
        }
    }
}

/// A value with a canonical encoding, a kind and a size limit.
pub trait Message: Serialize + DeserializeOwned {
    /// What kind of message this is.
    const KIND: Kind;
    /// Whether the value is a signed envelope (sets the high bit of the tag byte).
    const SIGNED: bool = false;
    /// Largest accepted encoding in bytes, header included.
    const MAX_LEN: usize;

    /// Checks invariants that the type system does not (ranges, lengths, finite numbers).
    fn validate(&self) -> Result<(), DecodeError> {
        Ok(())
    }

    /// The tag byte written after the version.
    fn tag() -> u8 {
        Self::KIND as u8 | if Self::SIGNED { SIGNED_FLAG } else { 0 }
    }
}

/// Why bytes were not accepted as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than the kind's size limit; nothing was parsed.
    #[error("{kind:?} message of {len} bytes exceeds the limit of {max} bytes")]
    Oversize {
        /// Kind that was expected.
        kind: Kind,
        /// Length of the input.
        len: usize,
        /// The kind's limit.
        max: usize,
    },
    /// The input ended before the message did.
    #[error("{kind:?} message is truncated")]
    Truncated {
        /// Kind that was expected.
        kind: Kind,
    },
    /// The version byte is not one this node speaks.
    #[error("unknown protocol version {0}")]
    UnknownVersion(u8),
    /// The tag byte names another kind of message (or none).
    #[error("expected a {expected:?} message (tag {expected_tag:#04x}), got tag {got:#04x}")]
    WrongKind {
        /// Kind that was expected.
        expected: Kind,
        /// Tag that was expected.
        expected_tag: u8,
        /// Tag found in the input.
        got: u8,
    },
    /// The tag byte names no known kind.
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    /// The input is shorter than the two header bytes (version and tag).
    #[error("input of {0} bytes is too short for a message header")]
    NoHeader(usize),
    /// The body does not parse as the kind.
    #[error("malformed {kind:?} message: {reason}")]
    Malformed {
        /// Kind that was expected.
        kind: Kind,
        /// What the parser objected to.
        reason: postcard::Error,
    },
    /// Bytes remain after the message.
    #[error("{kind:?} message has {extra} trailing bytes")]
    TrailingBytes {
        /// Kind that was expected.
        kind: Kind,
        /// Number of bytes after the message.
        extra: usize,
    },
    /// The body parses but is not the canonical encoding of its value.
    #[error("{kind:?} message is not canonically encoded")]
    NonCanonical {
        /// Kind that was expected.
        kind: Kind,
    },
    /// The body parses but breaks an invariant of its kind.
    #[error("invalid {kind:?} message: {reason}")]
    Invalid {
        /// Kind that was expected.
        kind: Kind,
        /// The invariant that does not hold.
        reason: &'static str,
    },
}

impl DecodeError {
    /// Shorthand for [`DecodeError::Invalid`].
    pub fn invalid(kind: Kind, reason: &'static str) -> Self {
        DecodeError::Invalid { kind, reason }
    }
}

/// Encodes a message in its canonical wire form.
///
/// Encoding never fails; a value that breaks its kind's limits encodes, but every receiver's [`decode`]
/// rejects it. Use [`encode_checked`] on data that came from a user.
pub fn encode<T: Message>(msg: &T) -> Vec<u8> {
    let out = vec![PROTOCOL_VERSION, T::tag()];
    match postcard::to_extend(msg, out) {
        Ok(bytes) => bytes,
        // postcard's Vec flavour cannot run out of room, and every message type is a plain derive with
        // sequences of known length: serialisation has no failing path for them.
        Err(e) => unreachable!("postcard failed to encode a {:?}: {e}", T::KIND),
    }
}

/// Encodes a message and checks it against its kind's limits and invariants, as a receiver would.
pub fn encode_checked<T: Message>(msg: &T) -> Result<Vec<u8>, DecodeError> {
    msg.validate()?;
    let bytes = encode(msg);
    if bytes.len() > T::MAX_LEN {
        return Err(DecodeError::Oversize {
            kind: T::KIND,
            len: bytes.len(),
            max: T::MAX_LEN,
        });
    }
    Ok(bytes)
}

/// Decodes a message, accepting only its canonical encoding within its kind's size limit.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T, DecodeError> {
    let kind = T::KIND;
    if bytes.len() > T::MAX_LEN {
        return Err(DecodeError::Oversize {
            kind,
            len: bytes.len(),
            max: T::MAX_LEN,
        });
    }
    let [version, tag, body @ ..] = bytes else {
        return Err(DecodeError::Truncated { kind });
    };
    if *version != PROTOCOL_VERSION {
        return Err(DecodeError::UnknownVersion(*version));
    }
    if *tag != T::tag() {
        return Err(DecodeError::WrongKind {
            expected: kind,
            expected_tag: T::tag(),
            got: *tag,
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(|reason| match reason {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated { kind },
        reason => DecodeError::Malformed { kind, reason },
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            kind,
            extra: rest.len(),
        });
    }
    msg.validate()?;
    if !encodes_to(&msg, body) {
        return Err(DecodeError::NonCanonical { kind });
    }
    Ok(msg)
}

/// Whether `msg`'s postcard body encoding is exactly `expected`, compared while serialising: no allocation.
fn encodes_to<T: Serialize>(msg: &T, expected: &[u8]) -> bool {
    struct CompareTo<'a> {
        rest: &'a [u8],
    }
    impl postcard::ser_flavors::Flavor for CompareTo<'_> {
        type Output = bool;
        fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
            match self.rest.strip_prefix(data) {
                Some(rest) => {
                    self.rest = rest;
                    Ok(())
                }
                None => Err(postcard::Error::SerializeBufferFull),
            }
        }
        fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
            self.try_extend(&[byte])
        }
        fn finalize(self) -> postcard::Result<bool> {
            Ok(self.rest.is_empty())
        }
    }
    postcard::serialize_with_flavor(msg, CompareTo { rest: expected }).unwrap_or(false)
}

/// serde helpers that cap how many elements a sequence may claim before any memory is reserved for it.
pub(crate) mod bounded {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::Deserializer;
    use serde::de::{Deserialize, Error, SeqAccess, Visitor};

    struct BoundedVec<T> {
        max: usize,
        what: &'static str,
        _t: PhantomData<T>,
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedVec<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {} {}", self.max, self.what)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let claimed = seq.size_hint().unwrap_or(0);
            if claimed > self.max {
                return Err(A::Error::invalid_length(claimed, &self));
            }
            let mut out = Vec::with_capacity(claimed);
            while let Some(item) = seq.next_element()? {
                if out.len() == self.max {
                    return Err(A::Error::invalid_length(self.max + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
        max: usize,
        what: &'static str,
    ) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(BoundedVec {
            max,
            what,
            _t: PhantomData,
        })
    }

    /// A tensor shape: at most [`MAX_RANK`](crate::messages::MAX_RANK) dimensions.
    pub(crate) fn shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        vec(d, crate::messages::MAX_RANK, "dimensions")
    }

    /// A manifest's chunk list: at most [`MAX_CHUNKS`](crate::messages::MAX_CHUNKS) ids.
    pub(crate) fn chunks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<crate::ids::ChunkId>, D::Error> {
        vec(d, crate::messages::MAX_CHUNKS, "chunk ids")
    }

    /// A claim page's entries: at most [`MAX_CLAIM_PAGE`](crate::messages::MAX_CLAIM_PAGE).
    pub(crate) fn claim_entries<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<crate::messages::ClaimEntry>, D::Error> {
        vec(d, crate::messages::MAX_CLAIM_PAGE, "claim entries")
    }

    /// A Merkle inclusion path: at most [`MAX_PATH`](crate::messages::MAX_PATH) sibling hashes.
    pub(crate) fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        vec(d, crate::messages::MAX_PATH, "sibling hashes")
    }
}

/// Reads the kind and signed flag of an encoded message without parsing its body.
pub fn peek_kind(bytes: &[u8]) -> Result<(Kind, bool), DecodeError> {
    match bytes {
        [PROTOCOL_VERSION, tag, ..] => {
            let kind = Kind::from_tag(*tag).ok_or(DecodeError::UnknownTag(*tag))?;
            Ok((kind, tag & SIGNED_FLAG != 0))
        }
        [version, _, ..] => Err(DecodeError::UnknownVersion(*version)),
        _ => Err(DecodeError::NoHeader(bytes.len())),
    }
}
