//! # fleetmesh-consensus
//!
//! Deterministic decisions of the fleet, sans-IO: no clock (time is passed in), no network, no disk.
//! Callers feed in what they observed and act on what comes back.
//!
//! - [`assign`]: who runs a job (the fixed-replica plan, the price pool, the randomness that draws).
//! - [`job`]: the submitter's state machine of one job, from bids to a verdict.
//! - [`quorum`]: whether redundant outputs of one job agree under the model's agreement rule, and which
//!   group of workers forms a quorum.
//! - [`trust`]: reputation from verdicts, and adaptive replication (how many replicas a job gets).
//! - [`ledger`]: credit balances as a pure function of a set of co-signed receipts.
//! - [`directory`]: the capacity directory: offer shard topics, who is in each (DHT provider keys), and
//!   how many shards there are.
//! - [`books`]: receipts kept by their parties, sealed per epoch under signed Merkle roots, and balance
//!   claims checked from receipts, inclusion paths and the published roots.
//! - [`payment`]: who pays (payer budgets), numbering of a budget's receipts, fraud proofs.
//! - [`revision`]: lies undone after the fact (results accepted on one worker's word, revoked and
//!   rechecked when that worker is caught).
//! - [`submitter`]: the submitter's decisions over all its jobs (bid window, worker plan, credit rule,
//!   reputation updates); the node and every simulation drive this same code.
//! - [`simulation`]: a large simulated fleet with adversaries, driven through all of the above.

pub mod assign;
pub mod books;
pub mod directory;
pub mod job;
pub mod ledger;
pub mod payment;
pub mod quorum;
pub mod revision;
pub mod simulation;
pub mod submitter;
pub mod trust;
