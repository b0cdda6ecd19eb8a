//! The ledger is a pure function of the receipt set and the payer list: order and repetition do not
//! matter, forged receipts never count, BOINC's least-claim rule sets the credit, credit without a listed
//! payer counts nothing (minting), and a budget proved overspent counts nothing (double spending), so no
//! payer's budgets ever pay out more than they hold.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;

use fleetmesh_consensus::ledger::Ledger;
use fleetmesh_consensus::payment::{FraudError, FraudProof, Payers, Spending, find_frauds};
use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{Budget, REVOCATION_WINDOW_MS, Receipt, Revocation, Verdict, WorkClaim};
use fleetmesh_protocol::{JobId, ModelId, NodeId, NodeKey, Signed};
use proptest::prelude::*;

fn key(i: u8) -> NodeKey {
    NodeKey::from_seed([i; 32])
}

/// The payer every honest node lists.
const PAYER: u8 = 100;
/// A payer nobody lists (a colluder's own key).
const ROGUE: u8 = 101;

fn payers() -> Payers {
    Payers::new([key(PAYER).node_id()])
}

fn budget(payer: u8, holder: u8, serial: u64, amount: u64) -> Signed<Budget> {
    let b = Budget {
        payer: key(payer).node_id(),
        holder: key(holder).node_id(),
        serial,
        amount,
        expires_ms: 1_000,
    };
    Signed::sign(b, &key(payer)).unwrap()
}

fn claim(worker: u8, submitter: u8, job: u8, claimed: u64) -> Signed<WorkClaim> {
    let claim = WorkClaim {
        job: JobId::of(&[job]),
        model: ModelId::of(b"m"),
        worker: key(worker).node_id(),
        submitter: key(submitter).node_id(),
        output_digest: [job; 32],
        compute_us: 10,
        energy_uwh: 7,
        claimed_credit: claimed,
        claimed_ms: 1,
    };
    Signed::sign(claim, &key(worker)).unwrap()
}

/// A receipt of `submitter` for `worker`'s `job`, paid from `budget`, numbered `seq` with running
/// total `spent`.
#[allow(clippy::too_many_arguments)]
fn paid(
    worker: u8,
    submitter: u8,
    job: u8,
    claimed: u64,
    verdict: Verdict,
    budget: &Signed<Budget>,
    seq: u64,
    spent: u64,
) -> Signed<Receipt> {
    let body = Receipt {
        claim: claim(worker, submitter, job, claimed),
        verdict,
        credit: if verdict.is_accepted() { claimed } else { 0 },
        issued_ms: 2,
        budget: budget.clone(),
        seq,
        spent,
    };
    Signed::sign(body, &key(submitter)).unwrap()
}

/// An honest submitter's receipts, numbered by [`Spending`] as the node does.
fn honest(submitter: u8, budget: &Signed<Budget>, jobs: &[(u8, u8, u64, bool)]) -> Vec<Signed<Receipt>> {
    let mut spending = Spending::new();
    jobs.iter()
        .map(|&(worker, job, claimed, ok)| {
            let verdict = if ok { Verdict::Accepted } else { Verdict::Rejected };
            let mut body = vec![Receipt {
                claim: claim(worker, submitter, job, claimed),
                verdict,
                credit: if ok { claimed } else { 0 },
                issued_ms: 2,
                budget: budget.clone(),
                seq: 0,
                spent: 0,
            }];
            spending.stamp(budget, &mut body);
            Signed::sign(body.remove(0), &key(submitter)).unwrap()
        })
        .collect()
}

/// What the listed payer's budgets among `receipts` hold in total.
fn covered(receipts: &[Signed<Receipt>]) -> u64 {
    let budgets: BTreeMap<(NodeId, NodeId, u64), u64> = receipts
        .iter()
        .filter(|r| r.body.budget.body.payer == key(PAYER).node_id())
        .map(|r| (r.body.budget.body.key(), r.body.budget.body.amount))
        .collect();
    budgets.values().sum()
}

#[derive(Debug, Clone)]
enum Kind {
    /// An honest submitter's receipts.
    Honest,
    /// Receipts under a budget of a payer nobody lists.
    Minted,
    /// One receipt number used twice.
    SameSeq,
    /// Totals that grant more than they admit.
    Overspent,
}

/// Receipt sets mixing honest, minted, double-spent and overspent ones: submitters 10..=12 (each with
/// its own budget), workers 1..=5, jobs 0..8.
fn arb_receipts() -> impl Strategy<Value = Vec<Signed<Receipt>>> {
    let kind = prop_oneof![
        Just(Kind::Honest),
        Just(Kind::Minted),
        Just(Kind::SameSeq),
        Just(Kind::Overspent)
    ];
    let job = (1u8..=5, 0u8..8, 500u64..1500, any::<bool>());
    proptest::collection::vec((kind, 10u8..=12, proptest::collection::vec(job, 1..6)), 1..6).prop_map(
        |groups| {
            let mut out = Vec::new();
            for (n, (kind, submitter, jobs)) in groups.into_iter().enumerate() {
                let serial = n as u64;
                match kind {
                    Kind::Honest => {
                        out.extend(honest(submitter, &budget(PAYER, submitter, serial, 4_000), &jobs))
                    }
                    Kind::Minted => out.extend(honest(
                        submitter,
                        &budget(ROGUE, submitter, serial, u64::MAX),
                        &jobs,
                    )),
                    Kind::SameSeq | Kind::Overspent => {
                        let b = budget(PAYER, submitter, serial, 4_000);
                        let mut rs = honest(submitter, &b, &jobs);
                        // A second receipt that reuses a number or ignores the running total.
                        let (w, j, c, _) = jobs[0];
                        let (seq, spent) = match kind {
                            Kind::SameSeq => (0, c),
                            _ => (jobs.len() as u64, c),
                        };
                        rs.push(paid(
                            w % 5 + 1,
                            submitter,
                            j.wrapping_add(100),
                            c,
                            Verdict::Accepted,
                            &b,
                            seq,
                            spent,
                        ));
                        out.extend(rs);
                    }
                }
            }
            out
        },
    )
}

fn shuffled(receipts: &[Signed<Receipt>], seed: u64, repeats: &[usize]) -> Vec<Signed<Receipt>> {
    let mut out: Vec<Signed<Receipt>> = Vec::new();
    for (i, r) in receipts.iter().enumerate() {
        for _ in 0..=repeats[i % repeats.len()] {
            out.push(r.clone());
        }
    }
    // A seeded Fisher-Yates shuffle.
    let mut s = seed | 1;
    for i in (1..out.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.swap(i, (s % (i as u64 + 1)) as usize);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_order_gives_the_same_balances_and_none_above_the_budgets(
        receipts in arb_receipts(),
        seed in any::<u64>(),
        repeats in proptest::collection::vec(0usize..3, 24),
        revoke in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..8),
    ) {
        // Revocations of random receipts with random evidence, by the receipt's submitter: some with
        // their evidence (the worker's rejection by that submitter), most without.
        let revocations: Vec<Signed<Revocation>> = revoke
            .iter()
            .filter_map(|(t, e)| revoke_with(&receipts[t.index(receipts.len())], &receipts[e.index(receipts.len())]))
            .collect();
        let reference = Ledger::with_revocations(&receipts, &revocations, &payers());
        let mut backwards = revocations.clone();
        backwards.reverse();
        backwards.extend(revocations.iter().take(2).cloned());
        let again = Ledger::with_revocations(&shuffled(&receipts, seed, &repeats), &backwards, &payers());
        prop_assert_eq!(&again.balances, &reference.balances);
        prop_assert_eq!(again.receipts, reference.receipts);
        prop_assert_eq!(&again.void, &reference.void);
        prop_assert_eq!(&again.revoked, &reference.revoked);
        // A revocation only ever takes credit away.
        let unrevoked = Ledger::from_receipts(&receipts, &payers());
        for (worker, b) in &reference.balances {
            prop_assert!(b.credit <= unrevoked.balance(worker).credit);
        }
        // Nobody is paid by a payer nobody lists, and the listed payer never pays past its budgets.
        let total: u64 = reference.balances.values().map(|b| b.credit).sum();
        prop_assert!(total <= covered(&receipts), "{} paid, {} covered", total, covered(&receipts));
        prop_assert!(reference.by_payer.keys().all(|(_, p)| *p == key(PAYER).node_id()));
        // Every voided budget comes with a proof that checks.
        for (k, proof) in &reference.void {
            prop_assert_eq!(proof.check(), Ok(*k));
        }
    }

    #[test]
    fn a_receipt_with_one_flipped_byte_is_rejected(at in any::<usize>(), mask in 1u8..=255) {
        let r = paid(1, 10, 0, 1000, Verdict::Accepted, &budget(PAYER, 10, 0, 4_000), 0, 1000);
        let mut bytes = codec::encode(&r);
        let i = at % bytes.len();
        bytes[i] ^= mask;
        // Either it no longer decodes, or the ledger refuses it and credits nobody.
        if let Ok(tampered) = codec::decode::<Signed<Receipt>>(&bytes) {
            let ledger = Ledger::from_receipts(&[tampered], &payers());
            prop_assert_eq!(ledger.forged + ledger.unpaid, 1);
            prop_assert!(ledger.balances.is_empty());
        }
    }
}

#[test]
fn credit_is_the_least_claim_among_accepted_replicas_and_rejected_ones_earn_nothing() {
    let receipts = honest(
        10,
        &budget(PAYER, 10, 0, 4_000),
        &[(1, 0, 800, true), (2, 0, 1200, true), (3, 0, 100, false)],
    );
    let ledger = Ledger::from_receipts(&receipts, &payers());
    assert_eq!(ledger.balance(&key(1).node_id()).credit, 800);
    assert_eq!(ledger.balance(&key(2).node_id()).credit, 800);
    assert_eq!(ledger.balance(&key(3).node_id()).credit, 0);
    assert_eq!(ledger.balance(&key(1).node_id()).energy_uwh, 7);
}

#[test]
fn replays_count_once_and_forgeries_not_at_all() {
    let b = budget(PAYER, 10, 0, 4_000);
    let honest = paid(1, 10, 0, 1000, Verdict::Accepted, &b, 0, 1000);
    let mut forged = paid(2, 10, 1, 1000, Verdict::Accepted, &b, 1, 2000);
    forged.body.credit = 1_000_000; // raised after the submitter signed
    let ledger = Ledger::from_receipts(&[honest.clone(), honest.clone(), honest, forged], &payers());
    assert_eq!(ledger.duplicates, 2);
    assert_eq!(ledger.forged, 1);
    assert_eq!(ledger.balance(&key(1).node_id()).credit, 1000);
    assert_eq!(ledger.balance(&key(2).node_id()).jobs, 0);
}

#[test]
fn keys_that_sign_each_other_s_receipts_mint_nothing() {
    // Two colluding keys: one "submits", the other "works", 100 jobs, with a budget from a third key of
    // theirs; and one key that is worker and submitter at once.
    let minted = honest(
        11,
        &budget(ROGUE, 11, 0, u64::MAX),
        &(0..100).map(|j| (2, j, 1_000_000, true)).collect::<Vec<_>>(),
    );
    let own = paid(
        3,
        3,
        0,
        1_000,
        Verdict::Accepted,
        &budget(PAYER, 3, 0, 4_000),
        0,
        1_000,
    );
    let mut all = minted.clone();
    all.push(own);
    let ledger = Ledger::from_receipts(&all, &payers());
    assert!(ledger.balances.is_empty(), "{:?}", ledger.balances);
    assert_eq!(ledger.unpaid, 100);
    assert_eq!(ledger.forged, 1);
    // Listed as a payer, the same budget would count: the payer list is what stands between them.
    let listed = Payers::new([key(PAYER).node_id(), key(ROGUE).node_id()]);
    assert_eq!(
        Ledger::from_receipts(&minted, &listed)
            .balance(&key(2).node_id())
            .jobs,
        100
    );
}

#[test]
fn an_overspent_budget_yields_a_fraud_proof_and_counts_nothing() {
    let b = budget(PAYER, 10, 7, 3_000);
    let mut receipts = honest(10, &b, &[(1, 0, 1_000, true), (2, 1, 1_000, true)]);
    // The submitter grants a third 1,000 but writes a total that leaves room for more.
    receipts.push(paid(3, 10, 2, 1_000, Verdict::Accepted, &b, 2, 2_000));
    let ledger = Ledger::from_receipts(&receipts, &payers());
    assert!(ledger.balances.is_empty());
    let proof = &ledger.void[&(key(PAYER).node_id(), key(10).node_id(), 7)];
    assert_eq!(proof.check(), Ok((key(PAYER).node_id(), key(10).node_id(), 7)));
    assert_eq!(find_frauds(&receipts).len(), 1);
    // Two honest receipts prove nothing; a proof with a tampered receipt neither.
    let fine = FraudProof {
        first: receipts[0].clone(),
        second: receipts[1].clone(),
    };
    assert_eq!(fine.check(), Err(FraudError::Consistent));
    let mut tampered = proof.clone();
    tampered.second.body.spent += 1;
    assert_eq!(tampered.check(), Err(FraudError::Signature));
    // One number on two receipts is a proof too.
    let twice = paid(4, 10, 3, 10, Verdict::Accepted, &b, 1, 2_010);
    let proof = FraudProof {
        first: receipts[1].clone(),
        second: twice,
    };
    assert_eq!(proof.check(), Ok((key(PAYER).node_id(), key(10).node_id(), 7)));
}

#[test]
fn two_holders_with_the_same_serial_do_not_void_each_other() {
    let mut receipts = honest(10, &budget(PAYER, 10, 1, 4_000), &[(1, 0, 1_000, true)]);
    receipts.extend(honest(11, &budget(PAYER, 11, 1, 4_000), &[(2, 1, 1_000, true)]));
    let ledger = Ledger::from_receipts(&receipts, &payers());
    assert!(ledger.void.is_empty());
    assert_eq!(ledger.balance(&key(1).node_id()).credit, 1_000);
    assert_eq!(ledger.balance(&key(2).node_id()).credit, 1_000);
    // Nor can one holder's receipt serve in a proof against the other.
    let proof = FraudProof {
        first: receipts[0].clone(),
        second: receipts[1].clone(),
    };
    assert_eq!(proof.check(), Err(FraudError::OtherBudgets));
}

#[test]
fn an_honest_submitter_never_grants_past_its_budget_and_a_statement_splits_by_payer() {
    let b = budget(PAYER, 10, 0, 2_500);
    let receipts = honest(
        10,
        &b,
        &[(1, 0, 1_000, true), (1, 1, 1_000, true), (1, 2, 1_000, true)],
    );
    // The third receipt was cut to what was left.
    assert_eq!(receipts[2].body.credit, 500);
    assert_eq!(receipts[2].body.spent, 2_500);
    let ledger = Ledger::from_receipts(&receipts, &payers());
    assert!(ledger.void.is_empty());
    assert_eq!(ledger.balance(&key(1).node_id()).credit, 2_500);
    let statement = Ledger::statement(&receipts, &[], &payers(), &key(1).node_id(), 0..10);
    assert_eq!(statement.len(), 1);
    assert_eq!(statement[&key(PAYER).node_id()].jobs, 3);
    assert!(Ledger::statement(&receipts, &[], &payers(), &key(1).node_id(), 10..20).is_empty());
}

/// The revocation of `target` by its submitter (one of keys 10..=12) with `evidence`, if that is of
/// another job.
fn revoke_with(target: &Signed<Receipt>, evidence: &Signed<Receipt>) -> Option<Signed<Revocation>> {
    let claim = &target.body.claim.body;
    let submitter = (10u8..=12).find(|k| key(*k).node_id() == claim.submitter)?;
    let body = Revocation {
        job: claim.job,
        worker: claim.worker,
        submitter: claim.submitter,
        evidence: evidence.clone(),
        issued_ms: 5,
    };
    (body.job != evidence.body.claim.body.job).then(|| Signed::sign(body, &key(submitter)).unwrap())
}

/// A revocation signed by `signer`, naming `submitter` (one key unless forged), carrying `evidence`.
fn revocation(
    signer: u8,
    submitter: u8,
    worker: u8,
    job: u8,
    evidence: &Signed<Receipt>,
) -> Signed<Revocation> {
    let body = Revocation {
        job: JobId::of(&[job]),
        worker: key(worker).node_id(),
        submitter: key(submitter).node_id(),
        evidence: evidence.clone(),
        issued_ms: 5,
    };
    let signature = key(signer).sign_digest(&fleetmesh_protocol::signing::signing_digest(&body));
    Signed { body, signature }
}

#[test]
fn a_revocation_counts_only_from_the_receipts_submitter_with_its_evidence_and_in_any_order() {
    let b = budget(PAYER, 10, 0, 10_000);
    // Worker 1 ran jobs 0 and 1 alone and was accepted, then was out-voted on job 3; worker 2 ran job 2.
    let receipts = honest(
        10,
        &b,
        &[
            (1, 0, 1_000, true),
            (1, 1, 1_000, true),
            (2, 2, 1_000, true),
            (1, 3, 1_000, false),
        ],
    );
    let before = Ledger::from_receipts(&receipts, &payers());
    assert_eq!(before.balance(&key(1).node_id()).credit, 2_000);

    let caught = &receipts[3];
    let honoured = revocation(10, 10, 1, 0, caught);
    let tampered = {
        let mut r = caught.clone();
        r.body.issued_ms += 1;
        r
    };
    let ignored = [
        // Signed by another key in the submitter's name.
        revocation(11, 10, 1, 1, caught),
        // Another submitter revoking 10's receipt.
        revocation(11, 11, 1, 1, caught),
        // An accepted receipt (of worker 2) is no evidence against worker 1.
        revocation(10, 10, 1, 1, &receipts[2]),
        // Worker 2 was never caught.
        revocation(10, 10, 2, 2, caught),
        // A receipt nobody holds.
        revocation(10, 10, 1, 9, caught),
        // Evidence altered after it was signed.
        revocation(10, 10, 1, 1, &tampered),
    ];
    let mut all = vec![honoured.clone()];
    all.extend(ignored.iter().cloned());
    let ledger = Ledger::with_revocations(&receipts, &all, &payers());
    assert_eq!(ledger.balance(&key(1).node_id()).credit, 1_000);
    assert_eq!(ledger.balance(&key(1).node_id()).jobs, 1);
    assert_eq!(ledger.balance(&key(2).node_id()).credit, 1_000);
    assert_eq!(
        ledger.revoked.iter().copied().collect::<Vec<_>>(),
        vec![(JobId::of(&[0]), key(1).node_id())]
    );
    assert_eq!(ledger.revocations_ignored, ignored.len());
    // Any order, any repetition: the same ledger.
    let mut shuffled_receipts: Vec<_> = receipts.iter().rev().cloned().collect();
    shuffled_receipts.push(receipts[0].clone());
    let mut twice = all.clone();
    twice.reverse();
    twice.push(honoured.clone());
    let again = Ledger::with_revocations(&shuffled_receipts, &twice, &payers());
    assert_eq!(again.balances, ledger.balances);
    assert_eq!(again.revoked, ledger.revoked);
    // The evidence travels with the revocation: a worker that leaves its rejection out of the receipts
    // it shows (its claim) still loses the revoked credit.
    let without = Ledger::with_revocations(&receipts[..3], &all, &payers());
    assert_eq!(without.balance(&key(1).node_id()).credit, 1_000);
    assert_eq!(without.revoked, ledger.revoked);
    // A rejection issued before the receipt, or more than the window after it, is no evidence for it.
    let late = {
        let mut body = caught.body.clone();
        body.issued_ms = 2 + REVOCATION_WINDOW_MS + 1;
        Signed::sign(body, &key(10)).unwrap()
    };
    let stale = Ledger::with_revocations(&receipts, &[revocation(10, 10, 1, 0, &late)], &payers());
    assert_eq!(stale.balance(&key(1).node_id()).credit, 2_000);
}
