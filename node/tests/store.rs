//! The sled store against a model: random sequences of puts, removals, flushes and reopenings of a real
//! database folder, after each of which the store must hold exactly what a plain map holds.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use fleetmesh_consensus::job::{FailReason, Outcome};
use fleetmesh_consensus::submitter::JobResult;
use fleetmesh_node::store::{DoneRecord, Store, SubmittedRecord, WorkRecord};
use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{AgreementRule, JobInput, JobOffer, Receipt, Verdict, WorkClaim};
use fleetmesh_protocol::{JobId, ModelId, NodeId, NodeKey, Signed};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    PutSubmitted { job: u8, decided: bool },
    RemoveSubmitted { job: u8 },
    PutWork { job: u8, done: bool, revealed: bool },
    RemoveWork { job: u8 },
    PutReceipt { job: u8, worker: u8, credit: u16 },
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, any::<bool>()).prop_map(|(job, decided)| Op::PutSubmitted { job, decided }),
        (0u8..6).prop_map(|job| Op::RemoveSubmitted { job }),
        (0u8..6, any::<bool>(), any::<bool>()).prop_map(|(job, done, revealed)| Op::PutWork {
            job,
            done,
            revealed
        }),
        (0u8..6).prop_map(|job| Op::RemoveWork { job }),
        (0u8..4, 0u8..3, any::<u16>()).prop_map(|(job, worker, credit)| Op::PutReceipt {
            job,
            worker,
            credit
        }),
        Just(Op::Flush),
        Just(Op::Reopen),
    ]
}

fn key(i: u8) -> NodeKey {
    NodeKey::from_seed([i.wrapping_add(1); 32])
}

fn offer(job: u8) -> JobOffer {
    JobOffer {
        submitter: key(100).node_id(),
        nonce: u64::from(job),
        model: ModelId::of(b"model"),
        input: JobInput::Inline(vec![job; 8]),
        rule: AgreementRule::Exact,
        replicas: 2,
        reward: 1_000,
        created_ms: 1,
        expires_ms: 2,
        deadline_ms: 3,
        budget: fleetmesh_node::pay::issue(
            &NodeKey::from_seed([0xFA; 32]),
            key(100).node_id(),
            1,
            u64::MAX,
            u64::MAX,
        ),
    }
}

fn job_id(job: u8) -> JobId {
    offer(job).id()
}

fn submitted(job: u8, decided: bool) -> SubmittedRecord {
    SubmittedRecord {
        offer: offer(job),
        adaptive: job.is_multiple_of(2),
        result: decided.then(|| JobResult {
            job: job_id(job),
            outcome: Outcome::Failed(FailReason::NoAgreement),
            workers_assigned: 2,
            receipts: 0,
            compute_us_max: 7,
            unverified: false,
        }),
    }
}

fn work(job: u8, done: bool, revealed: bool) -> WorkRecord {
    WorkRecord {
        offer: offer(job),
        done: done.then(|| DoneRecord {
            output: vec![job; 4],
            salt: [job; 32],
            compute_us: 5,
            energy_uwh: 6,
        }),
        revealed,
    }
}

fn receipt(job: u8, worker: u8, credit: u16) -> Signed<Receipt> {
    let claim = WorkClaim {
        job: job_id(job),
        model: ModelId::of(b"model"),
        worker: key(worker).node_id(),
        submitter: key(100).node_id(),
        output_digest: [0; 32],
        compute_us: 1,
        energy_uwh: 1,
        claimed_credit: u64::from(credit),
        claimed_ms: 0,
    };
    let body = Receipt {
        claim: Signed::sign(claim, &key(worker)).unwrap(),
        verdict: Verdict::Accepted,
        credit: u64::from(credit),
        issued_ms: 0,
        budget: fleetmesh_node::pay::issue(
            &NodeKey::from_seed([0xFA; 32]),
            key(100).node_id(),
            1,
            u64::MAX,
            u64::MAX,
        ),
        seq: u64::from(job) * 4 + u64::from(worker),
        spent: u64::from(credit),
    };
    Signed::sign(body, &key(100)).unwrap()
}

/// What the store should hold.
#[derive(Default)]
struct Model {
    submitted: BTreeMap<JobId, Vec<u8>>,
    work: BTreeMap<JobId, Vec<u8>>,
    receipts: BTreeMap<(JobId, NodeId), Vec<u8>>,
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    let submitted: BTreeMap<JobId, Vec<u8>> = store
        .submitted()
        .into_iter()
        .map(|(k, r)| (k, json(&(r.offer.id(), r.adaptive, r.result))))
        .collect();
    prop_assert_eq!(&submitted, &model.submitted);
    let work: BTreeMap<JobId, Vec<u8>> = store
        .work()
        .into_iter()
        .map(|(k, r)| (k, json(&(r.offer.id(), r.done.map(|d| d.output), r.revealed))))
        .collect();
    prop_assert_eq!(&work, &model.work);
    let receipts: BTreeMap<(JobId, NodeId), Vec<u8>> = store
        .receipts()
        .into_iter()
        .map(|r| {
            (
                (r.body.claim.body.job, r.body.claim.body.worker),
                codec::encode(&r),
            )
        })
        .collect();
    prop_assert_eq!(&receipts, &model.receipts);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_store_holds_what_a_map_holds_across_flushes_and_reopenings(
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = Some(Store::open(dir.path()).unwrap());
        let mut model = Model::default();
        for op in ops {
            let s = store.as_ref().unwrap();
            match op {
                Op::PutSubmitted { job, decided } => {
                    let r = submitted(job, decided);
                    s.put_submitted(&job_id(job), &r).unwrap();
                    model.submitted.insert(job_id(job), json(&(r.offer.id(), r.adaptive, r.result)));
                }
                Op::RemoveSubmitted { job } => {
                    s.remove_submitted(&job_id(job)).unwrap();
                    model.submitted.remove(&job_id(job));
                }
                Op::PutWork { job, done, revealed } => {
                    let r = work(job, done, revealed);
                    s.put_work(&job_id(job), &r).unwrap();
                    model.work.insert(job_id(job), json(&(r.offer.id(), r.done.map(|d| d.output), r.revealed)));
                }
                Op::RemoveWork { job } => {
                    s.remove_work(&job_id(job)).unwrap();
                    model.work.remove(&job_id(job));
                }
                Op::PutReceipt { job, worker, credit } => {
                    let r = receipt(job, worker, credit);
                    let changed = s.put_receipt(&r).unwrap();
                    // Of two receipts for one (job, worker) the smaller canonical encoding stays.
                    let bytes = codec::encode(&r);
                    let k = (job_id(job), key(worker).node_id());
                    let keep = model.receipts.get(&k).is_none_or(|old| bytes < *old);
                    prop_assert_eq!(changed, keep);
                    if keep {
                        model.receipts.insert(k, bytes);
                    }
                }
                Op::Flush => rt.block_on(s.flush()).unwrap(),
                Op::Reopen => {
                    drop(store.take());
                    store = Some(Store::open(dir.path()).unwrap());
                }
            }
            check(store.as_ref().unwrap(), &model)?;
        }
    }
}
