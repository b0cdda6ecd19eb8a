//! Adversarial behaviours, in one named place: they exist to test the fleet's defences (the demo's
//! `--malicious`, the node tests). `fleetmesh run` cannot select any of them. The worker role asks this
//! module, at three points, what a misbehaving worker would do instead of the honest thing; the model
//! server asks it whether to tamper with a chunk it serves.

use fleetmesh_protocol::messages::{Budget, Receipt, Verdict, WorkClaim};
use fleetmesh_protocol::{JobId, NodeKey, Signed};

/// How a worker behaves. Every adversarial behaviour also bids an electricity cost of 0, the cheapest
/// possible, to be chosen as often as it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerBehaviour {
    /// Runs the model and reports the true output.
    #[default]
    Honest,
    /// Reports a wrong output for every job (flips the bits of the first byte; every such worker
    /// reports the same wrong output, like a colluding group).
    AlwaysWrong,
    /// Reports a wrong output for this percentage of jobs.
    WrongPercent(u8),
    /// Does not run the model: commits to and reveals an output of zeros.
    Lazy,
    /// Accepts assignments and never answers.
    Silent,
    /// Reports a generation (of a text model) with its first token changed to a neighbouring token id
    /// (the lowest bit flipped): a lie of one token. An output of 7 bytes or more has that bit (of its
    /// byte 3) flipped whatever the model; a shorter one gets its first byte flipped.
    WrongToken,
    /// Runs jobs honestly and also hands its submitter a receipt for each, with a forged countersignature,
    /// claiming a second job that never happened (refused: not signed by the peer that sent it).
    ReceiptForger,
}

impl WorkerBehaviour {
    /// The electricity cost this worker puts in its bid: the honest one, or 0 to underbid.
    pub fn bid_energy_cost(self, honest: u64) -> u64 {
        match self {
            WorkerBehaviour::Honest => honest,
            _ => 0,
        }
    }

    /// Whether the worker skips the model and makes up an output.
    pub fn skips_work(self) -> bool {
        self == WorkerBehaviour::Lazy
    }

    /// Whether the worker accepts assignments and then never answers.
    pub fn is_silent(self) -> bool {
        self == WorkerBehaviour::Silent
    }

    /// The made-up output of a worker that skips the work.
    pub fn made_up_output() -> Vec<u8> {
        vec![0u8; 40]
    }

    /// Corrupts a computed `output` the way this worker lies (`unit` is a uniform draw in `[0, 1)`).
    pub fn corrupt(self, output: &mut [u8], unit: f64) {
        if self == WorkerBehaviour::WrongToken && output.len() >= 7 {
            // A generation: stop reason (1 byte), count (2), then token ids (u32 little-endian).
            let token = u32::from_le_bytes([output[3], output[4], output[5], output[6]]);
            output[3..7].copy_from_slice(&(token ^ 1).to_le_bytes());
            return;
        }
        let lie = match self {
            WorkerBehaviour::AlwaysWrong | WorkerBehaviour::WrongToken => true,
            WorkerBehaviour::WrongPercent(p) => unit * 100.0 < f64::from(p),
            _ => false,
        };
        if lie && let Some(first) = output.first_mut() {
            *first ^= 0xff;
        }
    }

    /// A receipt this worker forges next to a real `claim`, if it is a forger: a job that never happened,
    /// with the real submitter's countersignature faked (signed with the worker's own key). Every peer's
    /// receipt check refuses it.
    pub fn forged_receipt(
        self,
        mut claim: WorkClaim,
        budget: Signed<Budget>,
        key: &NodeKey,
    ) -> Option<Signed<Receipt>> {
        if self != WorkerBehaviour::ReceiptForger {
            return None;
        }
        claim.job = JobId::of(&[claim.job.as_bytes().as_slice(), b"forged"].concat());
        let claim = Signed::sign(claim, key).ok()?;
        let body = Receipt {
            credit: claim.body.claimed_credit,
            claim,
            verdict: Verdict::Accepted,
            issued_ms: crate::clock::now_ms(),
            seq: u64::MAX,
            spent: budget.body.amount,
            budget,
        };
        let signature = key.sign_digest(&fleetmesh_protocol::signing::signing_digest(&body));
        Some(Signed { body, signature })
    }
}

/// How a node serves model chunks to peers. Only tests set anything but [`ServeBehaviour::Honest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServeBehaviour {
    /// Serves the true bytes.
    #[default]
    Honest,
    /// Flips a byte in every chunk it serves (to test that fetchers refuse corrupted chunks).
    CorruptChunks,
}

impl ServeBehaviour {
    /// Changes a chunk about to be served the way this server lies (an honest one leaves it as it is).
    pub fn tamper(self, chunk: &mut [u8]) {
        if self == ServeBehaviour::CorruptChunks
            && let Some(b) = chunk.first_mut()
        {
            *b ^= 0x5a;
        }
    }
}
