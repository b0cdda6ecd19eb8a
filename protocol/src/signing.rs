//! Node keys and domain-separated signatures over canonical bytes.
//!
//! A signature covers `blake3(len(domain) || domain || canonical bytes)`, where the domain is the message
//! kind's tag ([`Kind::domain`]) and the canonical bytes are [`codec::encode`] of the body. The signer is not
//! stored separately: it is the author the body names ([`Signable::signer`]), so a message can never claim
//! one author and carry another's signature.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, Kind, Message};
use crate::ids::NodeId;

/// A node's ed25519 secret key.
#[derive(Clone)]
pub struct NodeKey(SigningKey);

impl NodeKey {
    /// Builds the key from its 32-byte secret seed (the content of a key file).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte secret seed. Keep it secret.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The node id (public key) of this key.
    pub fn node_id(&self) -> NodeId {
        NodeId::from(self.0.verifying_key())
    }

    /// Signs a raw 32-byte digest. Messages should use [`Signed::sign`], which builds the digest itself.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> SignatureBytes {
        SignatureBytes(self.0.sign(digest).to_bytes())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.node_id().short())
    }
}

/// The 64 bytes of an ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "([u8; 32], [u8; 32])", into = "([u8; 32], [u8; 32])")]
pub struct SignatureBytes(pub [u8; 64]);

impl From<([u8; 32], [u8; 32])> for SignatureBytes {
    fn from((r, s): ([u8; 32], [u8; 32])) -> Self {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&r);
        out[32..].copy_from_slice(&s);
        Self(out)
    }
}

impl From<SignatureBytes> for ([u8; 32], [u8; 32]) {
    fn from(sig: SignatureBytes) -> Self {
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(&sig.0[..32]);
        s.copy_from_slice(&sig.0[32..]);
        (r, s)
    }
}

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({}..)", hex::encode(&self.0[..6]))
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The author's node id is not a usable public key.
    #[error("{kind:?} signer {signer} is not a valid public key")]
    InvalidKey {
        /// Kind of the signed message.
        kind: Kind,
        /// The claimed author.
        signer: NodeId,
    },
    /// The signature does not match the message and its author.
    #[error("bad {kind:?} signature from {signer}")]
    BadSignature {
        /// Kind of the signed message.
        kind: Kind,
        /// The claimed author.
        signer: NodeId,
    },
    /// A key tried to sign a message that names another author.
    #[error("key {key} cannot sign a {kind:?} authored by {author}")]
    NotTheAuthor {
        /// Kind of the message.
        kind: Kind,
        /// The signing key's node id.
        key: NodeId,
        /// The author named in the message.
        author: NodeId,
    },
    /// At least one signature of a batch is bad (verify them one by one to find which).
    #[error("batch of {0} signatures failed verification")]
    BatchFailed(usize),
}

/// A message that names the node which must sign it.
pub trait Signable: Message {
    /// The node whose key must have signed this message.
    fn signer(&self) -> NodeId;

    /// Adds the checks for signatures nested inside this message (a receipt's worker claim).
    fn nested_checks(&self, _out: &mut Vec<SignatureCheck>) -> Result<(), VerifyError> {
        Ok(())
    }
}

/// One signature to check: digest, signature, key. Collected so that many can be batch-verified.
#[derive(Debug, Clone)]
pub struct SignatureCheck {
    kind: Kind,
    signer: NodeId,
    digest: [u8; 32],
    signature: Signature,
    key: VerifyingKey,
}

impl SignatureCheck {
    fn verify(&self) -> Result<(), VerifyError> {
        self.key
            .verify_strict(&self.digest, &self.signature)
            .map_err(|_| VerifyError::BadSignature {
                kind: self.kind,
                signer: self.signer,
            })
    }
}

/// Checks many signatures at once; faster per signature than one by one for batches of a few or more.
///
/// Accepts exactly when every check would pass individually for honestly made signatures; on failure,
/// verify individually to learn which one is bad.
pub fn verify_checks(checks: &[SignatureCheck]) -> Result<(), VerifyError> {
    match checks {
        [] => Ok(()),
        [one] => one.verify(),
        many => {
            let messages: Vec<&[u8]> = many.iter().map(|c| &c.digest[..]).collect();
            let signatures: Vec<Signature> = many.iter().map(|c| c.signature).collect();
            let keys: Vec<VerifyingKey> = many.iter().map(|c| c.key).collect();
            ed25519_dalek::verify_batch(&messages, &signatures, &keys)
                .map_err(|_| VerifyError::BatchFailed(many.len()))
        }
    }
}

/// A message with its author's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The signed message.
    pub body: T,
    /// The author's signature over the body's domain-separated canonical bytes.
    pub signature: SignatureBytes,
}

/// The digest a signature of `body` covers.
pub fn signing_digest<T: Message>(body: &T) -> [u8; 32] {
    domain_digest(T::KIND.domain(), &codec::encode(body))
}

/// `blake3(len(domain) || domain || canonical)`: what a signature in `domain` over `canonical` covers.
pub fn domain_digest(domain: &[u8], canonical: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[domain.len() as u8]);
    hasher.update(domain);
    hasher.update(canonical);
    *hasher.finalize().as_bytes()
}

impl<T: Signable> Signed<T> {
    /// Signs `body` with `key`, which must be the key of the author the body names.
    pub fn sign(body: T, key: &NodeKey) -> Result<Self, VerifyError> {
        let author = body.signer();
        if author != key.node_id() {
            return Err(VerifyError::NotTheAuthor {
                kind: T::KIND,
                key: key.node_id(),
                author,
            });
        }
        let signature = key.sign_digest(&signing_digest(&body));
        Ok(Self { body, signature })
    }

    /// Appends the checks of this signature and every nested one to `out`.
    pub fn checks(&self, out: &mut Vec<SignatureCheck>) -> Result<(), VerifyError> {
        let signer = self.body.signer();
        let key = signer.verifying_key().map_err(|_| VerifyError::InvalidKey {
            kind: T::KIND,
            signer,
        })?;
        out.push(SignatureCheck {
            kind: T::KIND,
            signer,
            digest: signing_digest(&self.body),
            signature: Signature::from_bytes(&self.signature.0),
            key,
        });
        self.body.nested_checks(out)
    }

    /// Verifies the author's signature and every nested signature, one by one (strict verification).
    pub fn verify(&self) -> Result<(), VerifyError> {
        let mut checks = Vec::with_capacity(2);
        self.checks(&mut checks)?;
        checks.iter().try_for_each(SignatureCheck::verify)
    }

    /// Verifies many signed messages in one batch. On error, use [`Signed::verify`] to find the bad ones.
    pub fn verify_batch(items: &[Self]) -> Result<(), VerifyError> {
        let mut checks = Vec::with_capacity(items.len() * 2);
        for item in items {
            item.checks(&mut checks)?;
        }
        verify_checks(&checks)
    }

    /// The author of the message.
    pub fn signer(&self) -> NodeId {
        self.body.signer()
    }
}

impl<T: Signable> Message for Signed<T> {
    const KIND: Kind = T::KIND;
    const SIGNED: bool = true;
    const MAX_LEN: usize = T::MAX_LEN + 64;

    fn validate(&self) -> Result<(), DecodeError> {
        self.body.validate()
    }
}
