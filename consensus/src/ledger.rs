//! The credit ledger: balances as a pure function of a set of co-signed receipts.
//!
//! Every node that holds the same receipts computes the same balances, whatever order they arrived in
//! and however often each was repeated. A receipt counts only if both signatures verify (one by one,
//! with strict verification, so that every node accepts exactly the same set); a receipt is identified by
//! (job, worker), and if two different valid receipts claim the same pair, the one with the smaller
//! canonical encoding is kept (any fixed rule would do; this one needs no clock). Credit per accepted
//! replica is BOINC's rule: the least credit any accepted replica of the same job claimed, capped by what
//! the submitter granted.

use std::collections::BTreeMap;

use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{Receipt, Verdict};
use fleetmesh_protocol::{JobId, NodeId, Signed};

/// The receipt kept for a (job, worker) pair, with its canonical bytes.
type Kept<'a> = (Vec<u8>, &'a Signed<Receipt>);

/// One node's totals in the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    /// Accepted jobs (one per accepted receipt).
    pub jobs: u64,
    /// Credit, in micro-credits.
    pub credit: u64,
    /// Energy spent on accepted jobs, in µWh.
    pub energy_uwh: u64,
}

/// Balances per worker, and what was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Per worker.
    pub balances: BTreeMap<NodeId, Balance>,
    /// Distinct valid receipts counted.
    pub receipts: usize,
    /// Receipts refused because a signature did not verify.
    pub forged: usize,
    /// Receipts that repeated a (job, worker) pair already counted.
    pub duplicates: usize,
}

impl Ledger {
    /// Computes the ledger from receipts in any order, with any repetitions.
    pub fn from_receipts<'a>(receipts: impl IntoIterator<Item = &'a Signed<Receipt>>) -> Self {
        let mut ledger = Ledger::default();
        // (job, worker) -> canonical bytes and receipt of the one kept.
        let mut kept: BTreeMap<(JobId, NodeId), Kept<'a>> = BTreeMap::new();
        let mut seen = 0usize;
        for r in receipts {
            if r.verify().is_err() {
                ledger.forged += 1;
                continue;
            }
            seen += 1;
            let claim = &r.body.claim.body;
            let bytes = codec::encode(r);
            match kept.entry((claim.job, claim.worker)) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((bytes, r));
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    if bytes < e.get().0 {
                        e.insert((bytes, r));
                    }
                }
            }
        }
        ledger.receipts = kept.len();
        ledger.duplicates = seen - kept.len();

        // BOINC's rule per job: the least credit any accepted replica claimed.
        let mut least: BTreeMap<JobId, u64> = BTreeMap::new();
        for ((job, _), (_, r)) in &kept {
            if r.body.verdict == Verdict::Accepted {
                let c = r.body.claim.body.claimed_credit;
                least.entry(*job).and_modify(|m| *m = (*m).min(c)).or_insert(c);
            }
        }
        for ((job, worker), (_, r)) in &kept {
            if r.body.verdict != Verdict::Accepted {
                continue;
            }
            let credit = least.get(job).copied().unwrap_or(0).min(r.body.credit);
            let b = ledger.balances.entry(*worker).or_default();
            b.jobs += 1;
            b.credit = b.credit.saturating_add(credit);
            b.energy_uwh = b.energy_uwh.saturating_add(r.body.claim.body.energy_uwh);
        }
        ledger
    }

    /// The balance of one node (zero if it has none).
    pub fn balance(&self, node: &NodeId) -> Balance {
        self.balances.get(node).copied().unwrap_or_default()
    }
}
