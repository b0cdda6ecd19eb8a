//! Prometheus metrics of one node, registered in a registry the node owns (no global state).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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
    /// An offer on the shard topic of another model (penalised: it costs the shard's members).
    WrongShard,
    /// An offer no payer this node honours funds (dropped, not forwarded, no penalty).
    Unfunded,
    /// An offer over its submitter's rate limit (dropped, not forwarded, no penalty).
    RateLimited,
    /// Valid, but the node's queue to its job roles was full: not taken, not forwarded, no penalty.
    Busy,
    /// Another protocol version (dropped, not forwarded, no penalty).
    OtherVersion,
}

/// Labels of the gossip counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GossipLabels {
    /// The topic.
    pub topic: String,
    /// What the node decided.
    pub outcome: GossipOutcome,
}

/// Labels naming a verdict outcome (`accepted`, `failed`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The outcome.
    pub outcome: String,
}

/// Labels naming a model.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The model's name.
    pub model: String,
}

/// Labels naming a job state (`pending`, `decided`) or a worker's state (`running`, `revealed`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state.
    pub state: String,
}

fn inference_histogram() -> Histogram {
    // 0.1 ms to ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The kinds of Kademlia query the node's Kademlia metrics count ([`KadLabels`]).
pub const KAD_KINDS: [&str; 7] = [
    "bootstrap",
    "closest",
    "providers",
    "provide",
    "republish",
    "record",
    "put_record",
];

/// Labels naming a kind of Kademlia query (one of [`KAD_KINDS`]).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KadLabels {
    /// The query's kind.
    pub kind: String,
}

/// Every metric the node exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Gossip messages received, by topic and outcome.
    pub gossip: Family<GossipLabels, Counter>,
    /// Peers with an open connection.
    pub connected_peers: Gauge,
    /// Peers in the Kademlia routing table.
    pub routing_table_peers: Gauge,
    /// Jobs this node submitted.
    pub jobs_submitted: Counter,
    /// Verdicts this node reached as a submitter, by outcome.
    pub verdicts: Family<OutcomeLabels, Counter>,
    /// Submitted jobs by state, now.
    pub jobs: Family<StateLabels, Gauge>,
    /// Work this node computed as a worker.
    pub work_done: Counter,
    /// Inference time per job this node computed, by model (seconds).
    pub inference_seconds: Family<ModelLabels, Histogram, fn() -> Histogram>,
    /// Inference jobs waiting or running in the executor.
    pub executor_queue_depth: Gauge,
    /// Credit this node earned, from the ledger of the receipts it holds (micro-credits).
    pub credit: Gauge,
    /// Energy this node spent on accepted jobs, from the same ledger (µWh).
    pub energy_uwh: Gauge,
    /// Receipts this node holds.
    pub receipts: Gauge,
    /// Running jobs handed back because the car left admission.
    pub preemptions: Counter,
    /// Withdrawals received from workers of this node's jobs.
    pub withdrawals: Counter,
    /// Receipts this node revoked (their worker was caught lying later), each job checked again.
    pub rechecks: Counter,
    /// Verdicts of this node's jobs that a recheck revised.
    pub revisions: Counter,
    /// 1 while the car admits work.
    pub vehicle_admitted: Gauge,
    /// 1 while the car computer is awake.
    pub car_awake: Gauge,
    /// Offers not bid on because no payer this node honours funds them.
    pub offers_unpaid: Counter,
    /// Requests received over request-response (bids, commits, receipts, claim pages, chunks, ...).
    pub requests_in: Counter,
    /// Bytes received in gossip messages and requests (payloads, without framing).
    pub bytes_in: Counter,
    /// Relay reservations this node holds (circuit listeners with an address).
    pub relay_reservations_held: Gauge,
    /// Reservations this node's relay server holds for other peers.
    pub relay_reservations_served: Gauge,
    /// Circuits open through this node's relay server.
    pub relay_circuits_served: Gauge,
    /// Offer shards this node is in and has announced in the DHT.
    pub offer_shards: Gauge,
    /// Connections established (dialled or accepted), each a transport handshake.
    pub connections_opened: Counter,
    /// Revealed outputs this node refuted with its own check of the model's output.
    pub refuted: Counter,
    /// Kademlia queries this node finished, by kind.
    pub kad_queries: Family<KadLabels, Counter>,
    /// Requests those queries sent to other peers, by kind.
    pub kad_requests: Family<KadLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            gossip: Family::default(),
            connected_peers: Gauge::default(),
            routing_table_peers: Gauge::default(),
            jobs_submitted: Counter::default(),
            verdicts: Family::default(),
            jobs: Family::default(),
            work_done: Counter::default(),
            inference_seconds: Family::new_with_constructor(inference_histogram),
            executor_queue_depth: Gauge::default(),
            credit: Gauge::default(),
            energy_uwh: Gauge::default(),
            receipts: Gauge::default(),
            preemptions: Counter::default(),
            withdrawals: Counter::default(),
            rechecks: Counter::default(),
            revisions: Counter::default(),
            vehicle_admitted: Gauge::default(),
            car_awake: Gauge::default(),
            offers_unpaid: Counter::default(),
            requests_in: Counter::default(),
            bytes_in: Counter::default(),
            relay_reservations_held: Gauge::default(),
            relay_reservations_served: Gauge::default(),
            relay_circuits_served: Gauge::default(),
            connections_opened: Counter::default(),
            refuted: Counter::default(),
            kad_queries: Family::default(),
            kad_requests: Family::default(),
            offer_shards: Gauge::default(),
        }
    }
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
            "fleetmesh_offers_unpaid",
            "Offers not bid on because no payer this node honours funds them",
            m.offers_unpaid.clone(),
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
        registry.register(
            "fleetmesh_jobs_submitted",
            "Jobs this node submitted",
            m.jobs_submitted.clone(),
        );
        registry.register(
            "fleetmesh_verdicts",
            "Verdicts this node reached as a submitter, by outcome",
            m.verdicts.clone(),
        );
        registry.register("fleetmesh_jobs", "Submitted jobs by state", m.jobs.clone());
        registry.register(
            "fleetmesh_work_done",
            "Jobs this node computed as a worker",
            m.work_done.clone(),
        );
        registry.register(
            "fleetmesh_inference_seconds",
            "Inference time per computed job, by model",
            m.inference_seconds.clone(),
        );
        registry.register(
            "fleetmesh_executor_queue_depth",
            "Inference jobs waiting or running",
            m.executor_queue_depth.clone(),
        );
        registry.register(
            "fleetmesh_credit_micro",
            "Credit this node earned, from the receipts it holds",
            m.credit.clone(),
        );
        registry.register(
            "fleetmesh_energy_uwh",
            "Energy spent on accepted jobs, from the receipts this node holds",
            m.energy_uwh.clone(),
        );
        registry.register(
            "fleetmesh_receipts",
            "Receipts this node holds",
            m.receipts.clone(),
        );
        registry.register(
            "fleetmesh_preemptions",
            "Running jobs handed back because the car left admission",
            m.preemptions.clone(),
        );
        registry.register(
            "fleetmesh_withdrawals",
            "Signed withdrawals received from workers of this node's jobs",
            m.withdrawals.clone(),
        );
        registry.register(
            "fleetmesh_rechecks",
            "Receipts this node revoked because their worker was caught lying later; each job is run again",
            m.rechecks.clone(),
        );
        registry.register(
            "fleetmesh_revisions",
            "Verdicts of this node's jobs that a recheck revised (the output accepted first was wrong)",
            m.revisions.clone(),
        );
        registry.register(
            "fleetmesh_vehicle_admitted",
            "1 while the car admits work (parked, no driver, charge, temperature and hours within the owner's limits)",
            m.vehicle_admitted.clone(),
        );
        registry.register(
            "fleetmesh_car_awake",
            "1 while the car computer is awake",
            m.car_awake.clone(),
        );
        registry.register(
            "fleetmesh_requests_in",
            "Requests received over request-response",
            m.requests_in.clone(),
        );
        registry.register(
            "fleetmesh_bytes_in",
            "Bytes received in gossip messages and requests (payloads)",
            m.bytes_in.clone(),
        );
        registry.register(
            "fleetmesh_relay_reservations_held",
            "Relay reservations this node holds (it is reachable through those relays)",
            m.relay_reservations_held.clone(),
        );
        registry.register(
            "fleetmesh_relay_reservations_served",
            "Reservations this node's relay server holds for other peers",
            m.relay_reservations_served.clone(),
        );
        registry.register(
            "fleetmesh_relay_circuits_served",
            "Circuits open through this node's relay server",
            m.relay_circuits_served.clone(),
        );
        registry.register(
            "fleetmesh_offer_shards",
            "Offer shards this node is in and has announced in the DHT",
            m.offer_shards.clone(),
        );
        registry.register(
            "fleetmesh_connections_opened",
            "Connections established, dialled or accepted (each a transport handshake)",
            m.connections_opened.clone(),
        );
        registry.register(
            "fleetmesh_refuted_outputs",
            "Revealed outputs this node refuted with its own check of the model's output",
            m.refuted.clone(),
        );
        registry.register(
            "fleetmesh_kad_queries",
            "Kademlia queries this node finished, by kind",
            m.kad_queries.clone(),
        );
        registry.register(
            "fleetmesh_kad_requests",
            "Requests sent to other peers by the Kademlia queries this node finished, by kind",
            m.kad_requests.clone(),
        );
        m
    }

    /// Counts a finished Kademlia query of `kind` that sent `requests` requests.
    pub fn kad_query(&self, kind: &str, requests: u32) {
        let labels = KadLabels {
            kind: kind.to_string(),
        };
        self.kad_queries.get_or_create(&labels).inc();
        self.kad_requests
            .get_or_create(&labels)
            .inc_by(u64::from(requests));
    }

    /// Kademlia queries of `kind` finished and the requests they sent.
    pub fn kad_count(&self, kind: &str) -> (u64, u64) {
        let labels = KadLabels {
            kind: kind.to_string(),
        };
        (
            self.kad_queries.get_or_create(&labels).get(),
            self.kad_requests.get_or_create(&labels).get(),
        )
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
