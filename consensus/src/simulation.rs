//! A fleet simulated over the sans-IO core, no network: many workers with a mix of behaviours and one
//! [`Submitter`] (the very code a node's submitter runs) that takes their bids, draws workers by
//! reputation, runs each job through the [`crate::job::Job`] state machine (commit before reveal, quorum,
//! escalation, timeouts), updates reputation from its verdicts and writes the receipts by its credit rule;
//! credit is then computed by the real [`Ledger`] from really signed receipts (plus forged and replayed
//! ones).
//!
//! `cargo run --release -p fleetmesh-examples --example simulate` prints the table in the README.

use std::collections::{BTreeMap, HashMap, VecDeque};

use fleetmesh_protocol::messages::{
    AgreementRule, Bid, Budget, JobInput, JobOffer, NumericClass, Receipt, ResultCommit, ResultReveal,
    Revocation, Verdict, WorkClaim,
};
use fleetmesh_protocol::signing::SignatureBytes;
use fleetmesh_protocol::{JobId, ModelId, NodeId, NodeKey, Signed};

use crate::job::Outcome;
use crate::ledger::Ledger;
use crate::payment::Payers;
use crate::submitter::{Action, JobResult, Randomness, Replication, Submitter, SubmitterConfig};
use crate::trust::TrustConfig;

/// How a simulated worker behaves.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub enum Behaviour {
    /// Computes and reports the true output.
    Honest,
    /// Always reports a wrong output of its own.
    AlwaysWrong,
    /// Reports a wrong output with this probability.
    WrongWithProbability(f64),
    /// Does not compute: copies its partner's commitment and reveal (which cannot open under its own id).
    Lazy,
    /// Member of a group that all report the same wrong output.
    Colluding,
    /// Computes honestly, and also forges receipts for jobs it never ran.
    ReceiptForger,
    /// Computes honestly, and also replays its receipts many times.
    ReceiptReplayer,
    /// Accepts assignments and never answers.
    Silent,
}

impl Behaviour {
    /// Short name for tables.
    pub fn name(&self) -> String {
        match self {
            Behaviour::Honest => "honest".into(),
            Behaviour::AlwaysWrong => "always-wrong".into(),
            Behaviour::WrongWithProbability(p) => format!("wrong-p{p}"),
            Behaviour::Lazy => "lazy".into(),
            Behaviour::Colluding => "colluding".into(),
            Behaviour::ReceiptForger => "receipt-forger".into(),
            Behaviour::ReceiptReplayer => "receipt-replayer".into(),
            Behaviour::Silent => "silent".into(),
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Workers in the fleet.
    pub workers: usize,
    /// Fraction of the fleet with `adversary` behaviour (the rest is honest).
    pub adversary_share: f64,
    /// The adversaries' behaviour.
    pub adversary: Behaviour,
    /// Jobs submitted.
    pub jobs: usize,
    /// Bidders per job (drawn at random from the fleet).
    pub bidders: usize,
    /// Reputation and replication settings.
    pub trust: TrustConfig,
    /// Sign receipts and compute the ledger (slower).
    pub receipts: bool,
    /// Seed of all randomness.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            workers: 1_000,
            adversary_share: 0.10,
            adversary: Behaviour::AlwaysWrong,
            jobs: 100_000,
            bidders: 20,
            trust: TrustConfig::default(),
            receipts: true,
            seed: 1,
        }
    }
}

/// What the simulation measured.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Jobs with an accepted output.
    pub accepted: usize,
    /// Accepted outputs that were wrong.
    pub accepted_wrong: usize,
    /// Jobs that failed.
    pub failed: usize,
    /// Workers assigned per job, over the second half of the run (steady state).
    pub steady_replicas: f64,
    /// Workers assigned per job over the whole run.
    pub mean_replicas: f64,
    /// Jobs after which an honest newcomer, joining at the midpoint, became trusted (`None`: not by the end).
    pub newcomer_trusted_after: Option<usize>,
    /// Credit per worker of each behaviour, on average (micro-credits), from the ledger.
    pub credit_per_worker: BTreeMap<String, f64>,
    /// Receipts the ledger refused as forged.
    pub forged_refused: usize,
    /// Receipts the ledger counted once although repeated.
    pub duplicates_ignored: usize,
    /// Jobs rechecked because the worker they were accepted from alone was caught lying later.
    pub rechecks: usize,
    /// Verdicts a recheck revised (the output accepted first was wrong).
    pub revised: usize,
    /// Accepted outputs still wrong at the end, after revisions.
    pub wrong_after_revision: usize,
    /// Receipts the ledger counts as revoked.
    pub revoked: usize,
}

impl SimReport {
    /// Accepted wrong outputs per accepted job.
    pub fn wrong_accept_rate(&self) -> f64 {
        self.accepted_wrong as f64 / self.accepted.max(1) as f64
    }

    /// Accepted outputs still wrong after revisions, per accepted job.
    pub fn wrong_after_revision_rate(&self) -> f64 {
        self.wrong_after_revision as f64 / self.accepted.max(1) as f64
    }
}

/// splitmix64: small, seeded, good enough to draw workers and coin flips.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

impl Randomness for Rng {
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Worker {
    key: NodeKey,
    id: NodeId,
    behaviour: Behaviour,
}

/// A worker's output, salt and commitment.
type Computed = (Vec<u8>, [u8; 32], [u8; 32]);

const STEP_MS: u64 = 1_000;
const TIMEOUT_MS: u64 = 100;
const PRICE: u64 = 1_000;

/// Runs the simulation: one [`Submitter`] (the node's own submitter core) offers every job, takes the
/// bids of a random sample of the fleet, and the simulated workers answer its actions.
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut rng = Rng(cfg.seed);
    let adversaries = (cfg.workers as f64 * cfg.adversary_share).round() as usize;
    let mut workers: Vec<Worker> = (0..cfg.workers)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seed[8..16].copy_from_slice(&cfg.seed.to_le_bytes());
            let key = NodeKey::from_seed(seed);
            Worker {
                id: key.node_id(),
                key,
                behaviour: if i < adversaries {
                    cfg.adversary
                } else {
                    Behaviour::Honest
                },
            }
        })
        .collect();
    let submitter_key = NodeKey::from_seed([0xAB; 32]);
    // The payer that funds the simulated submitter's jobs, the only one the ledger honours.
    let payer_key = NodeKey::from_seed([0xEF; 32]);
    let payers = Payers::new([payer_key.node_id()]);
    let budget = Budget {
        payer: payer_key.node_id(),
        holder: submitter_key.node_id(),
        serial: 1,
        amount: u64::MAX / 2,
        expires_ms: u64::MAX,
    };
    let Ok(budget) = Signed::sign(budget, &payer_key) else {
        unreachable!("signing with the budget's own payer key cannot fail")
    };
    let mut submitter = Submitter::new(
        submitter_key.node_id(),
        SubmitterConfig {
            max_extra: 2,
            step_timeout_ms: TIMEOUT_MS,
            // Every bid of a job arrives at the same instant: the window closes with the last one.
            bid_window_ms: 0,
            reoffer_after_ms: u64::MAX,
            max_reoffers: 0,
            trust: cfg.trust,
            // 20 bidders per job: never a small fleet.
            small_fleet: false,
        },
    );
    let mut fleet = Fleet {
        model: ModelId::of(b"simulated model"),
        class: NumericClass {
            backend: "sim".into(),
            features: "none".into(),
            arch: "sim".into(),
        },
        submitter_key,
        budget,
        by_id: workers.iter().enumerate().map(|(i, w)| (w.id, i)).collect(),
        sign: cfg.receipts,
    };
    let mut report = SimReport::default();
    let mut receipts: Vec<Signed<Receipt>> = Vec::new();
    let mut revocations: Vec<Signed<Revocation>> = Vec::new();
    // Every accepted job's output now (revisions replace it); its truth is `Truth::of` the job.
    let mut accepted: HashMap<JobId, Vec<u8>> = HashMap::new();
    let (mut assigned_total, mut assigned_steady) = (0usize, 0usize);
    let half = cfg.jobs / 2;
    let mut newcomer: Option<usize> = None;
    let mut nonce = cfg.jobs as u64;

    for j in 0..cfg.jobs {
        let now = j as u64 * STEP_MS;
        if j == half {
            // An honest newcomer joins at the midpoint.
            let key = NodeKey::from_seed([0xCD; 32]);
            fleet.by_id.insert(key.node_id(), workers.len());
            newcomer = Some(workers.len());
            workers.push(Worker {
                id: key.node_id(),
                key,
                behaviour: Behaviour::Honest,
            });
        }
        // Every offer asks for one replica: the submitter replicates by reputation.
        let offer = fleet.offer(j as u64, 1, now);
        let user_job = offer.id();
        submitter.offer(user_job, offer.clone(), Replication::Adaptive);
        // The job, then any rechecks its verdict caused (and theirs), at once.
        // (offer, truth, whether it is a recheck)
        let mut queue = VecDeque::from([(offer, Truth::of(&user_job), false)]);
        let mut t = now;
        while let Some((offer, truth, is_recheck)) = queue.pop_front() {
            let candidates = sample(cfg, &workers, newcomer, &mut rng);
            let (decided, after, end) =
                fleet.drive(&mut submitter, &workers, &offer, &truth, &candidates, t, &mut rng);
            t = end;
            let Some((result, bodies)) = decided else {
                submitter.forget(&offer.id());
                if !is_recheck {
                    report.failed += 1;
                }
                continue;
            };
            assigned_total += result.workers_assigned;
            if j >= half {
                assigned_steady += result.workers_assigned;
            }
            match &result.outcome {
                Outcome::Accepted { output, agreeing, .. } => {
                    if !is_recheck {
                        report.accepted += 1;
                        if *output != truth.output {
                            report.accepted_wrong += 1;
                        }
                        accepted.insert(user_job, output.clone());
                    }
                    if cfg.receipts {
                        fleet.sign_receipts(&workers, bodies, agreeing, j as u64, &mut receipts);
                    }
                }
                Outcome::Failed(_) if !is_recheck => report.failed += 1,
                Outcome::Failed(_) => {}
            }
            for action in after {
                match action {
                    Action::Recheck {
                        job,
                        rejection,
                        recheck,
                    } => {
                        report.rechecks += 1;
                        if cfg.receipts
                            && let Ok(evidence) = Signed::sign(*rejection, &fleet.submitter_key)
                        {
                            let revocation = Revocation {
                                job,
                                worker: recheck.suspect,
                                submitter: fleet.submitter_key.node_id(),
                                evidence,
                                issued_ms: t,
                            };
                            if let Ok(r) = Signed::sign(revocation, &fleet.submitter_key) {
                                revocations.push(r);
                            }
                        }
                        nonce += 1;
                        let offer = fleet.offer(nonce, 2, t);
                        submitter.offer_recheck(offer.id(), offer.clone(), recheck);
                        queue.push_back((offer, Truth::of(&recheck.of), true));
                    }
                    Action::Revise { job, output, .. } => {
                        report.revised += 1;
                        if let Some(accepted) = accepted.get_mut(&job) {
                            *accepted = output;
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(n) = newcomer
            && report.newcomer_trusted_after.is_none()
            && submitter.reputation().is_trusted(&workers[n].id, t)
        {
            report.newcomer_trusted_after = Some(j - half);
        }
    }
    report.wrong_after_revision = accepted
        .iter()
        .filter(|(job, output)| **output != Truth::of(job).output)
        .count();
    report.mean_replicas = assigned_total as f64 / cfg.jobs.max(1) as f64;
    report.steady_replicas = assigned_steady as f64 / (cfg.jobs - half).max(1) as f64;
    if cfg.receipts {
        let ledger = Ledger::with_revocations(&receipts, &revocations, &payers);
        report.forged_refused = ledger.forged;
        report.duplicates_ignored = ledger.duplicates;
        report.revoked = ledger.revoked.len();
        let mut per: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for w in &workers {
            let e = per.entry(w.behaviour.name()).or_default();
            e.0 += ledger.balance(&w.id).credit as f64;
            e.1 += 1;
        }
        report.credit_per_worker = per.into_iter().map(|(k, (c, n))| (k, c / n as f64)).collect();
    }
    report
}

/// The true output of a job, and the one colluders agree on.
#[derive(Debug, Clone)]
struct Truth {
    output: Vec<u8>,
    collusion: Vec<u8>,
}

impl Truth {
    /// Of the job its user knows as `job` (a recheck has the same).
    fn of(job: &JobId) -> Self {
        Self {
            output: blake3::hash(job.as_bytes()).as_bytes()[..8].to_vec(),
            collusion: blake3::hash(&[job.as_bytes().as_slice(), b"collude"].concat()).as_bytes()[..8]
                .to_vec(),
        }
    }
}

/// The bidders of one job: a random sample of the fleet (the newcomer with its fair chance).
fn sample(cfg: &SimConfig, workers: &[Worker], newcomer: Option<usize>, rng: &mut Rng) -> Vec<NodeId> {
    let mut candidates: Vec<NodeId> = (0..cfg.bidders)
        .map(|_| workers[rng.below(workers.len())].id)
        .collect();
    if let Some(n) = newcomer
        && rng.unit() < cfg.bidders as f64 / workers.len() as f64
    {
        candidates.push(workers[n].id);
    }
    candidates.sort();
    candidates.dedup();
    candidates
}

/// What every job of the simulation shares.
struct Fleet {
    model: ModelId,
    class: NumericClass,
    submitter_key: NodeKey,
    budget: Signed<Budget>,
    by_id: BTreeMap<NodeId, usize>,
    /// Sign claims (a ledger is computed).
    sign: bool,
}

/// A decided job's result and receipt bodies, the actions after its verdict (rechecks, revisions), and
/// the time it ended.
type Driven = (Option<(JobResult, Vec<Receipt>)>, Vec<Action>, u64);

impl Fleet {
    fn offer(&self, nonce: u64, replicas: u8, now: u64) -> JobOffer {
        JobOffer {
            submitter: self.submitter_key.node_id(),
            nonce,
            model: self.model,
            input: JobInput::Inline(Vec::new()),
            rule: AgreementRule::Exact,
            replicas,
            reward: PRICE,
            created_ms: now,
            expires_ms: now + 10 * TIMEOUT_MS,
            deadline_ms: now + STEP_MS - 1,
            budget: self.budget.clone(),
        }
    }

    /// Takes every candidate's bid and drives the job to its verdict: workers answer at once, silent
    /// ones never; time jumps past deadlines.
    #[allow(clippy::too_many_arguments)]
    fn drive(
        &self,
        submitter: &mut Submitter,
        workers: &[Worker],
        offer: &JobOffer,
        truth: &Truth,
        candidates: &[NodeId],
        now: u64,
        rng: &mut Rng,
    ) -> Driven {
        let job_id = offer.id();
        // Every sampled worker bids; the window closes with the last bid.
        let mut actions = Vec::new();
        for w in candidates {
            let bid = Bid {
                job: job_id,
                worker: *w,
                class: self.class.clone(),
                price: PRICE,
                energy_cost: 0,
                est_ms: 1,
                expires_ms: offer.expires_ms,
            };
            actions.extend(
                submitter
                    .on_bid(bid, now, candidates.len(), rng)
                    .unwrap_or_default(),
            );
        }
        let mut t = now;
        let mut done: BTreeMap<NodeId, Computed> = BTreeMap::new();
        let (mut decided, mut after) = (None, Vec::new());
        let mut wake: Option<u64> = None;
        for _ in 0..64 {
            if actions.is_empty() {
                if !submitter.contains(&job_id) {
                    break;
                }
                actions = match wake.take() {
                    Some(at) => {
                        t = t.max(at);
                        submitter.on_wake(job_id, t, rng)
                    }
                    None => {
                        t += TIMEOUT_MS + 1;
                        submitter.on_tick(t)
                    }
                };
                continue;
            }
            let mut next = Vec::new();
            for action in actions.drain(..) {
                match action {
                    Action::Assign { worker, .. } => {
                        let w = &workers[self.by_id[&worker]];
                        let Some(computed) = compute(w.behaviour, &job_id, &worker, truth, &done, rng) else {
                            continue;
                        };
                        let commit = ResultCommit {
                            job: job_id,
                            worker,
                            commitment: computed.2,
                        };
                        done.insert(worker, computed);
                        next.extend(submitter.on_commit(&commit, t).unwrap_or_default());
                    }
                    Action::RequestReveal { worker, .. } => {
                        if let Some((output, salt, _)) = done.get(&worker).cloned() {
                            let Some(claim) = self.claim(&workers[self.by_id[&worker]], job_id, &output, t)
                            else {
                                continue;
                            };
                            let reveal = ResultReveal {
                                job: job_id,
                                worker,
                                output,
                                salt,
                                compute_us: 1_000,
                                energy_uwh: 5,
                            };
                            next.extend(submitter.on_report(&reveal, claim, t).unwrap_or_default());
                        }
                    }
                    Action::WakeAt { at_ms, .. } => wake = Some(at_ms),
                    // (Every sampled worker bid at once: a fresh offer would reach nobody new.)
                    Action::Reoffer { .. } => {}
                    Action::Decide {
                        result, receipts: r, ..
                    } => decided = Some((result, r)),
                    a @ (Action::Recheck { .. } | Action::Revise { .. }) => after.push(a),
                }
            }
            actions = next;
            if decided.is_some() {
                // (The actions after a verdict come with it.)
                after.append(&mut actions);
                break;
            }
        }
        (decided, after, t)
    }

    /// The worker's signed claim over `output` (unsigned when no ledger is computed).
    fn claim(&self, worker: &Worker, job: JobId, output: &[u8], t: u64) -> Option<Signed<WorkClaim>> {
        let claim = WorkClaim {
            job,
            model: self.model,
            worker: worker.id,
            submitter: self.submitter_key.node_id(),
            output_digest: *blake3::hash(output).as_bytes(),
            compute_us: 1_000,
            energy_uwh: 5,
            claimed_credit: PRICE,
            claimed_ms: t,
        };
        if !self.sign {
            // Nobody checks signatures when no ledger is computed.
            return Some(Signed {
                body: claim,
                signature: SignatureBytes([0; 64]),
            });
        }
        Signed::sign(claim, &worker.key).ok()
    }

    /// Countersigns a decided job's receipt bodies into `receipts`, with the forgers' and replayers'
    /// extras.
    fn sign_receipts(
        &self,
        workers: &[Worker],
        bodies: Vec<Receipt>,
        agreeing: &[NodeId],
        n: u64,
        receipts: &mut Vec<Signed<Receipt>>,
    ) {
        for body in bodies {
            let worker = &workers[self.by_id[&body.claim.body.worker]];
            let Ok(r) = Signed::sign(body, &self.submitter_key) else {
                continue;
            };
            if worker.behaviour == Behaviour::ReceiptReplayer {
                receipts.extend(std::iter::repeat_n(r.clone(), 3));
            }
            receipts.push(r);
        }
        for w in agreeing {
            let worker = &workers[self.by_id[w]];
            if worker.behaviour == Behaviour::ReceiptForger {
                receipts.push(forged(
                    &worker.key,
                    &self.submitter_key,
                    &self.budget,
                    self.model,
                    n,
                ));
            }
        }
    }
}

/// What a worker of `behaviour` commits to for an assigned job (`None`: it never answers).
fn compute(
    behaviour: Behaviour,
    job: &JobId,
    worker: &NodeId,
    truth: &Truth,
    done: &BTreeMap<NodeId, Computed>,
    rng: &mut Rng,
) -> Option<Computed> {
    let (truth, collusion) = (&truth.output, &truth.collusion);
    let mut salt = [0u8; 32];
    salt[..8].copy_from_slice(&rng.next().to_le_bytes());
    let output = match behaviour {
        Behaviour::Silent => return None,
        Behaviour::Lazy => {
            // Copies someone else's commitment and (later) their reveal, which cannot open under its own id.
            if let Some(copied) = done.values().next() {
                return Some(copied.clone());
            }
            vec![0u8; truth.len()]
        }
        // Garbage of its own (a group sharing one wrong output is `Colluding`).
        Behaviour::AlwaysWrong => truth
            .iter()
            .zip(worker.as_bytes())
            .map(|(x, k)| !(x ^ k))
            .collect(),
        Behaviour::WrongWithProbability(p) if rng.unit() < p => truth.iter().map(|x| x ^ 1).collect(),
        Behaviour::Colluding => collusion.to_vec(),
        _ => truth.to_vec(),
    };
    let commitment = ResultCommit::commitment_for(job, worker, &output, &salt);
    Some((output, salt, commitment))
}

/// A receipt for a job that never happened: the forger signs its own claim and fakes the submitter's
/// countersignature (it cannot make a real one).
fn forged(
    worker: &NodeKey,
    submitter: &NodeKey,
    budget: &Signed<Budget>,
    model: ModelId,
    n: u64,
) -> Signed<Receipt> {
    let job = JobId::of(&n.to_le_bytes());
    let claim = WorkClaim {
        job,
        model,
        worker: worker.node_id(),
        submitter: submitter.node_id(),
        output_digest: *blake3::hash(b"nothing").as_bytes(),
        compute_us: 1_000,
        energy_uwh: 5,
        claimed_credit: PRICE,
        claimed_ms: 0,
    };
    let claim = match Signed::sign(claim, worker) {
        Ok(c) => c,
        Err(_) => unreachable!("signing with the claim's own key cannot fail"),
    };
    let body = Receipt {
        claim,
        verdict: Verdict::Accepted,
        credit: PRICE,
        issued_ms: 0,
        budget: budget.clone(),
        seq: n,
        spent: PRICE,
    };
    // The forger's own signature stands where the submitter's should be.
    let signature = worker.sign_digest(&fleetmesh_protocol::signing::signing_digest(&body));
    Signed { body, signature }
}
