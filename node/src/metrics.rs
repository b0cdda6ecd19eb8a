//! Prometheus metrics of one node, registered in a registry the node owns (no global state).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What happened to a gossiped message at this node.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum GossipOutcome {
    /// Valid: delivered and forwarded.
    Accepted,
    /// Larger than its kind allows.
    Oversize,
    /// Not a canonical message of the topic's kind.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// Past its expiry (or too far in the future).
    Expired,
    /// A topic this node does not serve.
    UnknownTopic,
}

/// Labels of the gossip counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GossipLabels {
    /// The topic.
    pub topic: String,
    /// What the node decided.
    pub outcome: GossipOutcome,
}

/// Every metric the node exports.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Gossip messages received, by topic and outcome.
    pub gossip: Family<GossipLabels, Counter>,
    /// Peers with an open connection.
    pub connected_peers: Gauge,
    /// Peers in the Kademlia routing table.
    pub routing_table_peers: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "fleetmesh_gossip_messages",
            "Gossip messages received by outcome",
            m.gossip.clone(),
        );
        registry.register(
            "fleetmesh_connected_peers",
            "Peers with an open connection",
            m.connected_peers.clone(),
        );
        registry.register(
            "fleetmesh_routing_table_peers",
            "Peers in the Kademlia routing table",
            m.routing_table_peers.clone(),
        );
        m
    }

    /// The count of gossip messages on `topic` with `outcome`.
    pub fn gossip_count(&self, topic: &str, outcome: GossipOutcome) -> u64 {
        self.gossip
            .get_or_create(&GossipLabels {
                topic: topic.to_string(),
                outcome,
            })
            .get()
    }
}
