//! Identifiers: the node id (an ed25519 public key) and content ids (blake3 hashes).
//!
//! All ids print as 64 lowercase hex digits and parse back from the same text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a textual id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    /// The text is not 64 hex digits.
    #[error("expected 64 hex digits, got {len} characters")]
    BadLength {
        /// Length of the rejected text in bytes.
        len: usize,
    },
    /// The text contains a character that is not a hex digit.
    #[error("not a hex string: {0}")]
    NotHex(String),
    /// The 32 bytes are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    NotAPublicKey,
}

fn parse_hex32(s: &str) -> Result<[u8; 32], IdParseError> {
    if s.len() != 64 {
        return Err(IdParseError::BadLength { len: s.len() });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| IdParseError::NotHex(e.to_string()))?;
    Ok(out)
}

/// The identity of a car's node: its ed25519 public key.
///
/// A node id says nothing about the car or its owner beyond the key itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Wraps 32 bytes of an ed25519 public key, checking that they are a valid key.
    pub fn from_public_key_bytes(bytes: [u8; 32]) -> Result<Self, IdParseError> {
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| IdParseError::NotAPublicKey)?;
        Ok(Self(bytes))
    }

    /// The 32 bytes of the public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public key, or an error if the bytes are not a valid curve point.
    pub fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey, IdParseError> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| IdParseError::NotAPublicKey)
    }

    /// The first 8 hex digits, for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl From<ed25519_dalek::VerifyingKey> for NodeId {
    fn from(key: ed25519_dalek::VerifyingKey) -> Self {
        Self(key.to_bytes())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_public_key_bytes(parse_hex32(s)?)
    }
}

macro_rules! content_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The id of some content: the blake3 hash of its bytes.
            pub fn of(content: &[u8]) -> Self {
                Self(*blake3::hash(content).as_bytes())
            }

            /// Wraps a 32-byte hash that was computed elsewhere.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The 32 hash bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first 8 hex digits, for logs and tables.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32(s).map(Self)
            }
        }
    };
}

content_id!(
    /// A model: the blake3 hash of its canonical [`ModelManifest`](crate::messages::ModelManifest).
    ModelId
);
content_id!(
    /// A job: the blake3 hash of its canonical [`JobOffer`](crate::messages::JobOffer).
    JobId
);
content_id!(
    /// A chunk of content (model weights, large job input): the blake3 hash of its bytes.
    ChunkId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_id_text_round_trip() {
        let id = JobId::of(b"hello");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<JobId>().unwrap(), id);
    }

    #[test]
    fn node_id_rejects_bad_text() {
        assert!(matches!(
            "abc".parse::<NodeId>(),
            Err(IdParseError::BadLength { len: 3 })
        ));
        let not_hex = "z".repeat(64);
        assert!(matches!(not_hex.parse::<NodeId>(), Err(IdParseError::NotHex(_))));
    }
}
