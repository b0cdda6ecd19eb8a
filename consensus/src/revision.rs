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
//! [`Audit::expired`]): results dropped that way can no longer be revised. After a restart the audit is
//! rebuilt from the submitter's own receipts ([`rebuild_audit`]).
//!
//! Other submitters learn of the catch from the receipts of the job it happened on, which every node
//! receives: [`outvoted`] reads from them, checkably, which workers were rejected against the agreeing
//! claims of at least two others, so that they can stop trusting that worker too.
//!
//! [`Revocation`]: fleetmesh_protocol::messages::Revocation

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fleetmesh_protocol::messages::{REVOCATION_WINDOW_MS, Receipt, Verdict};
use fleetmesh_protocol::{JobId, NodeId, Signed};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// The audit `me`'s own receipts imply (after a restart): every job with exactly one accepted receipt (not
/// [`Verdict::Unverified`]: the user asked for one replica) ran on that worker's word alone, unless that
/// receipt was revoked already. `original` names the job its user knows for a receipt's job, `None` for a
/// job this node no longer holds (skipped). Oldest first, so that the caps keep the newest.
pub fn rebuild_audit<'a>(
    me: &NodeId,
    receipts: impl IntoIterator<Item = &'a Signed<Receipt>>,
    revoked: &BTreeSet<(JobId, NodeId)>,
    original: impl Fn(&JobId) -> Option<JobId>,
) -> Audit {
    let mut by_job: BTreeMap<JobId, Vec<&Receipt>> = BTreeMap::new();
    for r in receipts {
        if r.body.claim.body.submitter == *me && r.body.verdict == Verdict::Accepted {
            by_job.entry(r.body.claim.body.job).or_default().push(&r.body);
        }
    }
    let mut alone: Vec<(NodeId, Unchecked)> = by_job
        .into_iter()
        .filter_map(|(job, rs)| match rs.as_slice() {
            [r] if !revoked.contains(&(job, r.claim.body.worker)) => Some((
                r.claim.body.worker,
                Unchecked {
                    original: original(&job)?,
                    job,
                    digest: r.claim.body.output_digest,
                    accepted_ms: r.issued_ms,
                },
            )),
            _ => None,
        })
        .collect();
    alone.sort_by_key(|(_, u)| (u.accepted_ms, u.job));
    let mut audit = Audit::new();
    for (worker, u) in alone {
        audit.record(worker, u);
    }
    audit
}

/// The workers that the receipts one submitter issued for one job show out-voted: rejected with an output
/// digest other than the one at least two other workers' accepted claims agree on. Each receipt carries
/// its worker's own signed claim (signatures are the caller's to check), so this is a notice anyone can
/// check without trusting the submitter's word alone: it cannot put a claim in a worker's name, only
/// reject one the worker made for its job. Receipts of other jobs or submitters than the first's are
/// ignored.
pub fn outvoted(receipts: &[Signed<Receipt>]) -> Vec<NodeId> {
    let Some(first) = receipts.first() else {
        return Vec::new();
    };
    let (job, submitter) = (first.body.claim.body.job, first.body.claim.body.submitter);
    let same =
        |r: &&Signed<Receipt>| r.body.claim.body.job == job && r.body.claim.body.submitter == submitter;
    let mut agreeing: BTreeMap<[u8; 32], BTreeSet<NodeId>> = BTreeMap::new();
    for r in receipts.iter().filter(same) {
        if r.body.verdict == Verdict::Accepted {
            agreeing
                .entry(r.body.claim.body.output_digest)
                .or_default()
                .insert(r.body.claim.body.worker);
        }
    }
    let Some(accepted) = agreeing
        .iter()
        .find(|(_, workers)| workers.len() >= 2)
        .map(|(digest, _)| *digest)
    else {
        return Vec::new();
    };
    let mut out: Vec<NodeId> = receipts
        .iter()
        .filter(same)
        .filter(|r| r.body.verdict == Verdict::Rejected && r.body.claim.body.output_digest != accepted)
        .map(|r| r.body.claim.body.worker)
        .collect();
    out.sort();
    out.dedup();
    out
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

    fn receipt(worker: u8, job: u8, digest: u8, verdict: Verdict, at: u64) -> Signed<Receipt> {
        use fleetmesh_protocol::messages::{Budget, WorkClaim};
        let key = |n: u8| fleetmesh_protocol::NodeKey::from_seed([n; 32]);
        let budget = Budget {
            payer: key(99).node_id(),
            holder: key(9).node_id(),
            serial: 0,
            amount: 1_000_000,
            expires_ms: u64::MAX,
        };
        let claim = WorkClaim {
            job: JobId::of(&[job]),
            model: fleetmesh_protocol::ModelId::of(b"m"),
            worker: key(worker).node_id(),
            submitter: key(9).node_id(),
            output_digest: [digest; 32],
            compute_us: 1,
            energy_uwh: 1,
            claimed_credit: 10,
            claimed_ms: at,
        };
        let body = Receipt {
            claim: Signed::sign(claim, &key(worker)).unwrap_or_else(|_| unreachable!()),
            verdict,
            credit: if verdict.is_accepted() { 10 } else { 0 },
            issued_ms: at,
            budget: Signed::sign(budget, &key(99)).unwrap_or_else(|_| unreachable!()),
            seq: 0,
            spent: 10,
        };
        Signed::sign(body, &key(9)).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn the_audit_is_rebuilt_from_the_jobs_one_worker_was_accepted_for_alone() {
        let me = worker(9);
        let receipts = [
            // Job 1: worker 1 alone. Job 2: workers 1 and 2 agree. Job 3: worker 2 alone, revoked since.
            // Job 4: worker 3 alone, unverified (the user asked for one). Job 5: worker 1 alone, forgotten.
            receipt(1, 1, 7, Verdict::Accepted, 10),
            receipt(1, 2, 7, Verdict::Accepted, 20),
            receipt(2, 2, 7, Verdict::Accepted, 20),
            receipt(2, 3, 7, Verdict::Accepted, 30),
            receipt(3, 4, 7, Verdict::Unverified, 40),
            receipt(1, 5, 7, Verdict::Accepted, 50),
        ];
        let revoked = BTreeSet::from([(JobId::of(&[3]), worker(2))]);
        let forgotten = JobId::of(&[5]);
        let audit = rebuild_audit(&me, &receipts, &revoked, |j| (*j != forgotten).then_some(*j));
        assert_eq!((audit.len(), audit.pending(&worker(1))), (1, 1));
        let mut audit = audit;
        let back = audit.caught(&worker(1), 60);
        assert_eq!(back[0].job, JobId::of(&[1]));
        assert_eq!((back[0].digest, back[0].accepted_ms), ([7; 32], 10));
        // Another submitter's receipts are not this one's audit.
        assert!(rebuild_audit(&worker(8), &receipts, &revoked, |j| Some(*j)).is_empty());
    }

    #[test]
    fn a_worker_is_outvoted_only_against_two_agreeing_others() {
        let agree = [
            receipt(1, 1, 7, Verdict::Accepted, 10),
            receipt(2, 1, 7, Verdict::Accepted, 10),
        ];
        let liar = receipt(3, 1, 6, Verdict::Rejected, 10);
        let mut all = vec![liar.clone()];
        all.extend(agree.iter().cloned());
        assert_eq!(outvoted(&all), vec![worker(3)]);
        // One accepted claim against it proves nothing; nor does a receipt of another job.
        assert!(outvoted(&[liar.clone(), agree[0].clone()]).is_empty());
        let other_job = receipt(2, 2, 7, Verdict::Accepted, 10);
        assert!(outvoted(&[liar.clone(), agree[0].clone(), other_job]).is_empty());
        // A rejection of the accepted output itself is no lie of the worker's.
        let framed = receipt(4, 1, 7, Verdict::Rejected, 10);
        assert!(outvoted(&[framed, agree[0].clone(), agree[1].clone()]).is_empty());
        assert!(outvoted(&[]).is_empty());
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
