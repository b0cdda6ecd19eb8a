//! Verified jobs over the mesh, the node's side of them: the submitter role carries out what the sans-IO
//! [`fleetmesh_consensus::submitter::Submitter`] decides (it signs, stores, sends and wakes waiters; it
//! plans no workers, holds no bid window and computes no credit itself), and the worker role bids, runs,
//! commits and reveals.
//!
//! Offers and revocations travel by gossip; bids, assignments, commits, reveal requests, withdrawals and
//! receipts (to their worker only) by request-response. Every request must come from the peer whose key
//! signed it.
//!
//! - [`submitter`](self::submitter): offering jobs and carrying out the submitter core's actions.
//! - [`worker`](self::worker): bidding, computing, committing, revealing, handing work back.
//! - [`requests`](self::requests): gossip and request dispatch.
//! - [`recovery`](self::recovery): what the store holds, picked up after a restart.
//! - [`revision`](self::revision): lies undone after the fact (revocations, rechecks, revised verdicts).
//! - [`shards`](self::shards): the offer shards this node is in, and where its offers are published.
//! - [`books`](self::books): receipts delivered to their workers, sealed per epoch under published roots,
//!   and balance claims served and checked.
//! - [`views`](self::views): what the local API shows (jobs, receipts, earnings).
//! - [`partials`](self::partials): a running job's output streamed from its worker to its submitter.

pub mod books;
pub mod partials;
mod recovery;
mod requests;
mod revision;
mod shards;
mod submitter;
mod views;
mod worker;

pub use submitter::{JobsError, MAX_SUBMIT_KEY};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use fleetmesh_consensus::payment::Payers;
use fleetmesh_consensus::submitter::{CreditCap, Randomness, Submitter, SubmitterConfig};
use fleetmesh_consensus::trust::TrustConfig;
use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{Budget, JobOffer, Receipt, Reply, Revocation};
use fleetmesh_protocol::signing::Signable;
use fleetmesh_protocol::{JobId, ModelId, NodeId, NodeKey, Signed};
use libp2p::PeerId;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

pub use crate::adversary::WorkerBehaviour;
pub use crate::clock::now_ms;
pub use fleetmesh_consensus::submitter::JobResult;
pub use views::{Earnings, JobView, Statement, SubmittedCounts, WorkerStanding, WorkerView, receipt_id};

use crate::inference::executor::{CancelFlag, Executor};
use crate::metrics::Metrics;
use crate::net::{self, NetClient};
use crate::share::Share;
use crate::store::{DoneRecord, RevisionRecord, Store, WorkRecord};
use crate::vehicle::Car;

/// Settings of the job roles.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Credit this worker claims per job (and a submitter offers), in micro-credits.
    pub price: u64,
    /// Price per model name, overriding `price`.
    pub model_prices: BTreeMap<String, u64>,
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
    /// How long a job collects bids before its workers are chosen.
    pub bid_window_ms: u64,
    /// The payers whose budgets this node honours: it bids only on jobs they pay, and its ledger counts
    /// credit only against their budgets.
    pub payers: Payers,
    /// The budgets this node pays its own jobs from (signatures checked when they were loaded).
    pub budgets: Vec<Signed<Budget>>,
    /// Offers this node publishes per second, sustained, and at once: the fleet's per-submitter gossip
    /// limit (`[net] offers_per_submitter_per_s`), so that its offers are not dropped on the way; more
    /// submissions wait their turn.
    pub offers_per_s: f64,
    /// ... at once.
    pub offer_burst: f64,
    /// Accept two agreeing untrusted workers while this node has fewer than three peers (see
    /// [`SubmitterConfig::small_fleet`]); off by default.
    pub small_fleet: bool,
    /// Length of an epoch whose receipts are sealed under one root ([`books`](self::books)), in ms.
    pub epoch_ms: u64,
}

impl JobsConfig {
    /// The price of a job for `model` (its name's entry in `model_prices`, else `price`).
    pub fn price_of(&self, model: Option<&str>) -> u64 {
        model
            .and_then(|m| self.model_prices.get(m))
            .copied()
            .unwrap_or(self.price)
    }

    /// These settings with `payer` honoured and a budget of `payer` for `holder` (see
    /// [`crate::pay::local_budget`]): how a local fleet (the demo, tests) pays its own jobs.
    pub fn funded_by(mut self, payer: &NodeKey, holder: NodeId) -> Self {
        self.payers = Payers::new(self.payers.iter().copied().chain([payer.node_id()]));
        self.budgets.push(crate::pay::local_budget(payer, holder));
        self
    }

    /// The settings of the submitter core.
    pub fn submitter_config(&self) -> SubmitterConfig {
        SubmitterConfig {
            max_extra: self.max_extra,
            step_timeout_ms: self.step_timeout_ms,
            bid_window_ms: self.bid_window_ms,
            trust: self.adaptive.unwrap_or_default(),
            small_fleet: self.small_fleet,
            ..SubmitterConfig::default()
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            price: 1_000,
            model_prices: BTreeMap::new(),
            max_extra: 2,
            offer_ttl_ms: 10_000,
            deadline_ms: 60_000,
            max_active_work: 64,
            step_timeout_ms: 10_000,
            behaviour: WorkerBehaviour::Honest,
            adaptive: Some(TrustConfig::default()),
            bid_window_ms: 25,
            payers: Payers::default(),
            budgets: Vec::new(),
            offers_per_s: crate::net::config::NetConfig::default().offers_per_submitter_per_s,
            offer_burst: crate::net::config::NetConfig::default().offer_burst_per_submitter,
            small_fleet: false,
            epoch_ms: 600_000,
        }
    }
}

/// A job this node submitted, as its user knows it (by the id of its first offer).
struct Submitted {
    /// The offer in force.
    offer: JobOffer,
    /// Replicated by reputation (kept across a restart).
    adaptive: bool,
    /// Ids of the receipts issued for it.
    receipt_ids: Vec<String>,
    waiters: Vec<oneshot::Sender<JobResult>>,
    result: Option<JobResult>,
    /// The verdict corrected by a recheck, if it was.
    revised: Option<RevisionRecord>,
}

/// The submitter role's state: the sans-IO core and, beside it, what users and the API follow.
struct SubmitterSide {
    core: Submitter,
    /// Submitted jobs by the id their user knows.
    jobs: HashMap<JobId, Submitted>,
    /// The id of the offer in force -> the id the user knows.
    by_offer: HashMap<JobId, JobId>,
    /// Unfinished jobs found at start, to offer again once the mesh takes offers.
    to_reoffer: Vec<JobId>,
    reoffering: bool,
    /// Decided jobs in memory, oldest verdict first: beyond [`MAX_DECIDED_KEPT`] the oldest leave memory
    /// (the store keeps them; the API reads them from there).
    decided: std::collections::VecDeque<JobId>,
    /// Verdicts of the jobs that left memory: (accepted, failed).
    evicted: (u64, u64),
    /// Undecided submitted jobs that recheck another (kept in the store too, so that a recheck offered
    /// again after a restart stays one).
    rechecks: HashMap<JobId, fleetmesh_consensus::submitter::Recheck>,
}

/// Decided jobs a submitter keeps in memory (the store keeps every one).
pub const MAX_DECIDED_KEPT: usize = 4_096;

impl SubmitterSide {
    /// Around `core`, with no job submitted yet.
    fn new(core: Submitter) -> Self {
        Self {
            core,
            jobs: HashMap::new(),
            by_offer: HashMap::new(),
            to_reoffer: Vec::new(),
            reoffering: false,
            decided: std::collections::VecDeque::new(),
            evicted: (0, 0),
            rechecks: HashMap::new(),
        }
    }

    /// Notes that `original` was decided; the oldest decided jobs beyond [`MAX_DECIDED_KEPT`] leave memory.
    fn decided(&mut self, original: JobId) {
        self.decided.push_back(original);
        while self.decided.len() > MAX_DECIDED_KEPT {
            let Some(old) = self.decided.pop_front() else {
                break;
            };
            if let Some(sub) = self.jobs.get(&old)
                && let Some(result) = &sub.result
            {
                match result.outcome {
                    fleetmesh_consensus::job::Outcome::Accepted { .. } => self.evicted.0 += 1,
                    fleetmesh_consensus::job::Outcome::Failed(_) => self.evicted.1 += 1,
                }
                let offer = sub.offer.id();
                self.jobs.remove(&old);
                self.by_offer.remove(&offer);
            }
        }
    }
}

/// One job assigned to this node as a worker.
struct Work {
    offer: JobOffer,
    done: Option<DoneRecord>,
    cancel: CancelFlag,
    /// The output was revealed: the job no longer takes this worker's capacity.
    revealed: bool,
    /// When the result was computed (or found computed at a restart), ms since the Unix epoch.
    done_ms: Option<u64>,
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

/// The worker role's state.
#[derive(Default)]
struct WorkerSide {
    /// Offers this worker bid on, by job.
    offers: HashMap<JobId, JobOffer>,
    work: HashMap<JobId, Work>,
    /// Mean compute time of one job per model (ms), for the estimates in bids.
    compute_ms: HashMap<ModelId, f64>,
}

/// Receipts this node is party to (as submitter or worker), the revocations of those receipts, the
/// revocations of other nodes' receipts (for checking their claims), and the ledger last computed.
/// A foreign revocation's (job, worker, submitter that signed it).
type ForeignKey = (JobId, NodeId, NodeId);

#[derive(Default)]
struct ReceiptBook {
    receipts: BTreeMap<(JobId, NodeId), Signed<Receipt>>,
    /// By the (job, worker) of the receipt revoked: at most one per receipt held.
    revocations: BTreeMap<(JobId, NodeId), Signed<Revocation>>,
    /// Bumped whenever `receipts` or `revocations` change.
    generation: u64,
    /// Gossiped revocations of receipts this node does not hold, by (job, worker, signer), oldest first
    /// in `foreign_order`; at most [`MAX_FOREIGN_REVOCATIONS`]. (With the signer in the key, a revocation
    /// any node signs for someone else's receipt cannot take the place of the genuine one.)
    foreign: BTreeMap<ForeignKey, Signed<Revocation>>,
    foreign_order: std::collections::VecDeque<ForeignKey>,
    /// The last ledger computed, and the generation it was computed from.
    ledger: Option<(u64, BTreeMap<NodeId, Earnings>)>,
}

impl ReceiptBook {
    /// Keeps `r` unless a receipt for the same (job, worker) with a smaller canonical encoding is already
    /// there: the ledger's rule, so that every node holds the same receipts whatever the arrival order.
    ///
    /// A revocation of this receipt by its submitter that arrived before the receipt (kept as foreign
    /// until now) becomes one of this node's own and is returned, for the caller to store.
    #[must_use = "a revocation taken over from the foreign ones must be stored"]
    fn keep(&mut self, r: Signed<Receipt>) -> Option<Signed<Revocation>> {
        let key = (r.body.claim.body.job, r.body.claim.body.worker);
        if !replaces(self.receipts.get(&key), &r) {
            return None;
        }
        let submitter = r.body.claim.body.submitter;
        self.receipts.insert(key, r);
        self.generation += 1;
        let foreign_key = (key.0, key.1, submitter);
        if self.revocations.contains_key(&key) {
            return None;
        }
        let early = self.foreign.remove(&foreign_key)?;
        self.foreign_order.retain(|k| *k != foreign_key);
        self.keep_revocation(early.clone()).then_some(early)
    }

    /// Copies of every receipt and revocation held, for a ledger computed outside the lock.
    fn snapshot(&self) -> (Vec<Signed<Receipt>>, Vec<Signed<Revocation>>) {
        (
            self.receipts.values().cloned().collect(),
            self.revocations.values().cloned().collect(),
        )
    }

    /// Keeps a revocation of a receipt held elsewhere, for checking its worker's claim later; the oldest
    /// goes when [`MAX_FOREIGN_REVOCATIONS`] are kept. Returns whether it was new.
    fn keep_foreign(&mut self, r: Signed<Revocation>) -> bool {
        let key = (r.body.job, r.body.worker, r.body.submitter);
        if self.foreign.contains_key(&key) {
            return false;
        }
        if self.foreign_order.len() >= MAX_FOREIGN_REVOCATIONS
            && let Some(oldest) = self.foreign_order.pop_front()
        {
            self.foreign.remove(&oldest);
        }
        self.foreign.insert(key, r);
        self.foreign_order.push_back(key);
        true
    }

    /// Every revocation held: of this node's receipts and of others'.
    fn all_revocations(&self) -> Vec<Signed<Revocation>> {
        self.revocations
            .values()
            .chain(self.foreign.values())
            .cloned()
            .collect()
    }

    /// Keeps `r` if it revokes a receipt held here that its signer issued (so the map is no larger than
    /// the receipts), by the same rule as receipts; returns whether it changed what is kept. Whether the
    /// ledger honours it depends on its evidence ([`fleetmesh_consensus::ledger`]).
    fn keep_revocation(&mut self, r: Signed<Revocation>) -> bool {
        let key = (r.body.job, r.body.worker);
        let issued_by_signer = self
            .receipts
            .get(&key)
            .is_some_and(|receipt| receipt.body.claim.body.submitter == r.body.submitter);
        if !issued_by_signer || !replaces(self.revocations.get(&key), &r) {
            return false;
        }
        self.revocations.insert(key, r);
        self.generation += 1;
        true
    }
}

/// Whether `new` takes the place of `old` (nothing, or a larger canonical encoding) under one key: the
/// ledger's rule for two messages naming one receipt, so every node keeps the same whatever the order.
fn replaces<T: fleetmesh_protocol::codec::Message>(old: Option<&T>, new: &T) -> bool {
    old.is_none_or(|old| codec::encode(new) < codec::encode(old))
}

/// Most revocations of other nodes' receipts kept (~200 bytes each).
const MAX_FOREIGN_REVOCATIONS: usize = 65_536;

/// Receipts waiting for the writer thread; more are written from tokio's blocking threads instead.
const RECEIPT_QUEUE: usize = 4_096;

enum ToWriter {
    Put(Box<Signed<Receipt>>),
    /// Answered once everything sent before is written.
    Sync(oneshot::Sender<()>),
}

/// Writes the receipts submitters send this worker to the store, on a thread of its own: writing them in
/// bursts there costs fewer thread switches than a blocking task each. The thread ends when the job
/// roles are dropped.
struct ReceiptWriter {
    tx: std::sync::mpsc::SyncSender<ToWriter>,
    store: Store,
}

impl ReceiptWriter {
    fn start(store: Store) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<ToWriter>(RECEIPT_QUEUE);
        let writer = store.clone();
        let spawned = std::thread::Builder::new()
            .name("receipt-writer".into())
            .spawn(move || {
                while let Ok(message) = rx.recv() {
                    match message {
                        ToWriter::Put(receipt) => {
                            if let Err(e) = writer.put_receipt(&receipt) {
                                tracing::warn!(error = %e, "cannot store a receipt");
                            }
                        }
                        ToWriter::Sync(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no receipt writer thread; receipts are written from blocking tasks");
        }
        Self { tx, store }
    }

    /// Stores `receipt` (on the writer thread; from a blocking task when its queue is full or it is gone).
    fn put(&self, receipt: Signed<Receipt>) {
        if let Err(
            std::sync::mpsc::TrySendError::Full(ToWriter::Put(receipt))
            | std::sync::mpsc::TrySendError::Disconnected(ToWriter::Put(receipt)),
        ) = self.tx.try_send(ToWriter::Put(Box::new(receipt)))
        {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.put_receipt(&receipt) {
                    tracing::warn!(error = %e, "cannot store a receipt");
                }
            });
        }
    }

    /// Waits until every receipt handed over before is written.
    async fn sync(&self) {
        let (done, written) = oneshot::channel();
        let tx = self.tx.clone();
        // The queue may be full: hand the marker over from a blocking thread.
        let _ = tokio::task::spawn_blocking(move || tx.send(ToWriter::Sync(done))).await;
        let _ = written.await;
    }
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
    /// Every task the job roles spawn, so that a stopping node can wait for them.
    tasks: TaskTracker,
    /// Fires when the node starts stopping: retry loops (bids, commits) end at once.
    stopping: tokio_util::sync::CancellationToken,
    /// Locks are never nested: each is taken, used and released on its own.
    submitter: Mutex<SubmitterSide>,
    worker: Mutex<WorkerSide>,
    book: Mutex<ReceiptBook>,
    /// Receipts from submitters on their way to the store, written by the receipt writer thread.
    receipts: ReceiptWriter,
    /// When epochs are next sealed and receipts next sent again, and what is under way.
    upkeep: Mutex<books::Upkeep>,
    /// Other nodes' claims this node checked.
    checked: Mutex<books::Checked>,
    /// The offer shards this node is in.
    membership: Mutex<shards::Membership>,
    /// Held across one submission with an idempotency key (outside the three locks above, which it
    /// takes one at a time).
    keyed: tokio::sync::Mutex<()>,
    /// The offer pacer's token bucket: (tokens, when last filled). Held while an offer waits its turn.
    pacer: tokio::sync::Mutex<(f64, std::time::Instant)>,
    /// Whether the user was told that a fleet of fewer than three peers needs `small_fleet`.
    warned_small_fleet: std::sync::atomic::AtomicBool,
    /// The submitted jobs whose partial outputs someone follows.
    streams: partials::Streams,
    /// Checks of revealed outputs by this node's own model, one at a time.
    checks: tokio::sync::Semaphore,
}

/// The job roles of one node (cheap to clone).
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

/// Locks a mutex; a panic while holding it leaves plain data behind, so keep serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn reply(r: Reply) -> Vec<u8> {
    codec::encode(&r)
}

fn refuse(why: &str) -> Vec<u8> {
    reply(Reply::refused(why))
}

/// The system's randomness as the submitter core's [`Randomness`]: 0 if there is none, which makes every
/// adaptive job replicated (safe, if slower).
struct OsRandom;

impl Randomness for OsRandom {
    fn unit(&mut self) -> f64 {
        let mut b = [0u8; 8];
        match getrandom::fill(&mut b) {
            Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
            Err(_) => 0.0,
        }
    }
}

/// The tracing span of one job's work at this node: job id, this node's role, the peer on the other side
/// and, where known, the model.
fn job_span(job: JobId, role: &'static str, peer: NodeId, model: Option<String>) -> tracing::Span {
    tracing::info_span!("job", job = %job.short(), role, peer = %peer.short(), model = model.as_deref().unwrap_or("?"))
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
        let mut core = Submitter::new(me, cfg.submitter_config());
        // Work priced per unit (per generated token): each accepted worker is paid at most for the units
        // the accepted output took, however much the workers claimed.
        let (models, prices) = (executor.clone(), cfg.clone());
        core.cap_credit(CreditCap(Arc::new(move |offer, output| {
            let model = models.registry().get(&offer.model);
            let name = model.as_ref().map(|m| m.manifest().name.clone());
            prices
                .price_of(name.as_deref())
                .saturating_mul(model.map_or(1, |m| m.output_units(output)))
        })));
        let submitter = SubmitterSide::new(core);
        let receipts = ReceiptWriter::start(store.clone());
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
                tasks: TaskTracker::new(),
                stopping: tokio_util::sync::CancellationToken::new(),
                submitter: Mutex::new(submitter),
                worker: Mutex::new(WorkerSide::default()),
                book: Mutex::new(ReceiptBook::default()),
                receipts,
                upkeep: Mutex::new(books::Upkeep::default()),
                checked: Mutex::new(books::Checked::default()),
                membership: Mutex::new(shards::Membership::default()),
                keyed: tokio::sync::Mutex::new(()),
                // Empty at start: peers keep this submitter's bucket across its restart.
                pacer: tokio::sync::Mutex::new((0.0, std::time::Instant::now())),
                warned_small_fleet: std::sync::atomic::AtomicBool::new(false),
                streams: partials::Streams::default(),
                checks: tokio::sync::Semaphore::new(1),
            }),
        }
    }

    /// Spawns a task of the job roles (tracked: [`Jobs::shutdown`] waits for it).
    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(task);
    }

    fn submitter(&self) -> MutexGuard<'_, SubmitterSide> {
        lock(&self.inner.submitter)
    }

    fn worker(&self) -> MutexGuard<'_, WorkerSide> {
        lock(&self.inner.worker)
    }

    fn book(&self) -> MutexGuard<'_, ReceiptBook> {
        lock(&self.inner.book)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.me
    }

    /// The models this node runs (and can submit jobs for).
    pub fn registry(&self) -> &crate::inference::Registry {
        self.inner.executor.registry()
    }

    fn model_name(&self, model: &ModelId) -> Option<String> {
        self.registry().get(model).map(|m| m.manifest().name.clone())
    }

    fn output_text(&self, model: &ModelId, output: &[u8]) -> Option<String> {
        self.registry().get(model)?.output_text(output)
    }

    /// Time passes: deadlines of submitted jobs; forgets stale offers and finished work.
    pub fn tick(&self) {
        let now = now_ms();
        self.forget_old_work(now);
        self.reoffer();
        let actions = self.submitter().core.on_tick(now);
        self.act_all(actions);
        self.maybe_seal(now);
        self.maybe_keep_shards(now);
        self.maybe_redeliver(now);
        let counts = self.submitted_counts();
        let m = &self.inner.metrics;
        for (name, n) in [
            ("pending", counts.pending),
            ("decided", counts.accepted + counts.failed),
        ] {
            m.jobs
                .get_or_create(&crate::metrics::StateLabels { state: name.into() })
                .set(n as i64);
        }
        m.executor_queue_depth
            .set(self.inner.executor.queue_depth() as i64);
        m.receipts.set(self.book().receipts.len() as i64);
    }
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jobs({})", self.inner.me.short())
    }
}

#[cfg(test)]
mod tests {
    use fleetmesh_consensus::job::{FailReason, Outcome};
    use fleetmesh_protocol::messages::{AgreementRule, JobInput, Verdict};

    use super::*;

    fn decided_job(nonce: u64) -> (JobId, Submitted) {
        let key = NodeKey::from_seed([1; 32]);
        let offer = JobOffer {
            submitter: key.node_id(),
            nonce,
            model: ModelId::of(b"m"),
            input: JobInput::Inline(vec![]),
            rule: AgreementRule::Exact,
            replicas: 2,
            reward: 1,
            created_ms: nonce,
            expires_ms: nonce + 1,
            deadline_ms: nonce + 2,
            budget: crate::pay::issue(&NodeKey::from_seed([2; 32]), key.node_id(), 1, 10, u64::MAX),
        };
        let id = offer.id();
        let result = JobResult {
            job: id,
            outcome: if nonce.is_multiple_of(2) {
                Outcome::Failed(FailReason::NoAgreement)
            } else {
                Outcome::Accepted {
                    output: vec![],
                    agreeing: vec![],
                    disagreeing: vec![],
                }
            },
            workers_assigned: 2,
            receipts: 0,
            compute_us_max: 0,
            unverified: false,
        };
        let sub = Submitted {
            offer,
            adaptive: false,
            receipt_ids: Vec::new(),
            waiters: Vec::new(),
            result: Some(result),
            revised: None,
        };
        (id, sub)
    }

    /// A receipt of `worker` (key seed) on job `job` from `submitter` (key seed), with `verdict`.
    fn receipt(submitter: u8, worker: u8, job: u8, verdict: Verdict) -> Signed<Receipt> {
        let (sk, wk) = (
            NodeKey::from_seed([submitter; 32]),
            NodeKey::from_seed([worker; 32]),
        );
        let claim = fleetmesh_protocol::messages::WorkClaim {
            job: JobId::of(&[job]),
            model: ModelId::of(b"m"),
            worker: wk.node_id(),
            submitter: sk.node_id(),
            output_digest: [job; 32],
            compute_us: 1,
            energy_uwh: 1,
            claimed_credit: 10,
            claimed_ms: 1,
        };
        let body = Receipt {
            claim: Signed::sign(claim, &wk).unwrap(),
            credit: if verdict == Verdict::Accepted { 10 } else { 0 },
            verdict,
            issued_ms: 2,
            budget: crate::pay::issue(&NodeKey::from_seed([9; 32]), sk.node_id(), 1, 100, u64::MAX),
            seq: u64::from(job),
            spent: 10,
        };
        Signed::sign(body, &sk).unwrap()
    }

    /// `submitter`'s revocation of its receipt of `worker` on job `job`, caught on job `caught_on`.
    fn revocation(submitter: u8, worker: u8, job: u8, caught_on: u8) -> Signed<Revocation> {
        let body = Revocation {
            job: JobId::of(&[job]),
            worker: NodeKey::from_seed([worker; 32]).node_id(),
            submitter: NodeKey::from_seed([submitter; 32]).node_id(),
            evidence: receipt(submitter, worker, caught_on, Verdict::Rejected),
            issued_ms: 3,
        };
        Signed::sign(body, &NodeKey::from_seed([submitter; 32])).unwrap()
    }

    #[test]
    fn a_revocation_that_comes_before_its_receipt_is_taken_over_when_the_receipt_arrives() {
        let mut book = ReceiptBook::default();
        let early = revocation(1, 2, 0, 5);
        // No receipt yet: not this node's to keep, held with the foreign ones.
        assert!(!book.keep_revocation(early.clone()));
        assert!(book.keep_foreign(early.clone()));
        // Another submitter's receipt of the same (job, worker) does not take it over.
        assert_eq!(book.keep(receipt(3, 2, 0, Verdict::Accepted)), None);
        assert!(book.revocations.is_empty());
        let mut book = ReceiptBook::default();
        assert!(book.keep_foreign(early.clone()));
        // The receipt it revokes arrives: the revocation becomes this node's own, once.
        assert_eq!(
            book.keep(receipt(1, 2, 0, Verdict::Accepted)),
            Some(early.clone())
        );
        assert_eq!(book.revocations.len(), 1);
        assert!(book.foreign.is_empty() && book.foreign_order.is_empty());
        assert_eq!(book.all_revocations(), vec![early.clone()]);
        assert_eq!(book.keep(receipt(1, 2, 0, Verdict::Accepted)), None);
        // A revocation another node signs for the same (job, worker), arriving first, does not keep the
        // genuine one out.
        let mut book = ReceiptBook::default();
        assert!(book.keep_foreign(revocation(3, 2, 0, 5)));
        assert!(book.keep_foreign(early.clone()));
        assert_eq!(book.keep(receipt(1, 2, 0, Verdict::Accepted)), Some(early));
    }

    #[test]
    fn decided_jobs_beyond_the_limit_leave_memory_and_stay_counted() {
        let me = NodeKey::from_seed([1; 32]).node_id();
        let mut side = SubmitterSide::new(Submitter::new(me, SubmitterConfig::default()));
        let total = MAX_DECIDED_KEPT as u64 + 10;
        let mut first = None;
        for n in 0..total {
            let (id, sub) = decided_job(n);
            first.get_or_insert(id);
            side.by_offer.insert(id, id);
            side.jobs.insert(id, sub);
            side.decided(id);
        }
        assert_eq!(side.jobs.len(), MAX_DECIDED_KEPT);
        assert_eq!(side.by_offer.len(), MAX_DECIDED_KEPT);
        assert_eq!(side.evicted.0 + side.evicted.1, 10);
        assert_eq!((side.evicted.0, side.evicted.1), (5, 5));
        assert!(
            !side.jobs.contains_key(&first.unwrap()),
            "the oldest verdict stayed"
        );
    }
}
