//! What a node lets through gossip: each message's own validity, checked cheapest first (size, canonical
//! bytes, expiry, payer, signatures last), a per-submitter rate limit on offers, and gossipsub's peer
//! scoring, under which a peer that forwards invalid messages loses its score, stops receiving gossip
//! from this node, is pruned from the mesh and then ignored (graylisted).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleetmesh_consensus::payment::Payers;
use fleetmesh_protocol::codec::{self, DecodeError, Message};
use fleetmesh_protocol::messages::{JobOffer, Revocation};
use fleetmesh_protocol::signing::Signable;
use fleetmesh_protocol::{NodeId, Signed};
use libp2p::gossipsub;

use super::Topic;
use crate::metrics::GossipOutcome;

/// Clock skew tolerated for messages that claim a creation time.
const MAX_SKEW_MS: u64 = 30_000;

/// How old a gossiped revocation may be. Revocations are gossiped once, when issued; an older one is a
/// replay (which would spend its submitter's allowance) and is dropped unread. Together with the skew,
/// this stays inside gossipsub's duplicate cache ([`DUPLICATE_CACHE`]), so a replay is either a known
/// duplicate or too old.
pub const MAX_RECEIPT_AGE_MS: u64 = 60_000;

/// How long gossipsub remembers a message id and drops the same message again.
pub const DUPLICATE_CACHE: Duration = Duration::from_secs(120);

/// What a node's gossip validator checks beyond a message's own validity.
#[derive(Debug, Clone)]
pub struct GossipPolicy {
    /// Offers are delivered and forwarded only when one of these payers funds them (`None`: any payer;
    /// for tools and tests that relay without judging).
    pub payers: Option<Payers>,
    /// Offers one submitter may have delivered per second, sustained (revocations: five times as many).
    pub offers_per_s: f64,
    /// ... and in a burst.
    pub offer_burst: f64,
}

impl GossipPolicy {
    /// Relays every valid offer and revocation, at the default rate limit.
    pub fn open() -> Self {
        Self {
            payers: None,
            ..Self::default()
        }
    }

    /// Delivers only offers funded by `payers`, at the rate limits of `cfg`.
    pub fn funded_by(payers: Payers, cfg: &super::config::NetConfig) -> Self {
        Self {
            payers: Some(payers),
            offers_per_s: cfg.offers_per_submitter_per_s,
            offer_burst: cfg.offer_burst_per_submitter,
        }
    }
}

impl Default for GossipPolicy {
    fn default() -> Self {
        let cfg = super::config::NetConfig::default();
        Self {
            payers: None,
            offers_per_s: cfg.offers_per_submitter_per_s,
            offer_burst: cfg.offer_burst_per_submitter,
        }
    }
}

fn classify(e: DecodeError) -> GossipOutcome {
    match e {
        DecodeError::Oversize { .. } => GossipOutcome::Oversize,
        _ => GossipOutcome::Malformed,
    }
}

fn decode<T: Signable>(data: &[u8]) -> Result<Signed<T>, GossipOutcome> {
    if data.len() > <Signed<T> as Message>::MAX_LEN {
        return Err(GossipOutcome::Oversize);
    }
    // A neighbouring protocol version with a known kind is a peer not yet (or no longer) upgraded, not an
    // attacker; anything else that does not decode is malformed (and costs its sender).
    if let [version, tag, ..] = data
        && *version != codec::PROTOCOL_VERSION
    {
        let neighbour = version.abs_diff(codec::PROTOCOL_VERSION) == 1;
        return Err(if neighbour && codec::Kind::from_tag(*tag).is_some() {
            GossipOutcome::OtherVersion
        } else {
            GossipOutcome::Malformed
        });
    }
    codec::decode(data).map_err(classify)
}

/// The rate limits of a node's gossip: offers and revocations per submitter.
#[derive(Debug)]
pub struct Limits {
    offers: RateLimiter,
    revocations: RateLimiter,
}

impl Limits {
    /// `policy`'s rate for offers, five times that for revocations (a caught worker's results are
    /// revoked together).
    pub fn new(policy: &GossipPolicy) -> Self {
        Self {
            offers: RateLimiter::new(policy.offers_per_s, policy.offer_burst),
            revocations: RateLimiter::new(5.0 * policy.offers_per_s, 5.0 * policy.offer_burst),
        }
    }

    fn of(&mut self, topic: Topic) -> &mut RateLimiter {
        match topic {
            Topic::Offers => &mut self.offers,
            Topic::Revocations => &mut self.revocations,
        }
    }

    fn of_ref(&self, topic: Topic) -> &RateLimiter {
        match topic {
            Topic::Offers => &self.offers,
            Topic::Revocations => &self.revocations,
        }
    }

    /// The allowance `who` has on `topic` at `now` (whole and part messages; none spent).
    pub fn tokens(&self, topic: Topic, who: &NodeId, now: Instant) -> f64 {
        self.of_ref(topic).tokens(who, now)
    }
}

/// A gossiped message that passed every check but its signatures. The swarm task makes these
/// ([`precheck`]); the signatures are checked off that task ([`Unverified::verify`], on the node's
/// gossip verifier thread), and only then does the message spend its submitter's allowance ([`admit`]).
#[derive(Debug)]
pub struct Unverified {
    topic: Topic,
    submitter: NodeId,
    message: Decoded,
}

#[derive(Debug)]
enum Decoded {
    Offer(Box<Signed<JobOffer>>),
    Revocation(Box<Signed<Revocation>>),
}

impl Unverified {
    /// The message's topic.
    pub fn topic(&self) -> Topic {
        self.topic
    }

    /// The submitter whose allowance the message spends.
    pub fn submitter(&self) -> NodeId {
        self.submitter
    }

    /// The model of an offer (`None` for other messages).
    pub fn model(&self) -> Option<fleetmesh_protocol::ModelId> {
        match &self.message {
            Decoded::Offer(offer) => Some(offer.body.model),
            Decoded::Revocation(_) => None,
        }
    }

    /// Checks every signature of the message (ed25519: the costly part of validation).
    pub fn verify(&self) -> Result<(), GossipOutcome> {
        let verified = match &self.message {
            Decoded::Offer(offer) => offer.verify(),
            Decoded::Revocation(revocation) => revocation.verify(),
        };
        verified.map_err(|_| GossipOutcome::BadSignature)
    }
}

/// Every check of a gossiped message for its topic at `now_ms` under `policy` but its signatures,
/// cheapest first: size, version, kind and canonical bytes, (for offers) expiry, the payer, and whether
/// the submitter has allowance left (if `limits` are given; none is spent here). A flood of stale or
/// unfunded messages costs no signature check; the node also counts the messages already waiting for
/// their signature check against the submitter's allowance and against the peer that sent them, so a
/// flood of forgeries under one submitter's name costs at most its allowance in checks.
pub fn precheck(
    topic: Topic,
    data: &[u8],
    now_ms: u64,
    policy: &GossipPolicy,
    limits: Option<&Limits>,
) -> Result<Unverified, GossipOutcome> {
    let now = Instant::now();
    let (submitter, message) = match topic {
        Topic::Offers => {
            let offer = decode::<JobOffer>(data)?;
            let o = &offer.body;
            o.check_fresh(now_ms, MAX_SKEW_MS)
                .map_err(|_| GossipOutcome::Expired)?;
            if let Some(payers) = &policy.payers
                && payers
                    .refuse(&o.budget.body, &o.submitter, o.reward, o.deadline_ms, now_ms)
                    .is_some()
            {
                return Err(GossipOutcome::Unfunded);
            }
            (o.submitter, Decoded::Offer(Box::new(offer)))
        }
        Topic::Revocations => {
            let revocation = decode::<Revocation>(data)?;
            fresh(revocation.body.issued_ms, now_ms)?;
            (
                revocation.body.submitter,
                Decoded::Revocation(Box::new(revocation)),
            )
        }
    };
    if let Some(l) = limits
        && !l.of_ref(topic).has_token(&submitter, now)
    {
        return Err(GossipOutcome::RateLimited);
    }
    Ok(Unverified {
        topic,
        submitter,
        message,
    })
}

/// Whether a revocation issued at `issued_ms` may still travel at `now_ms`.
fn fresh(issued_ms: u64, now_ms: u64) -> Result<(), GossipOutcome> {
    if issued_ms.saturating_add(MAX_RECEIPT_AGE_MS) < now_ms || issued_ms > now_ms.saturating_add(MAX_SKEW_MS)
    {
        return Err(GossipOutcome::Expired);
    }
    Ok(())
}

/// Spends one of `submitter`'s allowance on `topic` for a message whose signatures verified: only
/// those do, so forged messages cannot spend an honest submitter's. `RateLimited` when none is left.
pub fn admit(
    limits: &mut Limits,
    topic: Topic,
    submitter: NodeId,
    now: Instant,
) -> Result<(), GossipOutcome> {
    if limits.of(topic).allow(submitter, now) {
        Ok(())
    } else {
        Err(GossipOutcome::RateLimited)
    }
}

/// Decides, in one call, whether a gossiped message is valid for its topic at `now_ms` under `policy`:
/// [`precheck`], then [`Unverified::verify`], then [`admit`] (if `limits` are given). The node runs the
/// same three steps with the signatures checked off its swarm task.
pub fn validate_gossip(
    topic: Topic,
    data: &[u8],
    now_ms: u64,
    policy: &GossipPolicy,
    limits: Option<&mut Limits>,
) -> Result<(), GossipOutcome> {
    let pending = precheck(topic, data, now_ms, policy, limits.as_deref())?;
    pending.verify()?;
    match limits {
        Some(l) => admit(l, topic, pending.submitter, Instant::now()),
        None => Ok(()),
    }
}

/// Whether an outcome is the sender's fault: a rejected message lowers the forwarding peer's score; an
/// expired, unfunded or rate-limited one may be an honest peer's late or foreign forward, and is only
/// dropped.
pub fn acceptance(outcome: Result<(), GossipOutcome>) -> gossipsub::MessageAcceptance {
    match outcome {
        Ok(()) => gossipsub::MessageAcceptance::Accept,
        Err(
            GossipOutcome::Expired
            | GossipOutcome::Unfunded
            | GossipOutcome::RateLimited
            | GossipOutcome::Busy
            | GossipOutcome::OtherVersion,
        ) => gossipsub::MessageAcceptance::Ignore,
        Err(_) => gossipsub::MessageAcceptance::Reject,
    }
}

/// Most topics a peer may be subscribed to (a car is in revocations, one shard of offers for any model and
/// one shard of each model it serves); a peer announcing more is refused.
pub const MAX_TOPICS_PER_PEER: usize = 32;

/// Which topics peers may announce: fleetmesh's own (the fleet-wide ones and valid offer shards), at
/// most [`MAX_TOPICS_PER_PEER`] each.
pub type SubscriptionFilter = gossipsub::MaxCountSubscriptionFilter<FleetTopics>;

/// Lets through only fleetmesh's topics.
#[derive(Debug, Default)]
pub struct FleetTopics;

impl gossipsub::TopicSubscriptionFilter for FleetTopics {
    fn can_subscribe(&mut self, topic: &gossipsub::TopicHash) -> bool {
        Topic::from_hash(topic).is_some()
    }
}

/// The subscription filter of a node.
pub fn subscription_filter() -> SubscriptionFilter {
    gossipsub::MaxCountSubscriptionFilter {
        filter: FleetTopics,
        max_subscribed_topics: MAX_TOPICS_PER_PEER,
        max_subscriptions_per_request: MAX_TOPICS_PER_PEER,
    }
}

/// Most submitters the rate limiter tracks; beyond, the fullest buckets (idle submitters) are forgotten.
const MAX_TRACKED: usize = 10_000;

/// A token bucket per submitter.
#[derive(Debug)]
pub struct RateLimiter {
    per_s: f64,
    burst: f64,
    buckets: HashMap<NodeId, (f64, Instant)>,
}

impl RateLimiter {
    /// `per_s` messages per second per submitter, `burst` at once.
    pub fn new(per_s: f64, burst: f64) -> Self {
        Self {
            per_s,
            burst: burst.max(1.0),
            buckets: HashMap::new(),
        }
    }

    /// Whether `who`'s bucket holds a token at `now` (takes none).
    pub fn has_token(&self, who: &NodeId, now: Instant) -> bool {
        self.tokens(who, now) >= 1.0
    }

    /// The tokens in `who`'s bucket at `now` (a full bucket for a submitter not seen yet).
    pub fn tokens(&self, who: &NodeId, now: Instant) -> f64 {
        self.buckets.get(who).map_or(self.burst, |(tokens, at)| {
            (tokens + self.per_s * now.duration_since(*at).as_secs_f64()).min(self.burst)
        })
    }

    /// Takes one token of `who`'s bucket at `now`; `false` when it is empty.
    pub fn allow(&mut self, who: NodeId, now: Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&who) {
            let (per_s, burst) = (self.per_s, self.burst);
            self.buckets
                .retain(|_, (tokens, at)| *tokens + per_s * now.duration_since(*at).as_secs_f64() < burst);
            if self.buckets.len() >= MAX_TRACKED {
                // Every tracked submitter is busy: the newcomer waits for room.
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(who).or_insert((self.burst, now));
        *tokens = (*tokens + self.per_s * now.duration_since(*at).as_secs_f64()).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The scoring of one topic (offer shards get it when the node joins them): see [`peer_score`].
pub fn topic_score() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 0.1,
        // Per decay interval (5 s, see `peer_score`): 0.9 a second.
        first_message_deliveries_decay: 0.59,
        first_message_deliveries_cap: 50.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -20.0,
        invalid_message_deliveries_decay: 0.59,
        ..gossipsub::TopicScoreParams::default()
    }
}

/// Gossipsub peer scoring for fleetmesh's topics: each invalid message a peer forwards costs it 20
/// points squared by count (decaying by a tenth a second); below -10 this node stops gossiping to it,
/// below -50 it does not publish to it, below -80 it ignores it altogether. Mesh-delivery rates are not
/// scored (job topics are quiet, and a quiet honest peer must not look slow), nor is sharing one IP
/// address (cars behind carrier NAT do).
pub fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = topic_score();
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        // Decaying every score walks every peer's record: at 300 nodes in one process, once a second was
        // 5.7 % of their idle time. Every 5 s, with the decays above taken to the fifth power.
        decay_interval: Duration::from_secs(5),
        decay_to_zero: 0.01,
        ..gossipsub::PeerScoreParams::default()
    };
    for t in Topic::FLEET_WIDE {
        params.topics.insert(t.ident().hash(), topic.clone());
    }
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        ..gossipsub::PeerScoreThresholds::default()
    };
    (params, thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submitter_gets_its_burst_then_its_rate() {
        let mut limiter = RateLimiter::new(10.0, 5.0);
        let who = fleetmesh_protocol::NodeKey::from_seed([1; 32]).node_id();
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| limiter.allow(who, t0)).count(), 5);
        assert!(limiter.allow(who, t0 + Duration::from_millis(100)));
        assert!(!limiter.allow(who, t0 + Duration::from_millis(100)));
        let other = fleetmesh_protocol::NodeKey::from_seed([2; 32]).node_id();
        assert!(limiter.allow(other, t0));
    }

    #[test]
    fn the_score_parameters_are_accepted_by_gossipsub() {
        let (params, thresholds) = peer_score();
        params.validate().unwrap();
        thresholds.validate().unwrap();
    }
}
