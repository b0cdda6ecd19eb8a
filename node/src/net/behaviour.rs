//! The composed libp2p behaviour (a module of its own: the derive generates an undocumented event enum).
#![allow(missing_docs)]

use libp2p::request_response;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{autonat, dcutr, gossipsub, identify, kad, ping, relay};

use super::codec;

/// All behaviours of a fleetmesh node.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) gossip: gossipsub::Behaviour<gossipsub::IdentityTransform, super::gossip::SubscriptionFilter>,
    pub(super) req: request_response::Behaviour<codec::FrameCodec>,
    pub(super) autonat: autonat::Behaviour,
    pub(super) relay_client: relay::client::Behaviour,
    pub(super) relay_server: Toggle<relay::Behaviour>,
    pub(super) dcutr: dcutr::Behaviour,
}
