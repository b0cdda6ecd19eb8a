//! Lies undone after the fact, sans-IO.
//!
//! Adaptive replication lets a trusted worker run most jobs alone: its results are accepted on its word,
//! and only a random spot check compares it with another worker. A worker that lies rarely can keep its
//! trust for a while, so some of its lies are accepted. The [`Audit`] remembers every result a submitter
//! accepted on one worker's word ([`Unchecked`]), for [`REVOCATION_WINDOW_MS`]. When a check later
//! catches that worker (its revealed output out-voted on any job), the submitter
//! ([`crate::submitter::Submitter`]):
//!
//! 1. revokes the receipts of all of them (the worker forfeits that credit, whether each result was right
//!    or not: lying must not pay), naming the job it was caught on as evidence ([`Revocation`]);
//! 2. runs each of those jobs again on other workers ([`Recheck`]: two replicas, the suspect excluded,
//!    under the usual rule that a trusted worker or three agreeing untrusted ones decide);
//! 3. where the recheck's accepted output differs from the one accepted before, revises the job's verdict
//!    ([`crate::submitter::Action::Revise`]).
//!
//! What is remembered is bounded per worker and in all, oldest dropped first (counted in
//! [`Audit::expired`]): results dropped that way can no longer be revised.
//!
//! [`Revocation`]: fleetmesh_protocol::messages::Revocation

use std::collections::{BTreeMap, VecDeque};

use fleetmesh_protocol::messages::REVOCATION_WINDOW_MS;
use fleetmesh_protocol::{JobId, NodeId};

/// Most unchecked results remembered per worker.
pub const MAX_UNCHECKED_PER_WORKER: usize = 4_096;
/// Most unchecked results remembered in all.
pub const MAX_UNCHECKED: usize = 65_536;

/// A result accepted on one worker's word alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unchecked {
    /// The job as its user knows it.
    pub original: JobId,
    /// The offer it ran under: the job of the worker's receipt.
    pub job: JobId,
    /// blake3 of the accepted output.
    pub digest: [u8; 32],
    /// When it was accepted (the receipt's issue time).
    pub accepted_ms: u64,
}

/// A job run again because the worker whose word it was accepted on was caught lying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recheck {
    /// The job as its user knows it.
    pub of: JobId,
    /// The worker caught; it is not drawn for the recheck.
    pub suspect: NodeId,
    /// blake3 of the output accepted before.
    pub accepted: [u8; 32],
}

/// The unchecked results of every worker, for one submitter.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    unchecked: BTreeMap<NodeId, VecDeque<Unchecked>>,
    total: usize,
    expired: u64,
}

impl Audit {
    /// Nothing remembered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers that `result` was accepted on `worker`'s word alone. Results older than the revocation
    /// window, and the oldest beyond the caps, are dropped.
    pub fn record(&mut self, worker: NodeId, result: Unchecked) {
        let horizon = result.accepted_ms.saturating_sub(REVOCATION_WINDOW_MS);
        let queue = self.unchecked.entry(worker).or_default();
        while queue.front().is_some_and(|u| u.accepted_ms < horizon)
            || queue.len() >= MAX_UNCHECKED_PER_WORKER
        {
            queue.pop_front();
            self.total -= 1;
            self.expired += 1;
        }
        queue.push_back(result);
        self.total += 1;
        if self.total > MAX_UNCHECKED {
            self.drop_oldest(worker);
        }
    }

    /// Drops the oldest result of the worker with the most, `keep`'s last one never.
    fn drop_oldest(&mut self, keep: NodeId) {
        let longest = self
            .unchecked
            .iter()
            .filter(|(w, q)| **w != keep || q.len() > 1)
            .max_by_key(|(_, q)| q.len())
            .map(|(w, _)| *w);
        if let Some(queue) = longest.and_then(|w| self.unchecked.get_mut(&w)) {
            queue.pop_front();
            self.total -= 1;
            self.expired += 1;
        }
        self.unchecked.retain(|_, q| !q.is_empty());
    }

    /// `worker` was caught at `now_ms`: every result accepted on its word within the revocation window,
    /// oldest first, which it no longer vouches for.
    pub fn caught(&mut self, worker: &NodeId, now_ms: u64) -> Vec<Unchecked> {
        let Some(queue) = self.unchecked.remove(worker) else {
            return Vec::new();
        };
        self.total -= queue.len();
        let horizon = now_ms.saturating_sub(REVOCATION_WINDOW_MS);
        queue.into_iter().filter(|u| u.accepted_ms >= horizon).collect()
    }

    /// Unchecked results remembered for `worker`.
    pub fn pending(&self, worker: &NodeId) -> usize {
        self.unchecked.get(worker).map_or(0, VecDeque::len)
    }

    /// Unchecked results remembered in all.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Results dropped unchecked (too old, or beyond a cap): they can no longer be revised.
    pub fn expired(&self) -> u64 {
        self.expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(n: u8) -> NodeId {
        fleetmesh_protocol::NodeKey::from_seed([n; 32]).node_id()
    }

    fn result(n: u64, at: u64) -> Unchecked {
        Unchecked {
            original: JobId::of(&n.to_le_bytes()),
            job: JobId::of(&n.to_be_bytes()),
            digest: [0; 32],
            accepted_ms: at,
        }
    }

    #[test]
    fn a_caught_worker_hands_back_its_results_within_the_window_and_no_more() {
        let mut audit = Audit::new();
        let (a, b) = (worker(1), worker(2));
        audit.record(a, result(1, 1_000));
        audit.record(b, result(2, 2_000));
        audit.record(a, result(3, 3_000));
        assert_eq!((audit.len(), audit.pending(&a)), (3, 2));
        let back = audit.caught(&a, 4_000);
        assert_eq!(back, vec![result(1, 1_000), result(3, 3_000)]);
        assert_eq!((audit.len(), audit.pending(&a)), (1, 0));
        assert!(audit.caught(&a, 4_000).is_empty());
        // Caught more than a window after its last result: nothing can be revoked any more.
        let late = 2_000 + REVOCATION_WINDOW_MS + 1;
        assert!(audit.caught(&b, late).is_empty());
        assert!(audit.is_empty());
    }

    #[test]
    fn results_older_than_the_window_and_beyond_the_caps_are_dropped_oldest_first() {
        let mut audit = Audit::new();
        let a = worker(1);
        audit.record(a, result(0, 0));
        audit.record(a, result(1, REVOCATION_WINDOW_MS + 1));
        assert_eq!((audit.pending(&a), audit.expired()), (1, 1));
        for n in 0..MAX_UNCHECKED_PER_WORKER as u64 {
            audit.record(a, result(10 + n, REVOCATION_WINDOW_MS + 2 + n));
        }
        assert_eq!(audit.pending(&a), MAX_UNCHECKED_PER_WORKER);
        assert_eq!(audit.expired(), 2);
        let back = audit.caught(&a, REVOCATION_WINDOW_MS + 2);
        assert_eq!(back.first().map(|u| u.original), Some(result(10, 0).original));

        // The global cap: many workers, the longest queue loses its oldest.
        let mut audit = Audit::new();
        let per = MAX_UNCHECKED / 16;
        for w in 0..16u8 {
            for n in 0..per as u64 {
                audit.record(worker(w), result(n, n));
            }
        }
        assert_eq!(audit.len(), MAX_UNCHECKED);
        audit.record(worker(200), result(9, 9));
        assert_eq!((audit.len(), audit.expired()), (MAX_UNCHECKED, 1));
        assert_eq!(audit.pending(&worker(200)), 1);
    }
}
