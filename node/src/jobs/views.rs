//! What the local API shows of the job roles: submitted jobs, the receipts this node holds, and the
//! ledger (credit, jobs and energy per worker) computed from them.

use std::collections::BTreeMap;

use fleetmesh_consensus::job::{Job, Outcome, SlotState};
use fleetmesh_consensus::ledger::Ledger;
use fleetmesh_consensus::trust::Standing;
use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::Receipt;
use fleetmesh_protocol::{JobId, NodeId, Signed};

use super::{Jobs, Submitted};

/// A submitted job as the local API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobView {
    /// Job id (hex).
    pub job: String,
    /// Model id (hex).
    pub model: String,
    /// `pending`, `accepted`, `revised` (accepted, then corrected by a recheck: the output is the
    /// corrected one) or `failed`.
    pub state: &'static str,
    /// Accepted output, hex.
    pub output_hex: Option<String>,
    /// For a revised job: the output accepted first (wrong), hex.
    pub first_output_hex: Option<String>,
    /// For a revised job: the recheck job whose verdict corrected it (id, hex).
    pub revised_by: Option<String>,
    /// Accepted output read as little-endian f32 (when its length allows).
    pub values: Option<Vec<f32>>,
    /// Workers whose outputs agreed (node ids; for a revised job, those of the recheck).
    pub agreeing: Vec<String>,
    /// Workers assigned so far.
    pub workers_assigned: usize,
    /// While the job is pending: each assigned worker (node id) and where it stands (`assigned`,
    /// `committed`, `reveal_due`, `revealed`, `timed_out`, `withdrawn` or `invalid`).
    pub workers: Vec<WorkerView>,
    /// Receipts issued.
    pub receipts: usize,
    /// Ids of those receipts (blake3 of each signed receipt's canonical bytes, hex).
    pub receipt_ids: Vec<String>,
    /// Model name, if this node knows the model.
    pub model_name: Option<String>,
    /// When the job was (last) offered, ms since the Unix epoch.
    pub offered_ms: u64,
    /// Why the job failed.
    pub reason: Option<String>,
    /// The job asked for one replica: its accepted output came from one worker, unchecked.
    pub unverified: bool,
    /// The accepted output as text, for a text-generation model this node has (smollm2).
    pub text: Option<String>,
}

/// A worker as this node's submitter judges it (`GET /v1/reputation`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerStanding {
    /// The worker's node id.
    pub node: String,
    /// `trusted`, `untrusted` or `probation` (out-voted, or missed jobs too often, lately).
    pub standing: &'static str,
    /// Validated results since the last invalid one.
    pub streak: u32,
    /// Validated results in all.
    pub valid: u64,
    /// Invalid results in all.
    pub invalid: u64,
    /// Times jobs it took were not delivered, since its last validated result.
    pub missed: u32,
    /// Results accepted on its word alone, kept to be rechecked if it is caught lying.
    pub unchecked: usize,
}

/// One assigned worker of a pending job.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerView {
    /// The worker's node id.
    pub node: String,
    /// Where its slot stands.
    pub state: &'static str,
}

/// One node's statement for an epoch ([`Jobs::statement`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statement {
    /// Jobs, credit and energy per payer.
    pub by_payer: BTreeMap<NodeId, Earnings>,
    /// The accepted receipts it counts (ids as in `GET /v1/jobs/{id}`).
    pub receipt_ids: Vec<String>,
    /// Budgets (payer, holder, serial) voided by a fraud proof among the receipts held.
    pub void_budgets: Vec<(NodeId, NodeId, u64)>,
}

/// Per-node totals from the receipts this node has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Earnings {
    /// Accepted jobs.
    pub jobs: u64,
    /// Credit earned, in micro-credits.
    pub credit: u64,
    /// Energy spent on accepted jobs, in µWh.
    pub energy_uwh: u64,
}

/// Jobs a node submitted, by state (from its store, so they survive restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SubmittedCounts {
    /// Jobs submitted.
    pub submitted: u64,
    /// Of those, accepted by quorum.
    pub accepted: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Of those, still waiting for a verdict.
    pub pending: u64,
}

/// How the API names a worker's slot state.
fn slot_name(s: &SlotState) -> &'static str {
    match s {
        SlotState::Assigned { .. } => "assigned",
        SlotState::Committed { .. } => "committed",
        SlotState::RevealDue { .. } => "reveal_due",
        SlotState::Revealed { .. } => "revealed",
        SlotState::TimedOut => "timed_out",
        SlotState::Withdrawn => "withdrawn",
        SlotState::Invalid => "invalid",
    }
}

/// An output read as little-endian f32 values, when its length allows.
fn values_of(output: &[u8]) -> Option<Vec<f32>> {
    output
        .len()
        .is_multiple_of(4)
        .then(|| crate::inference::f32s(output))
}

/// A receipt's id: blake3 of its canonical bytes, hex.
pub fn receipt_id(r: &Signed<Receipt>) -> String {
    blake3::hash(&codec::encode(r)).to_hex().to_string()
}

impl Jobs {
    /// A job this node submitted, as the local API shows it (by the id its user knows, or its current
    /// offer's).
    pub fn view(&self, job: &JobId) -> Option<JobView> {
        {
            let side = self.submitter();
            let original = side.by_offer.get(job).unwrap_or(job);
            if let Some(sub) = side.jobs.get(original) {
                return Some(self.view_of(original, sub, side.core.job(&sub.offer.id())));
            }
        }
        // Decided long ago: its verdict left memory but not the store.
        let record = self.inner.store.submitted_one(job)?;
        let offer = record.offer.id();
        let receipt_ids = self
            .book()
            .receipts
            .values()
            .filter(|r| r.body.claim.body.job == offer)
            .map(receipt_id)
            .collect();
        let sub = Submitted {
            offer: record.offer,
            adaptive: record.adaptive,
            receipt_ids,
            waiters: Vec::new(),
            result: record.result,
            revised: self.inner.store.revision(job),
        };
        Some(self.view_of(job, &sub, None))
    }

    /// The `n` most recently offered jobs this node submitted, newest first.
    pub fn recent(&self, n: usize) -> Vec<JobView> {
        let side = self.submitter();
        let mut subs: Vec<(&JobId, &Submitted)> = side.jobs.iter().collect();
        subs.sort_by_key(|(_, s)| std::cmp::Reverse(s.offer.created_ms));
        subs.into_iter()
            .take(n)
            .map(|(original, sub)| self.view_of(original, sub, side.core.job(&sub.offer.id())))
            .collect()
    }

    /// The jobs this node submitted that its store holds, by state.
    pub fn submitted_counts(&self) -> SubmittedCounts {
        let side = self.submitter();
        let mut c = SubmittedCounts {
            submitted: side.jobs.len() as u64 + side.evicted.0 + side.evicted.1,
            accepted: side.evicted.0,
            failed: side.evicted.1,
            ..SubmittedCounts::default()
        };
        for s in side.jobs.values() {
            match s.result.as_ref().map(|r| &r.outcome) {
                Some(Outcome::Accepted { .. }) => c.accepted += 1,
                Some(Outcome::Failed(_)) => c.failed += 1,
                None => c.pending += 1,
            }
        }
        c
    }

    /// The view of a submitted job; `in_flight` is its state machine while the submitter core holds it.
    fn view_of(&self, job: &JobId, sub: &Submitted, in_flight: Option<&Job>) -> JobView {
        let workers: Vec<WorkerView> = in_flight
            .into_iter()
            .flat_map(|j| j.slots())
            .map(|(w, s)| WorkerView {
                node: w.to_string(),
                state: slot_name(s),
            })
            .collect();
        let mut view = JobView {
            job: job.to_string(),
            model: sub.offer.model.to_string(),
            state: "pending",
            output_hex: None,
            first_output_hex: None,
            revised_by: None,
            values: None,
            agreeing: Vec::new(),
            workers_assigned: workers.len(),
            workers,
            receipts: 0,
            receipt_ids: sub.receipt_ids.clone(),
            model_name: self.model_name(&sub.offer.model),
            offered_ms: sub.offer.created_ms,
            reason: None,
            unverified: !sub.adaptive && sub.offer.replicas <= 1,
            text: None,
        };
        if let Some(result) = &sub.result {
            view.receipts = result.receipts;
            view.workers_assigned = result.workers_assigned;
            match &result.outcome {
                Outcome::Accepted { output, agreeing, .. } => {
                    view.state = "accepted";
                    view.output_hex = Some(hex::encode(output));
                    view.values = values_of(output);
                    view.agreeing = agreeing.iter().map(NodeId::to_string).collect();
                }
                Outcome::Failed(reason) => {
                    view.state = "failed";
                    view.reason = Some(format!("{reason:?}"));
                }
            }
        }
        if let Some(revised) = &sub.revised {
            view.state = "revised";
            view.first_output_hex = view.output_hex.take();
            view.output_hex = Some(hex::encode(&revised.output));
            view.values = values_of(&revised.output);
            view.agreeing = revised.agreeing.iter().map(NodeId::to_string).collect();
            view.revised_by = Some(revised.recheck.to_string());
        }
        if let Some(output) = view.output_hex.as_ref().and_then(|h| hex::decode(h).ok()) {
            view.text = self.output_text(&sub.offer.model, &output);
        }
        view
    }

    /// Credit, energy and accepted jobs per worker: the ledger computed from every receipt this node has
    /// seen (signatures checked one by one, duplicates counted once, BOINC's least-claim credit).
    ///
    /// The result is kept until the receipts change: the dashboard, `/metrics` and `/v1/earnings` ask
    /// often, and each computation checks every receipt's two signatures.
    pub fn earnings(&self) -> BTreeMap<NodeId, Earnings> {
        let (generation, receipts, revocations) = {
            let book = self.book();
            if let Some((g, ledger)) = &book.ledger
                && *g == book.generation
            {
                return ledger.clone();
            }
            let (receipts, revocations) = book.snapshot();
            (book.generation, receipts, revocations)
        };
        let ledger: BTreeMap<NodeId, Earnings> =
            Ledger::with_revocations(&receipts, &revocations, &self.inner.cfg.payers)
                .balances
                .into_iter()
                .map(|(node, b)| {
                    let e = Earnings {
                        jobs: b.jobs,
                        credit: b.credit,
                        energy_uwh: b.energy_uwh,
                    };
                    (node, e)
                })
                .collect();
        let mut book = self.book();
        if book.ledger.as_ref().is_none_or(|(g, _)| *g < generation) {
            book.ledger = Some((generation, ledger.clone()));
        }
        ledger
    }

    /// When and with how much energy `worker` did each job the receipts this node holds accept: (claim
    /// time in ms since the Unix epoch, µWh).
    pub fn receipts_of(&self, worker: &NodeId) -> Vec<(u64, u64)> {
        self.book()
            .receipts
            .values()
            .filter(|r| r.body.claim.body.worker == *worker && r.body.verdict.is_accepted())
            .map(|r| (r.body.claim.body.claimed_ms, r.body.claim.body.energy_uwh))
            .collect()
    }

    /// This node's statement for the epoch `from_ms..to_ms` (receipts issued then): jobs, energy and
    /// credit per payer, which a payer can check against the receipts (their ids are listed), and the
    /// budgets found overspent (void: they pay nothing) among every receipt this node holds.
    pub fn statement(&self, from_ms: u64, to_ms: u64) -> Statement {
        let (receipts, revocations) = self.book().snapshot();
        let payers = &self.inner.cfg.payers;
        let me = self.inner.me;
        let ledger = Ledger::in_epoch(&receipts, &revocations, payers, from_ms..to_ms);
        let by_payer = ledger
            .by_payer
            .iter()
            .filter(|((worker, _), _)| *worker == me)
            .map(|((_, payer), b)| {
                let e = Earnings {
                    jobs: b.jobs,
                    credit: b.credit,
                    energy_uwh: b.energy_uwh,
                };
                (*payer, e)
            })
            .collect();
        // The receipts it counts: this node's accepted ones of the epoch, paid by a payer it honours from
        // a budget not voided.
        let receipt_ids = receipts
            .iter()
            .filter(|r| {
                let (c, b) = (&r.body.claim.body, &r.body.budget.body);
                c.worker == me
                    && r.body.verdict.is_accepted()
                    && (from_ms..to_ms).contains(&r.body.issued_ms)
                    && payers.contains(&b.payer)
                    && !ledger.void.contains_key(&b.key())
                    && !ledger.revoked.contains(&(c.job, c.worker))
            })
            .map(receipt_id)
            .collect();
        Statement {
            by_payer,
            receipt_ids,
            void_budgets: ledger.void.keys().copied().collect(),
        }
    }

    /// Jobs assigned to this node as a worker: (still computing, computed).
    pub fn work_counts(&self) -> (usize, usize) {
        let side = self.worker();
        let computing = side.work.values().filter(|w| w.done.is_none()).count();
        (computing, side.work.len() - computing)
    }

    /// Receipts this node has seen.
    pub fn receipt_count(&self) -> usize {
        self.book().receipts.len()
    }

    /// Results of this node's jobs accepted on `worker`'s word alone, remembered to be rechecked if it is
    /// caught lying ([`fleetmesh_consensus::revision::Audit`]).
    pub fn unchecked_results(&self, worker: &NodeId) -> usize {
        self.submitter().core.audit().pending(worker)
    }

    /// Every worker this node's submitter has judged, as it stands now.
    pub fn reputation(&self) -> Vec<WorkerStanding> {
        let now = crate::clock::now_ms();
        let side = self.submitter();
        let reputation = side.core.reputation();
        reputation
            .records()
            .map(|(node, r)| WorkerStanding {
                node: node.to_string(),
                standing: match r.standing(reputation.config(), now) {
                    Standing::Trusted => "trusted",
                    Standing::Untrusted => "untrusted",
                    Standing::Probation => "probation",
                },
                streak: r.streak,
                valid: r.valid,
                invalid: r.invalid,
                missed: r.missed,
                unchecked: side.core.audit().pending(node),
            })
            .collect()
    }

    /// Reputation of `worker` as this node's submitter core holds it.
    pub fn reputation_of(&self, worker: &NodeId) -> fleetmesh_consensus::trust::Record {
        self.submitter().core.reputation().record(worker)
    }
}
