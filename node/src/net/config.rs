//! The mesh's own settings: transports, bootstrap list, DHT and relay (the `[net]` section of the node's
//! configuration file).

use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// How the node takes part in the Kademlia DHT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KadMode {
    /// Server when the node has a confirmed reachable address (AutoNAT), client otherwise.
    Auto,
    /// Always answer DHT queries (reachable nodes, local testnets).
    Server,
    /// Never answer DHT queries (nodes behind NAT).
    Client,
}

/// The mesh: transports, bootstrap list, DHT and relay settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Addresses to listen on: TCP and QUIC, IPv4 or IPv6.
    pub listen: Vec<Multiaddr>,
    /// Peers to join the mesh through (`/ip4/../tcp/../p2p/<peer id>`); ordinary nodes, retried with backoff.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses others can reach this node at, if known (skips AutoNAT for those).
    pub external_addresses: Vec<Multiaddr>,
    /// The listen addresses are reachable as they are (public IP, or a local testnet): confirm them as
    /// external addresses instead of waiting for AutoNAT. Needed by a relay server.
    pub public: bool,
    /// Kademlia mode: auto (follow AutoNAT), server or client.
    pub kademlia_mode: KadMode,
    /// Serve as a relay for peers that cannot be dialled directly (enable on reachable nodes).
    pub relay_server: bool,
    /// Keep dialling peers from the routing table until this many are connected. A node that is not
    /// `public` also closes its least recently used connections (not its relays, gossip mesh peers or
    /// connections used in the last 30 s) when it holds more than twice as many.
    pub target_peers: usize,
    /// Seconds between random-walk lookups that keep the routing table fresh (each costs the servers it
    /// asks a scan of their tables; kad also bootstraps every 5 minutes on its own). Only a `public` node
    /// walks; a DHT client's own lookups keep its table fresh.
    pub random_walk_secs: u64,
    /// Seconds an idle connection stays open.
    pub idle_timeout_secs: u64,
    /// Largest request accepted over request-response, in bytes.
    pub max_request_bytes: usize,
    /// Offers of one submitter this node takes from gossip per second, sustained (more are dropped,
    /// not forwarded, without penalty to the forwarding peer); revocations of one submitter, five times
    /// as many. Every offer let through costs every node of the topic, so this bounds what one
    /// submitter, honest or not, can push into the fleet (at 200/s a funded submitter's flood cut a
    /// 5-node testnet's honest throughput to 0.16x; at 50/s to 0.91x: `scripts/bench-flood.sh`).
    pub offers_per_submitter_per_s: f64,
    /// ... and at once.
    pub offer_burst_per_submitter: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/udp/4001/quic-v1"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            external_addresses: Vec::new(),
            public: false,
            kademlia_mode: KadMode::Auto,
            relay_server: false,
            target_peers: 8,
            random_walk_secs: 300,
            idle_timeout_secs: 300,
            max_request_bytes: 512 * 1024,
            offers_per_submitter_per_s: 50.0,
            offer_burst_per_submitter: 250.0,
        }
    }
}

impl NetConfig {
    /// Interval between random walks.
    pub fn random_walk(&self) -> Duration {
        Duration::from_secs(self.random_walk_secs.max(1))
    }
}
