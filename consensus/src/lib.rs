//! # fleetmesh-consensus
//!
//! Deterministic decisions of the fleet, sans-IO: no clock (time is passed in), no network, no disk.
//! Callers feed in what they observed and act on what comes back.
//!
//! - [`job`]: the submitter's state machine of one job, from bids to a verdict.
//! - [`quorum`]: whether redundant outputs of one job agree under the model's agreement rule, and which
//!   group of workers forms a quorum.

pub mod job;
pub mod quorum;
