//! The task that owns the swarm: executes commands from [`NetClient`](super::NetClient)s, validates gossip,
//! keeps the routing table fresh and the peer count up, and retries unreachable bootstrap peers with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{SwarmEvent, dial_opts::DialOpts};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, gossipsub, identify, kad, relay};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod intake;
mod lookups;

use super::gossip::{self, GossipPolicy, Limits};
use super::{Behaviour, BehaviourEvent, Command, NetError, NetEvent, NetStatus, Topic};
use crate::metrics::Metrics;
use crate::net::config::NetConfig;
use intake::{Verified, Verifying, start_verifier};

/// gossipsub's own size limit: above every kind's limit, so that oversize messages reach the node's
/// validator, which counts and rejects them at the first hop.
pub(super) const GOSSIP_TRANSPORT_LIMIT: usize = 1024 * 1024;

type LookupReply = oneshot::Sender<Result<Vec<Multiaddr>, NetError>>;

/// A bootstrap peer and when to try it next.
struct BootstrapPeer {
    addr: Multiaddr,
    peer: Option<PeerId>,
    next_try: Instant,
    backoff: Duration,
    reached: bool,
}

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    metrics: Metrics,
    /// Connected peers, shared with every [`super::NetClient`].
    connected: Arc<AtomicUsize>,
    bootstrap: Vec<BootstrapPeer>,
    target_peers: usize,
    public: bool,
    random_walk: Duration,
    next_walk: Instant,
    last_dial: HashMap<PeerId, Instant>,
    /// When each connected peer last carried a request or response (or connected): the connection
    /// manager keeps recently used connections.
    last_used: HashMap<PeerId, Instant>,
    next_trim: Instant,
    /// When the routing table is next counted, and the last count.
    next_table: Instant,
    table: usize,
    pending_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>>,
    pending_lookups: HashMap<kad::QueryId, (PeerId, LookupReply)>,
    pending_dials: HashMap<libp2p::swarm::ConnectionId, oneshot::Sender<Result<(), NetError>>>,
    /// Provider lookups: the providers found, how many answers named any, when to stop, and where the
    /// result goes.
    pending_providers: HashMap<kad::QueryId, lookups::ProviderLookup>,
    pending_records: super::records::Lookups,
    /// Content this node provides, announced again every [`REPROVIDE`].
    provided: Vec<kad::RecordKey>,
    next_provide: Instant,
    /// Listeners on relay circuits, which close when the relay connection or reservation is lost.
    circuits: HashMap<libp2p::core::transport::ListenerId, Multiaddr>,
    /// Circuit listeners that reported an address: the relay accepted the reservation.
    reserved: std::collections::HashSet<libp2p::core::transport::ListenerId>,
    /// Circuit addresses to listen on again, and when.
    relisten: Vec<(Instant, Multiaddr)>,
    /// What gossip is let through.
    policy: GossipPolicy,
    /// Offers and revocations per submitter.
    limits: Limits,
    /// Messages to the verifier thread, and what it verified.
    to_verify: mpsc::Sender<Verifying>,
    verified: mpsc::Receiver<Verified>,
    /// Messages waiting for their signature check, per forwarding peer and per (topic, submitter)
    /// (entries exist only while some wait, so at most [`MAX_VERIFYING`] of each).
    waiting_by_peer: HashMap<PeerId, usize>,
    waiting_by_submitter: HashMap<(Topic, fleetmesh_protocol::NodeId), usize>,
}

/// How often the connection manager looks at the connections ([`EventLoop::trim_connections`]).
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// How often the routing table is counted (each count applies every bucket's pending entries: at every
/// tick that was 3.5 % of the idle time of 300 nodes in one process).
const TABLE_EVERY: Duration = Duration::from_secs(5);
/// A connection used (or opened) this recently is not closed by the connection manager.
const TRIM_GRACE: Duration = Duration::from_secs(30);
/// Wait before listening again on a relay circuit whose listener closed.
const RELISTEN_AFTER: Duration = Duration::from_secs(2);

/// How often provider records are announced again (they also go out as soon as the node has peers), at
/// the node's own point of the period ([`crate::clock::next_phase_point`], where it also estimates its
/// offer shards: one round of connections to the servers serves both).
const REPROVIDE: Duration = Duration::from_secs(300);

impl EventLoop {
    pub(super) fn new(
        mut swarm: Swarm<Behaviour>,
        cfg: &NetConfig,
        circuits: HashMap<libp2p::core::transport::ListenerId, Multiaddr>,
        (commands, events): (mpsc::Receiver<Command>, mpsc::Sender<NetEvent>),
        metrics: Metrics,
        connected: Arc<AtomicUsize>,
        policy: GossipPolicy,
    ) -> Self {
        let now = Instant::now();
        let limits = Limits::new(&policy);
        let (to_verify, verified) = start_verifier();
        let bootstrap = cfg
            .bootstrap
            .iter()
            .map(|addr| {
                let peer = super::peer_of(addr);
                if let Some(peer) = peer {
                    swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                }
                BootstrapPeer {
                    addr: addr.clone(),
                    peer,
                    next_try: now,
                    backoff: Duration::from_secs(1),
                    reached: false,
                }
            })
            .collect();
        Self {
            swarm,
            commands,
            events,
            metrics,
            connected,
            bootstrap,
            target_peers: cfg.target_peers,
            public: cfg.public,
            random_walk: cfg.random_walk(),
            next_walk: now + Duration::from_secs(2),
            last_dial: HashMap::new(),
            last_used: HashMap::new(),
            next_trim: now,
            next_table: now,
            table: 0,
            pending_requests: HashMap::new(),
            pending_lookups: HashMap::new(),
            pending_dials: HashMap::new(),
            pending_providers: HashMap::new(),
            pending_records: Default::default(),
            provided: Vec::new(),
            next_provide: now,
            circuits,
            reserved: Default::default(),
            relisten: Vec::new(),
            policy,
            limits,
            to_verify,
            verified,
            waiting_by_peer: HashMap::new(),
            waiting_by_submitter: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                Some((job, result)) = self.verified.recv() => self.on_verified(job, result),
                _ = tick.tick() => self.on_tick(),
            }
        }
        debug!("network task stopped");
    }

    fn routing_table_peers(&mut self) -> Vec<PeerId> {
        let mut peers = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            peers.extend(bucket.iter().map(|e| *e.node.key.preimage()));
        }
        peers
    }

    /// Connected peers subscribed to every fleetmesh topic, the fewest over the topics.
    /// The fleet-wide topics (every node is in them, admitting work or not; a peer announces all its
    /// subscriptions at once, offer shards included).
    fn fleet_wide(&self) -> Vec<gossipsub::TopicHash> {
        Topic::FLEET_WIDE.iter().map(|t| t.ident().hash()).collect()
    }

    /// Connected peers known to be subscribed to `topic`.
    fn subscribers(&self, topic: &gossipsub::TopicHash) -> usize {
        self.swarm
            .behaviour()
            .gossip
            .all_peers()
            .filter(|(_, topics)| topics.contains(&topic))
            .count()
    }

    fn topic_peers(&self) -> usize {
        self.fleet_wide()
            .iter()
            .map(|t| self.subscribers(t))
            .min()
            .unwrap_or(0)
    }

    /// Peers in the gossip mesh, the fewest over the fleetmesh topics.
    fn mesh_peers(&self) -> usize {
        let gossip = &self.swarm.behaviour().gossip;
        self.fleet_wide()
            .iter()
            .map(|t| gossip.mesh_peers(t).count())
            .min()
            .unwrap_or(0)
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let connected = self.swarm.connected_peers().count();
        self.connected.store(connected, Ordering::Relaxed);
        self.metrics.connected_peers.set(connected as i64);
        if now >= self.next_table {
            self.next_table = now + TABLE_EVERY;
            let kad = &mut self.swarm.behaviour_mut().kad;
            self.table = kad.kbuckets().map(|b| b.num_entries()).sum();
            self.metrics.routing_table_peers.set(self.table as i64);
        }

        // Bootstrap peers: dial until reached once; afterwards only when the node has lost every connection.
        for i in 0..self.bootstrap.len() {
            let b = &self.bootstrap[i];
            let connected_to_it = b.peer.is_some_and(|p| self.swarm.is_connected(&p));
            if connected_to_it || now < b.next_try || (b.reached && connected > 0) {
                continue;
            }
            let addr = b.addr.clone();
            let b = &mut self.bootstrap[i];
            b.next_try = now + b.backoff;
            b.backoff = (b.backoff * 2).min(Duration::from_secs(60));
            if let Err(e) = self.swarm.dial(addr.clone()) {
                warn!(%addr, error = %e, "cannot dial bootstrap peer; retrying later");
            }
        }

        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.relisten)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.relisten = later;
        for (_, addr) in due {
            self.listen_circuit(addr);
        }

        if connected > 0 && now >= self.next_provide && !self.provided.is_empty() {
            let (wall, me) = (crate::clock::now_ms(), self.swarm.local_peer_id().to_bytes());
            let wait = crate::clock::next_phase_point_apart(wall, REPROVIDE.as_millis() as u64, &me) - wall;
            self.next_provide = now + Duration::from_millis(wait);
            for key in self.provided.clone() {
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    warn!(error = %e, "cannot announce provided content");
                }
            }
        }

        if now >= self.next_walk {
            self.next_walk = now + self.random_walk;
            // One lookup of a random key (kad bootstraps on its own, see net::build). Only on a public
            // node: a car behind NAT is no DHT server, and its own lookups keep its table fresh.
            if self.table > 0 && self.public {
                self.swarm.behaviour_mut().kad.get_closest_peers(PeerId::random());
            }
        }

        if !self.public && now >= self.next_trim {
            self.next_trim = now + TRIM_EVERY;
            self.trim_connections(now, connected);
        }

        // Keep the peer count up from the routing table.
        if connected < self.target_peers {
            let candidates = self.routing_table_peers();
            let mut budget = self.target_peers - connected;
            for peer in candidates {
                if budget == 0 {
                    break;
                }
                let recently = self
                    .last_dial
                    .get(&peer)
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(10));
                if self.swarm.is_connected(&peer) || recently {
                    continue;
                }
                self.last_dial.insert(peer, now);
                if self.swarm.dial(DialOpts::peer_id(peer).build()).is_ok() {
                    budget -= 1;
                }
            }
        }
    }

    /// The connection manager of a node that is not a reachable server (a car behind NAT): above twice
    /// its target peer count, closes the connections it least recently used down to the target, sparing
    /// its relays, its gossip mesh peers and any connection used in the last [`TRIM_GRACE`]. (Every
    /// Kademlia lookup connects to the servers closest to its key, and gossipsub's streams keep every
    /// connection open, so without this a car ends up connected to every server it ever asked: in the
    /// 300-node scale run, 14.5 of the 15 servers per client, every server to all 300 nodes.)
    fn trim_connections(&mut self, now: Instant, connected: usize) {
        let high = self.target_peers.saturating_mul(2).max(4);
        if connected <= high {
            return;
        }
        let mut spared: std::collections::HashSet<PeerId> =
            self.swarm.behaviour().gossip.all_mesh_peers().copied().collect();
        for addr in self.circuits.values() {
            let mut relay = None;
            for p in addr.iter() {
                match p {
                    Protocol::P2p(peer) => relay = Some(peer),
                    Protocol::P2pCircuit => break,
                    _ => {}
                }
            }
            spared.extend(relay);
        }
        let mut idle: Vec<(Instant, PeerId)> = self
            .swarm
            .connected_peers()
            .filter(|p| !spared.contains(p))
            .map(|p| (self.last_used.get(p).copied().unwrap_or(now), *p))
            .filter(|(used, _)| now.duration_since(*used) >= TRIM_GRACE)
            .collect();
        idle.sort();
        let excess = connected - self.target_peers;
        for (_, peer) in idle.into_iter().take(excess) {
            debug!(%peer, "closing an idle connection (connection manager)");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn listen_circuit(&mut self, addr: Multiaddr) {
        match self.swarm.listen_on(addr.clone()) {
            Ok(id) => {
                self.circuits.insert(id, addr);
            }
            Err(e) => {
                warn!(%addr, error = %e, "cannot listen on the relay circuit; retrying");
                self.relisten.push((Instant::now() + RELISTEN_AFTER, addr));
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { topic, data, reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .publish(gossipsub::IdentTopic::new(topic), data)
                    .map(|_| ())
                    .map_err(|e| NetError::Publish(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Request { peer, data, reply } => {
                // (Only for a connected peer: the map holds connected peers only; a new connection
                // is noted when it is established.)
                if self.swarm.is_connected(&peer) {
                    self.last_used.insert(peer, Instant::now());
                } else {
                    debug!(%peer, "request to a peer not connected: dialling it");
                }
                let id = self.swarm.behaviour_mut().req.send_request(&peer, data);
                self.pending_requests.insert(id, reply);
            }
            Command::Respond { channel, data } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .req
                    .send_response(channel, data)
                    .is_err()
                {
                    debug!("response dropped: the requesting peer went away");
                }
            }
            Command::Dial { addr, reply } => {
                let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
                let opts = match super::peer_of(&addr) {
                    Some(peer) => DialOpts::peer_id(peer).addresses(vec![addr]).build(),
                    None => opts,
                };
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial(e.to_string())));
                    }
                }
            }
            Command::ListenOn { addr, reply } => {
                let result = match self.swarm.listen_on(addr.clone()) {
                    Ok(id) => {
                        if super::is_circuit(&addr) {
                            self.circuits.insert(id, addr);
                        }
                        Ok(())
                    }
                    Err(e) => Err(NetError::Listen(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::FindPeer { peer, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.pending_lookups.insert(id, (peer, reply));
            }
            Command::Provide { key } => {
                let key = kad::RecordKey::new(&key);
                if !self.provided.contains(&key) {
                    self.provided.push(key.clone());
                }
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    warn!(error = %e, "cannot announce provided content");
                }
            }
            Command::GetProviders {
                key,
                stop_after,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
                self.pending_providers.insert(
                    id,
                    lookups::ProviderLookup {
                        found: Default::default(),
                        answers: 0,
                        stop_after,
                        reply,
                    },
                );
            }
            Command::Subscribe { topic, join } => {
                let ident = gossipsub::IdentTopic::new(topic);
                let gossip = &mut self.swarm.behaviour_mut().gossip;
                if join {
                    let _ = gossip.set_topic_params(ident.clone(), gossip::topic_score());
                    if let Err(e) = gossip.subscribe(&ident) {
                        warn!(topic = %ident, error = %e, "cannot join a gossip topic");
                    }
                } else {
                    gossip.unsubscribe(&ident);
                }
            }
            Command::TopicPeers { topic, reply } => {
                let _ = reply.send(self.subscribers(&gossipsub::IdentTopic::new(topic).hash()));
            }
            Command::DialPeer { peer, reply } => {
                let result = match self.swarm.is_connected(&peer) {
                    true => Ok(()),
                    false => self
                        .swarm
                        .dial(DialOpts::peer_id(peer).build())
                        .map_err(|e| NetError::Dial(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::StopProviding { key } => {
                let key = kad::RecordKey::new(&key);
                self.provided.retain(|k| *k != key);
                self.swarm.behaviour_mut().kad.stop_providing(&key);
            }
            Command::PutRecord { key, value } => {
                let record = kad::Record::new(kad::RecordKey::new(&key), value);
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, kad::Quorum::One)
                {
                    warn!(error = %e, "cannot publish a DHT record");
                }
            }
            Command::GetRecord { key, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_record(kad::RecordKey::new(&key));
                self.pending_records.start(id, reply);
            }
            Command::Status { reply } => {
                let mut listen_addrs: Vec<String> = self.swarm.listeners().map(|a| a.to_string()).collect();
                // A public node confirms its listen addresses as external ones: list each address once.
                for a in self.swarm.external_addresses().map(|a| a.to_string()) {
                    if !listen_addrs.contains(&a) {
                        listen_addrs.push(a);
                    }
                }
                let peers: Vec<String> = self.swarm.connected_peers().map(|p| p.to_string()).collect();
                let routing_table = self.routing_table_peers();
                let status = NetStatus {
                    peer_id: self.swarm.local_peer_id().to_string(),
                    listen_addrs,
                    connected_peers: peers.len(),
                    peers,
                    routing_table_peers: routing_table.len(),
                    routing_table,
                    topic_peers: self.topic_peers(),
                    offer_topics: self
                        .swarm
                        .behaviour()
                        .gossip
                        .topics()
                        .filter(|t| t.as_str().starts_with(Topic::Offers.name()))
                        .map(|t| t.to_string())
                        .collect(),
                    mesh_peers: self.mesh_peers(),
                };
                let _ = reply.send(status);
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, listener_id } => {
                info!(%address, "listening");
                let circuit = address.iter().any(|p| matches!(p, Protocol::P2pCircuit));
                if self.public && !circuit {
                    self.swarm.add_external_address(address);
                }
                if circuit && self.reserved.insert(listener_id) {
                    self.metrics.relay_reservations_held.inc();
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), dialer = endpoint.is_dialer(), "connected");
                self.last_used.insert(peer_id, Instant::now());
                self.metrics.connections_opened.inc();
                for b in self.bootstrap.iter_mut() {
                    if b.peer == Some(peer_id)
                        || (b.peer.is_none() && b.addr == *endpoint.get_remote_address())
                    {
                        if !b.reached {
                            info!(addr = %b.addr, "reached bootstrap peer");
                        }
                        b.reached = true;
                        b.backoff = Duration::from_secs(1);
                    }
                }
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(()));
                }
                self.connected
                    .store(self.swarm.connected_peers().count(), Ordering::Relaxed);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
                if num_established == 0 {
                    self.last_used.remove(&peer_id);
                }
                self.connected
                    .store(self.swarm.connected_peers().count(), Ordering::Relaxed);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial(error.to_string())));
                }
                let is_bootstrap = self
                    .bootstrap
                    .iter()
                    .find(|b| peer_id.is_some() && b.peer == peer_id);
                match is_bootstrap {
                    Some(b) => {
                        warn!(addr = %b.addr, error = %error, retry_in_s = b.backoff.as_secs(), "bootstrap peer unreachable")
                    }
                    None => debug!(peer = ?peer_id, error = %error, "dial failed"),
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => match self.circuits.remove(&listener_id) {
                Some(addr) => {
                    if self.reserved.remove(&listener_id) {
                        self.metrics.relay_reservations_held.dec();
                    }
                    info!(%addr, ?reason, retry_in_s = RELISTEN_AFTER.as_secs(), "relay circuit listener closed; listening again");
                    self.relisten.push((Instant::now() + RELISTEN_AFTER, addr));
                }
                None => warn!(?listener_id, ?addresses, ?reason, "listener closed"),
            },
            SwarmEvent::ListenerError { listener_id, error } => {
                warn!(?listener_id, %error, "listener error");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::Dialing { peer_id, .. } => debug!(peer = ?peer_id, "dialing"),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        if let BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
            result, stats, step, ..
        }) = &event
            && step.last
        {
            super::kad_finished(&self.metrics, result, stats);
        }
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if info.protocols.contains(&super::KAD_PROTOCOL) =>
            {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                self.metrics.bytes_in.inc_by(message.data.len() as u64);
                self.on_gossip(propagation_source, message_id, message);
            }
            BehaviourEvent::Req(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.last_used.insert(peer, Instant::now());
                    self.metrics.requests_in.inc();
                    self.metrics.bytes_in.inc_by(request.len() as u64);
                    let event = NetEvent::Request {
                        peer,
                        data: request,
                        channel,
                    };
                    if self.events.try_send(event).is_err() {
                        warn!(%peer, "node is not keeping up; request dropped");
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    self.last_used.insert(peer, Instant::now());
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            BehaviourEvent::Req(request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            BehaviourEvent::Req(request_response::Event::InboundFailure { peer, error, .. }) => {
                debug!(%peer, %error, "inbound request failed");
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            }) => self.providers_progressed(id, result, step.last),
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetRecord(result),
                step,
                ..
            }) => self.pending_records.progressed(id, result, step.last),
            BehaviourEvent::Kad(kad::Event::InboundRequest { request }) => {
                super::records::on_inbound(&mut self.swarm.behaviour_mut().kad, request)
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, step, .. }) => {
                if let kad::QueryResult::GetClosestPeers(result) = result
                    && let Some((target, _)) = self.pending_lookups.get(&id)
                {
                    let target = *target;
                    let found = match &result {
                        Ok(ok) => ok
                            .peers
                            .iter()
                            .find(|p| p.peer_id == target)
                            .map(|p| p.addrs.clone()),
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers
                            .iter()
                            .find(|p| p.peer_id == target)
                            .map(|p| p.addrs.clone()),
                    };
                    if (found.is_some() || step.last)
                        && let Some((_, reply)) = self.pending_lookups.remove(&id)
                    {
                        let _ = reply.send(found.ok_or(NetError::NotFound(target)));
                    }
                }
            }
            BehaviourEvent::RelayServer(event) => {
                let m = &self.metrics;
                match event {
                    relay::Event::ReservationReqAccepted { renewed: false, .. } => {
                        m.relay_reservations_served.inc();
                    }
                    relay::Event::ReservationClosed { .. } | relay::Event::ReservationTimedOut { .. } => {
                        m.relay_reservations_served.dec();
                    }
                    relay::Event::CircuitReqAccepted { .. } => {
                        m.relay_circuits_served.inc();
                    }
                    relay::Event::CircuitClosed { .. } => {
                        m.relay_circuits_served.dec();
                    }
                    _ => {}
                }
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                info!(?old, ?new, "NAT status changed");
            }
            BehaviourEvent::Dcutr(event) => match event.result {
                Ok(_) => info!(peer = %event.remote_peer_id, "hole punch succeeded: direct connection"),
                Err(e) => {
                    info!(peer = %event.remote_peer_id, error = %e, "hole punch failed; staying relayed")
                }
            },
            _ => {}
        }
    }
}
