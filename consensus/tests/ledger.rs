//! The ledger is a pure function of the receipt set: order and repetition do not matter, forged receipts
//! never count, BOINC's least-claim rule sets the credit.
#![allow(missing_docs, clippy::unwrap_used)]

use fleetmesh_consensus::ledger::Ledger;
use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{Receipt, Verdict, WorkClaim};
use fleetmesh_protocol::{JobId, ModelId, NodeKey, Signed};
use proptest::prelude::*;

fn key(i: u8) -> NodeKey {
    NodeKey::from_seed([i; 32])
}

fn receipt(worker: u8, submitter: u8, job: u8, claimed: u64, verdict: Verdict) -> Signed<Receipt> {
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
    let body = Receipt {
        claim: Signed::sign(claim, &key(worker)).unwrap(),
        verdict,
        credit: claimed,
        issued_ms: 2,
    };
    Signed::sign(body, &key(submitter)).unwrap()
}

/// A set of receipts: workers 1..=5, submitters 10..=11, jobs 0..8, varied claims and verdicts.
fn arb_receipts() -> impl Strategy<Value = Vec<Signed<Receipt>>> {
    proptest::collection::vec((1u8..=5, 10u8..=11, 0u8..8, 500u64..1500, any::<bool>()), 1..24).prop_map(
        |v| {
            v.into_iter()
                .map(|(w, s, j, c, ok)| {
                    receipt(w, s, j, c, if ok { Verdict::Accepted } else { Verdict::Rejected })
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_order_and_any_repetition_give_the_same_balances(
        receipts in arb_receipts(),
        seed in any::<u64>(),
        repeats in proptest::collection::vec(0usize..3, 24),
    ) {
        let reference = Ledger::from_receipts(&receipts);
        let mut shuffled: Vec<Signed<Receipt>> = Vec::new();
        for (i, r) in receipts.iter().enumerate() {
            for _ in 0..=repeats[i % repeats.len()] {
                shuffled.push(r.clone());
            }
        }
        // A seeded Fisher-Yates shuffle.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let again = Ledger::from_receipts(&shuffled);
        prop_assert_eq!(&again.balances, &reference.balances);
        prop_assert_eq!(again.receipts, reference.receipts);
    }

    #[test]
    fn a_receipt_with_one_flipped_byte_is_rejected(at in any::<usize>(), mask in 1u8..=255) {
        let r = receipt(1, 10, 0, 1000, Verdict::Accepted);
        let mut bytes = codec::encode(&r);
        let i = at % bytes.len();
        bytes[i] ^= mask;
        // Either it no longer decodes, or the ledger refuses it and credits nobody.
        if let Ok(tampered) = codec::decode::<Signed<Receipt>>(&bytes) {
            let ledger = Ledger::from_receipts(&[tampered]);
            prop_assert_eq!(ledger.forged, 1);
            prop_assert!(ledger.balances.is_empty());
        }
    }
}

#[test]
fn credit_is_the_least_claim_among_accepted_replicas_and_rejected_ones_earn_nothing() {
    let receipts = [
        receipt(1, 10, 0, 800, Verdict::Accepted),
        receipt(2, 10, 0, 1200, Verdict::Accepted),
        receipt(3, 10, 0, 100, Verdict::Rejected),
    ];
    let ledger = Ledger::from_receipts(&receipts);
    assert_eq!(ledger.balance(&key(1).node_id()).credit, 800);
    assert_eq!(ledger.balance(&key(2).node_id()).credit, 800);
    assert_eq!(ledger.balance(&key(3).node_id()).credit, 0);
    assert_eq!(ledger.balance(&key(1).node_id()).energy_uwh, 7);
}

#[test]
fn replays_count_once_and_forgeries_not_at_all() {
    let honest = receipt(1, 10, 0, 1000, Verdict::Accepted);
    let mut forged = receipt(2, 10, 1, 1000, Verdict::Accepted);
    forged.body.credit = 1_000_000; // raised after the submitter signed
    let ledger = Ledger::from_receipts(&[honest.clone(), honest.clone(), honest, forged]);
    assert_eq!(ledger.duplicates, 2);
    assert_eq!(ledger.forged, 1);
    assert_eq!(ledger.balance(&key(1).node_id()).credit, 1000);
    assert_eq!(ledger.balance(&key(2).node_id()).jobs, 0);
}
