//! Helpers shared by the in-process fleet tests.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use fleetmesh_node::demo;
use fleetmesh_node::inference::Registry;
use fleetmesh_node::jobs::JobsConfig;
use fleetmesh_node::node::{self, Node};
use fleetmesh_node::share::ShareConfig;
use fleetmesh_node::store::Store;
use fleetmesh_protocol::NodeKey;
use libp2p::Multiaddr;
use tokio_util::sync::CancellationToken;

/// With `RUST_LOG` set (e.g. `RUST_LOG=fleetmesh_node=debug`), the nodes' logs go to the test's output
/// (shown for a failing test), to find out why it failed.
pub fn logs_from_env() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The payer of every test fleet.
pub fn test_payer() -> NodeKey {
    NodeKey::from_seed([0xFA; 32])
}

/// A change to a node's configuration.
pub type Configure = Box<dyn FnOnce(&mut fleetmesh_node::config::NodeConfig)>;

/// One node of a test fleet.
pub struct Spec {
    pub registry: Registry,
    pub jobs: JobsConfig,
    pub share: ShareConfig,
    pub store: Store,
    /// Changes to the node's configuration (the car, the owner's policy, executor settings).
    pub config: Option<Configure>,
}

impl Spec {
    /// A node with these models and job settings, default sharing and a fresh temporary store.
    pub fn new(registry: Registry, jobs: JobsConfig) -> Self {
        Self {
            registry,
            jobs,
            share: ShareConfig::default(),
            store: Store::temporary().unwrap(),
            config: None,
        }
    }
}

/// Starts one node per spec (key seeds from `seed`; the first node is everyone's bootstrap peer, or
/// `boot` if given), each with its own cancellation token, and waits until each sees all the others
/// plus `others` already running, then lets gossipsub form its mesh.
pub async fn fleet(
    specs: Vec<Spec>,
    seed: u8,
    boot: Option<Multiaddr>,
    others: usize,
) -> Vec<(Node, CancellationToken)> {
    logs_from_env();
    let n = specs.len() + others;
    let mut nodes: Vec<(Node, CancellationToken)> = Vec::new();
    let mut boot = boot;
    for (i, spec) in specs.into_iter().enumerate() {
        let cancel = CancellationToken::new();
        let key = NodeKey::from_seed([seed.wrapping_add(i as u8); 32]);
        // Every test fleet is paid by one payer that all its nodes honour (as the demo's).
        let jobs = spec.jobs.funded_by(&test_payer(), key.node_id());
        let mut cfg = demo::node_config(boot.as_ref(), n);
        if let Some(change) = spec.config {
            change(&mut cfg);
        }
        let node = node::start_with(
            key,
            cfg,
            spec.registry,
            jobs,
            spec.share,
            spec.store,
            cancel.clone(),
        )
        .await
        .unwrap();
        if boot.is_none() {
            boot = Some(node.net.dialable_addr(Duration::from_secs(2)).await.unwrap());
        }
        nodes.push((node, cancel));
    }
    let start = Instant::now();
    loop {
        // Connected to everyone, and everyone's gossip subscriptions known (offers reach every worker).
        let mut full = true;
        for (node, _) in &nodes {
            let s = node.net.status().await.unwrap();
            full &= s.connected_peers + 1 >= n && s.topic_peers + 1 >= n;
        }
        if full {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "fleet did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes
}

/// Polls `check` every 20 ms until it holds or `deadline` passes; returns whether it held.
pub async fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
