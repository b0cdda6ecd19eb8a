//! # fleetmesh-node
//!
//! The node every car runs: identity, libp2p mesh, local HTTP API, burn inference engine, sled storage,
//! the car's state and admission, and the job roles over the sans-IO cores of `fleetmesh-consensus`. The
//! `fleetmesh` binary is a thin CLI over this library (`node/src/cli/`), so that tests can start nodes
//! in-process.

pub mod adversary;
pub mod api;
pub mod args;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
pub mod inference;
pub mod input;
pub mod jobs;
pub mod keyfile;
pub mod metrics;
pub mod net;
pub mod node;
pub mod pay;
pub mod share;
pub mod store;
pub mod testkit;
pub mod vehicle;
