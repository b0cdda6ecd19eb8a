//! # fleetmesh-node
//!
//! The node every car runs: identity, (coming) libp2p mesh, burn inference engine, sled storage, vehicle
//! state and local API. The `fleetmesh` binary is a thin CLI over this library, so that tests can start
//! nodes in-process.

pub mod keyfile;
