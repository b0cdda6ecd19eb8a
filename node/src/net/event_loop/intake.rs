//! Gossip intake: each message's cheap checks on the swarm task, its signatures on a verifier thread of
//! its own, then the verdict reported to gossipsub (accepted messages are forwarded), counted, and an
//! accepted message handed to the node.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::{PeerId, gossipsub};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::EventLoop;
use crate::clock::now_ms;
use crate::metrics::GossipOutcome;
use crate::net::gossip::{self, Unverified};
use crate::net::{NetEvent, Topic};

/// Gossip messages whose signatures wait to be checked; more answer `Busy` (not taken, not forwarded).
const MAX_VERIFYING: usize = 1_024;

/// Of those, from one forwarding peer: a peer that floods cannot take the queue from the others (an
/// honest submitter publishes its offers in bursts of a few hundred: a message refused as `Busy` is not
/// delivered again, since gossipsub then drops its other copies as duplicates).
const MAX_VERIFYING_PER_PEER: usize = 256;

/// A gossiped message on its way through the verifier thread.
pub(super) struct Verifying {
    id: gossipsub::MessageId,
    source: PeerId,
    data: Vec<u8>,
    pending: Unverified,
}

/// Counts one waiting message of `key` less.
pub(super) fn release<K: std::hash::Hash + Eq>(waiting: &mut HashMap<K, usize>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = waiting.entry(key) {
        *e.get_mut() = e.get().saturating_sub(1);
        if *e.get() == 0 {
            e.remove();
        }
    }
}

/// A message back from the verifier thread, with the result of its signature check.
pub(super) type Verified = (Verifying, Result<(), GossipOutcome>);

/// The node's gossip verifier: a thread that checks the signatures of messages that passed every
/// cheaper check, so that ed25519 never runs on the swarm task. It stops when the event loop drops its
/// sender.
pub(super) fn start_verifier() -> (mpsc::Sender<Verifying>, mpsc::Receiver<Verified>) {
    let (to_verify, mut verify) = mpsc::channel::<Verifying>(MAX_VERIFYING);
    let (to_done, done) = mpsc::channel(MAX_VERIFYING);
    let spawned = std::thread::Builder::new()
        .name("gossip-verify".into())
        .spawn(move || {
            while let Some(job) = verify.blocking_recv() {
                let result = job.pending.verify();
                if to_done.blocking_send((job, result)).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        // Without the thread every message waits in vain and is counted `Busy` once the queue is full.
        warn!(error = %e, "cannot start the gossip verifier thread; gossip will not be taken");
    }
    (to_verify, done)
}

impl EventLoop {
    /// A gossiped message arrived: the cheap checks run here, the signatures on the verifier thread.
    pub(super) fn on_gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let Some(topic) = Topic::from_hash(&message.topic) else {
            return self.judged(id, source, None, Err(GossipOutcome::UnknownTopic), message.data);
        };
        let pending = match gossip::precheck(topic, &message.data, now_ms(), &self.policy, Some(&self.limits))
        {
            Ok(pending) => pending,
            Err(outcome) => return self.judged(id, source, Some(topic), Err(outcome), message.data),
        };
        // An offer belongs on a shard of its model (or of the family for any model).
        if let Some(shard) = fleetmesh_consensus::directory::Shard::parse(message.topic.as_str())
            && pending.model().is_some_and(|m| !shard.family.admits(&m))
        {
            return self.judged(
                id,
                source,
                Some(topic),
                Err(GossipOutcome::WrongShard),
                message.data,
            );
        }
        // The submitter's allowance must cover the messages already waiting too, or forgeries under its
        // name would each cost a signature check; and one peer may not fill the queue.
        let submitter = (topic, pending.submitter());
        let by_submitter = self.waiting_by_submitter.get(&submitter).copied().unwrap_or(0);
        if self.limits.tokens(topic, &submitter.1, Instant::now()) < (by_submitter + 1) as f64 {
            return self.judged(
                id,
                source,
                Some(topic),
                Err(GossipOutcome::RateLimited),
                message.data,
            );
        }
        if self.waiting_by_peer.get(&source).copied().unwrap_or(0) >= MAX_VERIFYING_PER_PEER {
            return self.judged(id, source, Some(topic), Err(GossipOutcome::Busy), message.data);
        }
        let job = Verifying {
            id,
            source,
            data: message.data,
            pending,
        };
        // A full verifier queue is back-pressure like a full queue to the job roles.
        match self.to_verify.try_send(job) {
            Ok(()) => {
                *self.waiting_by_peer.entry(source).or_default() += 1;
                *self.waiting_by_submitter.entry(submitter).or_default() += 1;
            }
            Err(e) => {
                let job = e.into_inner();
                self.judged(
                    job.id,
                    job.source,
                    Some(topic),
                    Err(GossipOutcome::Busy),
                    job.data,
                );
            }
        }
    }

    /// The verifier thread checked a message's signatures: a valid one spends its submitter's allowance.
    pub(super) fn on_verified(&mut self, job: Verifying, result: Result<(), GossipOutcome>) {
        let (topic, submitter) = (job.pending.topic(), job.pending.submitter());
        release(&mut self.waiting_by_peer, job.source);
        release(&mut self.waiting_by_submitter, (topic, submitter));
        // A message the node cannot take now (its queue to the job roles is full) is `Busy` before it
        // spends any of its submitter's allowance. This task is that queue's only sender, so the room seen
        // here is still there when the message is handed on.
        let outcome = match result {
            Ok(()) if self.events.capacity() == 0 => Err(GossipOutcome::Busy),
            Ok(()) => gossip::admit(&mut self.limits, topic, submitter, Instant::now()),
            Err(e) => Err(e),
        };
        self.judged(job.id, job.source, Some(topic), outcome, job.data);
    }

    /// Reports a judged message to gossipsub (accepted ones are forwarded), counts it, and hands an
    /// accepted one to the node.
    fn judged(
        &mut self,
        id: gossipsub::MessageId,
        source: PeerId,
        topic: Option<Topic>,
        outcome: Result<(), GossipOutcome>,
        data: Vec<u8>,
    ) {
        // Back-pressure: a node that cannot take the message now (its queue to the job roles is full)
        // neither delivers nor forwards it, and counts it as `Busy`.
        let permit = match (outcome, topic) {
            (Ok(()), Some(_)) => self.events.try_reserve().ok(),
            _ => None,
        };
        let outcome = match (outcome, &permit) {
            (Ok(()), None) => Err(GossipOutcome::Busy),
            (other, _) => other,
        };
        let name = topic.map(Topic::name).unwrap_or("unknown");
        let counted = outcome.err().unwrap_or(GossipOutcome::Accepted);
        self.metrics
            .gossip
            .get_or_create(&crate::metrics::GossipLabels {
                topic: name.into(),
                outcome: counted,
            })
            .inc();
        self.swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(&id, &source, gossip::acceptance(outcome));
        match (permit, topic) {
            (Some(permit), Some(topic)) => permit.send(NetEvent::Gossip {
                topic,
                data,
                from: source,
            }),
            _ if counted == GossipOutcome::Busy => {
                warn!(
                    topic = name,
                    "node is not keeping up; gossip message not taken (busy)"
                )
            }
            _ => debug!(peer = %source, topic = name, outcome = ?counted, "gossip message rejected"),
        }
    }
}
