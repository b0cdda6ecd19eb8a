//! Who pays for a job, and how a cheating submitter is caught: budgets, their spending, fraud proofs.
//!
//! A [`Budget`] is a payer's signed promise to fund one submitter's jobs up to an amount. Nodes list the
//! payers they honour ([`Payers`], from their configuration, like bootstrap peers); credit counts in a
//! ledger only against a budget of a listed payer, so keys that sign each other's receipts mint nothing.
//!
//! The submitter numbers the receipts of each budget (`seq`, from 0, each number once) and writes in each
//! the running total granted so far (`spent`, this receipt included). Honest receipts of one budget are
//! consistent: ordered by number, every total is at least the one before plus the receipt's own credit,
//! and no total exceeds the amount (the decoder refuses one that does). Two receipts that break this
//! (one number on two different receipts, or a total too small for the one before) are a [`FraudProof`]:
//! self-contained, checkable by anyone with the payer list, and enough to void the budget. Since every
//! consistent set of receipts grants at most its last total, and totals never exceed the amount, the
//! credit a ledger counts under one budget never exceeds the budget.
//!
//! What a worker risks: a budget found overspent is void, and the credit of every receipt under it is
//! lost, its own included. That loss is at most the credit the worker earned under that one budget,
//! which is at most the budget's amount; a worker that wants less exposure bids only under budgets it
//! has not seen voided, and payers keep budgets small (the demo's are 1,000 credits per node). Settlement
//! (turning counted credit into money) is the payer's business and is not in the job path: a payer
//! reads its budgets' receipts (or a worker's [`crate::ledger::Ledger::statement`]) and pays; a payment
//! network or chain would take the receipts and fraud proofs as they are.

use std::collections::{BTreeMap, BTreeSet};

use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{Budget, Receipt};
use fleetmesh_protocol::{NodeId, Signed};

/// A budget's name: its payer, its holder and the payer's serial.
pub type BudgetKey = (NodeId, NodeId, u64);

/// The payers whose budgets a node honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payers(BTreeSet<NodeId>);

impl Payers {
    /// These payers.
    pub fn new(payers: impl IntoIterator<Item = NodeId>) -> Self {
        Self(payers.into_iter().collect())
    }

    /// Whether `payer` is honoured.
    pub fn contains(&self, payer: &NodeId) -> bool {
        self.0.contains(payer)
    }

    /// The payers.
    pub fn iter(&self) -> impl Iterator<Item = &NodeId> {
        self.0.iter()
    }

    /// Why `budget` cannot pay a job of `submitter` with `reward` per worker until `deadline_ms` at
    /// `now_ms`, if it cannot (what a worker checks before it bids; the signature is checked with the
    /// offer's).
    pub fn refuse(
        &self,
        budget: &Budget,
        submitter: &NodeId,
        reward: u64,
        deadline_ms: u64,
        now_ms: u64,
    ) -> Option<&'static str> {
        if !self.contains(&budget.payer) {
            Some("the budget's payer is not one this node honours")
        } else if budget.holder != *submitter {
            Some("the budget is not the submitter's")
        } else if budget.expires_ms < deadline_ms.max(now_ms) {
            Some("the budget expires before the job's deadline")
        } else if budget.amount < reward {
            Some("the budget is smaller than the reward")
        } else {
            None
        }
    }
}

/// Why a would-be fraud proof proves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FraudError {
    /// A receipt's signatures (submitter, worker or payer) do not verify.
    #[error("a receipt's signature does not verify")]
    Signature,
    /// The two receipts are under different budgets.
    #[error("the receipts are under different budgets")]
    OtherBudgets,
    /// The two receipts are consistent.
    #[error("the receipts are consistent")]
    Consistent,
}

/// Two receipts of one budget that cannot both be honest: the same number on two different receipts,
/// or, for `first.seq < second.seq`, a running total in `second` smaller than `first`'s plus `second`'s
/// own credit (the submitter granted more than its totals admit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FraudProof {
    /// The receipt with the lower number (or either, for a reused number).
    pub first: Signed<Receipt>,
    /// The other receipt.
    pub second: Signed<Receipt>,
}

impl FraudProof {
    /// Checks the proof; returns the budget it voids.
    pub fn check(&self) -> Result<BudgetKey, FraudError> {
        self.first.verify().map_err(|_| FraudError::Signature)?;
        self.second.verify().map_err(|_| FraudError::Signature)?;
        let (a, b) = (&self.first.body, &self.second.body);
        let key = a.budget.body.key();
        // One budget, one holder: the receipts' own submitter is the budget's holder (decoders check it).
        if key != b.budget.body.key() || a.claim.body.submitter != b.claim.body.submitter {
            return Err(FraudError::OtherBudgets);
        }
        if contradict(a, b) || contradict(b, a) {
            Ok(key)
        } else {
            Err(FraudError::Consistent)
        }
    }
}

/// Whether `a` and `b`, two distinct receipts of one budget, contradict each other (in this order).
fn contradict(a: &Receipt, b: &Receipt) -> bool {
    if a == b {
        return false;
    }
    (a.seq == b.seq)
        || (a.budget != b.budget)
        || (a.seq < b.seq && b.spent < a.spent.saturating_add(b.credit))
}

/// The budgets among `receipts` (signatures already checked) that are voided, each with its proof.
/// Receipts are grouped by budget and ordered by number; it is enough to compare neighbours (if every
/// neighbour pair is consistent, the totals rise by at least each receipt's credit, so every pair is).
pub fn find_frauds<'a>(
    receipts: impl IntoIterator<Item = &'a Signed<Receipt>>,
) -> BTreeMap<BudgetKey, FraudProof> {
    // Per budget: its receipts by (number, canonical bytes).
    type Numbered<'r> = BTreeMap<(u64, Vec<u8>), &'r Signed<Receipt>>;
    let mut by_budget: BTreeMap<BudgetKey, Numbered<'a>> = BTreeMap::new();
    for r in receipts {
        by_budget
            .entry(r.body.budget.body.key())
            .or_default()
            .insert((r.body.seq, codec::encode(r)), r);
    }
    let mut frauds = BTreeMap::new();
    for (key, sorted) in by_budget {
        let list: Vec<&Signed<Receipt>> = sorted.into_values().collect();
        if let Some(pair) = list.windows(2).find(|w| contradict(&w[0].body, &w[1].body)) {
            frauds.insert(
                key,
                FraudProof {
                    first: pair[0].clone(),
                    second: pair[1].clone(),
                },
            );
        }
    }
    frauds
}

/// A submitter's spending of its budgets: the next receipt number and the running total of each, and
/// what jobs in flight may still cost (reserved when a job is offered, released when it is decided or
/// dropped), so that no job is offered that its budget could not pay. Kept by
/// [`crate::submitter::Submitter`]; after a restart, [`Spending::restore`] recovers the totals from the
/// submitter's own receipts (which are on disk before they leave); the jobs offered again reserve anew.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spending {
    used: BTreeMap<BudgetKey, (u64, u64)>,
    reserved: BTreeMap<BudgetKey, u64>,
}

impl Spending {
    /// Nothing spent.
    pub fn new() -> Self {
        Self::default()
    }

    /// The spending that `me`'s receipts record (others' are ignored).
    pub fn restore<'a>(me: &NodeId, receipts: impl IntoIterator<Item = &'a Signed<Receipt>>) -> Self {
        let mut s = Self::new();
        for r in receipts {
            if r.body.claim.body.submitter != *me {
                continue;
            }
            let e = s.used.entry(r.body.budget.body.key()).or_default();
            e.0 = e.0.max(r.body.seq.saturating_add(1));
            e.1 = e.1.max(r.body.spent);
        }
        s
    }

    /// Credit granted so far under `budget`.
    pub fn spent(&self, budget: &Budget) -> u64 {
        self.used.get(&budget.key()).map_or(0, |u| u.1)
    }

    /// Credit reserved under `budget` by jobs in flight.
    pub fn reserved(&self, budget: &Budget) -> u64 {
        self.reserved.get(&budget.key()).copied().unwrap_or(0)
    }

    /// What is left of `budget` for new jobs: its amount less what was granted and what jobs in flight
    /// may still cost.
    pub fn left(&self, budget: &Budget) -> u64 {
        budget
            .amount
            .saturating_sub(self.spent(budget))
            .saturating_sub(self.reserved(budget))
    }

    /// Sets `amount` aside under `budget` for a job in flight.
    pub fn reserve(&mut self, budget: &Budget, amount: u64) {
        let r = self.reserved.entry(budget.key()).or_default();
        *r = r.saturating_add(amount);
    }

    /// Gives back `amount` set aside under `budget` (the job was decided or dropped).
    pub fn release(&mut self, budget: &Budget, amount: u64) {
        let key = budget.key();
        if let Some(r) = self.reserved.get_mut(&key) {
            *r = r.saturating_sub(amount);
            if *r == 0 {
                self.reserved.remove(&key);
            }
        }
    }

    /// Numbers `receipts` (bodies of one job, under `budget`) and writes their running totals; a credit
    /// the budget can no longer cover is cut to what is left (so an honest submitter never overspends).
    pub fn stamp(&mut self, budget: &Signed<Budget>, receipts: &mut [Receipt]) {
        let e = self.used.entry(budget.body.key()).or_default();
        for r in receipts {
            r.credit = r.credit.min(budget.body.amount.saturating_sub(e.1));
            e.1 += r.credit;
            r.budget = budget.clone();
            r.seq = e.0;
            r.spent = e.1;
            e.0 += 1;
        }
    }

    /// The budget among `budgets` to pay a job of `holder` offering `reward` per worker to up to
    /// `workers` workers until `deadline_ms`: one that is the holder's, unexpired at the deadline, with
    /// enough left (the one with the least left that is enough, so budgets are used up one by one).
    pub fn pick<'a>(
        &self,
        budgets: &'a [Signed<Budget>],
        holder: &NodeId,
        reward: u64,
        workers: usize,
        deadline_ms: u64,
    ) -> Option<&'a Signed<Budget>> {
        let need = reward.saturating_mul(workers as u64);
        budgets
            .iter()
            .filter(|b| b.body.holder == *holder && b.body.expires_ms >= deadline_ms)
            .filter(|b| self.left(&b.body) >= need.max(1))
            .min_by_key(|b| (self.left(&b.body), b.body.key()))
    }
}
