//! The submitter's decisions for every job it has offered, sans-IO: the bid window, the choice of workers
//! (a fixed replica count drawn from the cheaper half of the bids, or adaptive replication by reputation), the [`Job`] state
//! machine of each job, the credit rule of its receipts and the reputation updates its verdicts make.
//!
//! Inputs carry the time (`now_ms`) and, where a choice is random, a [`Randomness`] source; every input
//! returns the [`Action`]s the caller must carry out: send an assignment or a reveal request, wake this
//! machine again at a time, or sign, store and publish a decided job's receipts. The node does exactly
//! that and nothing more; the adversarial simulation ([`crate::simulation`]) drives this same type.
//!
//! A decided job leaves the machine (its [`JobResult`] goes out with [`Action::Decide`]), so the state
//! held is bounded by the jobs in flight, plus the bounded [`Audit`] of results accepted on one worker's
//! word, kept so that a worker caught lying later has them revoked and rechecked ([`crate::revision`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fleetmesh_protocol::messages::{
    Bid, Budget, JobOffer, Receipt, ResultCommit, ResultReveal, Verdict, Withdraw, WithdrawReason, WorkClaim,
};
use fleetmesh_protocol::{JobId, NodeId, Signed};

pub use crate::assign::{Randomness, UNTRUSTED_QUORUM, fixed_plan};
use crate::assign::{cost, price_pool};
use crate::job::{self, Job, JobConfig, JobError, Outcome, SlotState};
use crate::payment::Spending;
pub use crate::revision::Recheck;
use crate::revision::{Audit, Unchecked};
use crate::trust::{self, Reputation, Standing, TrustConfig};

/// Settings of the submitter role.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubmitterConfig {
    /// Extra workers a job may draw on disagreement or dropouts.
    pub max_extra: usize,
    /// Time an assigned worker has to commit, and later to reveal.
    pub step_timeout_ms: u64,
    /// How long a job collects bids before its workers are chosen (it closes early once as many bids as
    /// the caller says are enough are in).
    pub bid_window_ms: u64,
    /// Reputation settings (used by adaptive jobs, and for the reputation kept from every verdict).
    pub trust: TrustConfig,
    /// A job whose workers were chosen this long ago and that is still short of workers, with no bid
    /// left to draw from, or that has had no bid at all this long after its offer, is offered again
    /// ([`Action::Reoffer`]): its offer reached too few cars.
    pub reoffer_after_ms: u64,
    /// How many times one job is offered again that way.
    pub max_reoffers: u32,
    /// Whether a submitter with fewer than three peers may accept two agreeing untrusted workers (a
    /// small fleet of one owner, a local testnet). Off by default: a fresh, eclipsed or NATed submitter
    /// with two peers could then be fooled by two keys; with it off such a job waits for a third
    /// worker (or fails `NotEnoughWorkers` at its deadline) unless a trusted worker bids.
    pub small_fleet: bool,
}

impl Default for SubmitterConfig {
    fn default() -> Self {
        Self {
            max_extra: 2,
            step_timeout_ms: 10_000,
            bid_window_ms: 25,
            trust: TrustConfig::default(),
            reoffer_after_ms: 3_000,
            max_reoffers: 2,
            small_fleet: false,
        }
    }
}

/// How many workers a job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// The offer's replica count, drawn at random from the cheaper bids (price plus the car's
    /// electricity cost; see [`fixed_plan`]).
    Fixed,
    /// Chosen by the workers' reputation ([`trust::plan_preferring`]): a trusted worker runs alone except
    /// for spot checks, an untrusted one always gets an independent partner.
    Adaptive,
}

/// The verdict of a submitted job, as its submitter saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobResult {
    /// The job (the id its submitter was given, even if it was re-offered under another).
    pub job: JobId,
    /// Accepted output and agreeing workers, or the failure reason.
    pub outcome: Outcome,
    /// Workers assigned over the job's life.
    pub workers_assigned: usize,
    /// Receipts issued (one per revealing worker).
    pub receipts: usize,
    /// The longest compute time a revealing worker reported, in microseconds (workers run in parallel).
    pub compute_us_max: u64,
    /// The user asked for one replica: an accepted output came from one worker and nothing checked it.
    pub unverified: bool,
}

/// What the caller must do after an input. Every action names the job (the id of the offer in force).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Sign and send an `Assignment` to this worker; report a refusal with
    /// [`Submitter::on_assignment_refused`].
    Assign {
        /// The job.
        job: JobId,
        /// The worker.
        worker: NodeId,
        /// Its commit deadline.
        commit_by_ms: u64,
    },
    /// Sign and send a `RevealRequest` to this worker (again, while [`Submitter::reveal_due`] says so);
    /// hand its answer to [`Submitter::on_report`].
    RequestReveal {
        /// The job.
        job: JobId,
        /// The worker.
        worker: NodeId,
    },
    /// Offer the job its user knows as `original` again under a fresh offer (then [`Submitter::offer`]):
    /// this one reached too few cars. The job stays in flight until the fresh offer replaces it.
    Reoffer {
        /// The job (offer in force).
        job: JobId,
        /// The id its user knows.
        original: JobId,
    },
    /// Call [`Submitter::on_wake`] for this job at this time (the end of its bid window).
    WakeAt {
        /// The job.
        job: JobId,
        /// When.
        at_ms: u64,
    },
    /// The job is decided: countersign these receipt bodies, store the result and the receipts (before
    /// telling anyone), wake the job's waiters, publish the receipts.
    Decide {
        /// The job (offer in force).
        job: JobId,
        /// The verdict.
        result: JobResult,
        /// One receipt body per worker that revealed, with its verdict and credit.
        receipts: Vec<Receipt>,
    },
    /// `suspect` was caught returning a wrong output on a job decided just before (`rejection` is the body
    /// of its receipt there, as in that [`Action::Decide`]) after the job `recheck.of` was accepted on its
    /// word alone (offer `job`): sign, store and publish a `Revocation` of its receipt for `job` carrying
    /// the signed rejection as evidence, then offer `recheck.of`'s input again under a fresh offer with
    /// two replicas and hand it to [`Submitter::offer_recheck`].
    Recheck {
        /// The offer whose receipt is revoked.
        job: JobId,
        /// The suspect's `Rejected` receipt body on the job where it was caught.
        rejection: Box<Receipt>,
        /// What to recheck.
        recheck: Recheck,
    },
    /// A recheck accepted another output than the one accepted before: the job its user knows as `job`
    /// now has this output, from these workers. Store it and show the job as revised.
    Revise {
        /// The job as its user knows it.
        job: JobId,
        /// The recheck that found it (the id it was offered as).
        recheck: JobId,
        /// The corrected output.
        output: Vec<u8>,
        /// The workers that agreed on it in the recheck.
        agreeing: Vec<NodeId>,
    },
}

/// Most bids one job takes (window and later replacements together); more are answered
/// [`SubmitError::Busy`], so a flood of bids from many keys cannot grow a job without bound.
pub const MAX_BIDS_PER_JOB: usize = 256;

/// Why an input was refused (the caller may penalise the sender).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// No job in flight has this id (never offered here, decided, or forgotten).
    #[error("unknown job")]
    UnknownJob,
    /// The bid is from a worker already bidding or assigned, or is for another job.
    #[error("duplicate bid")]
    DuplicateBid,
    /// The bid came after the workers were chosen from a bidder the plan does not take.
    #[error("bid not needed")]
    NotNeeded,
    /// The job has taken [`MAX_BIDS_PER_JOB`] bids already.
    #[error("busy: the job takes no more bids")]
    Busy,
    /// A work report whose claim does not match its reveal or this submitter.
    #[error("claim does not match the reveal")]
    ClaimMismatch,
    /// The job's state machine refused the input.
    #[error(transparent)]
    Job(#[from] JobError),
}

/// The bids of a job until its workers are chosen.
#[derive(Debug, Clone, Default)]
struct BidWindow {
    bids: Vec<Bid>,
    /// The workers were chosen (and when).
    planned: bool,
    planned_at_ms: u64,
    /// A wake-up is scheduled for the end of the window.
    scheduled: bool,
    /// Nobody trusted was among the bidders when the plan was made (later bids may then join).
    none_trusted: bool,
    /// The caller's latest count of bids that are enough (the peers that could bid): a fleet of fewer
    /// than three may verify with two untrusted workers.
    enough: usize,
}

/// One job in flight.
#[derive(Debug, Clone)]
struct InFlight {
    original: JobId,
    offer: JobOffer,
    replication: Replication,
    job: Job,
    window: BidWindow,
    /// Bids taken so far (window and replacements).
    bids_taken: usize,
    /// Times the job was offered again before this offer; whether this offer asked to be replaced.
    reoffers: u32,
    reoffer_asked: bool,
    claims: BTreeMap<NodeId, Signed<WorkClaim>>,
    /// Credit set aside under the offer's budget until the job is decided or dropped.
    reserved: u64,
    /// This job re-runs another whose worker was caught lying.
    recheck: Option<Recheck>,
    /// Workers whose outputs this submitter refuted with its own check ([`Submitter::on_refuted_report`]).
    refuted: BTreeSet<NodeId>,
}

impl InFlight {
    /// A fixed job whose user asked for one replica: it runs once and is marked unverified.
    fn asked_one(&self) -> bool {
        self.replication == Replication::Fixed && self.offer.replicas <= 1
    }

    /// Whether two agreeing untrusted workers may decide: the caller counted fewer than three peers that
    /// could bid and `small_fleet` ([`SubmitterConfig::small_fleet`]) allows it.
    fn too_small(&self, small_fleet: bool) -> bool {
        self.window.enough < UNTRUSTED_QUORUM && small_fleet
    }
}

/// The most credit an accepted output earns each agreeing worker, from the offer and the output: a node
/// that prices work per unit (per generated token) caps the credit at its price times the units the
/// output took, so that workers cannot claim the offer's whole reward for a short answer.
#[derive(Clone)]
pub struct CreditCap(pub std::sync::Arc<CreditCapFn>);

/// What a [`CreditCap`] computes: the most credit per accepted worker for an offer and its accepted output.
pub type CreditCapFn = dyn Fn(&JobOffer, &[u8]) -> u64 + Send + Sync;

impl std::fmt::Debug for CreditCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CreditCap(..)")
    }
}

/// The submitter role of one node: every job it has in flight, and what it knows of the workers.
#[derive(Debug, Clone)]
pub struct Submitter {
    me: NodeId,
    cfg: SubmitterConfig,
    /// Caps each accepted worker's credit by the output (none: the least claim and the reward decide).
    credit_cap: Option<CreditCap>,
    reputation: Reputation,
    spending: Spending,
    jobs: HashMap<JobId, InFlight>,
    /// The id a user knows -> the id of the offer in force.
    originals: HashMap<JobId, JobId>,
    /// Results accepted on one worker's word.
    audit: Audit,
}

impl Submitter {
    /// The submitter `me`, with no job in flight and an empty reputation table.
    pub fn new(me: NodeId, cfg: SubmitterConfig) -> Self {
        Self {
            me,
            cfg,
            credit_cap: None,
            reputation: Reputation::new(cfg.trust),
            spending: Spending::new(),
            jobs: HashMap::new(),
            originals: HashMap::new(),
            audit: Audit::new(),
        }
    }

    /// Caps the credit of every accepted output from now on (see [`CreditCap`]).
    pub fn cap_credit(&mut self, cap: CreditCap) {
        self.credit_cap = Some(cap);
    }

    /// The results accepted on one worker's word, remembered for revision.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Replaces the audit (e.g. with [`crate::revision::rebuild_audit`] after a restart).
    pub fn set_audit(&mut self, audit: Audit) {
        self.audit = audit;
    }

    /// Another submitter's receipts show `worker` out-voted ([`crate::revision::outvoted`]): it loses
    /// its trust here ([`Reputation::distrust`]).
    pub fn distrust(&mut self, worker: NodeId) {
        self.reputation.distrust(worker);
    }

    /// The settings.
    pub fn config(&self) -> &SubmitterConfig {
        &self.cfg
    }

    /// What this submitter knows of the workers it has judged.
    pub fn reputation(&self) -> &Reputation {
        &self.reputation
    }

    /// Replaces the reputation table (e.g. with [`rebuild_reputation`] after a restart).
    pub fn set_reputation(&mut self, reputation: Reputation) {
        self.reputation = reputation;
    }

    /// What this submitter has granted under each budget.
    pub fn spending(&self) -> &Spending {
        &self.spending
    }

    /// Replaces the spending record (e.g. with [`Spending::restore`] after a restart).
    pub fn set_spending(&mut self, spending: Spending) {
        self.spending = spending;
    }

    /// Jobs in flight.
    pub fn in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// The state machine of a job in flight (for views: workers assigned, slots).
    pub fn job(&self, job: &JobId) -> Option<&Job> {
        self.jobs.get(job).map(|j| &j.job)
    }

    /// Whether `job` is in flight here.
    pub fn contains(&self, job: &JobId) -> bool {
        self.jobs.contains_key(job)
    }

    /// Ids of the jobs in flight.
    pub fn job_ids(&self) -> Vec<JobId> {
        self.jobs.keys().copied().collect()
    }

    fn job_config(&self, replicas: usize) -> JobConfig {
        JobConfig {
            replicas,
            max_extra: self.cfg.max_extra,
            commit_timeout_ms: self.cfg.step_timeout_ms,
            reveal_timeout_ms: self.cfg.step_timeout_ms,
        }
    }

    /// Takes `offer` (already signed and about to be published) for the job its user knows as
    /// `original`. A job offered again under a fresh offer replaces the old one in flight.
    ///
    /// The most the job may cost ([`Submitter::reservation`]) is set aside under its budget until it is
    /// decided or dropped: [`Spending::left`] counts it, so a budget is never promised twice.
    pub fn offer(&mut self, original: JobId, offer: JobOffer, replication: Replication) {
        let reserved = self.reservation(offer.reward, offer.replicas);
        self.spending.reserve(&offer.budget.body, reserved);
        self.offer_reserved(original, offer, replication);
    }

    /// Picks the budget among `budgets` to pay a job offering `reward` per worker with `replicas`
    /// until `deadline_ms` ([`Spending::pick`]) and sets its [`Submitter::reservation`] aside at once,
    /// so that jobs being offered at the same time cannot all count on the same credit. The caller then
    /// offers the job with [`Submitter::offer_reserved`], or gives the credit back with
    /// [`Submitter::give_back`] if it cannot.
    pub fn take_budget(
        &mut self,
        budgets: &[Signed<Budget>],
        reward: u64,
        replicas: u8,
        deadline_ms: u64,
    ) -> Option<Signed<Budget>> {
        let workers = self.workers_paid(replicas);
        let budget = self
            .spending
            .pick(budgets, &self.me, reward, workers, deadline_ms)?
            .clone();
        let amount = self.reservation(reward, replicas);
        self.spending.reserve(&budget.body, amount);
        Some(budget)
    }

    /// Gives back what [`Submitter::take_budget`] set aside for an offer that was not made.
    pub fn give_back(&mut self, budget: &Budget, reward: u64, replicas: u8) {
        let amount = self.reservation(reward, replicas);
        self.spending.release(budget, amount);
    }

    /// [`Submitter::offer`] for an offer whose credit [`Submitter::take_budget`] already set aside. (A
    /// recheck offered again stays a recheck.)
    pub fn offer_reserved(&mut self, original: JobId, offer: JobOffer, replication: Replication) {
        // A job offered again keeps the claims of the workers this submitter refuted (each gets its
        // Rejected receipt with the verdict, the evidence that catches it) and does not draw them again.
        let (reoffers, recheck, refuted) = match self.originals.insert(original, offer.id()) {
            Some(old) => self.jobs.remove(&old).map_or((0, None, BTreeMap::new()), |j| {
                self.spending.release(&j.offer.budget.body, j.reserved);
                let refuted = j
                    .claims
                    .into_iter()
                    .filter(|(w, _)| j.refuted.contains(w))
                    .collect();
                (j.reoffers + 1, j.recheck, refuted)
            }),
            None => (0, None, BTreeMap::new()),
        };
        let reserved = self.reservation(offer.reward, offer.replicas);
        let job = Job::new(&offer, self.job_config(usize::from(offer.replicas.max(1))));
        self.jobs.insert(
            offer.id(),
            InFlight {
                original,
                offer,
                replication,
                job,
                window: BidWindow::default(),
                bids_taken: 0,
                reoffers,
                reoffer_asked: false,
                refuted: refuted.keys().copied().collect(),
                claims: refuted,
                reserved,
                recheck,
            },
        );
    }

    /// Offers a recheck ([`Action::Recheck`]) as the job `original` (a fresh id, e.g. the recheck
    /// offer's own: the job rechecked keeps its verdict until [`Action::Revise`]): `offer` asks for two
    /// replicas, and the suspect is not drawn. Credit is set aside as for [`Submitter::offer`].
    pub fn offer_recheck(&mut self, original: JobId, offer: JobOffer, recheck: Recheck) {
        let id = offer.id();
        self.offer(original, offer, Replication::Fixed);
        self.mark_recheck(&id, recheck);
    }

    /// Makes the job in flight under offer `job` a recheck (before its bids are in): the suspect is not
    /// drawn, and a verdict with another output than the one accepted before revises that job.
    pub fn mark_recheck(&mut self, job: &JobId, recheck: Recheck) {
        if let Some(f) = self.jobs.get_mut(job) {
            f.recheck = Some(recheck);
        }
    }

    /// The most a job offering `reward` per worker with `replicas` may cost: every worker it may draw
    /// (its replicas, [`UNTRUSTED_QUORUM`] while no trusted worker bids, and the extra ones) paid in full.
    pub fn reservation(&self, reward: u64, replicas: u8) -> u64 {
        reward.saturating_mul(self.workers_paid(replicas) as u64)
    }

    /// Every worker a job with `replicas` may draw and pay: its replicas, [`UNTRUSTED_QUORUM`] while no
    /// trusted worker bids, and the extra ones.
    fn workers_paid(&self, replicas: u8) -> usize {
        usize::from(replicas).max(UNTRUSTED_QUORUM) + self.cfg.max_extra
    }

    /// Gives back what the job offered as `job` set aside, before it is offered again under a fresh
    /// offer (which reserves anew): so that the fresh offer can be paid from the same budget.
    pub fn release(&mut self, job: &JobId) {
        if let Some(f) = self.jobs.get_mut(job) {
            self.spending
                .release(&f.offer.budget.body, std::mem::take(&mut f.reserved));
        }
    }

    /// Sets aside again what [`Submitter::release`] gave back, when the fresh offer could not be made.
    pub fn hold(&mut self, job: &JobId) {
        let Some(amount) = self
            .jobs
            .get(job)
            .filter(|f| f.reserved == 0)
            .map(|f| self.reservation(f.offer.reward, f.offer.replicas))
        else {
            return;
        };
        if let Some(f) = self.jobs.get_mut(job) {
            f.reserved = amount;
            self.spending.reserve(&f.offer.budget.body, amount);
        }
    }

    /// Drops a job (its offer could not be published); returns whether it was in flight.
    pub fn forget(&mut self, job: &JobId) -> bool {
        self.remove(job).is_some()
    }

    fn remove(&mut self, job: &JobId) -> Option<InFlight> {
        let f = self.jobs.remove(job)?;
        self.spending.release(&f.offer.budget.body, f.reserved);
        if self.originals.get(&f.original) == Some(job) {
            self.originals.remove(&f.original);
        }
        Some(f)
    }

    /// A bid (signature already checked by the caller). During the bid window it is held; the window
    /// closes once `enough` bids are in (e.g. as many as connected peers: in a small fleet everyone has
    /// bid, in a large one that is a fair sample) or at its end ([`Action::WakeAt`]). Later bids are
    /// replacements, only from trusted workers (or anyone but those on probation, if nobody trusted
    /// bid). `enough` below [`UNTRUSTED_QUORUM`] also means a fleet too small for three untrusted
    /// workers: the caller's count of peers that could bid.
    pub fn on_bid(
        &mut self,
        bid: Bid,
        now_ms: u64,
        enough: usize,
        rng: &mut dyn Randomness,
    ) -> Result<Vec<Action>, SubmitError> {
        let id = bid.job;
        let window_ms = self.cfg.bid_window_ms;
        let f = self.jobs.get_mut(&id).ok_or(SubmitError::UnknownJob)?;
        // A worker this submitter refuted on the job is not drawn for it again, before or after planning.
        if f.refuted.contains(&bid.worker) {
            return Err(SubmitError::NotNeeded);
        }
        if !f.window.planned {
            if f.window.bids.iter().any(|b| b.worker == bid.worker) {
                return Err(SubmitError::DuplicateBid);
            }
            if f.bids_taken >= MAX_BIDS_PER_JOB {
                return Err(SubmitError::Busy);
            }
            f.bids_taken += 1;
            f.window.bids.push(bid);
            f.window.enough = enough;
            if f.window.bids.len() >= enough.max(1) {
                return Ok(self.plan(id, now_ms, rng));
            }
            if f.window.scheduled {
                return Ok(Vec::new());
            }
            f.window.scheduled = true;
            return Ok(vec![Action::WakeAt {
                job: id,
                at_ms: now_ms.saturating_add(window_ms),
            }]);
        }
        // Replacements come from trusted workers (from anyone but those on probation while nobody
        // trusted bid), so a late bid cannot slip an untrusted key into a job whatever it asks.
        let standing = self.reputation.standing(&bid.worker, now_ms);
        let suspect = f.recheck.is_some_and(|r| r.suspect == bid.worker);
        if suspect
            || standing == Standing::Probation
            || (!f.window.none_trusted && standing != Standing::Trusted)
        {
            return Err(SubmitError::NotNeeded);
        }
        if f.bids_taken >= MAX_BIDS_PER_JOB {
            return Err(SubmitError::Busy);
        }
        let actions = self.drive(id, now_ms, |j| j.on_bid(bid, now_ms))?;
        if let Some(f) = self.jobs.get_mut(&id) {
            f.bids_taken += 1;
        }
        Ok(actions)
    }

    /// The end of a job's bid window: its workers are chosen and assigned.
    pub fn on_wake(&mut self, job: JobId, now_ms: u64, rng: &mut dyn Randomness) -> Vec<Action> {
        match self.jobs.get_mut(&job) {
            Some(f) => {
                f.window.scheduled = false;
                self.plan(job, now_ms, rng)
            }
            None => Vec::new(),
        }
    }

    /// Chooses the workers of a job from the bids of its window. Price narrows the pool (cars in off-peak
    /// hours and already awake are preferred), chance and reputation decide within it, and no verdict may
    /// rest only on workers without validated history here: a fixed job ([`fixed_plan`]) and an adaptive
    /// one ([`trust::plan_preferring`]) both need a trusted worker or three agreeing untrusted ones (two
    /// when the caller's `enough`, its count of peers, is below three and [`SubmitterConfig::small_fleet`]
    /// allows it: a fleet that cannot do better),
    /// except a fixed job whose user asked for one replica, which runs once and is marked unverified.
    fn plan(&mut self, id: JobId, now_ms: u64, rng: &mut dyn Randomness) -> Vec<Action> {
        let cfg = self.job_config(1);
        let Some(f) = self.jobs.get_mut(&id) else {
            return Vec::new();
        };
        if f.window.planned {
            return Vec::new();
        }
        f.window.planned = true;
        f.window.planned_at_ms = now_ms;
        let mut bids = std::mem::take(&mut f.window.bids);
        bids.sort_by_key(cost);
        let mut actions = Vec::new();
        let reputation = &self.reputation;
        let suspect = f.recheck.map(|r| r.suspect);
        let eligible = |b: &&Bid| {
            reputation.standing(&b.worker, now_ms) != Standing::Probation && Some(b.worker) != suspect
        };
        f.window.none_trusted = !bids.iter().any(|b| reputation.is_trusted(&b.worker, now_ms));
        let plan = match f.replication {
            Replication::Fixed => {
                let candidates: Vec<&Bid> = bids.iter().filter(eligible).collect();
                fixed_plan(
                    &candidates,
                    usize::from(f.offer.replicas.max(1)),
                    reputation,
                    now_ms,
                    rng,
                )
            }
            Replication::Adaptive => {
                let all: Vec<NodeId> = bids.iter().map(|b| b.worker).collect();
                let cheap: Vec<NodeId> = price_pool(&bids.iter().filter(eligible).collect::<Vec<_>>(), 0)
                    .iter()
                    .map(|b| b.worker)
                    .collect();
                trust::plan_preferring(&all, reputation, now_ms, rng, &cheap)
            }
        };
        let Some(mut plan) = plan else {
            // Every bidder is on probation: the job waits for other bids (or fails at its deadline).
            f.window.bids = bids;
            f.window.planned = false;
            return Vec::new();
        };
        let vouched = plan.workers.iter().any(|w| reputation.is_trusted(w, now_ms));
        if !f.asked_one() && !vouched && !f.too_small(self.cfg.small_fleet) {
            plan.replicas = plan.replicas.max(UNTRUSTED_QUORUM);
        }
        f.job = Job::new(
            &f.offer,
            JobConfig {
                replicas: plan.replicas,
                ..cfg
            },
        );
        for w in plan.workers.iter().chain(&plan.backups) {
            if let Some(b) = bids.iter().find(|b| b.worker == *w) {
                actions.extend(f.job.on_bid(b.clone(), now_ms).unwrap_or_default());
            }
        }
        self.act(id, now_ms, actions)
    }

    /// A worker's commit (signature checked by the caller).
    pub fn on_commit(&mut self, commit: &ResultCommit, now_ms: u64) -> Result<Vec<Action>, SubmitError> {
        self.drive(commit.job, now_ms, |j| j.on_commit(commit, now_ms))
    }

    /// A worker's answer to a reveal request: its reveal and its signed claim (signatures checked by the
    /// caller). The claim must be the worker's, for this job and this submitter, over the revealed output.
    pub fn on_report(
        &mut self,
        reveal: &ResultReveal,
        claim: Signed<WorkClaim>,
        now_ms: u64,
    ) -> Result<Vec<Action>, SubmitError> {
        self.report(reveal, claim, true, now_ms)
    }

    /// [`Submitter::on_report`] for a report whose output this submitter refuted with a check of its own
    /// (a generation the model scores otherwise, see the node's `Model::verify_output`): the reveal
    /// counts as invalid (the worker loses trust and is replaced), the worker gets a `Rejected` receipt,
    /// and it is caught as if out-voted: the results accepted on its word alone are revoked and
    /// rechecked ([`Action::Recheck`]), with that receipt as evidence.
    pub fn on_refuted_report(
        &mut self,
        reveal: &ResultReveal,
        claim: Signed<WorkClaim>,
        now_ms: u64,
    ) -> Result<Vec<Action>, SubmitError> {
        self.report(reveal, claim, false, now_ms)
    }

    fn report(
        &mut self,
        reveal: &ResultReveal,
        claim: Signed<WorkClaim>,
        valid: bool,
        now_ms: u64,
    ) -> Result<Vec<Action>, SubmitError> {
        let c = &claim.body;
        if c.job != reveal.job
            || c.worker != reveal.worker
            || c.submitter != self.me
            || c.output_digest != *blake3::hash(&reveal.output).as_bytes()
        {
            return Err(SubmitError::ClaimMismatch);
        }
        let f = self.jobs.get_mut(&reveal.job).ok_or(SubmitError::UnknownJob)?;
        if c.model != f.offer.model {
            return Err(SubmitError::ClaimMismatch);
        }
        let previous = f.claims.insert(reveal.worker, claim);
        let newly_refuted = !valid && f.refuted.insert(reveal.worker);
        let mut result = self.drive(reveal.job, now_ms, |j| {
            if valid {
                j.on_reveal(reveal, now_ms)
            } else {
                j.on_refuted_reveal(reveal, now_ms)
            }
        });
        // A refuted worker loses its trust at once, not with the verdict: it is not trusted for other jobs
        // meanwhile. (Only for a report the job took: a refused one leaves no receipt behind.)
        if newly_refuted && result.is_ok() {
            self.reputation.invalid(reveal.worker, now_ms);
        }
        // Refuted, the worker vouches for nothing: unless a trusted worker is left in the job, its
        // verdict now needs as many agreeing untrusted workers as a job planned without one.
        if !valid
            && let Ok(actions) = &mut result
            && let Some(f) = self.jobs.get_mut(&reveal.job)
        {
            let reputation = &self.reputation;
            let vouched = f.job.slots().any(|(w, slot)| {
                !matches!(
                    slot,
                    SlotState::Invalid | SlotState::TimedOut | SlotState::Withdrawn
                ) && reputation.is_trusted(w, now_ms)
            });
            // (A user who asked for one replica gets another worker instead, still unverified.)
            if !vouched && !f.too_small(self.cfg.small_fleet) && !f.asked_one() {
                // Late bids may then come from untrusted workers too (three of them must agree).
                f.window.none_trusted = true;
                let more = f.job.raise_replicas(UNTRUSTED_QUORUM, now_ms);
                actions.extend(self.act(reveal.job, now_ms, more));
            }
        }
        if result.is_err()
            && let Some(f) = self.jobs.get_mut(&reveal.job)
        {
            if newly_refuted {
                f.refuted.remove(&reveal.worker);
            }
            // A refused reveal leaves no claim behind (nor replaces an earlier one).
            match previous {
                Some(p) => f.claims.insert(reveal.worker, p),
                None => f.claims.remove(&reveal.worker),
            };
        }
        result
    }

    /// A worker hands the job back (signature checked by the caller); it is replaced and earns nothing.
    pub fn on_withdraw(&mut self, withdraw: &Withdraw, now_ms: u64) -> Result<Vec<Action>, SubmitError> {
        self.drive(withdraw.job, now_ms, |j| j.on_withdraw(withdraw, now_ms))
    }

    /// A worker refused its assignment or could not be reached: replaced as if it had withdrawn.
    pub fn on_assignment_refused(&mut self, job: JobId, worker: NodeId, now_ms: u64) -> Vec<Action> {
        let w = Withdraw {
            job,
            worker,
            reason: WithdrawReason::Overloaded,
            at_ms: now_ms,
        };
        self.on_withdraw(&w, now_ms).unwrap_or_default()
    }

    /// Time passes: missed deadlines replace workers; a job's own deadline ends it; a job starved of
    /// bidders is offered again.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut ids: Vec<JobId> = self.jobs.keys().copied().collect();
        ids.sort();
        let mut actions = Vec::new();
        let (after, max) = (self.cfg.reoffer_after_ms, self.cfg.max_reoffers);
        for id in ids {
            actions.extend(
                self.drive(id, now_ms, |j| Ok(j.on_tick(now_ms)))
                    .unwrap_or_default(),
            );
            // Starved: planned and short of workers with no bid left, or no bid at all (the offer was
            // lost, or dropped by rate limits on its way).
            if let Some(f) = self.jobs.get_mut(&id)
                && !f.reoffer_asked
                && f.reoffers < max
                && now_ms < f.offer.deadline_ms
                && if f.window.planned {
                    now_ms >= f.window.planned_at_ms.saturating_add(after) && f.job.starved(now_ms)
                } else {
                    f.bids_taken == 0 && now_ms >= f.offer.created_ms.saturating_add(after)
                }
            {
                f.reoffer_asked = true;
                actions.push(Action::Reoffer {
                    job: id,
                    original: f.original,
                });
            }
        }
        actions
    }

    /// The offer of the job in flight under the offer id `job`.
    pub fn offer_of(&self, job: &JobId) -> Option<&JobOffer> {
        self.jobs.get(job).map(|f| &f.offer)
    }

    /// Whether the verdict of the job in flight under the offer id `job` may rest on one worker's word
    /// (a trusted worker alone, or one replica asked for): where a submitter can check an output itself,
    /// these are the outputs to check.
    pub fn rests_on_one(&self, job: &JobId) -> bool {
        self.jobs.get(job).is_some_and(|f| f.job.replicas() <= 1)
    }

    /// Whether `worker` still owes a reveal for `job`.
    pub fn reveal_due(&self, job: &JobId, worker: &NodeId) -> bool {
        self.jobs.get(job).is_some_and(|f| {
            f.job
                .slots()
                .any(|(w, s)| w == worker && matches!(s, SlotState::RevealDue { .. }))
        })
    }

    /// Feeds an input to a job's state machine and turns its actions into ours.
    fn drive(
        &mut self,
        id: JobId,
        now_ms: u64,
        input: impl FnOnce(&mut Job) -> Result<Vec<job::Action>, JobError>,
    ) -> Result<Vec<Action>, SubmitError> {
        let f = self.jobs.get_mut(&id).ok_or(SubmitError::UnknownJob)?;
        let actions = input(&mut f.job)?;
        Ok(self.act(id, now_ms, actions))
    }

    fn act(&mut self, id: JobId, now_ms: u64, actions: Vec<job::Action>) -> Vec<Action> {
        let mut out = Vec::with_capacity(actions.len());
        for action in actions {
            match action {
                job::Action::Assign { worker, commit_by_ms } => out.push(Action::Assign {
                    job: id,
                    worker,
                    commit_by_ms,
                }),
                job::Action::RequestReveal { worker } => out.push(Action::RequestReveal { job: id, worker }),
                job::Action::Decide(outcome) => out.extend(self.decide(id, outcome, now_ms)),
            }
        }
        out
    }

    /// A job's verdict: reputation updates, the credit rule, the receipt bodies; the job leaves. A result
    /// accepted on one worker's word goes to the audit; a worker out-voted here has the results accepted
    /// on its word revoked and rechecked; a recheck that accepted another output revises its job.
    fn decide(&mut self, id: JobId, outcome: Outcome, now_ms: u64) -> Vec<Action> {
        let Some(f) = self.remove(&id) else {
            return Vec::new();
        };
        let (agreeing, disagreeing): (&[NodeId], &[NodeId]) = match &outcome {
            Outcome::Accepted {
                agreeing,
                disagreeing,
                ..
            } => (agreeing, disagreeing),
            Outcome::Failed(_) => (&[], &[]),
        };
        // Reputation: agreement with an independent replica validates a result; an out-voted or unopenable
        // one is invalid; a missing one (a crash, a lost link, or a silent worker) is a miss, invalid only
        // after several in a row.
        let validated = trust::validated_by(agreeing, &self.reputation, now_ms);
        let mut invalid = disagreeing.to_vec();
        let mut missed = Vec::new();
        for (w, slot) in f.job.slots() {
            match slot {
                // (A refuted worker lost its trust when it was refuted.)
                SlotState::Invalid if !f.refuted.contains(w) => invalid.push(*w),
                SlotState::TimedOut => missed.push(*w),
                _ => {}
            }
        }
        for w in validated {
            self.reputation.validated(w);
        }
        for w in invalid {
            self.reputation.invalid(w, now_ms);
        }
        for w in missed {
            self.reputation.missed(w, now_ms);
        }
        let mut after = Vec::new();
        // (result caught on, suspect): the rechecks, built once the receipts are numbered.
        let mut caught: Vec<(Unchecked, NodeId)> = Vec::new();
        if let Outcome::Accepted { output, .. } = &outcome {
            let digest = *blake3::hash(output).as_bytes();
            if let [alone] = agreeing
                && f.replication == Replication::Adaptive
                && f.recheck.is_none()
            {
                let result = Unchecked {
                    original: f.original,
                    job: id,
                    digest,
                    accepted_ms: now_ms,
                };
                self.audit.record(*alone, result);
            }
            if let Some(r) = &f.recheck
                && r.accepted != digest
            {
                after.push(Action::Revise {
                    job: r.of,
                    recheck: f.original,
                    output: output.clone(),
                    agreeing: agreeing.to_vec(),
                });
            }
        }
        // Out-voted here, or refuted by this submitter's own check (whatever the outcome): caught.
        for suspect in disagreeing.iter().chain(&f.refuted) {
            for u in self.audit.caught(suspect, now_ms) {
                caught.push((u, *suspect));
            }
        }
        let unverified = f.asked_one();
        let mut receipts = receipts_for(&f.offer, agreeing, &f.claims, now_ms, unverified);
        if let (Some(cap), Outcome::Accepted { output, .. }) = (&self.credit_cap, &outcome) {
            let most = (cap.0)(&f.offer, output);
            for r in &mut receipts {
                r.credit = r.credit.min(most);
            }
        }
        self.spending.stamp(&f.offer.budget, &mut receipts);
        for (u, suspect) in caught {
            let Some(rejection) = receipts
                .iter()
                .find(|r| r.claim.body.worker == suspect && r.verdict == Verdict::Rejected)
            else {
                continue;
            };
            after.push(Action::Recheck {
                job: u.job,
                rejection: Box::new(rejection.clone()),
                recheck: Recheck {
                    of: u.original,
                    suspect,
                    accepted: u.digest,
                },
            });
        }
        let compute_us_max = f
            .job
            .slots()
            .filter_map(|(_, s)| match s {
                SlotState::Revealed { compute_us, .. } => Some(*compute_us),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let result = JobResult {
            job: f.original,
            outcome,
            workers_assigned: f.job.slots().count(),
            receipts: receipts.len(),
            compute_us_max,
            unverified,
        };
        let mut actions = vec![Action::Decide {
            job: id,
            result,
            receipts,
        }];
        actions.extend(after);
        actions
    }
}

/// The credit rule (BOINC's): every agreeing worker earns the least credit any of them claimed, never
/// more than the offer's reward nor its own claim; a worker that revealed and was out-voted gets a
/// `Rejected` receipt with no credit. One receipt body per claim, in worker order; an `unverified` job's
/// accepted receipts say [`Verdict::Unverified`]. The bodies name the offer's budget but are not numbered
/// yet ([`Spending::stamp`] does that).
pub fn receipts_for(
    offer: &JobOffer,
    agreeing: &[NodeId],
    claims: &BTreeMap<NodeId, Signed<WorkClaim>>,
    now_ms: u64,
    unverified: bool,
) -> Vec<Receipt> {
    let credit = agreeing
        .iter()
        .filter_map(|w| claims.get(w).map(|c| c.body.claimed_credit))
        .min()
        .unwrap_or(0)
        .min(offer.reward);
    claims
        .iter()
        .map(|(worker, claim)| {
            let accepted = agreeing.contains(worker);
            Receipt {
                claim: claim.clone(),
                verdict: if accepted && unverified {
                    Verdict::Unverified
                } else if accepted {
                    Verdict::Accepted
                } else {
                    Verdict::Rejected
                },
                credit: if accepted {
                    credit.min(claim.body.claimed_credit)
                } else {
                    0
                },
                issued_ms: now_ms,
                budget: offer.budget.clone(),
                seq: 0,
                spent: 0,
            }
        })
        .collect()
}

/// The reputation a submitter's own receipts imply: its verdicts replayed in the order they were reached,
/// with the live rules. (Workers that timed out leave no receipt, so their penalty does not survive a
/// restart.) Receipts of other submitters are ignored.
pub fn rebuild_reputation<'a>(
    me: &NodeId,
    cfg: TrustConfig,
    receipts: impl IntoIterator<Item = &'a Signed<Receipt>>,
) -> Reputation {
    type Verdicts = (u64, Vec<NodeId>, Vec<NodeId>);
    let mut verdicts: BTreeMap<JobId, Verdicts> = BTreeMap::new();
    for r in receipts {
        let claim = &r.body.claim.body;
        if claim.submitter != *me {
            continue;
        }
        let v = verdicts
            .entry(claim.job)
            .or_insert((r.body.issued_ms, Vec::new(), Vec::new()));
        v.0 = v.0.min(r.body.issued_ms);
        match r.body.verdict {
            Verdict::Accepted => v.1.push(claim.worker),
            Verdict::Rejected => v.2.push(claim.worker),
            // One worker alone validates nothing.
            Verdict::Unverified => {}
        }
    }
    let mut ordered: Vec<(JobId, Verdicts)> = verdicts.into_iter().collect();
    ordered.sort_by_key(|(job, v)| (v.0, *job));
    let mut reputation = Reputation::new(cfg);
    for (_, (at, agreeing, rejected)) in ordered {
        for w in trust::validated_by(&agreeing, &reputation, at) {
            reputation.validated(w);
        }
        // Out-voted by an accepted output (a failed job's reveals are not judged).
        if !agreeing.is_empty() {
            for w in rejected {
                reputation.invalid(w, at);
            }
        }
    }
    reputation
}
