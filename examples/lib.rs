//! Runnable examples for fleetmesh. Each file beside this one is an example; run one with
//! `cargo run -p fleetmesh-examples --example NAME`.
