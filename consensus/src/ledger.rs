//! The credit ledger: balances as a pure function of a set of co-signed receipts and the payers a node
//! honours.
//!
//! Every node that holds the same receipts computes the same balances, whatever order they arrived in
//! and however often each was repeated. A receipt counts only if its three signatures verify (worker,
//! submitter, payer; one by one, with strict verification, so that every node accepts exactly the same
//! set), its worker is not its submitter, and its budget is a listed payer's, held by its submitter and
//! unexpired when the receipt was issued: keys that sign each other's receipts mint nothing. A budget
//! that any two of its receipts prove overspent ([`crate::payment::find_frauds`]) is void: none of its
//! receipts count, so no budget ever pays more than its amount. A receipt is identified by
//! (job, worker), and if two different valid receipts claim the same pair, the one with the smaller
//! canonical encoding is kept (any fixed rule would do; this one needs no clock). Credit per accepted
//! replica is BOINC's rule: the least credit any accepted replica of the same job claimed, capped by what
//! the submitter granted.
//!
//! A receipt its submitter revoked ([`Revocation`]) counts nothing, but only with the evidence the
//! revocation carries: a valid `Rejected` receipt of the same submitter for the same worker on another job,
//! issued no earlier than the revoked receipt and at most [`REVOCATION_WINDOW_MS`] after it. So a
//! submitter can take back only results a worker delivered before it was caught returning a wrong output,
//! within a day; older credit is final, and a worker never caught keeps all of it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{REVOCATION_WINDOW_MS, Receipt, Revocation, Verdict};
use fleetmesh_protocol::{JobId, NodeId, Signed};

use crate::payment::{self, BudgetKey, FraudProof, Payers};

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
    /// Per worker and payer.
    pub by_payer: BTreeMap<(NodeId, NodeId), Balance>,
    /// Distinct valid receipts counted.
    pub receipts: usize,
    /// Receipts refused because a signature did not verify, or whose worker is its submitter.
    pub forged: usize,
    /// Receipts without a payer: their budget's payer is not listed, or it had expired.
    pub unpaid: usize,
    /// Receipts that repeated a (job, worker) pair already counted.
    pub duplicates: usize,
    /// Budgets voided by a fraud proof, with the proof; their receipts count nothing.
    pub void: BTreeMap<BudgetKey, FraudProof>,
    /// The (job, worker) of every receipt revoked by its submitter with the evidence: they count nothing.
    pub revoked: BTreeSet<(JobId, NodeId)>,
    /// Revocations that were not honoured: a bad signature, no receipt of that submitter to revoke (one
    /// that arrives before its receipt counts here until then), or evidence that does not hold.
    pub revocations_ignored: usize,
}

impl Ledger {
    /// Computes the ledger from receipts in any order, with any repetitions, counting credit only
    /// against budgets of `payers`.
    pub fn from_receipts<'a>(
        receipts: impl IntoIterator<Item = &'a Signed<Receipt>>,
        payers: &Payers,
    ) -> Self {
        Self::in_epoch(receipts, &[], payers, 0..u64::MAX)
    }

    /// [`Ledger::from_receipts`], honouring `revocations` that come with their evidence.
    pub fn with_revocations<'a>(
        receipts: impl IntoIterator<Item = &'a Signed<Receipt>>,
        revocations: &[Signed<Revocation>],
        payers: &Payers,
    ) -> Self {
        Self::in_epoch(receipts, revocations, payers, 0..u64::MAX)
    }

    /// One worker's statement for an epoch (receipts issued in `epoch`, in ms): jobs, energy and credit
    /// per payer, which a payer can check against the receipts. Fraud is judged on every receipt given,
    /// not only the epoch's.
    pub fn statement<'a>(
        receipts: impl IntoIterator<Item = &'a Signed<Receipt>>,
        revocations: &[Signed<Revocation>],
        payers: &Payers,
        worker: &NodeId,
        epoch: Range<u64>,
    ) -> BTreeMap<NodeId, Balance> {
        Self::in_epoch(receipts, revocations, payers, epoch)
            .by_payer
            .into_iter()
            .filter(|((w, _), _)| w == worker)
            .map(|((_, payer), b)| (payer, b))
            .collect()
    }

    /// [`Ledger::with_revocations`], counting only receipts issued in `window` (fraud is judged on every
    /// receipt given).
    pub fn in_epoch<'a>(
        receipts: impl IntoIterator<Item = &'a Signed<Receipt>>,
        revocations: &[Signed<Revocation>],
        payers: &Payers,
        window: Range<u64>,
    ) -> Self {
        let mut ledger = Ledger::default();
        // (job, worker) -> canonical bytes and receipt of the one kept.
        let mut kept: BTreeMap<(JobId, NodeId), Kept<'a>> = BTreeMap::new();
        let mut valid: Vec<&'a Signed<Receipt>> = Vec::new();
        let mut seen = 0usize;
        for r in receipts {
            let (claim, budget) = (&r.body.claim.body, &r.body.budget.body);
            if r.verify().is_err() || claim.worker == claim.submitter {
                ledger.forged += 1;
                continue;
            }
            if !payers.contains(&budget.payer)
                || budget.holder != claim.submitter
                || r.body.issued_ms > budget.expires_ms
            {
                ledger.unpaid += 1;
                continue;
            }
            valid.push(r);
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
        ledger.void = payment::find_frauds(valid);
        kept.retain(|_, (_, r)| !ledger.void.contains_key(&r.body.budget.body.key()));
        let revoked = honoured_revocations(revocations, &kept);
        ledger.revocations_ignored = revocations.len() - revoked.values().sum::<usize>();
        ledger.revoked = revoked.into_keys().collect();

        // BOINC's rule per job: the least credit any accepted replica claimed (revoked ones included: a
        // revocation takes credit from its worker only, never raises another's).
        let mut least: BTreeMap<JobId, u64> = BTreeMap::new();
        for ((job, _), (_, r)) in &kept {
            if r.body.verdict.is_accepted() {
                let c = r.body.claim.body.claimed_credit;
                least.entry(*job).and_modify(|m| *m = (*m).min(c)).or_insert(c);
            }
        }
        for ((job, worker), (_, r)) in &kept {
            if !r.body.verdict.is_accepted()
                || !window.contains(&r.body.issued_ms)
                || ledger.revoked.contains(&(*job, *worker))
            {
                continue;
            }
            let credit = least.get(job).copied().unwrap_or(0).min(r.body.credit);
            let energy = r.body.claim.body.energy_uwh;
            for b in [
                ledger.balances.entry(*worker).or_default(),
                ledger
                    .by_payer
                    .entry((*worker, r.body.budget.body.payer))
                    .or_default(),
            ] {
                b.jobs += 1;
                b.credit = b.credit.saturating_add(credit);
                b.energy_uwh = b.energy_uwh.saturating_add(energy);
            }
        }
        ledger
    }

    /// The balance of one node (zero if it has none).
    pub fn balance(&self, node: &NodeId) -> Balance {
        self.balances.get(node).copied().unwrap_or_default()
    }
}

/// The (job, worker) pairs of `kept` receipts that a valid revocation takes back with the evidence it
/// carries, each with the number of revocations naming it (repeats included).
fn honoured_revocations(
    revocations: &[Signed<Revocation>],
    kept: &BTreeMap<(JobId, NodeId), Kept<'_>>,
) -> BTreeMap<(JobId, NodeId), usize> {
    let mut revoked: BTreeMap<(JobId, NodeId), usize> = BTreeMap::new();
    for rv in revocations {
        let b = &rv.body;
        let Some((_, target)) = kept.get(&(b.job, b.worker)) else {
            continue;
        };
        let issued = target.body.issued_ms;
        let (rejection, caught) = (&b.evidence.body, &b.evidence.body.claim.body);
        let caught_in_window =
            (issued..=issued.saturating_add(REVOCATION_WINDOW_MS)).contains(&rejection.issued_ms);
        if target.body.claim.body.submitter == b.submitter
            && target.body.verdict.is_accepted()
            && rejection.verdict == Verdict::Rejected
            && caught.worker == b.worker
            && caught.submitter == b.submitter
            && caught_in_window
            && b.job != caught.job
            && rv.verify().is_ok()
        {
            *revoked.entry((b.job, b.worker)).or_default() += 1;
        }
    }
    revoked
}
