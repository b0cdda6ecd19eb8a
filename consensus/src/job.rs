//! The lifecycle of one job, as the submitter sees it: offer -> bids -> assignment of `r` distinct workers
//! -> commits (every worker binds itself to its output before anyone reveals) -> reveals -> verdict.
//!
//! Sans-IO: every input carries the time (`now_ms`) and returns the [`Action`]s the caller must carry out.
//! Disagreement escalates to extra workers up to a limit; a worker that times out or withdraws is
//! replaced; a verdict, once reached, never changes.

use std::collections::{BTreeMap, BTreeSet};

use fleetmesh_protocol::messages::{
    AgreementRule, Bid, JobOffer, NumericClass, ResultCommit, ResultReveal, Withdraw,
};
use fleetmesh_protocol::{JobId, NodeId};

use crate::quorum;

/// A job draws at most this many times `replicas + max_extra` workers in all, replacements included.
pub const DRAWS_PER_WORKER: usize = 3;

/// Timing and redundancy of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobConfig {
    /// Agreeing workers required (the offer's `replicas`).
    pub replicas: usize,
    /// Extra workers that may be drawn when results disagree or workers drop out (workers that time out
    /// or hand the job back do not count: they are replaced while bids last).
    pub max_extra: usize,
    /// Time an assigned worker has to send its commit.
    pub commit_timeout_ms: u64,
    /// Time a worker has to reveal once reveals are requested.
    pub reveal_timeout_ms: u64,
}

impl JobConfig {
    /// The configuration for an offer: its replica count, up to `max_extra` extra workers.
    pub fn for_offer(offer: &JobOffer, max_extra: usize) -> Self {
        Self {
            replicas: usize::from(offer.replicas.max(1)),
            max_extra,
            commit_timeout_ms: 10_000,
            reveal_timeout_ms: 10_000,
        }
    }
}

/// Where one assigned worker stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// Assigned; its commit is due by the deadline.
    Assigned {
        /// Commit deadline.
        commit_by_ms: u64,
    },
    /// Committed to an output; waiting for the reveal phase.
    Committed {
        /// The commitment.
        commitment: [u8; 32],
    },
    /// Asked to reveal; the reveal is due by the deadline.
    RevealDue {
        /// The commitment.
        commitment: [u8; 32],
        /// Reveal deadline.
        reveal_by_ms: u64,
    },
    /// Revealed an output that opens its commitment.
    Revealed {
        /// The output.
        output: Vec<u8>,
        /// Compute time the worker reported, in microseconds.
        compute_us: u64,
        /// Energy the worker reported, in µWh.
        energy_uwh: u64,
    },
    /// Missed a deadline.
    TimedOut,
    /// Handed the job back.
    Withdrawn,
    /// Revealed something that does not open its commitment.
    Invalid,
}

impl SlotState {
    fn is_active(&self) -> bool {
        matches!(
            self,
            Self::Assigned { .. } | Self::Committed { .. } | Self::RevealDue { .. } | Self::Revealed { .. }
        )
    }
}

/// The final outcome of a job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// A quorum agreed: the accepted output and the workers whose outputs agree with it.
    Accepted {
        /// The accepted output (the representative's).
        output: Vec<u8>,
        /// Workers whose outputs agreed (distinct, at least `replicas`, or a strict majority after
        /// escalation).
        agreeing: Vec<NodeId>,
        /// Workers whose revealed outputs disagreed.
        disagreeing: Vec<NodeId>,
    },
    /// No result could be accepted.
    Failed(FailReason),
}

/// Why a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FailReason {
    /// Every allowed worker was drawn and no group agreed by quorum or strict majority.
    NoAgreement,
    /// Not enough workers bid, or too many dropped out, before the deadline.
    NotEnoughWorkers,
}

/// What the caller must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a signed `Assignment` to this worker.
    Assign {
        /// The worker.
        worker: NodeId,
        /// Its commit deadline.
        commit_by_ms: u64,
    },
    /// Ask this worker to reveal its output (every active worker has committed).
    RequestReveal {
        /// The worker.
        worker: NodeId,
    },
    /// The job has its final outcome; persist it and issue receipts.
    Decide(Outcome),
}

/// Why an input was refused (the caller may penalise the sender).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The message is about another job.
    #[error("message for another job")]
    WrongJob,
    /// The sender was not assigned this job (or was replaced).
    #[error("{0:?} is not an active worker of this job")]
    NotAssigned(NodeId),
    /// A reveal arrived before the worker was asked to reveal (commit before reveal is enforced).
    #[error("reveal before the reveal phase")]
    RevealTooEarly,
    /// The message repeats or contradicts an earlier one.
    #[error("duplicate or out-of-order message")]
    OutOfOrder,
    /// The job is decided; nothing changes it.
    #[error("job already decided")]
    Decided,
}

/// The submitter's state machine for one job.
#[derive(Debug, Clone)]
pub struct Job {
    id: JobId,
    rule: AgreementRule,
    cfg: JobConfig,
    deadline_ms: u64,
    bids: Vec<Bid>,
    class: Option<NumericClass>,
    slots: BTreeMap<NodeId, SlotState>,
    order: Vec<NodeId>,
    excluded: BTreeSet<NodeId>,
    outcome: Option<Outcome>,
}

impl Job {
    /// A job for `offer` (its id, rule and deadline), waiting for bids.
    pub fn new(offer: &JobOffer, cfg: JobConfig) -> Self {
        Self {
            id: offer.id(),
            rule: offer.rule,
            cfg,
            deadline_ms: offer.deadline_ms,
            bids: Vec::new(),
            class: None,
            slots: BTreeMap::new(),
            order: Vec::new(),
            excluded: BTreeSet::new(),
            outcome: None,
        }
    }

    /// How many agreeing workers the job's verdict needs (1: it rests on one worker's word).
    pub fn replicas(&self) -> usize {
        self.cfg.replicas
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The outcome, once decided.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Every worker ever assigned, in assignment order, with its state.
    pub fn slots(&self) -> impl Iterator<Item = (&NodeId, &SlotState)> {
        self.order
            .iter()
            .filter_map(|w| self.slots.get(w).map(|s| (w, s)))
    }

    /// Undecided, short of workers, and with no unexpired fitting bid left to draw one from: only new
    /// bidders can save it.
    pub fn starved(&self, now_ms: u64) -> bool {
        self.outcome.is_none()
            && self.active() < self.wanted()
            && self.may_draw()
            && !self.bids.iter().any(|b| {
                !self.slots.contains_key(&b.worker)
                    && !self.excluded.contains(&b.worker)
                    && b.expires_ms >= now_ms
                    && self.class_fits(b)
            })
    }

    /// Workers that count toward the job's limit of `replicas + max_extra`: every one assigned except
    /// those that timed out or handed the job back (they produced nothing, so a job replaces them while
    /// it has bids; each worker is drawn at most once, and the deadline still ends the job).
    fn counted(&self) -> usize {
        self.slots
            .values()
            .filter(|s| !matches!(s, SlotState::TimedOut | SlotState::Withdrawn))
            .count()
    }

    /// Whether the job may draw another worker: fewer than `replicas + max_extra` count, and fewer than
    /// [`DRAWS_PER_WORKER`] times that were ever drawn. Replacing workers that time out or withdraw
    /// costs them nothing, so without the second bound keys that take a job and hand it back at once
    /// could keep it drawing until its deadline.
    fn may_draw(&self) -> bool {
        let limit = self.cfg.replicas + self.cfg.max_extra;
        self.counted() < limit && self.slots.len() < limit * DRAWS_PER_WORKER
    }

    fn active(&self) -> usize {
        self.slots.values().filter(|s| s.is_active()).count()
    }

    fn wanted(&self) -> usize {
        // r workers, plus one for every worker whose revealed output is outside the largest agreeing group.
        let revealed: Vec<(NodeId, &[u8])> = self.revealed();
        let extra = match quorum::find_quorum(&self.rule, &revealed, 1) {
            Some((_, members)) => revealed.len() - members.len(),
            None => 0,
        };
        (self.cfg.replicas + extra).min(self.cfg.replicas + self.cfg.max_extra)
    }

    fn revealed(&self) -> Vec<(NodeId, &[u8])> {
        self.order
            .iter()
            .filter_map(|w| match self.slots.get(w) {
                Some(SlotState::Revealed { output, .. }) => Some((*w, output.as_slice())),
                _ => None,
            })
            .collect()
    }

    fn class_fits(&self, bid: &Bid) -> bool {
        match (&self.rule, &self.class) {
            (AgreementRule::Exact, Some(class)) => *class == bid.class,
            _ => true,
        }
    }

    /// Assigns workers from the fitting bids, in the order they were given, until `wanted` are active
    /// (or the limit is hit). The order is the submitter's: its plan's workers, then its backups in the
    /// order it drew them, then later bids. Not by price: when results disagree, the cheapest bid would
    /// hand the deciding extra worker to keys that underbid everyone.
    fn fill(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        while self.active() < self.wanted() && self.may_draw() {
            let pick = self
                .bids
                .iter()
                .enumerate()
                .filter(|(_, b)| !self.slots.contains_key(&b.worker) && !self.excluded.contains(&b.worker))
                .find(|(_, b)| b.expires_ms >= now_ms && self.class_fits(b))
                .map(|(i, _)| i);
            let Some(i) = pick else { break };
            let bid = self.bids.remove(i);
            if matches!(self.rule, AgreementRule::Exact) && self.class.is_none() {
                self.class = Some(bid.class.clone());
            }
            let commit_by_ms = now_ms + self.cfg.commit_timeout_ms;
            self.slots
                .insert(bid.worker, SlotState::Assigned { commit_by_ms });
            self.order.push(bid.worker);
            actions.push(Action::Assign {
                worker: bid.worker,
                commit_by_ms,
            });
        }
    }

    /// When every active worker has committed, asks those not yet asked to reveal.
    fn open_reveals(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let waiting_commit = self
            .slots
            .values()
            .any(|s| matches!(s, SlotState::Assigned { .. }));
        if waiting_commit || self.active() < self.cfg.replicas.min(self.wanted()) {
            return;
        }
        for worker in &self.order {
            if let Some(slot) = self.slots.get_mut(worker)
                && let SlotState::Committed { commitment } = *slot
            {
                *slot = SlotState::RevealDue {
                    commitment,
                    reveal_by_ms: now_ms + self.cfg.reveal_timeout_ms,
                };
                actions.push(Action::RequestReveal { worker: *worker });
            }
        }
    }

    /// Decides if the revealed outputs allow it, else escalates or fails.
    fn decide(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let revealed = self.revealed();
        let pending = self.slots.values().any(|s| {
            matches!(
                s,
                SlotState::Assigned { .. } | SlotState::Committed { .. } | SlotState::RevealDue { .. }
            )
        });
        if let Some((rep, agreeing)) = quorum::find_quorum(&self.rule, &revealed, self.cfg.replicas) {
            return self.finish(rep, agreeing, actions);
        }
        let limit_reached = !self.may_draw();
        let no_more_bids = !self.bids.iter().any(|b| {
            !self.slots.contains_key(&b.worker) && !self.excluded.contains(&b.worker) && self.class_fits(b)
        });
        if pending {
            return;
        }
        if limit_reached || (no_more_bids && now_ms >= self.deadline_ms) {
            // Last resort: a strict majority of at least two revealed outputs (three when the job
            // asked for three or more: a job planned without a trusted worker must not fall back to
            // two workers that may collude).
            let floor = self.cfg.replicas.clamp(2, 3);
            if let Some((rep, agreeing)) = quorum::find_quorum(&self.rule, &revealed, floor)
                && agreeing.len() * 2 > revealed.len()
            {
                return self.finish(rep, agreeing, actions);
            }
            let reason = if revealed.len() >= self.cfg.replicas {
                FailReason::NoAgreement
            } else {
                FailReason::NotEnoughWorkers
            };
            self.set_outcome(Outcome::Failed(reason), actions);
        }
    }

    fn finish(&mut self, rep: usize, agreeing: Vec<NodeId>, actions: &mut Vec<Action>) {
        let revealed = self.revealed();
        let output = revealed[rep].1.to_vec();
        let disagreeing = revealed
            .iter()
            .map(|(w, _)| *w)
            .filter(|w| !agreeing.contains(w))
            .collect();
        self.set_outcome(
            Outcome::Accepted {
                output,
                agreeing,
                disagreeing,
            },
            actions,
        );
    }

    fn set_outcome(&mut self, outcome: Outcome, actions: &mut Vec<Action>) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome.clone());
            actions.push(Action::Decide(outcome));
        }
    }

    fn step(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.outcome.is_some() {
            return actions;
        }
        self.fill(now_ms, &mut actions);
        self.open_reveals(now_ms, &mut actions);
        self.decide(now_ms, &mut actions);
        if self.outcome.is_none() {
            // A decision may have asked for another worker (disagreement): assign it now.
            self.fill(now_ms, &mut actions);
            self.open_reveals(now_ms, &mut actions);
        }
        actions
    }

    /// A bid from a worker (already signature-checked by the caller).
    pub fn on_bid(&mut self, bid: Bid, now_ms: u64) -> Result<Vec<Action>, JobError> {
        if bid.job != self.id {
            return Err(JobError::WrongJob);
        }
        if self.outcome.is_some() {
            return Err(JobError::Decided);
        }
        if self.bids.iter().any(|b| b.worker == bid.worker) || self.slots.contains_key(&bid.worker) {
            return Err(JobError::OutOfOrder);
        }
        self.bids.push(bid);
        Ok(self.step(now_ms))
    }

    /// A worker's commit.
    pub fn on_commit(&mut self, commit: &ResultCommit, now_ms: u64) -> Result<Vec<Action>, JobError> {
        if commit.job != self.id {
            return Err(JobError::WrongJob);
        }
        if self.outcome.is_some() {
            return Err(JobError::Decided);
        }
        match self.slots.get_mut(&commit.worker) {
            Some(slot @ SlotState::Assigned { .. }) => {
                *slot = SlotState::Committed {
                    commitment: commit.commitment,
                }
            }
            Some(s) if s.is_active() => return Err(JobError::OutOfOrder),
            _ => return Err(JobError::NotAssigned(commit.worker)),
        }
        Ok(self.step(now_ms))
    }

    /// A worker's reveal: accepted only in the reveal phase and only if it opens the worker's commit.
    pub fn on_reveal(&mut self, reveal: &ResultReveal, now_ms: u64) -> Result<Vec<Action>, JobError> {
        self.reveal(reveal, true, now_ms)
    }

    /// A reveal whose output the submitter refuted with a check of its own (a generation scored by the
    /// model): in the reveal phase it counts as invalid, whether or not it opens the commit, and the
    /// worker is excluded from the job.
    pub fn on_refuted_reveal(&mut self, reveal: &ResultReveal, now_ms: u64) -> Result<Vec<Action>, JobError> {
        self.reveal(reveal, false, now_ms)
    }

    /// Raises the agreeing workers the job needs to at least `replicas` (a submitter that lost its
    /// trusted worker then needs several untrusted ones) and draws the workers that takes.
    pub fn raise_replicas(&mut self, replicas: usize, now_ms: u64) -> Vec<Action> {
        self.cfg.replicas = self.cfg.replicas.max(replicas);
        self.step(now_ms)
    }

    fn reveal(&mut self, reveal: &ResultReveal, valid: bool, now_ms: u64) -> Result<Vec<Action>, JobError> {
        if reveal.job != self.id {
            return Err(JobError::WrongJob);
        }
        if self.outcome.is_some() {
            return Err(JobError::Decided);
        }
        let slot = self
            .slots
            .get_mut(&reveal.worker)
            .ok_or(JobError::NotAssigned(reveal.worker))?;
        match *slot {
            SlotState::RevealDue { commitment, .. } => {
                let commit = ResultCommit {
                    job: reveal.job,
                    worker: reveal.worker,
                    commitment,
                };
                *slot = if valid && reveal.opens(&commit) {
                    SlotState::Revealed {
                        output: reveal.output.clone(),
                        compute_us: reveal.compute_us,
                        energy_uwh: reveal.energy_uwh,
                    }
                } else {
                    self.excluded.insert(reveal.worker);
                    SlotState::Invalid
                };
            }
            SlotState::Assigned { .. } | SlotState::Committed { .. } => return Err(JobError::RevealTooEarly),
            SlotState::Revealed { .. } => return Err(JobError::OutOfOrder),
            _ => return Err(JobError::NotAssigned(reveal.worker)),
        }
        Ok(self.step(now_ms))
    }

    /// A worker hands the job back; it is replaced and earns nothing.
    pub fn on_withdraw(&mut self, withdraw: &Withdraw, now_ms: u64) -> Result<Vec<Action>, JobError> {
        if withdraw.job != self.id {
            return Err(JobError::WrongJob);
        }
        if self.outcome.is_some() {
            return Err(JobError::Decided);
        }
        match self.slots.get_mut(&withdraw.worker) {
            Some(slot) if slot.is_active() && !matches!(slot, SlotState::Revealed { .. }) => {
                *slot = SlotState::Withdrawn;
                self.excluded.insert(withdraw.worker);
            }
            _ => return Err(JobError::NotAssigned(withdraw.worker)),
        }
        Ok(self.step(now_ms))
    }

    /// Time passes: missed deadlines replace workers; the job's own deadline ends it.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        if self.outcome.is_some() {
            return Vec::new();
        }
        for (worker, slot) in self.slots.iter_mut() {
            let late = match slot {
                SlotState::Assigned { commit_by_ms } => now_ms > *commit_by_ms,
                SlotState::RevealDue { reveal_by_ms, .. } => now_ms > *reveal_by_ms,
                _ => false,
            };
            if late {
                *slot = SlotState::TimedOut;
                self.excluded.insert(*worker);
            }
        }
        let mut actions = self.step(now_ms);
        if self.outcome.is_none() && now_ms > self.deadline_ms {
            let revealed = self.revealed().len();
            let reason = if revealed >= self.cfg.replicas {
                FailReason::NoAgreement
            } else {
                FailReason::NotEnoughWorkers
            };
            self.set_outcome(Outcome::Failed(reason), &mut actions);
        }
        actions
    }
}
