//! Who runs a job: the plan of a job with a fixed replica count, the price pool the workers are drawn
//! from, and the randomness that draws them. Fresh keys cost nothing, so no verdict may rest only on
//! workers without validated history with the submitter: a trusted worker, or [`UNTRUSTED_QUORUM`]
//! agreeing untrusted ones. (Adaptive replication's plan is [`crate::trust::plan_preferring`].)

use fleetmesh_protocol::NodeId;
use fleetmesh_protocol::messages::Bid;

use crate::trust::{self, Reputation};

/// A source of uniform numbers in `[0, 1)` that workers cannot predict (the node's system randomness; a
/// seeded generator in simulations).
pub trait Randomness {
    /// The next number, uniform in `[0, 1)`.
    fn unit(&mut self) -> f64;
}

/// Agreeing untrusted workers a verdict needs when no trusted worker takes part (two colluding fresh
/// keys are not enough).
pub const UNTRUSTED_QUORUM: usize = 3;

/// A bid's cost to the submitter: its price plus the car's electricity cost.
pub(crate) fn cost(b: &Bid) -> u64 {
    b.price.saturating_add(b.energy_cost)
}

/// The cheap part of `sorted` (bids, cheapest first): those that cost at most a quarter more than the
/// median bid, and at least the `min` cheapest. The anchor is the median, not the cheapest bid, so keys
/// that bid below everyone cannot narrow the pool down to themselves: it always holds the cheaper half
/// of the bidders. Price narrows the pool; the workers are drawn within it.
pub(crate) fn price_pool<'a>(sorted: &[&'a Bid], min: usize) -> Vec<&'a Bid> {
    let Some(median) = sorted.get(sorted.len().saturating_sub(1) / 2) else {
        return Vec::new();
    };
    let limit = cost(median).saturating_add(cost(median) / 4);
    sorted
        .iter()
        .enumerate()
        .filter(|(i, b)| *i < min || cost(b) <= limit)
        .map(|(_, b)| *b)
        .collect()
}

/// Removes and returns a uniformly drawn element of `from`.
fn draw(from: &mut Vec<NodeId>, rng: &mut dyn Randomness) -> Option<NodeId> {
    if from.is_empty() {
        return None;
    }
    let i = ((rng.unit() * from.len() as f64) as usize).min(from.len() - 1);
    Some(from.swap_remove(i))
}

/// Up to `n` of `from` that are not in `chosen`, each drawn uniformly among those left (never by their
/// position in `from`, which bidders can choose through what they bid).
pub(crate) fn draw_up_to(
    from: &[NodeId],
    chosen: &[NodeId],
    n: usize,
    rng: &mut dyn Randomness,
) -> Vec<NodeId> {
    let mut left: Vec<NodeId> = from.iter().copied().filter(|w| !chosen.contains(w)).collect();
    let mut out = Vec::new();
    while out.len() < n {
        let Some(w) = draw(&mut left, rng) else { break };
        out.push(w);
    }
    out
}

/// The plan of a job with a fixed replica count `r` from `candidates` (bids of workers not on
/// probation, cheapest first). With two or more replicas, one worker is trusted whenever a trusted
/// worker bid (drawn among the trusted bids of the price pool, else among all trusted bids), and the
/// others are drawn at random from the price pool (the bids within a quarter above the median bid, at
/// least the `2r` cheapest), then from every bidder. Without a trusted worker the caller raises the replica
/// count to [`UNTRUSTED_QUORUM`], so this plan draws that many. Backups (for disagreement and dropouts)
/// are trusted bidders, or anyone while nobody trusted bid, in random order. One replica is what the
/// user asked for, unverified: the cheapest bid (no verdict rests on it, so price may decide).
pub fn fixed_plan(
    candidates: &[&Bid],
    r: usize,
    reputation: &Reputation,
    now_ms: u64,
    rng: &mut dyn Randomness,
) -> Option<trust::Plan> {
    if candidates.is_empty() {
        return None;
    }
    let trusted = |w: &NodeId| reputation.is_trusted(w, now_ms);
    let everyone: Vec<NodeId> = candidates.iter().map(|b| b.worker).collect();
    if r == 1 {
        // Nothing is verified, so there is nothing to capture: the cheapest bid, then the next ones.
        return Some(trust::Plan {
            workers: vec![everyone[0]],
            replicas: 1,
            spot_check: false,
            backups: everyone
                .iter()
                .skip(1)
                .take(trust::MAX_BACKUPS)
                .copied()
                .collect(),
        });
    }
    let pool: Vec<NodeId> = price_pool(candidates, 2 * r).iter().map(|b| b.worker).collect();
    let mut workers = Vec::new();
    {
        let mut vouching: Vec<NodeId> = pool.iter().copied().filter(trusted).collect();
        if vouching.is_empty() {
            vouching = everyone.iter().copied().filter(trusted).collect();
        }
        if let Some(t) = draw(&mut vouching, rng) {
            workers.push(t);
        }
    }
    let want = if workers.is_empty() {
        r.max(UNTRUSTED_QUORUM)
    } else {
        r
    };
    for from in [&pool, &everyone] {
        let more = draw_up_to(from, &workers, want.saturating_sub(workers.len()), rng);
        workers.extend(more);
    }
    let any_trusted = everyone.iter().any(trusted);
    let spare: Vec<NodeId> = everyone
        .iter()
        .copied()
        .filter(|w| !any_trusted || trusted(w))
        .collect();
    let backups = draw_up_to(&spare, &workers, trust::MAX_BACKUPS, rng);
    Some(trust::Plan {
        workers,
        replicas: r,
        spot_check: false,
        backups,
    })
}
