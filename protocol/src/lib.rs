//! # fleetmesh-protocol
//!
//! Everything that travels between cars: identifiers, the messages of the job lifecycle, their one
//! canonical byte encoding, and domain-separated signatures over it.
//!
//! The crate is pure: no async runtime, no sockets, no files, no clock. Time is always passed in as
//! milliseconds since the Unix epoch (`now_ms`).
//!
//! ```
//! use fleetmesh_protocol::{codec, NodeKey, Signed, messages::Withdraw, messages::WithdrawReason, JobId};
//!
//! let key = NodeKey::from_seed([7; 32]);
//! let withdraw = Withdraw {
//!     job: JobId::from_bytes([1; 32]),
//!     worker: key.node_id(),
//!     reason: WithdrawReason::Preempted,
//!     at_ms: 1_700_000_000_000,
//! };
//! let signed = Signed::sign(withdraw, &key).unwrap();
//! let bytes = codec::encode(&signed);
//! let back: Signed<Withdraw> = codec::decode(&bytes).unwrap();
//! back.verify().unwrap();
//! assert_eq!(back, signed);
//! ```

pub mod codec;
pub mod ids;
pub mod messages;
pub mod signing;

pub use codec::{DecodeError, Kind, Message, PROTOCOL_VERSION};
pub use ids::{ChunkId, IdParseError, JobId, ModelId, NodeId};
pub use signing::{NodeKey, SignatureBytes, Signed, VerifyError};
