//! Verified jobs over the mesh: the submitter role (offer, assignment, commit-reveal, verdict, receipts)
//! driven by the sans-IO [`fleetmesh_consensus::job::Job`], and the worker role (bid, run, commit, reveal).
//!
//! Offers and receipts travel by gossip; bids, assignments, commits, reveal requests and withdrawals by
//! request-response. Every request must come from the peer whose key signed it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use fleetmesh_consensus::job::{Action, Job, JobConfig, Outcome, SlotState};
use fleetmesh_consensus::ledger::Ledger;
use fleetmesh_consensus::trust::{self, Reputation, Standing, TrustConfig};
use fleetmesh_protocol::codec::{self, Kind};
use fleetmesh_protocol::messages::{
    Assignment, Bid, JobInput, JobOffer, Receipt, Reply, ReplyCode, ResultCommit, ResultReveal,
    RevealRequest, Verdict, Withdraw, WithdrawReason, WorkClaim, WorkReport,
};
use fleetmesh_protocol::signing::Signable;
use fleetmesh_protocol::{JobId, ModelId, NodeId, NodeKey, Signed};
use libp2p::PeerId;
use tokio::sync::oneshot;
use tracing::{Instrument, debug, warn};

use crate::inference::executor::{CancelFlag, Executor};
use crate::inference::numeric_class;
use crate::metrics::{Metrics, ModelLabels, OutcomeLabels, StateLabels};
use crate::net::{self, NetClient, Topic};
use crate::share::Share;
use crate::store::{DoneRecord, Store, SubmittedRecord, WorkRecord};
use crate::vehicle::Car;

pub use crate::clock::now_ms;

/// Settings of the job roles.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Credit this worker claims per job (and a submitter offers), in micro-credits.
    pub price: u64,
    /// Price per model name, overriding `price`.
    pub model_prices: std::collections::BTreeMap<String, u64>,
    /// Extra workers a submitted job may draw on disagreement or dropouts.
    pub max_extra: usize,
    /// How long an offer takes bids.
    pub offer_ttl_ms: u64,
    /// How long a job may take from offer to verdict.
    pub deadline_ms: u64,
    /// Jobs this worker runs at once; it does not bid beyond.
    pub max_active_work: usize,
    /// Time an assigned worker has to commit, and later to reveal.
    pub step_timeout_ms: u64,
    /// How this node behaves as a worker. Only tests and `fleetmesh demo` set anything but
    /// [`WorkerBehaviour::Honest`]; `fleetmesh run` cannot.
    pub behaviour: WorkerBehaviour,
    /// Adaptive replication of jobs submitted without a replica count ([`Jobs::submit_auto`]): trusted
    /// workers run alone except for spot checks. `None`: such jobs get two replicas.
    pub adaptive: Option<TrustConfig>,
    /// How long an adaptive job collects bids before its workers are chosen.
    pub bid_window_ms: u64,
}

/// How a worker behaves (adversarial behaviours exist to test the fleet's defences). Every adversarial
/// behaviour also bids an electricity cost of 0, the cheapest possible, to be chosen as often as it can.
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
    /// Runs jobs honestly and also gossips a receipt for each, with a forged countersignature, claiming a
    /// second job that never happened.
    ReceiptForger,
}

impl JobsConfig {
    /// The price of a job for `model` (its name's entry in `model_prices`, else `price`).
    pub fn price_of(&self, model: Option<&str>) -> u64 {
        model
            .and_then(|m| self.model_prices.get(m))
            .copied()
            .unwrap_or(self.price)
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            price: 1_000,
            model_prices: std::collections::BTreeMap::new(),
            max_extra: 2,
            offer_ttl_ms: 10_000,
            deadline_ms: 60_000,
            max_active_work: 64,
            step_timeout_ms: 10_000,
            behaviour: WorkerBehaviour::Honest,
            adaptive: Some(TrustConfig::default()),
            bid_window_ms: 25,
        }
    }
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
}

struct Submitted {
    /// The id the job's user knows (the first offer's id).
    original: JobId,
    offer: JobOffer,
    job: Job,
    /// Found unfinished at start; waits to be offered again (its old offer is ignored meanwhile).
    stale: bool,
    /// Bids held until the job's workers are chosen (`None` for a job decided before a restart).
    window: Option<BidWindow>,
    /// Ids of the receipts issued for it.
    receipt_ids: Vec<String>,
    claims: HashMap<NodeId, Signed<WorkClaim>>,
    waiters: Vec<oneshot::Sender<JobResult>>,
    result: Option<JobResult>,
}

/// The bids of a job during its bid window; then its workers are chosen: the cheapest bids (price plus the
/// car's electricity cost) for a fixed replica count, by reputation among the cheapest for an adaptive job.
#[derive(Default)]
struct BidWindow {
    /// Replicas follow the workers' reputation.
    adaptive: bool,
    bids: Vec<Bid>,
    /// The workers were chosen.
    planned: bool,
    /// A choice is scheduled for the end of the window.
    scheduled: bool,
    /// Nobody trusted was among the bidders when the plan was made (later bids may then join).
    none_trusted: bool,
}

struct Work {
    offer: JobOffer,
    done: Option<DoneRecord>,
    cancel: CancelFlag,
    /// The output was revealed: the job no longer takes this worker's capacity.
    revealed: bool,
}

impl Work {
    fn record(&self) -> WorkRecord {
        WorkRecord {
            offer: self.offer.clone(),
            done: self.done.clone(),
            revealed: self.revealed,
        }
    }
}

#[derive(Default)]
struct State {
    /// Submitted jobs by the id of the offer in force.
    submitted: HashMap<JobId, Submitted>,
    /// The id a user knows -> the id of the offer in force.
    aliases: HashMap<JobId, JobId>,
    /// Unfinished jobs found at start, to offer again once the mesh takes offers.
    to_reoffer: Vec<(JobId, JobOffer)>,
    reoffering: bool,
    /// What this node, as a submitter, knows of the workers it has judged.
    reputation: Reputation,
    /// Jobs being offered that are adaptively replicated.
    adaptive_pending: std::collections::HashSet<JobId>,
    /// Mean compute time of one job per model (ms), for the estimates in bids.
    compute_ms: HashMap<ModelId, f64>,
    /// Bumped whenever `receipts` changes.
    receipts_generation: u64,
    /// The last ledger computed, and the receipts generation it was computed from.
    ledger: Option<(u64, BTreeMap<NodeId, Earnings>)>,
    offers: HashMap<JobId, JobOffer>,
    work: HashMap<JobId, Work>,
    receipts: BTreeMap<(JobId, NodeId), Signed<Receipt>>,
}

/// A submitted job as the local API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobView {
    /// Job id (hex).
    pub job: String,
    /// Model id (hex).
    pub model: String,
    /// `pending`, `accepted` or `failed`.
    pub state: &'static str,
    /// Accepted output, hex.
    pub output_hex: Option<String>,
    /// Accepted output read as little-endian f32 (when its length allows).
    pub values: Option<Vec<f32>>,
    /// Workers whose outputs agreed (node ids).
    pub agreeing: Vec<String>,
    /// Workers assigned so far.
    pub workers_assigned: usize,
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

struct Inner {
    key: NodeKey,
    me: NodeId,
    net: NetClient,
    executor: Executor,
    cfg: JobsConfig,
    store: Store,
    share: Share,
    car: Car,
    metrics: Metrics,
    state: Mutex<State>,
}

/// The job roles of one node (cheap to clone).
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

fn reply(r: Reply) -> Vec<u8> {
    codec::encode(&r)
}

fn refuse(why: &str) -> Vec<u8> {
    reply(Reply::refused(why))
}

/// A secret salt for a commitment; `None` if the system has no randomness (the job is then handed back:
/// a guessable salt would let the commitment leak the output).
fn random_salt() -> Option<[u8; 32]> {
    let mut salt = [0u8; 32];
    getrandom::fill(&mut salt).ok()?;
    Some(salt)
}

/// The tracing span of one job's work at this node: job id, this node's role, the peer on the other side
/// and, where known, the model.
fn job_span(job: JobId, role: &'static str, peer: NodeId, model: Option<String>) -> tracing::Span {
    tracing::info_span!("job", job = %job.short(), role, peer = %peer.short(), model = model.as_deref().unwrap_or("?"))
}

impl State {
    /// Keeps `r` unless a receipt for the same (job, worker) with a smaller canonical encoding is already
    /// there: the ledger's rule, so that every node holds the same receipts whatever the arrival order.
    fn keep_receipt(&mut self, r: Signed<Receipt>) {
        let key = (r.body.claim.body.job, r.body.claim.body.worker);
        match self.receipts.get(&key) {
            Some(old) if codec::encode(old) <= codec::encode(&r) => {}
            _ => {
                self.receipts.insert(key, r);
                self.receipts_generation += 1;
            }
        }
    }
}

/// A receipt's id: blake3 of its canonical bytes, hex.
pub fn receipt_id(r: &Signed<Receipt>) -> String {
    blake3::hash(&codec::encode(r)).to_hex().to_string()
}

/// A uniform number in `[0, 1)` from the system's randomness; 0 if there is none, which makes every
/// adaptive job replicated (safe, if slower).
fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.0,
    }
}

/// Decodes a signed request and checks that its author is the peer that sent it.
fn authored<T: Signable>(peer: &PeerId, data: &[u8]) -> Result<Signed<T>, &'static str> {
    let msg: Signed<T> = codec::decode(data).map_err(|_| "malformed message")?;
    if net::peer_id_of(&msg.signer()) != *peer {
        return Err("message not signed by the sending peer");
    }
    msg.verify().map_err(|_| "bad signature")?;
    Ok(msg)
}

impl Jobs {
    /// The job roles of the node with `key`, using `net`, running inference on `executor` and keeping
    /// its state in `store`. Call [`Jobs::resume`] once to pick up what the store holds.
    /// Models it lacks are fetched from peers through `share`; what it does is counted in `metrics`. It bids
    /// only while `car` admits work, meters energy with the car's power model, and puts the car's
    /// electricity cost in its bids.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: NodeKey,
        net: NetClient,
        executor: Executor,
        cfg: JobsConfig,
        store: Store,
        share: Share,
        car: Car,
        metrics: Metrics,
    ) -> Self {
        let me = key.node_id();
        let state = State {
            reputation: Reputation::new(cfg.adaptive.unwrap_or_default()),
            ..State::default()
        };
        Self {
            inner: Arc::new(Inner {
                key,
                me,
                net,
                executor,
                cfg,
                store,
                share,
                car,
                metrics,
                state: Mutex::new(state),
            }),
        }
    }

    /// Picks up what the store holds after a restart: receipts; verdicts of submitted jobs; unfinished
    /// submitted jobs, which are offered again (under a fresh offer, keeping the id the user knows);
    /// finished but unrevealed work, whose commitment is sent again; and unfinished work, which is run
    /// again if its deadline allows.
    pub fn resume(&self) {
        let store = &self.inner.store;
        let receipts = store.receipts();
        let submitted = store.submitted();
        let work = store.work();
        let now = now_ms();
        let (mut pending, mut decided, mut recommit, mut rerun) = (0, 0, 0, 0);
        let mut state = self.state();
        for r in receipts {
            state.keep_receipt(r);
        }
        // Reputation is a function of the verdicts this node reached, which its own receipts record:
        // replayed job by job in the order they were decided, with the live rules. (Workers that timed out
        // leave no receipt; their penalty does not survive a restart.)
        let mut verdicts: BTreeMap<JobId, (u64, Vec<NodeId>, Vec<NodeId>)> = BTreeMap::new();
        for r in state.receipts.values() {
            let claim = &r.body.claim.body;
            if claim.submitter != self.inner.me {
                continue;
            }
            let v = verdicts
                .entry(claim.job)
                .or_insert((r.body.issued_ms, Vec::new(), Vec::new()));
            v.0 = v.0.min(r.body.issued_ms);
            match r.body.verdict {
                Verdict::Accepted => v.1.push(claim.worker),
                Verdict::Rejected => v.2.push(claim.worker),
            }
        }
        let mut ordered: Vec<(u64, Vec<NodeId>, Vec<NodeId>)> = verdicts.into_values().collect();
        ordered.sort_by_key(|v| v.0);
        let mut reputation = Reputation::new(self.inner.cfg.adaptive.unwrap_or_default());
        for (at, agreeing, rejected) in ordered {
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
        state.reputation = reputation;
        let mut receipt_ids: HashMap<JobId, Vec<String>> = HashMap::new();
        for ((job, _), r) in &state.receipts {
            receipt_ids.entry(*job).or_default().push(receipt_id(r));
        }
        for (original, record) in submitted {
            // A decided job keeps its verdict; an unfinished one waits (stale) to be offered again.
            let stale = record.result.is_none();
            if stale {
                pending += 1;
                state.to_reoffer.push((original, record.offer.clone()));
                if record.adaptive {
                    // Offered again, it is replicated by reputation again (not by its offer's "1").
                    state.adaptive_pending.insert(original);
                }
            } else {
                decided += 1;
            }
            let id = record.offer.id();
            let job = Job::new(&record.offer, JobConfig::for_offer(&record.offer, 0));
            state.aliases.insert(original, id);
            state.submitted.insert(
                id,
                Submitted {
                    original,
                    offer: record.offer,
                    job,
                    stale,
                    window: None,
                    receipt_ids: receipt_ids.remove(&id).unwrap_or_default(),
                    claims: HashMap::new(),
                    waiters: Vec::new(),
                    result: record.result,
                },
            );
        }
        for (job, record) in work {
            if record.offer.deadline_ms <= now || record.revealed {
                let _ = store.remove_work(&job);
                continue;
            }
            state.offers.insert(job, record.offer.clone());
            let cancel = CancelFlag::default();
            let w = Work {
                offer: record.offer.clone(),
                done: record.done.clone(),
                cancel: cancel.clone(),
                revealed: false,
            };
            state.work.insert(job, w);
            let this = self.clone();
            match (record.done, record.offer.input.clone()) {
                (Some(done), _) => {
                    recommit += 1;
                    let submitter = record.offer.submitter;
                    tokio::spawn(
                        async move { this.send_commit(job, submitter, &done).await }
                            .instrument(job_span(job, "worker", submitter, None)),
                    );
                }
                (None, JobInput::Inline(input)) => {
                    rerun += 1;
                    let offer = record.offer;
                    let span = job_span(job, "worker", offer.submitter, None);
                    tokio::spawn(
                        async move { this.compute(job, offer, input, cancel).await }.instrument(span),
                    );
                }
                (None, JobInput::Content { .. }) => {}
            }
        }
        if pending + decided + recommit + rerun > 0 {
            tracing::info!(
                pending,
                decided,
                recommit,
                rerun,
                receipts = state.receipts.len(),
                "resumed from the store"
            );
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.inner.state.lock() {
            Ok(g) => g,
            // A panic while holding the lock leaves plain data behind; keep serving.
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.me
    }

    // ---------------------------------------------------------------- submitter

    /// Offers a job to the fleet: signs and gossips the offer. Returns its id; see [`Jobs::wait`].
    ///
    /// The job is on disk before this returns: a restart after `kill -9` offers it again.
    pub async fn submit(&self, model: ModelId, input: Vec<u8>, replicas: u8) -> anyhow::Result<JobId> {
        self.submit_with(model, input, replicas.max(1), false).await
    }

    /// Offers a job whose replication this node chooses: adaptive (see [`JobsConfig::adaptive`]) if
    /// enabled, two replicas otherwise.
    pub async fn submit_auto(&self, model: ModelId, input: Vec<u8>) -> anyhow::Result<JobId> {
        match self.inner.cfg.adaptive {
            // The offer asks for one replica: workers cannot tell a job that runs alone from a checked one.
            Some(_) => self.submit_with(model, input, 1, true).await,
            None => self.submit(model, input, 2).await,
        }
    }

    async fn submit_with(
        &self,
        model: ModelId,
        input: Vec<u8>,
        replicas: u8,
        adaptive: bool,
    ) -> anyhow::Result<JobId> {
        let rule = self
            .inner
            .executor
            .registry()
            .get(&model)
            .map_or(fleetmesh_protocol::messages::AgreementRule::Exact, |m| {
                m.manifest().rule
            });
        let offer = self.new_offer(model, JobInput::Inline(input), rule, replicas)?;
        let id = offer.id();
        if adaptive {
            self.state().adaptive_pending.insert(id);
        }
        if let Err(e) = self.offer(id, offer).await {
            self.forget(id);
            return Err(e);
        }
        self.inner.metrics.jobs_submitted.inc();
        Ok(id)
    }

    /// A fresh offer (new nonce and times) signed by this node.
    fn new_offer(
        &self,
        model: ModelId,
        input: JobInput,
        rule: fleetmesh_protocol::messages::AgreementRule,
        replicas: u8,
    ) -> anyhow::Result<JobOffer> {
        let now = now_ms();
        let cfg = &self.inner.cfg;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)?;
        let offer = JobOffer {
            submitter: self.inner.me,
            nonce: u64::from_le_bytes(nonce),
            model,
            input,
            rule,
            replicas,
            reward: cfg.price_of(self.model_name(&model).as_deref()),
            created_ms: now,
            expires_ms: now + cfg.offer_ttl_ms,
            deadline_ms: now + cfg.deadline_ms,
        };
        codec::encode_checked(&offer)?;
        Ok(offer)
    }

    /// Records `offer` as the one in force for the job its user knows as `original`, makes that durable,
    /// then gossips it.
    async fn offer(&self, original: JobId, offer: JobOffer) -> anyhow::Result<()> {
        let cfg = &self.inner.cfg;
        let id = offer.id();
        let job_cfg = JobConfig {
            commit_timeout_ms: cfg.step_timeout_ms,
            reveal_timeout_ms: cfg.step_timeout_ms,
            ..JobConfig::for_offer(&offer, cfg.max_extra)
        };
        let job = Job::new(&offer, job_cfg);
        let signed = Signed::sign(offer.clone(), &self.inner.key)?;
        let adaptive = self.state().adaptive_pending.remove(&original);
        self.inner.store.put_submitted(
            &original,
            &SubmittedRecord {
                offer: offer.clone(),
                adaptive,
                result: None,
            },
        )?;
        {
            let mut state = self.state();
            let waiters = match state.aliases.insert(original, id) {
                Some(old) => state
                    .submitted
                    .remove(&old)
                    .map(|s| s.waiters)
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            let window = BidWindow {
                adaptive,
                ..BidWindow::default()
            };
            state.submitted.insert(
                id,
                Submitted {
                    original,
                    offer,
                    job,
                    stale: false,
                    window: Some(window),
                    receipt_ids: Vec::new(),
                    claims: HashMap::new(),
                    waiters,
                    result: None,
                },
            );
        }
        self.inner.store.flush().await?;
        self.inner
            .net
            .publish(Topic::Offers, codec::encode(&signed))
            .await?;
        Ok(())
    }

    /// Drops a job whose offer could not be published.
    fn forget(&self, original: JobId) {
        let mut state = self.state();
        if let Some(id) = state.aliases.remove(&original) {
            state.submitted.remove(&id);
        }
        drop(state);
        let _ = self.inner.store.remove_submitted(&original);
    }

    /// Offers the unfinished jobs found at start again, once the mesh has peers to take them.
    fn reoffer(&self) {
        let todo = {
            let mut state = self.state();
            if state.to_reoffer.is_empty() || state.reoffering {
                return;
            }
            state.reoffering = true;
            std::mem::take(&mut state.to_reoffer)
        };
        let this = self.clone();
        tokio::spawn(async move {
            let mut left = Vec::new();
            let mut done = 0usize;
            for (original, old) in todo {
                let fresh = match this.new_offer(old.model, old.input.clone(), old.rule, old.replicas) {
                    Ok(offer) => offer,
                    Err(_) => {
                        left.push((original, old));
                        continue;
                    }
                };
                match this.offer(original, fresh).await {
                    Ok(()) => done += 1,
                    Err(e) => {
                        debug!(job = %original.short(), error = %e, "cannot offer the job again yet");
                        left.push((original, old));
                    }
                }
            }
            if done > 0 {
                tracing::info!(jobs = done, "unfinished jobs offered again");
            }
            let mut state = this.state();
            state.to_reoffer.extend(left);
            state.reoffering = false;
        });
    }

    /// Waits for the verdict of a job this node submitted.
    pub async fn wait(&self, job: JobId) -> anyhow::Result<JobResult> {
        let rx = {
            let mut state = self.state();
            let current = state.aliases.get(&job).copied().unwrap_or(job);
            let sub = state
                .submitted
                .get_mut(&current)
                .ok_or_else(|| anyhow::anyhow!("unknown job {job}"))?;
            if let Some(result) = &sub.result {
                return Ok(result.clone());
            }
            let (tx, rx) = oneshot::channel();
            sub.waiters.push(tx);
            rx
        };
        Ok(rx.await?)
    }

    /// Feeds an input to a submitted job's state machine and carries out the resulting actions.
    fn drive(&self, job: JobId, input: impl FnOnce(&mut Job) -> Vec<Action>) {
        let actions = {
            let mut state = self.state();
            match state.submitted.get_mut(&job) {
                Some(sub) if !sub.stale => input(&mut sub.job),
                _ => return,
            }
        };
        for action in actions {
            self.act(job, action);
        }
    }

    fn act(&self, job: JobId, action: Action) {
        match action {
            Action::Assign { worker, commit_by_ms } => {
                let assignment = Assignment {
                    job,
                    submitter: self.inner.me,
                    worker,
                    commit_by_ms,
                };
                let Ok(signed) = Signed::sign(assignment, &self.inner.key) else {
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    let answer = this
                        .inner
                        .net
                        .request(net::peer_id_of(&worker), codec::encode(&signed))
                        .await;
                    let accepted = matches!(
                        answer.as_deref().map(codec::decode::<Reply>),
                        Ok(Ok(Reply {
                            code: ReplyCode::Accepted,
                            ..
                        }))
                    );
                    if !accepted {
                        debug!(job = %job.short(), worker = %worker.short(), "assignment not taken; replacing the worker");
                        let w = Withdraw {
                            job,
                            worker,
                            reason: WithdrawReason::Overloaded,
                            at_ms: now_ms(),
                        };
                        this.drive(job, |j| j.on_withdraw(&w, now_ms()).unwrap_or_default());
                    }
                }.instrument(job_span(job, "submitter", worker, None)));
            }
            Action::RequestReveal { worker } => {
                let request = RevealRequest {
                    job,
                    submitter: self.inner.me,
                    worker,
                };
                let Ok(signed) = Signed::sign(request, &self.inner.key) else {
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    // Asked again (until the reveal deadline ends the slot) if the worker cannot be reached
                    // or has no result at hand: a worker restarting after a crash reveals from its store.
                    while this.reveal_due(job, worker) {
                        match this
                            .inner
                            .net
                            .request(net::peer_id_of(&worker), codec::encode(&signed))
                            .await
                        {
                            Ok(bytes) if codec::decode::<WorkReport>(&bytes).is_ok() => {
                                this.on_work_report(job, worker, &bytes);
                                return;
                            }
                            Ok(_) => {
                                debug!(job = %job.short(), worker = %worker.short(), "worker could not reveal yet")
                            }
                            Err(e) => {
                                debug!(job = %job.short(), worker = %worker.short(), error = %e, "reveal request failed")
                            }
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }.instrument(job_span(job, "submitter", worker, None)));
            }
            Action::Decide(outcome) => self.finish(job, outcome),
        }
    }

    /// Whether `worker` still owes a reveal for `job`.
    fn reveal_due(&self, job: JobId, worker: NodeId) -> bool {
        let state = self.state();
        state.submitted.get(&job).is_some_and(|sub| {
            sub.result.is_none()
                && sub
                    .job
                    .slots()
                    .any(|(w, s)| *w == worker && matches!(s, SlotState::RevealDue { .. }))
        })
    }

    /// A bid for a job this node submitted: held for [`JobsConfig::bid_window_ms`] (or until as many bids
    /// as connected peers are in), then the workers are chosen ([`Jobs::plan_job`]). Later bids go to the
    /// job's state machine (as replacements); for an adaptive job only from trusted workers (or anyone, if
    /// nobody trusted bid).
    fn on_bid(&self, bid: Bid, now: u64) {
        let job = bid.job;
        {
            let mut guard = self.state();
            let State {
                submitted,
                reputation,
                ..
            } = &mut *guard;
            let Some(sub) = submitted.get_mut(&job) else {
                return;
            };
            if let Some(w) = sub.window.as_mut() {
                if !w.planned {
                    if w.bids.iter().any(|b| b.worker == bid.worker) {
                        return;
                    }
                    w.bids.push(bid);
                    // The window closes early once there are as many bids as connected peers: in a small
                    // fleet everyone has bid, in a large one that is a fair sample to choose from.
                    let enough = self.inner.metrics.connected_peers.get().max(1) as usize;
                    if w.bids.len() >= enough {
                        drop(guard);
                        return self.plan_job(job);
                    }
                    if !w.scheduled {
                        w.scheduled = true;
                        let this = self.clone();
                        let window = std::time::Duration::from_millis(self.inner.cfg.bid_window_ms);
                        tokio::spawn(async move {
                            tokio::time::sleep(window).await;
                            this.plan_job(job);
                        });
                    }
                    return;
                }
                let standing = reputation.standing(&bid.worker, now);
                if w.adaptive
                    && (standing == Standing::Probation || (!w.none_trusted && standing != Standing::Trusted))
                {
                    return;
                }
            }
        }
        self.drive(job, |j| j.on_bid(bid, now).unwrap_or_default());
    }

    /// Chooses the workers of a job from the bids of its window, cheapest first (price plus the car's
    /// electricity cost, so cars in off-peak hours and already awake are preferred), and assigns them.
    /// An adaptive job is planned by reputation ([`trust::plan_preferring`]): its trusted worker is drawn
    /// among the bids within a quarter of the cheapest, partners and backups among all bidders.
    fn plan_job(&self, job: JobId) {
        let cfg = &self.inner.cfg;
        let now = now_ms();
        let draws = [random_unit(), random_unit(), random_unit()];
        let actions = 'plan: {
            let mut guard = self.state();
            let State {
                submitted,
                reputation,
                ..
            } = &mut *guard;
            let Some(sub) = submitted.get_mut(&job) else {
                return;
            };
            let Some(w) = sub.window.as_mut() else {
                return;
            };
            w.scheduled = false;
            if w.planned || sub.result.is_some() {
                return;
            }
            w.planned = true;
            let mut bids = std::mem::take(&mut w.bids);
            let cost = |b: &Bid| b.price.saturating_add(b.energy_cost);
            bids.sort_by_key(cost);
            let mut actions = Vec::new();
            if !w.adaptive {
                for b in bids {
                    actions.extend(sub.job.on_bid(b, now).unwrap_or_default());
                }
                break 'plan actions;
            }
            // The trusted worker that runs the job is drawn among the bids within a quarter of the cheapest
            // (bidders on probation aside); partners, checks and backups come from every bidder.
            let all: Vec<NodeId> = bids.iter().map(|b| b.worker).collect();
            let eligible = |b: &&Bid| reputation.standing(&b.worker, now) != Standing::Probation;
            let cheapest = bids.iter().find(eligible).map_or(0, cost);
            let limit = cheapest.saturating_add(cheapest / 4);
            let cheap: Vec<NodeId> = bids
                .iter()
                .filter(eligible)
                .filter(|b| cost(b) <= limit)
                .map(|b| b.worker)
                .collect();
            w.none_trusted = !all.iter().any(|c| reputation.is_trusted(c, now));
            let Some(plan) = trust::plan_preferring(&all, reputation, now, draws, &cheap) else {
                // Every bidder is on probation: the job waits for other bids (or fails at its expiry).
                debug!(job = %job.short(), bidders = all.len(), "no bidder may be drawn; waiting");
                w.bids = bids;
                w.planned = false;
                return;
            };
            debug!(job = %job.short(), replicas = plan.replicas, spot_check = plan.spot_check, "workers chosen");
            sub.job = Job::new(
                &sub.offer,
                JobConfig {
                    replicas: plan.replicas,
                    max_extra: cfg.max_extra,
                    commit_timeout_ms: cfg.step_timeout_ms,
                    reveal_timeout_ms: cfg.step_timeout_ms,
                },
            );
            for w in plan.workers.iter().chain(&plan.backups) {
                if let Some(b) = bids.iter().find(|b| b.worker == *w) {
                    actions.extend(sub.job.on_bid(b.clone(), now).unwrap_or_default());
                }
            }
            actions
        };
        self.act_all(job, actions);
    }

    fn act_all(&self, job: JobId, actions: Vec<Action>) {
        for action in actions {
            self.act(job, action);
        }
    }

    fn on_work_report(&self, job: JobId, worker: NodeId, bytes: &[u8]) {
        let report = match codec::decode::<WorkReport>(bytes) {
            Ok(r)
                if r.reveal.body.job == job
                    && r.reveal.body.worker == worker
                    && r.claim.body.submitter == self.inner.me =>
            {
                r
            }
            _ => {
                warn!(job = %job.short(), worker = %worker.short(), "invalid work report");
                return;
            }
        };
        if report.reveal.verify().is_err() || report.claim.verify().is_err() {
            warn!(job = %job.short(), worker = %worker.short(), "work report with a bad signature");
            return;
        }
        if let Some(sub) = self.state().submitted.get_mut(&job) {
            sub.claims.insert(worker, report.claim.clone());
        }
        self.drive(job, |j| {
            j.on_reveal(&report.reveal.body, now_ms()).unwrap_or_default()
        });
    }

    /// Countersigns the claims of every revealing worker, gossips the receipts, wakes the waiters.
    fn finish(&self, job: JobId, outcome: Outcome) {
        let (receipts, result, waiters) = {
            let mut guard = self.state();
            let state = &mut *guard;
            let Some(sub) = state.submitted.get_mut(&job) else {
                return;
            };
            let agreeing: &[NodeId] = match &outcome {
                Outcome::Accepted { agreeing, .. } => agreeing,
                Outcome::Failed(_) => &[],
            };
            // Reputation: agreement with an independent replica validates a result; an out-voted,
            // unopenable or missing one is invalid.
            let now = now_ms();
            let validated = trust::validated_by(agreeing, &state.reputation, now);
            let mut invalid = Vec::new();
            if let Outcome::Accepted { disagreeing, .. } = &outcome {
                invalid.extend_from_slice(disagreeing);
            }
            for (w, slot) in sub.job.slots() {
                if matches!(slot, SlotState::TimedOut | SlotState::Invalid) {
                    invalid.push(*w);
                }
            }
            // BOINC's rule: every validated replica earns the least credit any of them claimed.
            let credit = agreeing
                .iter()
                .filter_map(|w| sub.claims.get(w).map(|c| c.body.claimed_credit))
                .min()
                .unwrap_or(0)
                .min(sub.offer.reward);
            let mut receipts = Vec::new();
            for (worker, claim) in &sub.claims {
                let accepted = agreeing.contains(worker);
                let body = Receipt {
                    claim: claim.clone(),
                    verdict: if accepted {
                        Verdict::Accepted
                    } else {
                        Verdict::Rejected
                    },
                    credit: if accepted {
                        credit.min(claim.body.claimed_credit)
                    } else {
                        0
                    },
                    issued_ms: now_ms(),
                };
                if let Ok(signed) = Signed::sign(body, &self.inner.key) {
                    receipts.push(signed);
                }
            }
            let compute_us_max = sub
                .job
                .slots()
                .filter_map(|(_, s)| match s {
                    SlotState::Revealed { compute_us, .. } => Some(*compute_us),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let result = JobResult {
                job: sub.original,
                outcome,
                workers_assigned: sub.job.slots().count(),
                receipts: receipts.len(),
                compute_us_max,
            };
            sub.result = Some(result.clone());
            sub.receipt_ids = receipts.iter().map(receipt_id).collect();
            let outcome = match &result.outcome {
                Outcome::Accepted { .. } => "accepted",
                Outcome::Failed(_) => "failed",
            };
            tracing::info!(
                job = %sub.original.short(),
                outcome,
                reason = ?match &result.outcome { Outcome::Failed(r) => Some(*r), _ => None },
                workers = result.workers_assigned,
                receipts = result.receipts,
                "verdict"
            );
            self.inner
                .metrics
                .verdicts
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.into(),
                })
                .inc();
            let waiters = std::mem::take(&mut sub.waiters);
            let record = SubmittedRecord {
                offer: sub.offer.clone(),
                adaptive: sub.window.as_ref().is_some_and(|w| w.adaptive),
                result: Some(result.clone()),
            };
            let store = &self.inner.store;
            if let Err(e) = store.put_submitted(&sub.original, &record) {
                warn!(job = %job.short(), error = %e, "cannot store the verdict");
            }
            for w in validated {
                state.reputation.validated(w);
            }
            for w in invalid {
                state.reputation.invalid(w, now);
            }
            for r in &receipts {
                if let Err(e) = store.put_receipt(r) {
                    warn!(job = %job.short(), error = %e, "cannot store a receipt");
                }
                state.keep_receipt(r.clone());
            }
            (receipts, result, waiters)
        };
        let this = self.clone();
        tokio::spawn(async move {
            // Durable before anyone hears of it: a verdict a user saw survives a crash.
            if let Err(e) = this.inner.store.flush().await {
                warn!(job = %job.short(), error = %e, "cannot flush the verdict");
            }
            for tx in waiters {
                let _ = tx.send(result.clone());
            }
            let net = &this.inner.net;
            for r in receipts {
                if let Err(e) = net.publish(Topic::Receipts, codec::encode(&r)).await {
                    debug!(error = %e, "receipt not gossiped");
                }
            }
        });
    }

    // ---------------------------------------------------------------- gossip and requests

    /// Handles a validated gossip message.
    pub fn on_gossip(&self, topic: Topic, data: &[u8]) {
        match topic {
            Topic::Offers => {
                if let Ok(offer) = codec::decode::<Signed<JobOffer>>(data) {
                    self.on_offer(offer.body);
                }
            }
            Topic::Receipts => {
                if let Ok(receipt) = codec::decode::<Signed<Receipt>>(data) {
                    if let Err(e) = self.inner.store.put_receipt(&receipt) {
                        warn!(error = %e, "cannot store a receipt");
                    }
                    self.state().keep_receipt(receipt);
                }
            }
        }
    }

    fn on_offer(&self, offer: JobOffer) {
        if offer.submitter == self.inner.me || now_ms() >= offer.expires_ms {
            return;
        }
        // Not while the car is not admitted (an estimate of 0 checks admission alone).
        if let Err(why) = self.inner.car.may_bid(0) {
            debug!(job = %offer.id().short(), %why, "not bidding");
            return;
        }
        if self.inner.executor.registry().get(&offer.model).is_none() {
            // Fetch the model from peers (the submitter runs it), then bid if the offer is still open.
            let this = self.clone();
            let (model, submitter) = (offer.model, net::peer_id_of(&offer.submitter));
            self.inner
                .share
                .want(model, Some(submitter), move || this.on_offer(offer));
            return;
        }
        let id = offer.id();
        let (est_ms, job_ms) = {
            let mut state = self.state();
            let busy = state.work.values().filter(|w| !w.revealed).count();
            if busy >= self.inner.cfg.max_active_work || state.offers.contains_key(&id) {
                return;
            }
            // Expected time to finish: the model's mean compute time, behind the jobs still computing here.
            let ahead = state.work.values().filter(|w| w.done.is_none()).count();
            let per_job = state.compute_ms.get(&offer.model).copied().unwrap_or(10.0);
            let est_ms = (per_job * (ahead + 1) as f64).ceil() as u64;
            if let Err(why) = self.inner.car.may_bid(est_ms) {
                debug!(job = %id.short(), %why, "not bidding");
                return;
            }
            state.offers.insert(id, offer.clone());
            (est_ms, per_job.ceil() as u64)
        };
        let bid = Bid {
            job: id,
            worker: self.inner.me,
            class: numeric_class(),
            price: self.inner.cfg.price_of(self.model_name(&offer.model).as_deref()),
            // The energy of this job alone (the jobs ahead are paid for by their own bids). Adversaries
            // underbid to attract work.
            energy_cost: match self.inner.cfg.behaviour {
                WorkerBehaviour::Honest => self.inner.car.bid_energy_cost(job_ms),
                _ => 0,
            },
            est_ms: u32::try_from(est_ms).unwrap_or(u32::MAX),
            expires_ms: offer.expires_ms,
        };
        let Ok(signed) = Signed::sign(bid, &self.inner.key) else {
            return;
        };
        let net = self.inner.net.clone();
        tokio::spawn(async move {
            if let Err(e) = net
                .request(net::peer_id_of(&offer.submitter), codec::encode(&signed))
                .await
            {
                debug!(job = %id.short(), error = %e, "bid not delivered");
            }
        });
    }

    /// Answers a request from `peer`: a bid, assignment, commit, reveal request or withdrawal.
    pub async fn on_request(&self, peer: PeerId, data: &[u8]) -> Vec<u8> {
        let kind = match codec::peek_kind(data) {
            Ok((kind, true)) => kind,
            _ => return refuse("expected a signed fleetmesh message"),
        };
        let now = now_ms();
        match kind {
            Kind::Bid => match authored::<Bid>(&peer, data) {
                Ok(bid) => {
                    let job = bid.body.job;
                    if !self.state().submitted.contains_key(&job) {
                        return refuse("unknown job");
                    }
                    self.on_bid(bid.body, now);
                    reply(Reply::accepted())
                }
                Err(why) => refuse(why),
            },
            Kind::ResultCommit => match authored::<ResultCommit>(&peer, data) {
                Ok(c) => {
                    let job = c.body.job;
                    let mut ok = false;
                    self.drive(job, |j| match j.on_commit(&c.body, now) {
                        Ok(actions) => {
                            ok = true;
                            actions
                        }
                        Err(_) => Vec::new(),
                    });
                    if ok {
                        reply(Reply::accepted())
                    } else {
                        refuse("commit not expected")
                    }
                }
                Err(why) => refuse(why),
            },
            Kind::Withdraw => match authored::<Withdraw>(&peer, data) {
                Ok(w) => {
                    if self.state().submitted.contains_key(&w.body.job) {
                        self.inner.metrics.withdrawals.inc();
                        debug!(job = %w.body.job.short(), worker = %w.body.worker.short(), reason = ?w.body.reason, "work handed back");
                    }
                    self.drive(w.body.job, |j| j.on_withdraw(&w.body, now).unwrap_or_default());
                    reply(Reply::accepted())
                }
                Err(why) => refuse(why),
            },
            Kind::Assignment => match authored::<Assignment>(&peer, data) {
                Ok(a) => self.on_assignment(a.body),
                Err(why) => refuse(why),
            },
            Kind::RevealRequest => match authored::<RevealRequest>(&peer, data) {
                Ok(r) => self.on_reveal_request(r.body),
                Err(why) => refuse(why),
            },
            _ => refuse("unexpected message kind"),
        }
    }

    // ---------------------------------------------------------------- worker

    fn on_assignment(&self, a: Assignment) -> Vec<u8> {
        if a.worker != self.inner.me {
            return refuse("assignment for another worker");
        }
        if !self.inner.car.admitted() {
            return refuse("the car is not admitted for work now");
        }
        let cancel = CancelFlag::default();
        let (offer, input) = {
            let mut state = self.state();
            let Some(offer) = state.offers.get(&a.job).cloned() else {
                return refuse("unknown job");
            };
            if offer.submitter != a.submitter {
                return refuse("assignment not from the job's submitter");
            }
            if state.work.contains_key(&a.job) {
                return refuse("already assigned");
            }
            let JobInput::Inline(input) = offer.input.clone() else {
                return refuse("inputs by content id are not supported yet");
            };
            let work = Work {
                offer: offer.clone(),
                done: None,
                cancel: cancel.clone(),
                revealed: false,
            };
            if let Err(e) = self.inner.store.put_work(&a.job, &work.record()) {
                warn!(job = %a.job.short(), error = %e, "cannot store the assignment");
                return refuse("cannot store the assignment");
            }
            state.work.insert(a.job, work);
            (offer, input)
        };
        if self.inner.cfg.behaviour == WorkerBehaviour::Silent {
            return reply(Reply::accepted()); // and never heard of again
        }
        let this = self.clone();
        let span = job_span(a.job, "worker", a.submitter, self.model_name(&offer.model));
        tokio::spawn(async move { this.compute(a.job, offer, input, cancel).await }.instrument(span));
        reply(Reply::accepted())
    }

    async fn compute(&self, job: JobId, offer: JobOffer, input: Vec<u8>, cancel: CancelFlag) {
        if !self.inner.car.admitted() {
            // Work found at a restart (or assigned just as the driver returned) while the car is not
            // admitted: hand it back rather than run it.
            self.withdraw(job, &offer, WithdrawReason::Preempted).await;
            return;
        }
        self.inner.car.work_started();
        let result = if self.inner.cfg.behaviour == WorkerBehaviour::Lazy {
            // Skips the work and makes up an output of the usual size.
            Ok(crate::inference::executor::JobOutput {
                outputs: vec![vec![0u8; 40]],
                compute: std::time::Duration::from_micros(1),
            })
        } else {
            self.inner.executor.run(&offer.model, vec![input], cancel).await
        };
        // Energy from the car's power model (a real car reads its power sensor behind the same call).
        let energy_uwh = result
            .as_ref()
            .ok()
            .map(|out| self.inner.car.job_energy_uwh(out.compute));
        self.inner.car.work_finished(energy_uwh);
        let mut out = match result {
            Ok(out) if out.outputs.len() == 1 => out,
            // Preempted: the job was handed back already.
            Err(crate::inference::InferenceError::Cancelled) => return,
            Ok(_) | Err(_) => {
                self.withdraw(job, &offer, WithdrawReason::ModelUnavailable).await;
                return;
            }
        };
        let mut output = out.outputs.remove(0);
        let lie = match self.inner.cfg.behaviour {
            WorkerBehaviour::AlwaysWrong => true,
            WorkerBehaviour::WrongPercent(p) => random_unit() * 100.0 < f64::from(p),
            _ => false,
        };
        if lie && let Some(first) = output.first_mut() {
            *first ^= 0xff;
        }
        let compute_us = out.compute.as_micros() as u64;
        self.inner.metrics.work_done.inc();
        if let Some(name) = self.model_name(&offer.model) {
            self.inner
                .metrics
                .inference_seconds
                .get_or_create(&ModelLabels { model: name })
                .observe(out.compute.as_secs_f64());
        }
        let energy_uwh = energy_uwh.unwrap_or(1);
        {
            let ms = out.compute.as_secs_f64() * 1e3;
            let mut state = self.state();
            let mean = state.compute_ms.entry(offer.model).or_insert(ms);
            *mean = 0.8 * *mean + 0.2 * ms;
        }
        let Some(salt) = random_salt() else {
            self.withdraw(job, &offer, WithdrawReason::Overloaded).await;
            return;
        };
        let done = DoneRecord {
            output,
            salt,
            compute_us,
            energy_uwh,
        };
        let record = {
            let mut state = self.state();
            let Some(w) = state.work.get_mut(&job) else {
                return; // handed back meanwhile
            };
            w.done = Some(done.clone());
            w.record()
        };
        // The salt must survive a crash before the commitment leaves, or the output could never be revealed.
        let stored = match self.inner.store.put_work(&job, &record) {
            Ok(()) => self.inner.store.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            warn!(job = %job.short(), error = %e, "cannot store the result; handing the job back");
            self.withdraw(job, &offer, WithdrawReason::Overloaded).await;
            return;
        }
        self.send_commit(job, offer.submitter, &done).await;
    }

    /// Sends the signed commitment to a computed result to the job's submitter.
    async fn send_commit(&self, job: JobId, submitter: NodeId, done: &DoneRecord) {
        let commit = ResultCommit {
            job,
            worker: self.inner.me,
            commitment: ResultCommit::commitment_for(&job, &self.inner.me, &done.output, &done.salt),
        };
        let Ok(signed) = Signed::sign(commit, &self.inner.key) else {
            return;
        };
        if let Err(e) = self
            .inner
            .net
            .request(net::peer_id_of(&submitter), codec::encode(&signed))
            .await
        {
            debug!(job = %job.short(), error = %e, "commit not delivered");
        }
    }

    /// Hands back every job this worker has not finished computing, because the car left admission: each
    /// running or queued inference is cancelled and a signed [`Withdraw`] (reason `Preempted`) goes to its
    /// submitter, who reassigns the job; no claim is ever made for it, so no credit is paid. Results already
    /// computed are kept (revealing them costs the car nothing). Returns how many jobs were handed back,
    /// once every withdrawal was delivered (or failed).
    pub async fn preempt(&self) -> usize {
        let started = std::time::Instant::now();
        // Taken out (and cancelled) at once, so that a second preemption does not hand them back again.
        let running: Vec<(JobId, JobOffer)> = {
            let mut state = self.state();
            let ids: Vec<JobId> = state
                .work
                .iter()
                .filter(|(_, w)| w.done.is_none())
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| {
                    let w = state.work.remove(&id)?;
                    w.cancel.cancel();
                    Some((id, w.offer))
                })
                .collect()
        };
        let n = running.len();
        if n == 0 {
            return 0;
        }
        self.inner.car.count_preempted(n as u64);
        self.inner.metrics.preemptions.inc_by(n as u64);
        futures::future::join_all(
            running
                .iter()
                .map(|(job, offer)| self.withdraw(*job, offer, WithdrawReason::Preempted)),
        )
        .await;
        tracing::info!(
            jobs = n,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "preempted: work handed back"
        );
        n
    }

    /// Hands a job back to its submitter (preemption, failure) with a signed [`Withdraw`].
    pub async fn withdraw(&self, job: JobId, offer: &JobOffer, reason: WithdrawReason) {
        if let Some(w) = self.state().work.remove(&job) {
            w.cancel.cancel();
        }
        if let Err(e) = self.inner.store.remove_work(&job) {
            warn!(job = %job.short(), error = %e, "cannot forget handed-back work");
        }
        let w = Withdraw {
            job,
            worker: self.inner.me,
            reason,
            at_ms: now_ms(),
        };
        if let Ok(signed) = Signed::sign(w, &self.inner.key) {
            let _ = self
                .inner
                .net
                .request(net::peer_id_of(&offer.submitter), codec::encode(&signed))
                .await;
        }
    }

    fn on_reveal_request(&self, r: RevealRequest) -> Vec<u8> {
        if r.worker != self.inner.me {
            return refuse("reveal request for another worker");
        }
        let mut state = self.state();
        let Some(work) = state.work.get_mut(&r.job) else {
            return refuse("unknown job");
        };
        if work.offer.submitter != r.submitter {
            return refuse("reveal request not from the job's submitter");
        }
        let Some(done) = &work.done else {
            return refuse("not computed yet");
        };
        work.revealed = true;
        if let Err(e) = self.inner.store.put_work(&r.job, &work.record()) {
            warn!(job = %r.job.short(), error = %e, "cannot store the reveal");
        }
        let reveal = ResultReveal {
            job: r.job,
            worker: self.inner.me,
            output: done.output.clone(),
            salt: done.salt,
            compute_us: done.compute_us,
            energy_uwh: done.energy_uwh,
        };
        let claim = WorkClaim {
            job: r.job,
            model: work.offer.model,
            worker: self.inner.me,
            submitter: r.submitter,
            output_digest: *blake3::hash(&done.output).as_bytes(),
            compute_us: done.compute_us,
            energy_uwh: done.energy_uwh,
            claimed_credit: self
                .inner
                .cfg
                .price_of(self.model_name(&work.offer.model).as_deref()),
            claimed_ms: now_ms(),
        };
        if self.inner.cfg.behaviour == WorkerBehaviour::ReceiptForger {
            self.forge_receipt(claim.clone());
        }
        match (
            Signed::sign(reveal, &self.inner.key),
            Signed::sign(claim, &self.inner.key),
        ) {
            (Ok(reveal), Ok(claim)) => codec::encode(&WorkReport { reveal, claim }),
            _ => refuse("cannot sign"),
        }
    }

    /// Adversarial behaviour for tests and the demo: gossips a receipt for a job that never happened, with
    /// the real submitter's countersignature faked. Every peer's gossip check refuses it.
    fn forge_receipt(&self, mut claim: WorkClaim) {
        claim.job = JobId::of(&[claim.job.as_bytes().as_slice(), b"forged"].concat());
        let Ok(claim) = Signed::sign(claim, &self.inner.key) else {
            return;
        };
        let body = Receipt {
            credit: claim.body.claimed_credit,
            claim,
            verdict: Verdict::Accepted,
            issued_ms: now_ms(),
        };
        let signature = self
            .inner
            .key
            .sign_digest(&fleetmesh_protocol::signing::signing_digest(&body));
        let forged = Signed { body, signature };
        let net = self.inner.net.clone();
        tokio::spawn(async move {
            let _ = net.publish(Topic::Receipts, codec::encode(&forged)).await;
        });
    }

    // ---------------------------------------------------------------- time and views

    /// Time passes: deadlines of submitted jobs; forgets stale offers and finished work.
    pub fn tick(&self) {
        let now = now_ms();
        let jobs: Vec<JobId> = {
            let mut state = self.state();
            state
                .offers
                .retain(|_, o| o.deadline_ms.saturating_add(60_000) > now);
            let expired: Vec<JobId> = state
                .work
                .iter()
                .filter(|(_, w)| w.offer.deadline_ms.saturating_add(60_000) <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                state.work.remove(&id);
                if let Err(e) = self.inner.store.remove_work(&id) {
                    warn!(job = %id.short(), error = %e, "cannot forget old work");
                }
            }
            let pending: Vec<JobId> = state
                .submitted
                .iter()
                .filter(|(_, s)| s.result.is_none() && !s.stale)
                .map(|(id, _)| *id)
                .collect();
            let m = &self.inner.metrics;
            let decided = state.submitted.len() - pending.len();
            for (name, n) in [("pending", pending.len()), ("decided", decided)] {
                m.jobs
                    .get_or_create(&StateLabels { state: name.into() })
                    .set(n as i64);
            }
            m.executor_queue_depth
                .set(self.inner.executor.queue_depth() as i64);
            m.receipts.set(state.receipts.len() as i64);
            pending
        };
        self.reoffer();
        for job in jobs {
            self.drive(job, |j| j.on_tick(now));
        }
    }

    /// Credit, energy and accepted jobs per worker: the ledger computed from every receipt this node has
    /// seen (signatures checked one by one, duplicates counted once, BOINC's least-claim credit).
    ///
    /// The result is kept until the receipts change: the dashboard, `/metrics` and `/v1/earnings` ask
    /// often, and each computation checks every receipt's two signatures.
    pub fn earnings(&self) -> BTreeMap<NodeId, Earnings> {
        let (generation, receipts) = {
            let state = self.state();
            if let Some((g, ledger)) = &state.ledger
                && *g == state.receipts_generation
            {
                return ledger.clone();
            }
            let receipts: Vec<Signed<Receipt>> = state.receipts.values().cloned().collect();
            (state.receipts_generation, receipts)
        };
        let ledger: BTreeMap<NodeId, Earnings> = Ledger::from_receipts(&receipts)
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
        let mut state = self.state();
        if state.ledger.as_ref().is_none_or(|(g, _)| *g < generation) {
            state.ledger = Some((generation, ledger.clone()));
        }
        ledger
    }

    fn model_name(&self, model: &ModelId) -> Option<String> {
        self.registry().get(model).map(|m| m.manifest().name.clone())
    }

    /// The models this node runs (and can submit jobs for).
    pub fn registry(&self) -> &crate::inference::Registry {
        self.inner.executor.registry()
    }

    /// A job this node submitted, as the local API shows it.
    pub fn view(&self, job: &JobId) -> Option<JobView> {
        let state = self.state();
        let current = state.aliases.get(job).unwrap_or(job);
        let sub = state.submitted.get(current)?;
        Some(self.view_of(job, sub))
    }

    /// The `n` most recently offered jobs this node submitted, newest first.
    pub fn recent(&self, n: usize) -> Vec<JobView> {
        let state = self.state();
        let mut subs: Vec<(&JobId, &Submitted)> = state.submitted.iter().collect();
        subs.sort_by_key(|(_, s)| std::cmp::Reverse(s.offer.created_ms));
        subs.into_iter()
            .take(n)
            .map(|(_, sub)| self.view_of(&sub.original, sub))
            .collect()
    }

    fn view_of(&self, job: &JobId, sub: &Submitted) -> JobView {
        let mut view = JobView {
            job: job.to_string(),
            model: sub.offer.model.to_string(),
            state: "pending",
            output_hex: None,
            values: None,
            agreeing: Vec::new(),
            workers_assigned: sub.job.slots().count(),
            receipts: 0,
            receipt_ids: sub.receipt_ids.clone(),
            model_name: self.model_name(&sub.offer.model),
            offered_ms: sub.offer.created_ms,
            reason: None,
        };
        if let Some(result) = &sub.result {
            view.receipts = result.receipts;
            view.workers_assigned = result.workers_assigned;
            match &result.outcome {
                Outcome::Accepted { output, agreeing, .. } => {
                    view.state = "accepted";
                    view.output_hex = Some(hex::encode(output));
                    view.values = output
                        .len()
                        .is_multiple_of(4)
                        .then(|| crate::inference::f32s(output));
                    view.agreeing = agreeing.iter().map(NodeId::to_string).collect();
                }
                Outcome::Failed(reason) => {
                    view.state = "failed";
                    view.reason = Some(format!("{reason:?}"));
                }
            }
        }
        view
    }

    /// When and with how much energy `worker` did each job the receipts this node holds accept: (claim
    /// time in ms since the Unix epoch, µWh).
    pub fn receipts_of(&self, worker: &NodeId) -> Vec<(u64, u64)> {
        self.state()
            .receipts
            .values()
            .filter(|r| r.body.claim.body.worker == *worker && r.body.verdict == Verdict::Accepted)
            .map(|r| (r.body.claim.body.claimed_ms, r.body.claim.body.energy_uwh))
            .collect()
    }

    /// Jobs assigned to this node as a worker: (still computing, computed).
    pub fn work_counts(&self) -> (usize, usize) {
        let state = self.state();
        let computing = state.work.values().filter(|w| w.done.is_none()).count();
        (computing, state.work.len() - computing)
    }

    /// Receipts this node has seen.
    pub fn receipt_count(&self) -> usize {
        self.state().receipts.len()
    }
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jobs({})", self.inner.me.short())
    }
}
