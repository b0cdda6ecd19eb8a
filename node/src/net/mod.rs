//! The mesh: one libp2p swarm per node, owned by one task ([`event_loop`]); the rest of the node talks to it
//! through a cloneable [`NetClient`] over bounded channels.
//!
//! Behaviours: TCP + QUIC transports with noise and yamux, identify, ping, Kademlia (fleetmesh's own
//! protocol name), gossipsub (strict, signed, blake3 message ids, every message validated by the node before
//! it is forwarded), request-response with a size-limited codec, AutoNAT, relay client and (optionally)
//! server, and DCUtR hole punching.

mod behaviour;
pub mod codec;
pub mod config;
mod event_loop;
pub mod gossip;
pub mod records;

use std::time::Duration;

use fleetmesh_protocol::{NodeId, NodeKey};
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, PeerId, StreamProtocol, autonat, dcutr, gossipsub, identify, kad, ping, relay};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::net::config::{KadMode, NetConfig};

pub use behaviour::{Behaviour, BehaviourEvent};
pub use gossip::{GossipPolicy, validate_gossip};

/// Kademlia protocol name: fleetmesh's own DHT, separate from IPFS's.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/fleetmesh/kad/1.0.0");
/// Identify protocol version string.
pub const IDENTIFY_VERSION: &str = "/fleetmesh/1.0.0";

/// How often each side of a connection pings the other (libp2p's default is 15 s). A ping opens a
/// stream and negotiates it; at 15 s it took a third of an idle fleet's CPU in the scale run (300 nodes:
/// ~24 CPU-s a minute idle at 15 s, ~16 at 60 s). A minute still keeps NAT mappings and relay
/// reservations alive (TCP mappings last minutes; QUIC keeps its own).
pub const PING_INTERVAL: Duration = Duration::from_secs(60);

/// The relay server's limits. libp2p's defaults suit relays that only help a hole punch (16 circuits
/// in all, 2 minutes and 128 KiB each, a circuit from one source every 2 minutes), but a car that no hole
/// punch reaches is reachable only through its relay, and every bid, assignment, commit, reveal and
/// receipt of its work travels over circuits: in the 100-node scale run a relay hit the 16-circuit
/// limit. Reservations stay at libp2p's 128 (and its per-peer pace); circuits are bounded in number,
/// time and bytes, and in pace per source peer.
fn relay_config() -> relay::Config {
    let mut cfg = relay::Config {
        max_circuits: 1_024,
        max_circuits_per_peer: 64,
        max_circuit_duration: Duration::from_secs(3_600),
        max_circuit_bytes: 64 << 20,
        ..relay::Config::default()
    };
    cfg.circuit_src_rate_limiters = Vec::new();
    if let Some(limit) = std::num::NonZeroU32::new(300) {
        cfg = cfg.circuit_src_per_peer(limit, Duration::from_secs(60));
    }
    cfg
}

/// Kinds of gossip topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Topic {
    /// Signed job offers, on the shard topics of the capacity directory
    /// ([`fleetmesh_consensus::directory`]): no offer topic spans the fleet.
    Offers,
    /// Revocations of receipts whose worker was caught lying later (a topic of their own, so that nodes
    /// that predate them never receive a message kind they do not know).
    Revocations,
}

impl Topic {
    /// The fleet-wide topic a node subscribes to from the start (offer shards are joined as the node
    /// admits work).
    pub const FLEET_WIDE: [Topic; 1] = [Topic::Revocations];

    /// The topic's name, or for offers the prefix of every shard topic's name.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Offers => fleetmesh_consensus::directory::TOPIC_PREFIX,
            Topic::Revocations => "fleetmesh/revocations/v2",
        }
    }

    fn ident(self) -> gossipsub::IdentTopic {
        gossipsub::IdentTopic::new(self.name())
    }

    /// The kind of a topic, if it is one of fleetmesh's (any valid offer shard counts as offers).
    fn from_hash(hash: &gossipsub::TopicHash) -> Option<Topic> {
        if fleetmesh_consensus::directory::Shard::parse(hash.as_str()).is_some() {
            return Some(Topic::Offers);
        }
        Topic::FLEET_WIDE.into_iter().find(|t| t.ident().hash() == *hash)
    }
}

/// The libp2p key of a node key (the same ed25519 key).
pub fn keypair_of(key: &NodeKey) -> libp2p::identity::Keypair {
    let mut seed = key.seed();
    match libp2p::identity::Keypair::ed25519_from_bytes(&mut seed) {
        Ok(k) => k,
        // Any 32 bytes are a valid ed25519 secret seed.
        Err(e) => unreachable!("ed25519 seed rejected: {e}"),
    }
}

/// The libp2p peer id of a node id.
pub fn peer_id_of(node: &NodeId) -> PeerId {
    match libp2p::identity::ed25519::PublicKey::try_from_bytes(node.as_bytes()) {
        Ok(pk) => libp2p::identity::PublicKey::from(pk).to_peer_id(),
        // NodeId is only ever built from a valid ed25519 public key.
        Err(e) => unreachable!("node id is not an ed25519 key: {e}"),
    }
}

/// The node id of a peer id, if the peer id embeds an ed25519 key (every fleetmesh peer's does).
pub fn node_id_of(peer: &PeerId) -> Option<NodeId> {
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(&peer_public_key_bytes(peer)?).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    NodeId::from_public_key_bytes(ed.to_bytes()).ok()
}

fn peer_public_key_bytes(peer: &PeerId) -> Option<Vec<u8>> {
    // An identity multihash (code 0x00) holds the protobuf-encoded public key itself.
    let mh = libp2p::multihash::Multihash::<64>::from_bytes(&peer.to_bytes()).ok()?;
    (mh.code() == 0).then(|| mh.digest().to_vec())
}

/// Why a network operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// The event loop has stopped (the node is shutting down).
    #[error("the network task has stopped")]
    Stopped,
    /// Publishing to a topic failed (no peers subscribed, queues full, duplicate).
    #[error("publish failed: {0}")]
    Publish(String),
    /// A request did not get a response.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer asked.
        peer: PeerId,
        /// Why it failed.
        reason: String,
    },
    /// Dialling failed.
    #[error("dial failed: {0}")]
    Dial(String),
    /// A Kademlia lookup did not find the peer.
    #[error("peer {0} not found in the DHT")]
    NotFound(PeerId),
    /// A Kademlia lookup ended (timed out) before any peer answered what it asked.
    #[error("DHT lookup failed: {0}")]
    Lookup(String),
    /// Listening on an address failed.
    #[error("listen failed: {0}")]
    Listen(String),
    /// The swarm could not be built (transport, behaviour or subscription setup).
    #[error("cannot start the network: {0}")]
    Build(String),
}

/// A snapshot of the mesh as seen by one node.
#[derive(Debug, Clone, Serialize)]
pub struct NetStatus {
    /// This node's peer id.
    pub peer_id: String,
    /// Addresses the node listens on, and its external addresses.
    pub listen_addrs: Vec<String>,
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Peer ids of connected peers.
    pub peers: Vec<String>,
    /// Peers in the Kademlia routing table.
    pub routing_table_peers: usize,
    /// Their peer ids.
    pub routing_table: Vec<PeerId>,
    /// Connected peers known to subscribe to every fleet-wide topic (revocations; the fewest over those
    /// topics): those whose gossip subscriptions this node knows, offer shards included (a peer
    /// announces them together).
    pub topic_peers: usize,
    /// Peers in this node's gossip mesh (the fewest over those topics): those it forwards messages to.
    pub mesh_peers: usize,
    /// The offer shard topics this node is subscribed to.
    pub offer_topics: Vec<String>,
}

/// Something the mesh delivers to the node.
#[derive(Debug)]
pub enum NetEvent {
    /// A validated gossip message.
    Gossip {
        /// Its topic.
        topic: Topic,
        /// The fleetmesh message bytes.
        data: Vec<u8>,
        /// The peer that forwarded it to us.
        from: PeerId,
    },
    /// A request from a peer; answer it with [`NetClient::respond`].
    Request {
        /// The asking peer.
        peer: PeerId,
        /// The request bytes (a fleetmesh message).
        data: Vec<u8>,
        /// Where the answer goes.
        channel: ResponseChannel<Vec<u8>>,
    },
}

enum Command {
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Subscribe {
        topic: String,
        join: bool,
    },
    TopicPeers {
        topic: String,
        reply: oneshot::Sender<usize>,
    },
    StopProviding {
        key: Vec<u8>,
    },
    DialPeer {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Request {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    Respond {
        channel: ResponseChannel<Vec<u8>>,
        data: Vec<u8>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    ListenOn {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    FindPeer {
        peer: PeerId,
        reply: oneshot::Sender<Result<Vec<Multiaddr>, NetError>>,
    },
    Status {
        reply: oneshot::Sender<NetStatus>,
    },
    Provide {
        key: Vec<u8>,
    },
    GetProviders {
        key: Vec<u8>,
        /// End the lookup after this many answers that name providers (`None`: the whole lookup).
        stop_after: Option<usize>,
        reply: oneshot::Sender<Result<Vec<PeerId>, NetError>>,
    },
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    GetRecord {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    },
}

/// A cloneable handle to the node's network task.
#[derive(Clone)]
pub struct NetClient {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    connected: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl NetClient {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Peers connected right now (kept by the network task as connections open and close).
    pub fn connected_peers(&self) -> usize {
        self.connected.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Publishes a message to a fleet-wide topic.
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<(), NetError> {
        self.publish_on(topic.name().to_string(), data).await
    }

    /// Publishes a message to the topic named `topic` (an offer shard), subscribed or not: without a
    /// subscription it goes to connected peers known to be subscribed (gossipsub's fanout).
    pub async fn publish_on(&self, topic: String, data: Vec<u8>) -> Result<(), NetError> {
        self.call(|reply| Command::Publish { topic, data, reply }).await?
    }

    /// Joins (`join`) or leaves the topic named `topic`.
    pub async fn subscribe(&self, topic: String, join: bool) -> Result<(), NetError> {
        self.tx
            .send(Command::Subscribe { topic, join })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Connected peers known to be subscribed to the topic named `topic`.
    pub async fn topic_peers(&self, topic: String) -> Result<usize, NetError> {
        self.call(|reply| Command::TopicPeers { topic, reply }).await
    }

    /// Dials a peer by id, at the addresses the node knows for it (routing table, earlier connections).
    pub async fn dial_peer(&self, peer: PeerId) -> Result<(), NetError> {
        self.call(|reply| Command::DialPeer { peer, reply }).await?
    }

    /// Stops announcing this node as a provider of `key`.
    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.tx
            .send(Command::StopProviding { key })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Sends a request to a peer and waits for its response.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.call(|reply| Command::Request { peer, data, reply }).await?
    }

    /// Answers a request delivered as [`NetEvent::Request`].
    pub async fn respond(&self, channel: ResponseChannel<Vec<u8>>, data: Vec<u8>) -> Result<(), NetError> {
        self.tx
            .send(Command::Respond { channel, data })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Dials an address (with `/p2p/<peer id>` to reach a specific peer, or a relayed circuit address).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Starts listening on another address (e.g. a `/p2p-circuit` address through a relay).
    pub async fn listen_on(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.call(|reply| Command::ListenOn { addr, reply }).await?
    }

    /// Looks a peer up in the DHT, returning its known addresses.
    pub async fn find_peer(&self, peer: PeerId) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::FindPeer { peer, reply }).await?
    }

    /// Announces in the DHT that this node provides the content with this key (re-announced periodically
    /// while the node runs).
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.tx
            .send(Command::Provide { key })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Looks up the peers that provide the content with this key (other than this node). A lookup that
    /// timed out before any peer named a provider is [`NetError::Lookup`], not an empty answer.
    pub async fn get_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetError> {
        self.call(|reply| Command::GetProviders {
            key,
            stop_after: None,
            reply,
        })
        .await?
    }

    /// [`NetClient::get_providers`], ended at the first answer that names providers: a sample (each
    /// server closest to the key holds every provider that announced it, less itself). libp2p-kad would
    /// otherwise go on to ask the providers themselves (it takes them as further candidates), which for
    /// a relay-only car is a relayed connection and failed hole punches each: in the 100-node scale run,
    /// every client dialled ~20 others that way for the directory's estimates (129 circuits on one
    /// relay; 92 when ending after two answers, as queries to providers are already under way; 0 after
    /// one).
    pub async fn sample_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetError> {
        self.call(|reply| Command::GetProviders {
            key,
            stop_after: Some(1),
            reply,
        })
        .await?
    }

    /// Stores a value in the DHT under `key` (here and at the peers closest to the key; peers keep only
    /// what [`records`] lets them).
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NetError> {
        self.tx
            .send(Command::PutRecord { key, value })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// The distinct values the DHT holds under `key` (at most 8; none if the lookup found nothing).
    pub async fn get_record(&self, key: Vec<u8>) -> Result<Vec<Vec<u8>>, NetError> {
        self.call(|reply| Command::GetRecord { key, reply }).await
    }

    /// A snapshot of the node's view of the mesh.
    pub async fn status(&self) -> Result<NetStatus, NetError> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// The node's first listen address with `/p2p/<peer id>` (what others bootstrap from), waiting up to
    /// `limit` for the listener to come up.
    pub async fn dialable_addr(&self, limit: std::time::Duration) -> Result<Multiaddr, NetError> {
        let start = std::time::Instant::now();
        loop {
            if let Some(addr) = self.status().await?.listen_addrs.first() {
                let addr: Multiaddr = addr
                    .parse()
                    .map_err(|e| NetError::Listen(format!("{addr}: {e}")))?;
                return addr
                    .with_p2p(self.peer_id)
                    .map_err(|a| NetError::Listen(format!("{a}: has another peer id")));
            }
            if start.elapsed() > limit {
                return Err(NetError::Listen("no listen address".into()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// How often gossipsub maintains its meshes and scores.
const GOSSIP_HEARTBEAT: Duration = Duration::from_secs(1);

/// Builds the swarm, starts listening and spawns the event loop. Returns the client, the stream of
/// events for the node, and the task (which ends when `cancel` fires).
pub fn start(
    cfg: &NetConfig,
    key: &NodeKey,
    metrics: Metrics,
    policy: GossipPolicy,
    cancel: CancellationToken,
) -> Result<(NetClient, mpsc::Receiver<NetEvent>, tokio::task::JoinHandle<()>), NetError> {
    let build = |e: &dyn std::fmt::Display| NetError::Build(e.to_string());
    let keypair = keypair_of(key);
    let peer_id = keypair.public().to_peer_id();
    let relay_server = cfg.relay_server;
    let max_request = cfg.max_request_bytes;
    let kad_mode = cfg.kademlia_mode;

    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| build(&e))?
        .with_quic()
        // In-process fleets (the scale run) connect over `/memory/N` addresses, with noise and yamux as
        // over TCP: no socket per connection.
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            use libp2p::core::Transport as _;
            Ok(libp2p::core::transport::MemoryTransport::default()
                .upgrade(libp2p::core::upgrade::Version::V1)
                .authenticate(libp2p::noise::Config::new(key)?)
                .multiplex(libp2p::yamux::Config::default()))
        })
        .map_err(|e| build(&e))?
        .with_relay_client(libp2p::noise::Config::new, libp2p::yamux::Config::default)
        .map_err(|e| build(&e))?
        .with_behaviour(
            |key, relay_client| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let peer_id = key.public().to_peer_id();
                let identify = identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                        .with_agent_version(format!("fleetmesh/{}", env!("CARGO_PKG_VERSION")))
                        .with_push_listen_addr_updates(true),
                );
                let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
                // Longer than a request's own timeout (10 s), so that a request a loaded server never
                // answers fails and the query goes on with the next peer: with both at 10 s the query
                // died first (in the 1,000-node run, 3 of 4 announcements timed out with half their
                // requests neither answered nor failed).
                kad_cfg.set_query_timeout(Duration::from_secs(30));
                // A bootstrap is a lookup per bucket beyond the closest peer (about a dozen in a fleet
                // of thousands), each answered by servers that scan their whole table: every 5 minutes,
                // plus kad's own bootstraps while the table holds fewer than 20 peers.
                // Not on a DHT client: its table only starts its own lookups, whose answers keep it
                // fresh (in a 1,000-node run, 17 of the 45 requests a minute each client sent).
                kad_cfg.set_periodic_bootstrap_interval(
                    (kad_mode != KadMode::Client).then_some(Duration::from_secs(300)),
                );
                // Peers' records are stored only after the node's own checks (records::on_inbound).
                kad_cfg.set_record_filtering(kad::StoreInserts::FilterBoth);
                // Provider records are announced again every 5 minutes by the node (models it serves,
                // offer shards it is in) and expire 11 minutes after a node stops announcing them. (A
                // provide is a lookup and 20 ADD_PROVIDERs: with five keys a car every 2 minutes, each
                // server handled ~90 requests a second whatever the fleet size, at 5 % servers.)
                kad_cfg.set_provider_record_ttl(Some(Duration::from_secs(660)));
                kad_cfg.set_provider_publication_interval(None);
                kad_cfg.set_record_ttl(Some(records::ROOT_TTL));
                // Each node publishes its own roots again (a root first published while it had few
                // peers reaches the rest, and stays while its publisher lives); nobody re-replicates
                // others' records, whose number grows with the fleet.
                kad_cfg.set_publication_interval(Some(records::REPUBLISH));
                kad_cfg.set_replication_interval(None);
                let store_cfg = kad::store::MemoryStoreConfig {
                    max_records: records::MAX_RECORDS,
                    ..Default::default()
                };
                let store = kad::store::MemoryStore::with_config(peer_id, store_cfg);
                let mut kad = kad::Behaviour::with_config(peer_id, store, kad_cfg);
                kad.set_mode(match kad_mode {
                    KadMode::Auto => None,
                    KadMode::Server => Some(kad::Mode::Server),
                    KadMode::Client => Some(kad::Mode::Client),
                });
                let gossip_cfg = gossipsub::ConfigBuilder::default()
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .validate_messages()
                    // By topic and content: one offer published on its model's shard and on a shard for
                    // any model is a message on each.
                    .message_id_fn(|m: &gossipsub::Message| {
                        let id = blake3::Hasher::new()
                            .update(m.topic.as_str().as_bytes())
                            .update(&[0])
                            .update(&m.data)
                            .finalize();
                        gossipsub::MessageId::from(id.as_bytes().to_vec())
                    })
                    // Let oversize messages through gossipsub's own limit so the node counts and rejects them.
                    .max_transmit_size(event_loop::GOSSIP_TRANSPORT_LIMIT)
                    // libp2p's default. A heartbeat scores every connected peer and keeps every topic's
                    // mesh: on a server with hundreds of peers it was the largest idle cost of a
                    // 300-node fleet at 0.5 s (offers do not wait for it: a publisher sends to every
                    // subscribed peer it is connected to at once).
                    .heartbeat_interval(GOSSIP_HEARTBEAT)
                    .duplicate_cache_time(gossip::DUPLICATE_CACHE)
                    .build()
                    .map_err(|e| format!("gossipsub config: {e}"))?;
                let mut gossip = gossipsub::Behaviour::new_with_subscription_filter(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_cfg,
                    gossip::subscription_filter(),
                )
                .map_err(|e| format!("gossipsub: {e}"))?;
                let (score, thresholds) = gossip::peer_score();
                gossip
                    .with_peer_score(score, thresholds)
                    .map_err(|e| format!("gossipsub peer scoring: {e}"))?;
                let req = request_response::Behaviour::with_codec(
                    codec::FrameCodec {
                        max_request,
                        // A model chunk (up to 4 MiB) with its header.
                        max_response: fleetmesh_protocol::messages::MAX_CHUNK_SIZE as usize + 4096,
                    },
                    [(codec::REQUEST_PROTOCOL, request_response::ProtocolSupport::Full)],
                    // A submitter with many jobs in flight takes many bids, commits and reports from
                    // one worker at once (each request is small and size-limited).
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30))
                        .with_max_concurrent_streams(1_024),
                );
                Ok(Behaviour {
                    identify,
                    ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
                    kad,
                    gossip,
                    req,
                    autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
                    relay_client,
                    relay_server: Toggle::from(
                        relay_server.then(|| relay::Behaviour::new(peer_id, relay_config())),
                    ),
                    dcutr: dcutr::Behaviour::new(peer_id),
                })
            },
        )
        .map_err(|e| build(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(cfg.idle_timeout_secs)))
        .build();

    for topic in Topic::FLEET_WIDE {
        swarm
            .behaviour_mut()
            .gossip
            .subscribe(&topic.ident())
            .map_err(|e| build(&e))?;
    }
    let mut circuits = std::collections::HashMap::new();
    for addr in &cfg.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen(format!("cannot listen on {addr}: {e}")))?;
        if is_circuit(addr) {
            circuits.insert(id, addr.clone());
        }
    }
    for addr in &cfg.external_addresses {
        swarm.add_external_address(addr.clone());
    }

    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (event_tx, event_rx) = mpsc::channel(1024);
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let event_loop = event_loop::EventLoop::new(
        swarm,
        cfg,
        circuits,
        (cmd_rx, event_tx),
        metrics,
        connected.clone(),
        policy,
    );
    // Each node's network logs carry its peer id (an in-process fleet runs a thousand event loops).
    let span = tracing::debug_span!("net", node = %peer_id);
    let task = tokio::spawn(tracing::Instrument::instrument(event_loop.run(cancel), span));
    let client = NetClient {
        tx: cmd_tx,
        peer_id,
        connected,
    };
    Ok((client, event_rx, task))
}

/// The kind of a Kademlia query, as the `kind` label of the node's Kademlia metrics.
fn kad_kind(result: &kad::QueryResult) -> &'static str {
    match result {
        kad::QueryResult::Bootstrap(_) => "bootstrap",
        kad::QueryResult::GetClosestPeers(_) => "closest",
        kad::QueryResult::GetProviders(_) => "providers",
        kad::QueryResult::StartProviding(_) => "provide",
        kad::QueryResult::RepublishProvider(_) => "republish",
        kad::QueryResult::GetRecord(_) => "record",
        kad::QueryResult::PutRecord(_) => "put_record",
        kad::QueryResult::RepublishRecord(_) => "republish",
    }
}

/// Counts a finished Kademlia query in the metrics and logs it (at debug: its kind, whether it
/// succeeded, and how many of its requests were answered).
fn kad_finished(metrics: &Metrics, result: &kad::QueryResult, stats: &kad::QueryStats) {
    metrics.kad_query(kad_kind(result), stats.num_requests());
    tracing::debug!(
        kind = kad_kind(result),
        ok = kad_ok(result),
        requests = stats.num_requests(),
        answered = stats.num_successes(),
        failed = stats.num_failures(),
        ms = stats.duration().map_or(0, |d| d.as_millis() as u64),
        "DHT query finished"
    );
}

/// Whether a finished Kademlia query succeeded (for the log).
fn kad_ok(result: &kad::QueryResult) -> bool {
    match result {
        kad::QueryResult::Bootstrap(r) => r.is_ok(),
        kad::QueryResult::GetClosestPeers(r) => r.is_ok(),
        kad::QueryResult::GetProviders(r) => r.is_ok(),
        kad::QueryResult::StartProviding(r) | kad::QueryResult::RepublishProvider(r) => r.is_ok(),
        kad::QueryResult::GetRecord(r) => r.is_ok(),
        kad::QueryResult::PutRecord(r) | kad::QueryResult::RepublishRecord(r) => r.is_ok(),
    }
}

/// Whether an address is a relay circuit (`.../p2p-circuit`).
fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
}

/// The peer id an address ends with (`.../p2p/<id>`).
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().last().and_then(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}
