//! Property tests of the canonical encoding and of signatures, for every message kind.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use fleetmesh_protocol::codec::{self, Kind, Message};
use fleetmesh_protocol::messages::*;
use fleetmesh_protocol::signing::{Signable, domain_digest};
use fleetmesh_protocol::{NodeKey, Signed};
use proptest::prelude::*;

/// Flips one byte (index taken modulo the length) with a non-zero mask.
fn flip(bytes: &[u8], index: usize, mask: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let i = index % out.len();
    out[i] ^= mask;
    out
}

fn assert_round_trip<T: Message + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = codec::encode(value);
    let back: T = codec::decode(&bytes).unwrap();
    assert_eq!(&back, value);
    assert_eq!(codec::encode(&back), bytes);
}

/// The checks every signed kind must pass, given a body and the key of its author.
fn check_signed_kind<T: Signable + PartialEq + std::fmt::Debug + Clone>(
    body: T,
    key: &NodeKey,
    flip_at: usize,
    mask: u8,
) {
    assert_round_trip(&body);
    let signed = Signed::sign(body.clone(), key).unwrap();
    assert_round_trip(&signed);
    let bytes = codec::encode(&signed);
    assert_eq!(decode_verify::<T>(&bytes), Ok(()));

    // Any single flipped byte: the message no longer decodes, or its signature no longer verifies.
    let tampered = flip(&bytes, flip_at, mask);
    assert!(
        decode_verify::<T>(&tampered).is_err(),
        "flipped byte {} accepted",
        flip_at % bytes.len()
    );

    // A signature made in another kind's domain never verifies as this kind; in this kind's it does.
    let canonical = codec::encode(&body);
    for other in Kind::ALL {
        let sig = key.sign_digest(&domain_digest(other.domain(), &canonical));
        let forged = Signed {
            body: body.clone(),
            signature: sig,
        };
        assert_eq!(
            forged.verify().is_ok(),
            other == T::KIND,
            "domain {other:?} under {:?}",
            T::KIND
        );
    }

    // Another key cannot sign this author's message, and a signature by another key does not verify.
    let intruder = NodeKey::from_seed([0xEE; 32]);
    if intruder.node_id() != key.node_id() {
        assert!(Signed::sign(body.clone(), &intruder).is_err());
        let sig = intruder.sign_digest(&fleetmesh_protocol::signing::signing_digest(&body));
        assert!(Signed { body, signature: sig }.verify().is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn job_offer_signed((key, offer) in arb_key().prop_flat_map(|k| { let id = k.node_id(); (Just(k), arb_offer_for(id)) }),
                        at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(offer, &key, at, mask);
    }

    #[test]
    fn bid_signed((key, bid) in arb_key().prop_flat_map(|k| { let id = k.node_id(); (Just(k), arb_bid_for(id)) }),
                  at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(bid, &key, at, mask);
    }

    #[test]
    fn assignment_signed((key, a) in arb_key().prop_flat_map(|k| { let id = k.node_id(); (Just(k), arb_assignment_for(id)) }),
                         at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(a, &key, at, mask);
    }

    #[test]
    fn result_commit_signed((key, c) in arb_key().prop_flat_map(|k| { let id = k.node_id(); (Just(k), arb_commit_for(id)) }),
                            at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(c, &key, at, mask);
    }

    #[test]
    fn result_reveal_signed((key, r) in arb_key().prop_flat_map(|k| { let id = k.node_id(); (Just(k), arb_reveal_for(id)) }),
                            at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(r, &key, at, mask);
    }

    #[test]
    fn withdraw_signed((key, w) in arb_key().prop_flat_map(|k| { let id = k.node_id(); (Just(k), arb_withdraw_for(id)) }),
                       at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(w, &key, at, mask);
    }

    #[test]
    fn work_claim_signed((key, c) in arb_key().prop_flat_map(|k| { let id = k.node_id(); (Just(k), arb_claim(id, key(3).node_id())) }),
                         at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(c, &key, at, mask);
    }

    #[test]
    fn revocation_signed((key, r) in arb_key().prop_flat_map(|k| (Just(k.clone()), arb_revocation(key(3), k))),
                         at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(r, &key, at, mask);
    }

    #[test]
    fn budget_signed(b in arb_budget_for(payer().node_id(), key(3).node_id()), at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(b, &payer(), at, mask);
    }

    #[test]
    fn receipt_cosigned(r in arb_receipt(key(1), key(2)), at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(r, &key(2), at, mask);
    }

    #[test]
    fn reveal_request_signed((key, r) in arb_key().prop_flat_map(|k| { let id = k.node_id(); (Just(k), arb_reveal_request_for(id)) }),
                             at in any::<usize>(), mask in 1u8..) {
        check_signed_kind(r, &key, at, mask);
    }

    #[test]
    fn work_report_round_trips_and_any_flipped_byte_is_caught(report in arb_work_report(key(4), key(5).node_id()),
                                                               at in any::<usize>(), mask in 1u8..) {
        assert_round_trip(&report);
        let bytes = codec::encode(&report);
        let accepted = |b: &[u8]| codec::decode::<WorkReport>(b).ok().filter(|r| r.reveal.verify().is_ok() && r.claim.verify().is_ok());
        prop_assert!(accepted(&bytes).is_some());
        prop_assert!(accepted(&flip(&bytes, at, mask)).is_none());
    }

    #[test]
    fn reply_round_trips(reply in arb_reply()) {
        assert_round_trip(&reply);
    }

    #[test]
    fn manifest_round_trips_and_its_id_is_its_hash(m in arb_manifest()) {
        assert_round_trip(&m);
        prop_assert_eq!(m.id(), fleetmesh_protocol::ModelId::of(&codec::encode(&m)));
    }

    /// Random byte edits of valid encodings: whatever decodes is canonical (re-encodes to the same bytes).
    #[test]
    fn accepted_bytes_are_canonical(r in arb_receipt(key(1), key(2)), m in arb_manifest(),
                                    edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let signed = Signed::sign(r, &key(2)).unwrap();
        for bytes in [codec::encode(&signed), codec::encode(&m)] {
            let mut b = bytes.clone();
            for (i, v) in &edits {
                let n = b.len();
                b[i % n] = *v;
            }
            if let Ok(x) = codec::decode::<Signed<Receipt>>(&b) {
                prop_assert_eq!(codec::encode(&x), b.clone());
            }
            if let Ok(x) = codec::decode::<ModelManifest>(&b) {
                prop_assert_eq!(codec::encode(&x), b);
            }
        }
    }
}

#[test]
fn a_work_report_must_describe_its_own_output() {
    let worker = key(4);
    let reveal = ResultReveal {
        job: fleetmesh_protocol::JobId::of(b"j"),
        worker: worker.node_id(),
        output: b"out".to_vec(),
        salt: [1; 32],
        compute_us: 1,
        energy_uwh: 1,
    };
    let claim = WorkClaim {
        job: reveal.job,
        model: fleetmesh_protocol::ModelId::of(b"m"),
        worker: worker.node_id(),
        submitter: key(5).node_id(),
        output_digest: *blake3::hash(b"another output").as_bytes(),
        compute_us: 1,
        energy_uwh: 1,
        claimed_credit: 1,
        claimed_ms: 1,
    };
    let report = WorkReport {
        reveal: Signed::sign(reveal, &worker).unwrap(),
        claim: Signed::sign(claim, &worker).unwrap(),
    };
    assert!(matches!(
        codec::decode::<WorkReport>(&codec::encode(&report)),
        Err(codec::DecodeError::Invalid { .. })
    ));
    assert_eq!(Reply::refused("é".repeat(200)).detail.len(), 256);
}

#[test]
fn overlong_varint_is_non_canonical() {
    // A Withdraw's `at_ms` is the last field: re-encode 5 as the overlong varint [0x85, 0x00].
    let w = Withdraw {
        job: fleetmesh_protocol::JobId::of(b"j"),
        worker: key(1).node_id(),
        reason: WithdrawReason::Shutdown,
        at_ms: 5,
    };
    let mut bytes = codec::encode(&w);
    assert_eq!(bytes.pop(), Some(5));
    bytes.extend([0x85, 0x00]);
    assert!(matches!(
        codec::decode::<Withdraw>(&bytes),
        Err(codec::DecodeError::NonCanonical { .. } | codec::DecodeError::Malformed { .. })
    ));
}

#[test]
fn header_errors_are_typed() {
    let w = Withdraw {
        job: fleetmesh_protocol::JobId::of(b"j"),
        worker: key(1).node_id(),
        reason: WithdrawReason::Shutdown,
        at_ms: 5,
    };
    let bytes = codec::encode(&w);
    let mut next = bytes.clone();
    next[0] = codec::PROTOCOL_VERSION + 1;
    assert_eq!(
        codec::decode::<Withdraw>(&next),
        Err(codec::DecodeError::UnknownVersion(codec::PROTOCOL_VERSION + 1))
    );
    assert!(matches!(
        codec::decode::<Bid>(&bytes),
        Err(codec::DecodeError::WrongKind {
            expected: Kind::Bid,
            ..
        })
    ));
    assert!(matches!(
        codec::decode::<Signed<Withdraw>>(&bytes),
        Err(codec::DecodeError::WrongKind { .. })
    ));
    assert!(matches!(
        codec::decode::<Withdraw>(&bytes[..1]),
        Err(codec::DecodeError::Truncated { .. })
    ));
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        codec::decode::<Withdraw>(&long),
        Err(codec::DecodeError::TrailingBytes { extra: 1, .. })
    ));
    let huge = vec![1u8; Withdraw::MAX_LEN + 1];
    assert!(matches!(
        codec::decode::<Withdraw>(&huge),
        Err(codec::DecodeError::Oversize { .. })
    ));
    assert_eq!(codec::peek_kind(&bytes), Ok((Kind::Withdraw, false)));
}

#[test]
fn invalid_values_are_rejected_on_decode_and_on_checked_encode() {
    let mut offer = JobOffer {
        submitter: key(1).node_id(),
        nonce: 1,
        model: fleetmesh_protocol::ModelId::of(b"m"),
        input: JobInput::Inline(vec![0; MAX_INLINE_INPUT + 1]),
        rule: AgreementRule::Exact,
        replicas: 2,
        reward: 10,
        created_ms: 1,
        expires_ms: 2,
        deadline_ms: 3,
        budget: budget_for(key(1).node_id(), 1_000, 100),
    };
    assert!(codec::encode_checked(&offer).is_err());
    assert!(codec::decode::<JobOffer>(&codec::encode(&offer)).is_err());
    offer.input = JobInput::Inline(vec![1, 2, 3]);
    assert!(codec::encode_checked(&offer).is_ok());
    offer.replicas = 0;
    assert!(matches!(
        codec::decode::<JobOffer>(&codec::encode(&offer)),
        Err(codec::DecodeError::Invalid { .. })
    ));
    offer.replicas = 2;
    offer.rule = AgreementRule::Tolerance {
        abs: f32::NAN,
        rel: 0.0,
        min_cosine: 0.0,
    };
    assert!(matches!(
        codec::decode::<JobOffer>(&codec::encode(&offer)),
        Err(codec::DecodeError::Invalid { .. })
    ));
    offer.rule = AgreementRule::Exact;
    offer.expires_ms = 10;
    assert!(codec::decode::<JobOffer>(&codec::encode(&offer)).is_err());
    offer.expires_ms = 2;
    assert!(codec::decode::<JobOffer>(&codec::encode(&offer)).is_ok());
    // Someone else's budget, one smaller than the reward, or one that ends before the deadline.
    for budget in [
        budget_for(key(2).node_id(), 1_000, 100),
        budget_for(key(1).node_id(), 9, 100),
        budget_for(key(1).node_id(), 1_000, 2),
    ] {
        offer.budget = budget;
        assert!(matches!(
            codec::decode::<JobOffer>(&codec::encode(&offer)),
            Err(codec::DecodeError::Invalid { .. })
        ));
    }
}

#[test]
fn one_key_cannot_be_worker_and_submitter() {
    let me = key(1).node_id();
    let claim = WorkClaim {
        job: fleetmesh_protocol::JobId::of(b"j"),
        model: fleetmesh_protocol::ModelId::of(b"m"),
        worker: me,
        submitter: me,
        output_digest: [0; 32],
        compute_us: 1,
        energy_uwh: 1,
        claimed_credit: 5,
        claimed_ms: 1,
    };
    assert!(matches!(
        codec::decode::<WorkClaim>(&codec::encode(&claim)),
        Err(codec::DecodeError::Invalid { .. })
    ));
    let receipt = Receipt {
        claim: Signed::sign(claim, &key(1)).unwrap(),
        verdict: Verdict::Accepted,
        credit: 5,
        issued_ms: 2,
        budget: budget_for(me, 1_000, 100),
        seq: 0,
        spent: 5,
    };
    assert!(codec::decode::<Receipt>(&codec::encode(&receipt)).is_err());
    let a = Assignment {
        job: fleetmesh_protocol::JobId::of(b"j"),
        submitter: me,
        worker: me,
        commit_by_ms: 1,
    };
    assert!(codec::decode::<Assignment>(&codec::encode(&a)).is_err());
}

#[test]
fn a_receipt_cannot_spend_past_its_budget() {
    let claim = WorkClaim {
        job: fleetmesh_protocol::JobId::of(b"j"),
        model: fleetmesh_protocol::ModelId::of(b"m"),
        worker: key(2).node_id(),
        submitter: key(1).node_id(),
        output_digest: [0; 32],
        compute_us: 1,
        energy_uwh: 1,
        claimed_credit: 50,
        claimed_ms: 1,
    };
    let mut receipt = Receipt {
        claim: Signed::sign(claim, &key(2)).unwrap(),
        verdict: Verdict::Accepted,
        credit: 50,
        issued_ms: 2,
        budget: budget_for(key(1).node_id(), 100, 100),
        seq: 0,
        spent: 50,
    };
    assert!(codec::decode::<Receipt>(&codec::encode(&receipt)).is_ok());
    for (credit, spent) in [(50, 101), (50, 49)] {
        (receipt.credit, receipt.spent) = (credit, spent);
        assert!(codec::decode::<Receipt>(&codec::encode(&receipt)).is_err());
    }
    // A budget held by someone other than the receipt's submitter.
    (receipt.credit, receipt.spent) = (50, 50);
    receipt.budget = budget_for(key(3).node_id(), 100, 100);
    assert!(codec::decode::<Receipt>(&codec::encode(&receipt)).is_err());
}

#[test]
fn offers_expire_and_reject_the_future() {
    let offer = JobOffer {
        submitter: key(1).node_id(),
        nonce: 1,
        model: fleetmesh_protocol::ModelId::of(b"m"),
        input: JobInput::Inline(vec![]),
        rule: AgreementRule::Argmax,
        replicas: 1,
        reward: 0,
        created_ms: 1_000,
        expires_ms: 2_000,
        deadline_ms: 3_000,
        budget: budget_for(key(1).node_id(), 1, 3_000),
    };
    assert_eq!(offer.check_fresh(1_500, 100), Ok(()));
    assert_eq!(offer.check_fresh(2_500, 100), Err(Freshness::Expired(500)));
    assert_eq!(offer.check_fresh(500, 100), Err(Freshness::FromFuture(500)));
}

#[test]
fn reveal_opens_only_its_commit() {
    let worker = key(4).node_id();
    let job = fleetmesh_protocol::JobId::of(b"job");
    let salt = [7; 32];
    let commit = ResultCommit {
        job,
        worker,
        commitment: ResultCommit::commitment_for(&job, &worker, b"out", &salt),
    };
    let reveal = ResultReveal {
        job,
        worker,
        output: b"out".to_vec(),
        salt,
        compute_us: 1,
        energy_uwh: 1,
    };
    assert!(reveal.opens(&commit));
    let copied = ResultReveal {
        worker: key(5).node_id(),
        ..reveal.clone()
    };
    assert!(
        !copied.opens(&commit),
        "another worker cannot reuse the commitment"
    );
    let changed = ResultReveal {
        output: b"other".to_vec(),
        ..reveal
    };
    assert!(!changed.opens(&commit));
}

#[test]
fn batch_verification_finds_a_bad_receipt() {
    let mut receipts: Vec<Signed<Receipt>> = (0..8u8)
        .map(|i| {
            let claim = WorkClaim {
                job: fleetmesh_protocol::JobId::of(&[i]),
                model: fleetmesh_protocol::ModelId::of(b"m"),
                worker: key(i + 10).node_id(),
                submitter: key(1).node_id(),
                output_digest: [i; 32],
                compute_us: 1,
                energy_uwh: 1,
                claimed_credit: 5,
                claimed_ms: 1,
            };
            let claim = Signed::sign(claim, &key(i + 10)).unwrap();
            Signed::sign(
                Receipt {
                    claim,
                    verdict: Verdict::Accepted,
                    credit: 5,
                    issued_ms: 2,
                    budget: budget_for(key(1).node_id(), 1_000, 100),
                    seq: u64::from(i),
                    spent: 5 * (u64::from(i) + 1),
                },
                &key(1),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(Signed::verify_batch(&receipts), Ok(()));
    receipts[5].body.claim.body.energy_uwh = 2; // tamper with the inner claim
    assert!(Signed::verify_batch(&receipts).is_err());
    assert!(receipts[5].verify().is_err());
    assert!(receipts[4].verify().is_ok());
}
