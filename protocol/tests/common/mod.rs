//! proptest strategies for every message kind, shared by the protocol's test files.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use fleetmesh_protocol::messages::*;
use fleetmesh_protocol::{ChunkId, JobId, ModelId, NodeId, NodeKey, Signed};
use proptest::prelude::*;

pub fn key(seed: u8) -> NodeKey {
    NodeKey::from_seed([seed; 32])
}

pub fn arb_key() -> impl Strategy<Value = NodeKey> {
    any::<[u8; 32]>().prop_map(NodeKey::from_seed)
}

pub fn arb_node() -> impl Strategy<Value = NodeId> {
    arb_key().prop_map(|k| k.node_id())
}

pub fn arb_job() -> impl Strategy<Value = JobId> {
    any::<[u8; 32]>().prop_map(JobId::from_bytes)
}

pub fn arb_model() -> impl Strategy<Value = ModelId> {
    any::<[u8; 32]>().prop_map(ModelId::from_bytes)
}

pub fn arb_name() -> impl Strategy<Value = String> {
    "[!-~]{1,64}"
}

pub fn arb_rule() -> impl Strategy<Value = AgreementRule> {
    prop_oneof![
        Just(AgreementRule::Exact),
        Just(AgreementRule::Argmax),
        (0.0f32..1.0, 0.0f32..1.0, 0.0f32..=1.0)
            .prop_map(|(abs, rel, min_cosine)| AgreementRule::Tolerance { abs, rel, min_cosine }),
    ]
}

/// The payer key of the tests' budgets.
pub fn payer() -> NodeKey {
    key(250)
}

/// A budget of the tests' payer for `holder`: `amount`, valid until `expires_ms`.
pub fn budget_for(holder: NodeId, amount: u64, expires_ms: u64) -> Signed<Budget> {
    let budget = Budget {
        payer: payer().node_id(),
        holder,
        serial: 1,
        amount,
        expires_ms,
    };
    Signed::sign(budget, &payer()).unwrap()
}

/// Any budget for `holder`, signed by `payer`.
pub fn arb_budget_for(payer: NodeId, holder: NodeId) -> impl Strategy<Value = Budget> {
    any::<[u64; 3]>().prop_map(move |[serial, amount, expires_ms]| Budget {
        payer,
        holder,
        serial,
        amount,
        expires_ms,
    })
}

pub fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

pub fn arb_offer_for(submitter: NodeId) -> impl Strategy<Value = JobOffer> {
    let input = prop_oneof![
        arb_bytes(2048).prop_map(JobInput::Inline),
        (any::<[u8; 32]>(), any::<u64>()).prop_map(|(h, len)| JobInput::Content {
            id: ChunkId::from_bytes(h),
            len
        }),
    ];
    (
        any::<u64>(),
        arb_model(),
        input,
        arb_rule(),
        1..=MAX_REPLICAS,
        any::<u64>(),
        any::<[u64; 3]>(),
    )
        .prop_map(move |(nonce, model, input, rule, replicas, reward, mut times)| {
            times.sort();
            JobOffer {
                submitter,
                nonce,
                model,
                input,
                rule,
                replicas,
                reward,
                created_ms: times[0],
                expires_ms: times[1],
                deadline_ms: times[2],
                budget: budget_for(submitter, u64::MAX, u64::MAX),
            }
        })
}

pub fn arb_class() -> impl Strategy<Value = NumericClass> {
    (arb_name(), arb_name(), arb_name()).prop_map(|(backend, features, arch)| NumericClass {
        backend,
        features,
        arch,
    })
}

pub fn arb_bid_for(worker: NodeId) -> impl Strategy<Value = Bid> {
    (
        arb_job(),
        arb_class(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(move |(job, class, price, energy_cost, est_ms, expires_ms)| Bid {
            job,
            worker,
            class,
            price,
            energy_cost,
            est_ms,
            expires_ms,
        })
}

pub fn arb_assignment_for(submitter: NodeId) -> impl Strategy<Value = Assignment> {
    (arb_job(), arb_node(), any::<u64>()).prop_map(move |(job, worker, commit_by_ms)| Assignment {
        job,
        submitter,
        worker,
        commit_by_ms,
    })
}

pub fn arb_commit_for(worker: NodeId) -> impl Strategy<Value = ResultCommit> {
    (arb_job(), any::<[u8; 32]>()).prop_map(move |(job, commitment)| ResultCommit {
        job,
        worker,
        commitment,
    })
}

pub fn arb_reveal_for(worker: NodeId) -> impl Strategy<Value = ResultReveal> {
    (
        arb_job(),
        arb_bytes(4096),
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(move |(job, output, salt, compute_us, energy_uwh)| ResultReveal {
            job,
            worker,
            output,
            salt,
            compute_us,
            energy_uwh,
        })
}

pub fn arb_withdraw_for(worker: NodeId) -> impl Strategy<Value = Withdraw> {
    let reason = prop_oneof![
        Just(WithdrawReason::Preempted),
        Just(WithdrawReason::Overloaded),
        Just(WithdrawReason::ModelUnavailable),
        Just(WithdrawReason::Shutdown),
    ];
    (arb_job(), reason, any::<u64>()).prop_map(move |(job, reason, at_ms)| Withdraw {
        job,
        worker,
        reason,
        at_ms,
    })
}

pub fn arb_partial_for(worker: NodeId) -> impl Strategy<Value = Partial> {
    (arb_job(), arb_bytes(MAX_PARTIAL), any::<u64>()).prop_map(move |(job, output, at_ms)| Partial {
        job,
        worker,
        output,
        at_ms,
    })
}

/// A revocation by `submitter` of a receipt of `worker`, with a rejection of `worker` signed by
/// `submitter` on another job as evidence.
pub fn arb_revocation(worker: NodeKey, submitter: NodeKey) -> impl Strategy<Value = Revocation> {
    let signer = submitter.clone();
    (arb_job(), arb_receipt(worker.clone(), submitter), any::<u64>())
        .prop_filter("a receipt is not revoked by its own job", |(job, evidence, _)| {
            *job != evidence.claim.body.job
        })
        .prop_map(move |(job, mut evidence, issued_ms)| {
            evidence.verdict = Verdict::Rejected;
            evidence.credit = 0;
            Revocation {
                job,
                worker: worker.node_id(),
                submitter: signer.node_id(),
                evidence: Signed::sign(evidence, &signer).unwrap(),
                issued_ms,
            }
        })
}

pub fn arb_claim(worker: NodeId, submitter: NodeId) -> impl Strategy<Value = WorkClaim> {
    (arb_job(), arb_model(), any::<[u8; 32]>(), any::<[u64; 4]>()).prop_map(move |(job, model, digest, n)| {
        WorkClaim {
            job,
            model,
            worker,
            submitter,
            output_digest: digest,
            compute_us: n[0],
            energy_uwh: n[1],
            claimed_credit: n[2],
            claimed_ms: n[3],
        }
    })
}

/// A receipt signed by `submitter` over a claim signed by `worker`.
pub fn arb_receipt(worker: NodeKey, submitter: NodeKey) -> impl Strategy<Value = Receipt> {
    (
        arb_claim(worker.node_id(), submitter.node_id()),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<[u64; 2]>(),
    )
        .prop_map(move |(claim, accepted, credit, issued_ms, [seq, extra])| {
            let (verdict, credit) = if accepted {
                (Verdict::Accepted, credit.min(claim.claimed_credit))
            } else {
                (Verdict::Rejected, 0)
            };
            Receipt {
                claim: Signed::sign(claim, &worker).unwrap(),
                verdict,
                credit,
                issued_ms,
                budget: budget_for(submitter.node_id(), u64::MAX, u64::MAX),
                seq,
                spent: credit.saturating_add(extra),
            }
        })
}

pub fn arb_spec() -> impl Strategy<Value = TensorSpec> {
    let dtype = prop_oneof![Just(DType::F32), Just(DType::U8), Just(DType::Utf8)];
    (dtype, proptest::collection::vec(1u32..100_000, 1..=MAX_RANK))
        .prop_map(|(dtype, shape)| TensorSpec { dtype, shape })
}

pub fn arb_manifest() -> impl Strategy<Value = ModelManifest> {
    (
        arb_name(),
        any::<u32>(),
        arb_name(),
        any::<[u8; 32]>(),
        1u32..=MAX_CHUNK_SIZE,
        0usize..64,
        arb_spec(),
        arb_spec(),
        arb_rule(),
    )
        .prop_flat_map(
            |(name, version, architecture, weights_hash, chunk_size, n, input, output, rule)| {
                let len_range = if n == 0 {
                    0..=0
                } else {
                    (n as u64 - 1) * u64::from(chunk_size) + 1..=n as u64 * u64::from(chunk_size)
                };
                (len_range, proptest::collection::vec(any::<[u8; 32]>(), n)).prop_map(
                    move |(weights_len, chunks)| ModelManifest {
                        name: name.clone(),
                        version,
                        architecture: architecture.clone(),
                        weights_hash,
                        weights_len,
                        chunk_size,
                        chunks: chunks.into_iter().map(ChunkId::from_bytes).collect(),
                        input: input.clone(),
                        output: output.clone(),
                        rule,
                    },
                )
            },
        )
}

/// A signed message of each kind, as (kind name, encoded bytes, decode-and-verify function).
pub type Checker = fn(&[u8]) -> Result<(), String>;

pub fn decode_verify<T: fleetmesh_protocol::signing::Signable>(bytes: &[u8]) -> Result<(), String> {
    let signed: Signed<T> = fleetmesh_protocol::codec::decode(bytes).map_err(|e| e.to_string())?;
    signed.verify().map_err(|e| e.to_string())
}

pub fn arb_reveal_request_for(submitter: NodeId) -> impl Strategy<Value = RevealRequest> {
    (arb_job(), arb_node()).prop_map(move |(job, worker)| RevealRequest {
        job,
        submitter,
        worker,
    })
}

/// A consistent work report: a reveal and a claim over the same output, both signed by `worker`.
pub fn arb_work_report(worker: NodeKey, submitter: NodeId) -> impl Strategy<Value = WorkReport> {
    (
        arb_reveal_for(worker.node_id()),
        arb_claim(worker.node_id(), submitter),
    )
        .prop_map(move |(reveal, mut claim)| {
            claim.job = reveal.job;
            claim.output_digest = *blake3::hash(&reveal.output).as_bytes();
            WorkReport {
                reveal: Signed::sign(reveal, &worker).unwrap(),
                claim: Signed::sign(claim, &worker).unwrap(),
            }
        })
}

pub fn arb_reply() -> impl Strategy<Value = Reply> {
    let code = prop_oneof![
        Just(ReplyCode::Accepted),
        Just(ReplyCode::Refused),
        Just(ReplyCode::Busy)
    ];
    (code, "\\PC{0,64}").prop_map(|(code, detail)| Reply { code, detail })
}

pub fn arb_manifest_request() -> impl Strategy<Value = ManifestRequest> {
    arb_model().prop_map(|model| ManifestRequest { model })
}

pub fn arb_chunk_request() -> impl Strategy<Value = ChunkRequest> {
    (arb_model(), 0u32..MAX_CHUNKS as u32).prop_map(|(model, index)| ChunkRequest { model, index })
}

pub fn arb_chunk() -> impl Strategy<Value = Chunk> {
    (
        arb_model(),
        0u32..MAX_CHUNKS as u32,
        proptest::collection::vec(any::<u8>(), 1..2048),
    )
        .prop_map(|(model, index, data)| Chunk { model, index, data })
}

pub fn arb_epoch_root(node: NodeId) -> impl Strategy<Value = EpochRoot> {
    (
        any::<u64>(),
        1..=MAX_EPOCH_MS,
        0..=MAX_EPOCH_RECEIPTS,
        any::<[u8; 32]>(),
    )
        .prop_map(move |(start, len, receipts, root)| {
            let start_ms = start.min(u64::MAX - len);
            EpochRoot {
                node,
                start_ms,
                end_ms: start_ms + len,
                receipts,
                root,
            }
        })
}

pub fn arb_claim_request() -> impl Strategy<Value = ClaimRequest> {
    (any::<u64>(), 0..MAX_EPOCH_RECEIPTS).prop_map(|(after_ms, first)| ClaimRequest { after_ms, first })
}

/// A page of `worker`'s claim: a signed root and up to four receipts of `submitter` with random paths.
pub fn arb_claim_page(worker: NodeKey, submitter: NodeKey) -> impl Strategy<Value = ClaimPage> {
    let entry = (
        arb_receipt(worker.clone(), submitter.clone()),
        proptest::collection::vec(any::<[u8; 32]>(), 0..=MAX_PATH),
    )
        .prop_map(move |(receipt, path)| ClaimEntry {
            receipt: Signed::sign(receipt, &submitter).unwrap(),
            path,
        });
    (
        arb_epoch_root(worker.node_id()),
        proptest::collection::vec(entry, 0..=4),
        any::<u32>(),
    )
        .prop_map(move |(mut root, entries, first)| {
            let first = first % (MAX_EPOCH_RECEIPTS - 4);
            root.receipts = root.receipts.max(first + entries.len() as u32);
            ClaimPage {
                root: Signed::sign(root, &worker).unwrap(),
                first,
                entries,
            }
        })
}
