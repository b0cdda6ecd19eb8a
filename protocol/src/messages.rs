//! The messages of the job lifecycle.
//!
//! ```text
//! submitter --JobOffer (gossip)-------------------> every car
//! worker    --Bid------------------------------------> submitter
//! submitter --Assignment----------------------------> r workers
//! worker    --ResultCommit  blake3(output || salt)--> submitter   (before anyone reveals)
//! submitter --RevealRequest (every worker committed)-> worker
//! worker    <-WorkReport: ResultReveal + WorkClaim---- (the answer to the RevealRequest)
//! worker    --Withdraw (hands the job back)----------> submitter
//! submitter --Receipt (co-signs the worker's WorkClaim with the verdict)--------> worker
//! submitter --Revocation (takes back a receipt of a worker caught lying, gossip)--> every car
//! any node  --EpochRoot (Merkle root over its receipts of one epoch, DHT record)-> anyone
//! verifier  --ClaimRequest---------------------------> a node
//! node      <-ClaimPage: receipts + inclusion paths + the epoch's root--
//! ```
//!
//! No message carries a location or anything that identifies the owner beyond the node key. Amounts of
//! credit are integers in micro-credits; energy in microwatt-hours; times in milliseconds since the Unix
//! epoch.

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, Kind, Message};
use crate::ids::{ChunkId, JobId, ModelId, NodeId};
use crate::signing::{Signable, SignatureCheck, Signed, VerifyError};

/// Largest job input carried inside an offer; larger inputs travel as content by [`JobInput::Content`].
pub const MAX_INLINE_INPUT: usize = 32 * 1024;
/// Largest output a worker may reveal.
pub const MAX_OUTPUT: usize = 256 * 1024;
/// Most workers a job may ask for.
pub const MAX_REPLICAS: u8 = 16;
/// Longest short text field (names, numeric class parts).
pub const MAX_NAME: usize = 64;
/// Most chunks a model manifest may list.
pub const MAX_CHUNKS: usize = 4096;
/// Largest chunk size a manifest may declare.
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Most dimensions of a tensor spec.
pub const MAX_RANK: usize = 8;

/// Refuses a message whose worker and submitter are one key (a node never judges, pays or assigns itself).
fn distinct_parties(kind: Kind, worker: &NodeId, submitter: &NodeId) -> Result<(), DecodeError> {
    if worker == submitter {
        return Err(DecodeError::invalid(kind, "worker and submitter are one key"));
    }
    Ok(())
}

fn check_name(kind: Kind, s: &str, what: &'static str) -> Result<(), DecodeError> {
    if s.is_empty() || s.len() > MAX_NAME || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(DecodeError::invalid(kind, what));
    }
    Ok(())
}

/// How redundant outputs of one job are compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum AgreementRule {
    /// Byte-identical outputs; only between workers of one [`NumericClass`].
    Exact,
    /// Same index of the largest value of an f32 output (classifiers).
    Argmax,
    /// f32 outputs close enough: every element within `abs + rel * |x|`, or cosine similarity at least
    /// `min_cosine` when `min_cosine` is positive.
    Tolerance {
        /// Absolute tolerance per element.
        abs: f32,
        /// Relative tolerance per element.
        rel: f32,
        /// Least cosine similarity of the two output vectors (0 = not used).
        min_cosine: f32,
    },
}

impl AgreementRule {
    fn validate(&self, kind: Kind) -> Result<(), DecodeError> {
        if let AgreementRule::Tolerance { abs, rel, min_cosine } = *self {
            let ok = abs.is_finite()
                && abs >= 0.0
                && rel.is_finite()
                && rel >= 0.0
                && min_cosine.is_finite()
                && (0.0..=1.0).contains(&min_cosine);
            if !ok {
                return Err(DecodeError::invalid(
                    kind,
                    "tolerance must be finite, >= 0, cosine <= 1",
                ));
            }
        }
        Ok(())
    }
}

/// What determines the bits of a worker's output: outputs compared under [`AgreementRule::Exact`] must come
/// from workers of the same class.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NumericClass {
    /// Tensor backend, e.g. `burn-flex-0.22`.
    pub backend: String,
    /// Backend features that change numerics, e.g. `simd+rayon`.
    pub features: String,
    /// CPU architecture and vector extensions, e.g. `x86_64-avx512`.
    pub arch: String,
}

impl NumericClass {
    fn validate(&self, kind: Kind) -> Result<(), DecodeError> {
        check_name(
            kind,
            &self.backend,
            "numeric class backend must be 1-64 printable ASCII bytes",
        )?;
        check_name(
            kind,
            &self.features,
            "numeric class features must be 1-64 printable ASCII bytes",
        )?;
        check_name(
            kind,
            &self.arch,
            "numeric class arch must be 1-64 printable ASCII bytes",
        )
    }
}

/// The input of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobInput {
    /// Up to [`MAX_INLINE_INPUT`] bytes carried in the offer.
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A larger input fetched from the submitter by content id.
    Content {
        /// blake3 of the input bytes.
        id: ChunkId,
        /// Length of the input in bytes.
        len: u64,
    },
}

/// A submitter's call for work, gossiped to every car. Its [`JobId`] is the hash of its canonical bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOffer {
    /// The node that submits the job and will judge the results.
    pub submitter: NodeId,
    /// Makes otherwise identical offers distinct jobs.
    pub nonce: u64,
    /// The model to run.
    pub model: ModelId,
    /// The input to run it on.
    pub input: JobInput,
    /// How the replicas' outputs are compared.
    pub rule: AgreementRule,
    /// How many agreeing workers the submitter wants (1..=[`MAX_REPLICAS`]).
    pub replicas: u8,
    /// Most credit paid per accepted replica, in micro-credits.
    pub reward: u64,
    /// When the offer was made.
    pub created_ms: u64,
    /// Bids are no longer taken after this time; receivers drop the offer as expired.
    pub expires_ms: u64,
    /// The result is wanted by this time.
    pub deadline_ms: u64,
    /// Who pays: a payer's budget held by this submitter, which workers check before they bid.
    pub budget: Signed<Budget>,
}

impl JobOffer {
    /// The job's id: blake3 of the offer's canonical bytes.
    pub fn id(&self) -> JobId {
        JobId::of(&codec::encode(self))
    }

    /// Whether the offer may still be acted on at `now_ms`, allowing `max_skew_ms` of clock difference.
    pub fn check_fresh(&self, now_ms: u64, max_skew_ms: u64) -> Result<(), Freshness> {
        check_window(self.created_ms, self.expires_ms, now_ms, max_skew_ms)
    }
}

impl Message for JobOffer {
    const KIND: Kind = Kind::JobOffer;
    const MAX_LEN: usize = MAX_INLINE_INPUT + 512;

    fn validate(&self) -> Result<(), DecodeError> {
        let kind = Self::KIND;
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(DecodeError::invalid(kind, "replicas must be 1..=16"));
        }
        if self.created_ms > self.expires_ms || self.expires_ms > self.deadline_ms {
            return Err(DecodeError::invalid(
                kind,
                "times must satisfy created <= expires <= deadline",
            ));
        }
        if let JobInput::Inline(bytes) = &self.input
            && bytes.len() > MAX_INLINE_INPUT
        {
            return Err(DecodeError::invalid(kind, "inline input over 32 KiB"));
        }
        let budget = &self.budget.body;
        if budget.holder != self.submitter {
            return Err(DecodeError::invalid(kind, "the budget is not the submitter's"));
        }
        if self.reward > budget.amount || self.deadline_ms > budget.expires_ms {
            return Err(DecodeError::invalid(
                kind,
                "the budget does not cover the reward until the deadline",
            ));
        }
        self.rule.validate(kind)
    }
}

impl Signable for JobOffer {
    fn signer(&self) -> NodeId {
        self.submitter
    }

    fn nested_checks(&self, out: &mut Vec<SignatureCheck>) -> Result<(), VerifyError> {
        self.budget.checks(out)
    }
}

/// A payer's promise to fund one submitter's jobs, up to an amount, until a time. Signed by the payer:
/// a key the fleet's nodes list as a payer in their configuration (as they list bootstrap peers).
///
/// Offers carry their budget so a worker checks who pays before it bids; receipts carry it so a ledger
/// counts credit only against a budget of a listed payer. The submitter numbers the receipts of a
/// budget (`seq`) and states the running total (`spent`) in each; two receipts that contradict each
/// other (one number used twice, or totals that do not add up) are a fraud proof that voids the budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// The payer (the signer).
    pub payer: NodeId,
    /// The submitter allowed to spend it.
    pub holder: NodeId,
    /// The payer's number for this budget; (payer, holder, serial) names it. A payer that funds the same
    /// holder again uses a new serial: two different budgets under one name void each other.
    pub serial: u64,
    /// The most credit all receipts under it may grant together, in micro-credits.
    pub amount: u64,
    /// Receipts issued after this time are not paid from it.
    pub expires_ms: u64,
}

impl Budget {
    /// The budget's name: its payer, its holder and the payer's serial.
    pub fn key(&self) -> (NodeId, NodeId, u64) {
        (self.payer, self.holder, self.serial)
    }
}

impl Message for Budget {
    const KIND: Kind = Kind::Budget;
    const MAX_LEN: usize = 128;
}

impl Signable for Budget {
    fn signer(&self) -> NodeId {
        self.payer
    }
}

/// Whether a message with a validity window may be acted on now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Freshness {
    /// The window ended.
    #[error("expired {0} ms ago")]
    Expired(u64),
    /// The message claims to be made in the future, beyond the allowed clock skew.
    #[error("made {0} ms in the future")]
    FromFuture(u64),
}

fn check_window(created_ms: u64, expires_ms: u64, now_ms: u64, max_skew_ms: u64) -> Result<(), Freshness> {
    if now_ms > expires_ms {
        return Err(Freshness::Expired(now_ms - expires_ms));
    }
    if created_ms > now_ms.saturating_add(max_skew_ms) {
        return Err(Freshness::FromFuture(created_ms - now_ms));
    }
    Ok(())
}

/// A worker's offer to run a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// The job bid for.
    pub job: JobId,
    /// The bidding worker.
    pub worker: NodeId,
    /// The worker's numeric class (for exact agreement).
    pub class: NumericClass,
    /// Credit the worker asks for, in micro-credits.
    pub price: u64,
    /// The worker's electricity cost for the job at its current tariff, in micro-credits.
    pub energy_cost: u64,
    /// The worker's estimate of the compute time.
    pub est_ms: u32,
    /// The bid lapses after this time.
    pub expires_ms: u64,
}

impl Message for Bid {
    const KIND: Kind = Kind::Bid;
    const MAX_LEN: usize = 512;

    fn validate(&self) -> Result<(), DecodeError> {
        self.class.validate(Self::KIND)
    }
}

impl Signable for Bid {
    fn signer(&self) -> NodeId {
        self.worker
    }
}

/// The submitter's choice of a worker for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// The submitter who assigns it.
    pub submitter: NodeId,
    /// The chosen worker.
    pub worker: NodeId,
    /// The commit must arrive by this time, or the worker is replaced.
    pub commit_by_ms: u64,
}

impl Message for Assignment {
    const KIND: Kind = Kind::Assignment;
    const MAX_LEN: usize = 192;

    fn validate(&self) -> Result<(), DecodeError> {
        distinct_parties(Self::KIND, &self.worker, &self.submitter)
    }
}

impl Signable for Assignment {
    fn signer(&self) -> NodeId {
        self.submitter
    }
}

/// A worker's binding commitment to its output, sent before any output is revealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultCommit {
    /// The job.
    pub job: JobId,
    /// The committing worker.
    pub worker: NodeId,
    /// [`ResultCommit::commitment_for`] of the output and a secret salt.
    pub commitment: [u8; 32],
}

impl ResultCommit {
    /// The commitment to `output` under `salt`: a keyed blake3 that binds worker, job, salt and output.
    pub fn commitment_for(job: &JobId, worker: &NodeId, output: &[u8], salt: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("fleetmesh/result-commitment/v1");
        h.update(job.as_bytes());
        h.update(worker.as_bytes());
        h.update(salt);
        h.update(output);
        *h.finalize().as_bytes()
    }
}

impl Message for ResultCommit {
    const KIND: Kind = Kind::ResultCommit;
    const MAX_LEN: usize = 128;
}

impl Signable for ResultCommit {
    fn signer(&self) -> NodeId {
        self.worker
    }
}

/// A worker's output, revealed once the submitter holds every commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultReveal {
    /// The job.
    pub job: JobId,
    /// The revealing worker.
    pub worker: NodeId,
    /// The output bytes (at most [`MAX_OUTPUT`]).
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    /// The salt of the earlier commit.
    pub salt: [u8; 32],
    /// Compute time the worker spent, in microseconds.
    pub compute_us: u64,
    /// Energy the worker spent, in microwatt-hours.
    pub energy_uwh: u64,
}

impl ResultReveal {
    /// Whether this reveal opens `commit`.
    pub fn opens(&self, commit: &ResultCommit) -> bool {
        commit.job == self.job
            && commit.worker == self.worker
            && ResultCommit::commitment_for(&self.job, &self.worker, &self.output, &self.salt)
                == commit.commitment
    }
}

impl Message for ResultReveal {
    const KIND: Kind = Kind::ResultReveal;
    const MAX_LEN: usize = MAX_OUTPUT + 192;

    fn validate(&self) -> Result<(), DecodeError> {
        if self.output.len() > MAX_OUTPUT {
            return Err(DecodeError::invalid(Self::KIND, "output over 256 KiB"));
        }
        Ok(())
    }
}

impl Signable for ResultReveal {
    fn signer(&self) -> NodeId {
        self.worker
    }
}

/// Why a worker hands a job back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WithdrawReason {
    /// The car left admission (driver returned, charge or temperature limit).
    Preempted,
    /// The worker has no capacity after all.
    Overloaded,
    /// The worker could not obtain or load the model.
    ModelUnavailable,
    /// The node is shutting down.
    Shutdown,
}

/// A worker hands an assigned job back; no credit is due for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdraw {
    /// The job.
    pub job: JobId,
    /// The withdrawing worker.
    pub worker: NodeId,
    /// Why.
    pub reason: WithdrawReason,
    /// When.
    pub at_ms: u64,
}

impl Message for Withdraw {
    const KIND: Kind = Kind::Withdraw;
    const MAX_LEN: usize = 128;
}

impl Signable for Withdraw {
    fn signer(&self) -> NodeId {
        self.worker
    }
}

/// Most bytes of a [`Partial`]'s output (a generation of 512 tokens is 2,051 bytes).
pub const MAX_PARTIAL: usize = 4 * 1024;

/// A worker tells the job's submitter what it has computed so far (the tokens of a generation, in the
/// output's layout), while it runs: what a submitter streams to its user before the verdict. Advisory only:
/// the commit, reveal and quorum decide the result; a submitter ignores partials of a worker it did not
/// assign and of jobs nobody streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The job.
    pub job: JobId,
    /// The worker.
    pub worker: NodeId,
    /// The output so far (each partial holds all of it: a lost one costs nothing).
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    /// When.
    pub at_ms: u64,
}

impl Message for Partial {
    const KIND: Kind = Kind::Partial;
    const MAX_LEN: usize = MAX_PARTIAL + 128;

    fn validate(&self) -> Result<(), DecodeError> {
        if self.output.len() > MAX_PARTIAL {
            return Err(DecodeError::invalid(Self::KIND, "partial output over 4 KiB"));
        }
        Ok(())
    }
}

impl Signable for Partial {
    fn signer(&self) -> NodeId {
        self.worker
    }
}

/// The outcome the submitter records for one worker's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// The output agreed with the accepted result.
    Accepted,
    /// The output was out-voted or did not open its commit.
    Rejected,
    /// Accepted from the one worker the user asked for, with no independent replica or trusted worker
    /// behind it (a job submitted with one replica). Paid like an accepted result.
    Unverified,
}

impl Verdict {
    /// Whether the result was taken (and is paid): accepted, verified or not.
    pub fn is_accepted(self) -> bool {
        matches!(self, Verdict::Accepted | Verdict::Unverified)
    }
}

/// What a worker claims for one job: signed by the worker, then countersigned in a [`Receipt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkClaim {
    /// The job.
    pub job: JobId,
    /// The model run.
    pub model: ModelId,
    /// The worker.
    pub worker: NodeId,
    /// The submitter who will countersign.
    pub submitter: NodeId,
    /// blake3 of the output bytes.
    pub output_digest: [u8; 32],
    /// Compute time spent, in microseconds.
    pub compute_us: u64,
    /// Energy spent, in microwatt-hours.
    pub energy_uwh: u64,
    /// Credit the worker claims, in micro-credits.
    pub claimed_credit: u64,
    /// When the claim was made.
    pub claimed_ms: u64,
}

impl Message for WorkClaim {
    const KIND: Kind = Kind::WorkClaim;
    const MAX_LEN: usize = 256;

    fn validate(&self) -> Result<(), DecodeError> {
        distinct_parties(Self::KIND, &self.worker, &self.submitter)
    }
}

impl Signable for WorkClaim {
    fn signer(&self) -> NodeId {
        self.worker
    }
}

/// The submitter's countersignature of a worker's claim, with the verdict and the credit granted.
///
/// Its signer is the submitter named in the claim; verifying a `Signed<Receipt>` also verifies the worker's
/// signature on the claim. A receipt is identified by `(job, worker)`: receivers count it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The worker's signed claim.
    pub claim: Signed<WorkClaim>,
    /// The submitter's verdict on the worker's output.
    pub verdict: Verdict,
    /// Credit granted, in micro-credits (0 unless accepted).
    pub credit: u64,
    /// When the submitter countersigned.
    pub issued_ms: u64,
    /// The budget that pays it (the job offer's).
    pub budget: Signed<Budget>,
    /// The submitter's number for this receipt within the budget (each used once).
    pub seq: u64,
    /// Credit granted under the budget by the receipts numbered up to this one, this one included.
    pub spent: u64,
}

impl Message for Receipt {
    const KIND: Kind = Kind::Receipt;
    const MAX_LEN: usize = 768;

    fn validate(&self) -> Result<(), DecodeError> {
        distinct_parties(Self::KIND, &self.claim.body.worker, &self.claim.body.submitter)?;
        if self.verdict == Verdict::Rejected && self.credit != 0 {
            return Err(DecodeError::invalid(
                Self::KIND,
                "a rejected result earns no credit",
            ));
        }
        if self.credit > self.claim.body.claimed_credit {
            return Err(DecodeError::invalid(
                Self::KIND,
                "credit above the worker's claim",
            ));
        }
        let budget = &self.budget.body;
        if budget.holder != self.claim.body.submitter {
            return Err(DecodeError::invalid(
                Self::KIND,
                "the budget is not the submitter's",
            ));
        }
        if self.credit > self.spent || self.spent > budget.amount {
            return Err(DecodeError::invalid(
                Self::KIND,
                "credit must satisfy credit <= spent <= the budget's amount",
            ));
        }
        Ok(())
    }
}

impl Signable for Receipt {
    fn signer(&self) -> NodeId {
        self.claim.body.submitter
    }

    fn nested_checks(&self, out: &mut Vec<SignatureCheck>) -> Result<(), VerifyError> {
        self.claim.checks(out)?;
        self.budget.checks(out)
    }
}

/// Longest time after a worker was caught lying in which its submitter may still revoke the receipts of
/// results it accepted from that worker alone: a day (the probation of a caught worker). Credit older than
/// that before the catch is final.
pub const REVOCATION_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// A submitter takes back a receipt it issued for a result it accepted on one worker's word alone (no
/// independent replica ran it), because that worker was later caught returning a wrong output: its
/// result on another job was out-voted, which the submitter's `Rejected` receipt of that job shows (a
/// receipt carries the worker's own signed claim, so the submitter cannot make one up). The revocation
/// carries that receipt, so anyone holding the revocation can check it without the worker's help (a
/// worker cannot keep revoked credit by leaving its rejections out of its claims). The worker forfeits
/// the credit of the job `job`; the submitter re-runs it on other workers and corrects its verdict if
/// the output was wrong.
///
/// A ledger honours a revocation only for a receipt issued at most [`REVOCATION_WINDOW_MS`] before the
/// evidence's rejection and not after it. Verifying a `Signed<Revocation>` also verifies the evidence's
/// signatures (submitter, worker, payer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The job of the revoked receipt.
    pub job: JobId,
    /// The worker whose receipt is revoked.
    pub worker: NodeId,
    /// The submitter who issued the receipt and revokes it (the signer).
    pub submitter: NodeId,
    /// The submitter's `Rejected` receipt of the worker on the job where it was caught.
    pub evidence: Signed<Receipt>,
    /// When the receipt was revoked.
    pub issued_ms: u64,
}

impl Message for Revocation {
    const KIND: Kind = Kind::Revocation;
    const MAX_LEN: usize = 192 + <Signed<Receipt> as Message>::MAX_LEN;

    fn validate(&self) -> Result<(), DecodeError> {
        distinct_parties(Self::KIND, &self.worker, &self.submitter)?;
        self.evidence.body.validate()?;
        let rejected = &self.evidence.body;
        let claim = &rejected.claim.body;
        if rejected.verdict != Verdict::Rejected
            || claim.worker != self.worker
            || claim.submitter != self.submitter
        {
            return Err(DecodeError::invalid(
                Self::KIND,
                "the evidence must be the submitter's rejection of the worker",
            ));
        }
        if self.job == claim.job {
            return Err(DecodeError::invalid(
                Self::KIND,
                "a receipt is not revoked by its own job",
            ));
        }
        Ok(())
    }
}

impl Signable for Revocation {
    fn signer(&self) -> NodeId {
        self.submitter
    }

    fn nested_checks(&self, out: &mut Vec<SignatureCheck>) -> Result<(), VerifyError> {
        self.evidence.checks(out)
    }
}

/// Longest epoch a root may cover: a day.
pub const MAX_EPOCH_MS: u64 = 24 * 3600 * 1000;
/// Most receipts one epoch root may cover.
pub const MAX_EPOCH_RECEIPTS: u32 = 1 << 20;
/// Longest Merkle inclusion path (enough for [`MAX_EPOCH_RECEIPTS`] leaves, with room to spare).
pub const MAX_PATH: usize = 32;
/// Most entries of one [`ClaimPage`].
pub const MAX_CLAIM_PAGE: usize = 256;

/// A node's commitment to the receipts it is party to (as worker or submitter) that were issued in
/// `start_ms..end_ms`: the root of a Merkle tree over them (see `fleetmesh_consensus::books`), signed and
/// published once the epoch has closed. A balance claim shows each receipt with its path to the root;
/// a receipt that is not under a published root cannot be claimed, so a node cannot add receipts to
/// an epoch after it sealed it, nor show different receipt sets to different verifiers without two
/// signed roots for one epoch (which is proof of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRoot {
    /// The node whose receipts these are (the signer).
    pub node: NodeId,
    /// Start of the epoch (inclusive), ms since the Unix epoch.
    pub start_ms: u64,
    /// End of the epoch (exclusive).
    pub end_ms: u64,
    /// How many receipts (leaves) the tree has.
    pub receipts: u32,
    /// The Merkle root.
    pub root: [u8; 32],
}

impl Message for EpochRoot {
    const KIND: Kind = Kind::EpochRoot;
    const MAX_LEN: usize = 128;

    fn validate(&self) -> Result<(), DecodeError> {
        if self.start_ms >= self.end_ms || self.end_ms - self.start_ms > MAX_EPOCH_MS {
            return Err(DecodeError::invalid(
                Self::KIND,
                "an epoch must be non-empty and at most a day long",
            ));
        }
        if self.receipts > MAX_EPOCH_RECEIPTS {
            return Err(DecodeError::invalid(Self::KIND, "too many receipts in one epoch"));
        }
        Ok(())
    }
}

impl Signable for EpochRoot {
    fn signer(&self) -> NodeId {
        self.node
    }
}

/// Asks a node for a page of its balance claim: the entries of its first sealed epoch that starts at or
/// after `after_ms`, from leaf `first` on. Answered with a [`ClaimPage`] or a refusal [`Reply`] (no such
/// epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// Earliest epoch start wanted, ms since the Unix epoch.
    pub after_ms: u64,
    /// First leaf wanted within that epoch.
    pub first: u32,
}

impl Message for ClaimRequest {
    const KIND: Kind = Kind::ClaimRequest;
    const MAX_LEN: usize = 32;

    fn validate(&self) -> Result<(), DecodeError> {
        if self.first >= MAX_EPOCH_RECEIPTS {
            return Err(DecodeError::invalid(Self::KIND, "leaf index beyond any epoch"));
        }
        Ok(())
    }
}

/// One receipt of a claim with its Merkle inclusion path (sibling hashes from the leaf up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimEntry {
    /// The receipt.
    pub receipt: Signed<Receipt>,
    /// Sibling hashes from the leaf up to the root.
    #[serde(deserialize_with = "codec::bounded::path")]
    pub path: Vec<[u8; 32]>,
}

/// A page of a node's balance claim: consecutive leaves `first..first + entries.len()` of one epoch's
/// tree, in leaf order, with the epoch's signed root. Nothing in it is trusted: each receipt's
/// signatures, each path and the root's signature are checked by the verifier, and the root is compared
/// with the one the node published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimPage {
    /// The epoch's root, signed by the claiming node.
    pub root: Signed<EpochRoot>,
    /// Index of the first entry's leaf.
    pub first: u32,
    /// The entries, at most [`MAX_CLAIM_PAGE`].
    #[serde(deserialize_with = "codec::bounded::claim_entries")]
    pub entries: Vec<ClaimEntry>,
}

impl Message for ClaimPage {
    const KIND: Kind = Kind::ClaimPage;
    const MAX_LEN: usize = <Signed<EpochRoot> as Message>::MAX_LEN
        + 16
        + MAX_CLAIM_PAGE * (<Signed<Receipt> as Message>::MAX_LEN + 8 + 32 * MAX_PATH);

    fn validate(&self) -> Result<(), DecodeError> {
        self.root.validate()?;
        if self.entries.len() > MAX_CLAIM_PAGE
            || self.first as u64 + self.entries.len() as u64 > self.root.body.receipts as u64
        {
            return Err(DecodeError::invalid(
                Self::KIND,
                "entries beyond the epoch's receipts",
            ));
        }
        for e in &self.entries {
            e.receipt.validate()?;
            if e.path.len() > MAX_PATH {
                return Err(DecodeError::invalid(Self::KIND, "inclusion path too long"));
            }
        }
        Ok(())
    }
}

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    /// 32-bit float, little-endian.
    F32,
    /// Unsigned byte.
    U8,
    /// UTF-8 text (the shape gives the most bytes).
    Utf8,
}

/// Element type and shape (without the batch dimension) of a model's input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    #[serde(deserialize_with = "codec::bounded::shape")]
    pub shape: Vec<u32>,
}

/// A model's content-addressed description: its [`ModelId`] is the hash of these canonical bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Short name, e.g. `digits`.
    pub name: String,
    /// Version of the model.
    pub version: u32,
    /// Architecture name and version the engine must implement, e.g. `digits-cnn-v1`.
    pub architecture: String,
    /// blake3 of the whole weights file.
    pub weights_hash: [u8; 32],
    /// Length of the weights file in bytes.
    pub weights_len: u64,
    /// Size of every chunk but the last.
    pub chunk_size: u32,
    /// blake3 of each chunk, in order.
    #[serde(deserialize_with = "codec::bounded::chunks")]
    pub chunks: Vec<ChunkId>,
    /// Input of one item.
    pub input: TensorSpec,
    /// Output of one item.
    pub output: TensorSpec,
    /// How redundant outputs are compared.
    pub rule: AgreementRule,
}

impl ModelManifest {
    /// The model's id: blake3 of the manifest's canonical bytes.
    pub fn id(&self) -> ModelId {
        ModelId::of(&codec::encode(self))
    }
}

impl Message for ModelManifest {
    const KIND: Kind = Kind::ModelManifest;
    const MAX_LEN: usize = MAX_CHUNKS * 32 + 1024;

    fn validate(&self) -> Result<(), DecodeError> {
        let kind = Self::KIND;
        check_name(kind, &self.name, "name must be 1-64 printable ASCII bytes")?;
        check_name(
            kind,
            &self.architecture,
            "architecture must be 1-64 printable ASCII bytes",
        )?;
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return Err(DecodeError::invalid(kind, "chunk size must be 1..=4 MiB"));
        }
        let expected = self.weights_len.div_ceil(u64::from(self.chunk_size));
        if self.chunks.len() > MAX_CHUNKS || self.chunks.len() as u64 != expected {
            return Err(DecodeError::invalid(
                kind,
                "chunk count does not match weights length",
            ));
        }
        for spec in [&self.input, &self.output] {
            if spec.shape.is_empty() || spec.shape.len() > MAX_RANK || spec.shape.contains(&0) {
                return Err(DecodeError::invalid(
                    kind,
                    "tensor shape must have 1..=8 non-zero dims",
                ));
            }
        }
        self.rule.validate(kind)
    }
}

/// The submitter asks a worker to reveal its output: every active worker has committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealRequest {
    /// The job.
    pub job: JobId,
    /// The asking submitter.
    pub submitter: NodeId,
    /// The worker asked.
    pub worker: NodeId,
}

impl Message for RevealRequest {
    const KIND: Kind = Kind::RevealRequest;
    const MAX_LEN: usize = 128;

    fn validate(&self) -> Result<(), DecodeError> {
        distinct_parties(Self::KIND, &self.worker, &self.submitter)
    }
}

impl Signable for RevealRequest {
    fn signer(&self) -> NodeId {
        self.submitter
    }
}

/// A worker's answer to a [`RevealRequest`]: its output and its signed claim for the work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkReport {
    /// The revealed output.
    pub reveal: Signed<ResultReveal>,
    /// What the worker claims for it (digest of the same output).
    pub claim: Signed<WorkClaim>,
}

impl Message for WorkReport {
    const KIND: Kind = Kind::WorkReport;
    const MAX_LEN: usize = ResultReveal::MAX_LEN + WorkClaim::MAX_LEN + 256;

    fn validate(&self) -> Result<(), DecodeError> {
        self.reveal.validate()?;
        self.claim.validate()?;
        let (r, c) = (&self.reveal.body, &self.claim.body);
        if r.job != c.job || r.worker != c.worker || *blake3::hash(&r.output).as_bytes() != c.output_digest {
            return Err(DecodeError::invalid(
                Self::KIND,
                "claim does not describe the revealed output",
            ));
        }
        Ok(())
    }
}

/// Outcome of a request that carries no other answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyCode {
    /// Taken.
    Accepted,
    /// Refused (stale, unknown job, not the right sender, bad signature, ...).
    Refused,
    /// No capacity now.
    Busy,
}

/// The answer to a bid, assignment, commit or withdrawal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// What happened.
    pub code: ReplyCode,
    /// Why, for logs (at most 256 bytes).
    pub detail: String,
}

impl Reply {
    /// An acceptance.
    pub fn accepted() -> Self {
        Self {
            code: ReplyCode::Accepted,
            detail: String::new(),
        }
    }

    /// A refusal with a reason.
    pub fn refused(detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        let mut end = detail.len().min(256);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        Self {
            code: ReplyCode::Refused,
            detail,
        }
    }
}

impl Message for Reply {
    const KIND: Kind = Kind::Reply;
    const MAX_LEN: usize = 320;

    fn validate(&self) -> Result<(), DecodeError> {
        if self.detail.len() > 256 {
            return Err(DecodeError::invalid(Self::KIND, "detail over 256 bytes"));
        }
        Ok(())
    }
}

/// Asks a provider for a model's manifest; answered with the [`ModelManifest`] (whose id the asker checks)
/// or a refusal [`Reply`]. Unsigned: the answer is checked by its content id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRequest {
    /// The model wanted.
    pub model: ModelId,
}

impl Message for ManifestRequest {
    const KIND: Kind = Kind::ManifestRequest;
    const MAX_LEN: usize = 64;
}

/// Asks a provider for one chunk of a model's weights; answered with a [`Chunk`] or a refusal [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRequest {
    /// The model.
    pub model: ModelId,
    /// Position of the chunk in the manifest's list.
    pub index: u32,
}

impl Message for ChunkRequest {
    const KIND: Kind = Kind::ChunkRequest;
    const MAX_LEN: usize = 64;

    fn validate(&self) -> Result<(), DecodeError> {
        if self.index as usize >= MAX_CHUNKS {
            return Err(DecodeError::invalid(
                Self::KIND,
                "chunk index beyond the largest manifest",
            ));
        }
        Ok(())
    }
}

/// One chunk of a model's weights. The receiver accepts it only if its blake3 is the manifest's entry at
/// `index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The model.
    pub model: ModelId,
    /// Position of the chunk in the manifest's list.
    pub index: u32,
    /// The chunk's bytes (at most [`MAX_CHUNK_SIZE`]).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Message for Chunk {
    const KIND: Kind = Kind::Chunk;
    const MAX_LEN: usize = MAX_CHUNK_SIZE as usize + 64;

    fn validate(&self) -> Result<(), DecodeError> {
        if self.index as usize >= MAX_CHUNKS {
            return Err(DecodeError::invalid(
                Self::KIND,
                "chunk index beyond the largest manifest",
            ));
        }
        if self.data.is_empty() || self.data.len() > MAX_CHUNK_SIZE as usize {
            return Err(DecodeError::invalid(
                Self::KIND,
                "chunk must hold 1 byte to 4 MiB",
            ));
        }
        Ok(())
    }
}
