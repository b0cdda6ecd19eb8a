//! `fleetmesh demo`: a local fleet in one process — real libp2p nodes on loopback TCP, each with its own key,
//! executor and job roles — doing verified inference on the embedded digits model.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmesh_consensus::job::Outcome;
use fleetmesh_protocol::NodeKey;
use libp2p::Multiaddr;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{KadMode, NodeConfig};
use crate::inference::Model;
use crate::inference::{self, Registry, digits};
use crate::jobs::{JobsConfig, WorkerBehaviour};
use crate::node::{self, Node};
use crate::store::Store;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Nodes in the fleet (the first one submits).
    pub nodes: usize,
    /// Jobs submitted (held-out digits images, cycled).
    pub jobs: usize,
    /// Agreeing workers required per job.
    pub replicas: u8,
    /// Jobs in flight at once.
    pub in_flight: usize,
    /// Nodes (after the submitter) that misbehave (alternately always wrong and lazy), to show they are
    /// out-voted.
    pub malicious: usize,
    /// Replicas follow the workers' reputation (adaptive replication) instead of `replicas`.
    pub adaptive: bool,
    /// Where every car's simulated clock starts (`"ddd hh:mm"`).
    pub clock: String,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Workers whose driver gets in once half the jobs are done (their running work is preempted).
    pub drivers_return: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            nodes: 5,
            jobs: 500,
            replicas: 2,
            in_flight: 32,
            malicious: 0,
            adaptive: false,
            clock: "tue 01:00".into(),
            speed: 60.0,
            drivers_return: 0,
        }
    }
}

/// One car's line in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct CarLine {
    /// Short node id.
    pub node: String,
    /// `submitter`, `worker` or `adversary`.
    pub role: &'static str,
    /// The car's state at the end, in words.
    pub state: String,
    /// Its admission at the end: `admitted`, or why not.
    pub admission: String,
    /// Seconds the car admitted work.
    pub admitted_s: f64,
    /// Times its computer was woken for work.
    pub wakes: u64,
    /// Running jobs it handed back when its driver got in.
    pub preempted: u64,
    /// Accepted jobs, from the receipts the submitter holds.
    pub jobs: u64,
    /// Energy of those jobs as the receipts record it (µWh).
    pub energy_uwh: u64,
    /// Credit earned (micro-credits).
    pub credit: u64,
    /// Estimated electricity cost of that energy at the car's tariff (micro-credits).
    pub electricity: f64,
}

/// The demo's result.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    /// Jobs submitted.
    pub jobs: usize,
    /// Jobs with an accepted (quorum-verified) output.
    pub verified: usize,
    /// Jobs that failed.
    pub failed: usize,
    /// Fraction of verified outputs whose predicted digit is the label.
    pub accuracy: f64,
    /// Verified jobs per second, offer to verdict, whole batch.
    pub jobs_per_s: f64,
    /// Workers assigned per job, on average.
    pub mean_replicas: f64,
    /// Verified outputs that differ from local inference of the same input (must be 0).
    pub accepted_wrong: usize,
    /// Adversarial nodes in the fleet.
    pub malicious: usize,
    /// Receipts the submitter holds (it issued them).
    pub receipts: usize,
    /// Seconds from the first offer to the last verdict.
    pub elapsed_s: f64,
    /// Per car: state, admitted time, accepted jobs, energy and credit (from the receipts the submitter
    /// holds); the node lines add up to the totals below.
    pub cars: Vec<CarLine>,
    /// Energy of all accepted jobs, from the ledger (µWh).
    pub total_energy_uwh: u64,
    /// Credit paid for all accepted jobs, from the ledger (micro-credits).
    pub total_credit: u64,
    /// Jobs handed back because a driver got in.
    pub preempted: u64,
}

/// The configuration of a local-fleet node: loopback TCP on a free port, DHT server, listen address
/// advertised as is, API on a free loopback port, `bootstrap` as its only known peer.
pub fn node_config(bootstrap: Option<&Multiaddr>, peers: usize) -> NodeConfig {
    let mut cfg = NodeConfig::default();
    cfg.net.listen =
        vec![Multiaddr::from(std::net::Ipv4Addr::LOCALHOST).with(libp2p::multiaddr::Protocol::Tcp(0))];
    cfg.net.bootstrap = bootstrap.cloned().into_iter().collect();
    cfg.net.kademlia_mode = KadMode::Server;
    cfg.net.public = true;
    cfg.net.target_peers = peers;
    // One owner's fleet: its one submitter may offer as fast as the fleet works (an open fleet limits
    // every submitter to the default, 50 offers/s).
    cfg.net.offers_per_submitter_per_s = 5_000.0;
    cfg.net.offer_burst_per_submitter = 20_000.0;
    cfg.api.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg
}

/// Why a local fleet or the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The demo's settings cannot work (too few nodes for the replicas, say).
    #[error("{0}")]
    Settings(String),
    /// A node could not start.
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    /// The mesh failed.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// A temporary database could not be made.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The digits model or its data could not be loaded or run.
    #[error(transparent)]
    Models(#[from] crate::inference::InferenceError),
    /// A car refused a state change.
    #[error(transparent)]
    Car(#[from] crate::vehicle::ReportError),
    /// The system gave no randomness for the fleet's keys.
    #[error("no system randomness: {0}")]
    Random(#[from] getrandom::Error),
    /// The nodes did not all connect in time.
    #[error("the fleet did not connect within 30 s")]
    NotConnected,
}

/// A fresh node key from the system's randomness.
pub(crate) fn random_key() -> Result<NodeKey, DemoError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(NodeKey::from_seed(seed))
}

/// The simulated cars of a local fleet: each node's car gets its own seed.
#[derive(Debug, Clone)]
pub struct FleetCars {
    /// Where the simulated clocks start (`"ddd hh:mm"`).
    pub clock: String,
    /// Simulated seconds per real second.
    pub speed: f64,
}

/// A local fleet of nodes in this process, fully connected, with a formed gossip mesh.
pub struct Fleet {
    nodes: Vec<Node>,
    cancel: CancellationToken,
}

impl Fleet {
    /// Starts `n` nodes with fresh keys on loopback (node 1 is everyone's bootstrap peer) and waits until
    /// each is connected to all others.
    pub async fn start(n: usize) -> Result<Self, DemoError> {
        Self::start_with(n, 0, None).await
    }

    /// Like [`Fleet::start`], with nodes 2 to `malicious + 1` misbehaving (alternately always wrong and
    /// lazy), and each node on a simulated car if `cars` is given (stationary otherwise).
    pub async fn start_with(n: usize, malicious: usize, cars: Option<FleetCars>) -> Result<Self, DemoError> {
        let behaviours = (0..n)
            .map(|i| match (i >= 1 && i <= malicious, i % 2) {
                (false, _) => WorkerBehaviour::Honest,
                (true, 1) => WorkerBehaviour::AlwaysWrong,
                (true, _) => WorkerBehaviour::Lazy,
            })
            .collect();
        Self::start_custom(
            Registry::with_defaults(None)?,
            behaviours,
            cars,
            JobsConfig::default(),
        )
        .await
    }

    /// A fleet of one node per entry of `behaviours` (node 1, which submits, should be honest), each with
    /// `registry`'s models and the job settings of `jobs` (its behaviour, budget and small-fleet rule
    /// set per node).
    pub async fn start_custom(
        registry: Registry,
        behaviours: Vec<WorkerBehaviour>,
        cars: Option<FleetCars>,
        jobs: JobsConfig,
    ) -> Result<Self, DemoError> {
        let n = behaviours.len();
        let cancel = CancellationToken::new();
        // The fleet's own payer: every node honours it and holds a budget of it.
        let payer = random_key()?;
        let start_node = |i: usize, bootstrap: Option<Multiaddr>, behaviour: WorkerBehaviour| {
            let (registry, cancel, cars, payer, template) = (
                registry.clone(),
                cancel.clone(),
                cars.clone(),
                payer.clone(),
                jobs.clone(),
            );
            async move {
                let key = random_key()?;
                let mut cfg = node_config(bootstrap.as_ref(), n);
                if let Some(cars) = cars {
                    cfg.car.source = crate::vehicle::SourceKind::Simulated;
                    cfg.car.seed = i as u64 + 1;
                    cfg.car.sim_start = cars.clock;
                    cfg.car.sim_speed = cars.speed;
                }
                let store = Store::temporary()?;
                // One owner's fleet: with `--nodes 3` two workers may agree while none is trusted yet.
                let jobs = JobsConfig {
                    behaviour,
                    small_fleet: true,
                    ..template
                }
                .funded_by(&payer, key.node_id());
                Ok::<_, DemoError>(
                    node::start_with(key, cfg, registry, jobs, Default::default(), store, cancel).await?,
                )
            }
        };
        let first = start_node(0, None, behaviours[0]).await?;
        let boot = first.net.dialable_addr(Duration::from_secs(2)).await?;
        let mut nodes = vec![first];
        for (i, behaviour) in behaviours.iter().enumerate().skip(1) {
            nodes.push(start_node(i, Some(boot.clone()), *behaviour).await?);
        }
        let started = Instant::now();
        loop {
            // Connected to everyone, and everyone's gossip subscriptions known (offers reach every worker).
            let mut connected = 0;
            for node in &nodes {
                let s = node.net.status().await?;
                connected += usize::from(s.connected_peers + 1 >= n && s.topic_peers + 1 >= n);
            }
            if connected == nodes.len() {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(DemoError::NotConnected);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { nodes, cancel })
    }

    /// The job roles of node 1, which submits.
    pub fn submitter(&self) -> crate::jobs::Jobs {
        self.nodes[0].jobs.clone()
    }

    /// The metrics of node 1 (the submitter).
    pub fn submitter_metrics(&self) -> crate::metrics::Metrics {
        self.nodes[0].metrics.clone()
    }

    /// The API token of node 1 (the submitter).
    pub fn submitter_token(&self) -> String {
        self.nodes[0].api_token.clone()
    }

    /// Every node's id, node 1 (the submitter) first.
    pub fn node_ids(&self) -> Vec<fleetmesh_protocol::NodeId> {
        self.nodes.iter().map(|n| n.jobs.node_id()).collect()
    }

    /// Where node 1's local API (and dashboard) listens.
    pub fn submitter_api(&self) -> std::net::SocketAddr {
        self.nodes[0].api_addr
    }

    /// Stops every node and waits for their tasks.
    pub async fn stop(self) {
        self.cancel.cancel();
        for n in self.nodes {
            n.join().await;
        }
    }
}

/// Runs the demo; progress goes to stderr.
pub async fn run(cfg: DemoConfig) -> Result<DemoSummary, DemoError> {
    let settings = |ok: bool, why: String| if ok { Ok(()) } else { Err(DemoError::Settings(why)) };
    settings(
        cfg.nodes > usize::from(cfg.replicas),
        "need at least replicas + 1 nodes (one submits)".into(),
    )?;
    let honest = cfg.nodes - 1 - cfg.malicious.min(cfg.nodes - 1);
    settings(
        honest > cfg.malicious,
        format!(
            "--malicious {} leaves {honest} honest workers: honest workers must outnumber adversaries",
            cfg.malicious
        ),
    )?;
    settings(
        cfg.drivers_return + usize::from(cfg.replicas) < cfg.nodes,
        format!(
            "--drivers-return {} leaves fewer than {} workers admitted",
            cfg.drivers_return, cfg.replicas
        ),
    )?;
    eprintln!(
        "starting {} nodes on 127.0.0.1 ({} returning wrong outputs) ...",
        cfg.nodes, cfg.malicious
    );
    let started = Instant::now();
    let cars = FleetCars {
        clock: cfg.clock.clone(),
        speed: cfg.speed,
    };
    let fleet = Fleet::start_with(cfg.nodes, cfg.malicious, Some(cars)).await?;
    let submitter = fleet.submitter();
    let model = submitter
        .registry()
        .by_name("digits")
        .ok_or_else(|| DemoError::Settings("the digits model is missing".into()))?
        .id();
    let replication = if cfg.adaptive {
        "adaptive replication".to_string()
    } else {
        format!("replicas {}", cfg.replicas)
    };
    eprintln!(
        "fleet connected in {:.1} s; submitting {} digits jobs from node {} ({replication})",
        started.elapsed().as_secs_f64(),
        cfg.jobs,
        submitter.node_id().short(),
    );
    eprintln!(
        "every node runs on a simulated car (clock from {}, {}x); dashboard of the submitting node: http://{}/",
        cfg.clock,
        cfg.speed,
        fleet.submitter_api()
    );

    let workers: Vec<crate::vehicle::CarView> = fleet.nodes[1..].iter().map(|n| n.car.view()).collect();
    let admitted = workers.iter().filter(|v| v.admitted).count();
    eprintln!(
        "worker cars admitted now: {admitted} of {} ({})",
        workers.len(),
        workers
            .iter()
            .map(|v| format!("{}: {}", describe(v), admission(v)))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if admitted < usize::from(cfg.replicas) {
        eprintln!(
            "fewer cars admitted than replicas: jobs wait for parked cars and fail at their deadline (60 s)"
        );
    }

    let images = digits::held_out()?;
    let reference = digits::Digits::embedded()?;
    let gate = Arc::new(Semaphore::new(cfg.in_flight.max(1)));
    let begun = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..cfg.jobs {
        let sample = images[i % images.len()].clone();
        let (jobs, gate, tx) = (submitter.clone(), gate.clone(), tx.clone());
        let (replicas, adaptive) = (cfg.replicas, cfg.adaptive);
        tokio::spawn(async move {
            let Ok(_permit) = gate.acquire_owned().await else {
                return;
            };
            let result = async {
                let id = if adaptive {
                    jobs.submit_auto(model, sample.pixels.clone()).await?
                } else {
                    jobs.submit(model, sample.pixels.clone(), replicas).await?
                };
                jobs.wait(id).await
            }
            .await;
            let _ = tx.send((sample, result));
        });
    }
    drop(tx);

    let (mut verified, mut failed, mut correct, mut assigned) = (0usize, 0usize, 0usize, 0usize);
    let mut accepted_wrong = 0usize;
    let mut done = 0;
    let mut last_print = Instant::now();
    let tty = std::io::stderr().is_terminal();
    // Live progress: a bar on a terminal (indicatif), a line a second otherwise (logs, CI).
    let bar = indicatif::ProgressBar::new(cfg.jobs as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("  [{bar:30}] {pos:>5}/{len} jobs  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("#>-"),
    );
    while let Some((sample, result)) = rx.recv().await {
        let label = sample.label;
        done += 1;
        if done == (cfg.jobs / 2).max(1) && cfg.drivers_return > 0 {
            // Drivers get into the last workers' cars: their running work is handed back and reassigned.
            for node in fleet.nodes.iter().rev().take(cfg.drivers_return) {
                node.car.set_driver_in(true)?;
            }
            bar.suspend(|| {
                eprintln!(
                    "  {} driver(s) got in: their cars' running jobs are preempted and handed back",
                    cfg.drivers_return
                )
            });
        }
        match result {
            Ok(r) => {
                assigned += r.workers_assigned;
                match r.outcome {
                    Outcome::Accepted { output, .. } => {
                        verified += 1;
                        let truth = reference.run_batch(&[&sample.pixels])?;
                        accepted_wrong += usize::from(truth.first() != Some(&output));
                        correct +=
                            usize::from(inference::argmax(&inference::f32s(&output)) == usize::from(label));
                    }
                    Outcome::Failed(_) => failed += 1,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "job could not be submitted");
                failed += 1;
            }
        }
        let rate = verified as f64 / begun.elapsed().as_secs_f64().max(1e-9);
        if tty {
            bar.set_position(done as u64);
            bar.set_message(format!(
                "verified {verified}  failed {failed}  {rate:.1} verified jobs/s"
            ));
        } else if last_print.elapsed() > Duration::from_secs(1) || done == cfg.jobs {
            last_print = Instant::now();
            eprintln!(
                "  jobs {done:>5}/{}  verified {verified:>5}  failed {failed:>3}  {rate:>7.1} verified jobs/s",
                cfg.jobs
            );
        }
    }
    if tty {
        bar.finish();
    }
    let elapsed = begun.elapsed().as_secs_f64();
    let earnings = submitter.earnings();
    let cars: Vec<CarLine> = fleet
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let id = node.jobs.node_id();
            let e = earnings.get(&id).copied().unwrap_or_default();
            let v = node.car.view();
            // Each receipt's energy at the car's tariff at the time of its claim.
            let electricity = node.car.electricity_cost(&submitter.receipts_of(&id));
            CarLine {
                node: id.short(),
                role: match i {
                    0 => "submitter",
                    _ if i <= cfg.malicious => "adversary",
                    _ => "worker",
                },
                state: describe(&v),
                admission: admission(&v),
                admitted_s: v.admitted_s,
                wakes: v.wakes,
                preempted: v.preempted,
                jobs: e.jobs,
                energy_uwh: e.energy_uwh,
                credit: e.credit,
                electricity,
            }
        })
        .collect();
    let preempted = cars.iter().map(|c| c.preempted).sum();
    let summary = DemoSummary {
        jobs: cfg.jobs,
        verified,
        failed,
        accuracy: if verified > 0 {
            correct as f64 / verified as f64
        } else {
            0.0
        },
        jobs_per_s: verified as f64 / elapsed.max(1e-9),
        mean_replicas: if done > 0 {
            assigned as f64 / done as f64
        } else {
            0.0
        },
        accepted_wrong,
        malicious: cfg.malicious,
        receipts: submitter.receipt_count(),
        elapsed_s: elapsed,
        cars,
        total_energy_uwh: earnings.values().map(|e| e.energy_uwh).sum(),
        total_credit: earnings.values().map(|e| e.credit).sum(),
        preempted,
    };
    fleet.stop().await;
    Ok(summary)
}

/// A car's state in words: its clock, whether it is parked and charging (signals, never a location),
/// its charge.
fn describe(v: &crate::vehicle::CarView) -> String {
    let Some(s) = v.state else {
        return "stationary".into();
    };
    let place = match (s.parked, s.plugged_in) {
        (false, _) => "driving",
        (true, true) if s.charging => "parked, charging",
        (true, true) => "parked, plugged in",
        (true, false) => "parked, unplugged",
    };
    format!("{} {place}, {:.0} %", v.local_time, s.soc_pct)
}

/// `admitted`, or `no: ` and why not.
fn admission(v: &crate::vehicle::CarView) -> String {
    if v.admitted {
        return "admitted".into();
    }
    let reason = serde_json::to_value(v.reason)
        .ok()
        .and_then(|r| r.as_str().map(|r| r.replace('_', " ")))
        .unwrap_or_default();
    format!("no: {reason}")
}

/// The prompts of `fleetmesh demo --model smollm2`, cycled.
pub const LLM_PROMPTS: [&str; 10] = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "What is 12 times 12?",
    "Give one tip for saving electricity at home.",
    "What do bees make?",
    "Translate 'good night' into French.",
    "Why do electric cars need charging?",
    "Name a planet with rings.",
    "What is the opposite of fast?",
    "Write a four-word slogan for parked cars.",
];

/// What `fleetmesh demo --model smollm2` runs.
#[derive(Debug, Clone)]
pub struct LlmDemoConfig {
    /// Nodes in the fleet (the first one submits).
    pub nodes: usize,
    /// Prompts submitted ([`LLM_PROMPTS`], cycled).
    pub jobs: usize,
    /// Agreeing workers required per job.
    pub replicas: u8,
    /// Replicas follow the workers' reputation instead of `replicas`.
    pub adaptive: bool,
    /// Workers (after the submitter) that change one token of every generation they return.
    pub malicious: usize,
    /// Most new tokens per prompt.
    pub max_tokens: u16,
    /// Where the smollm2 asset is.
    pub assets: std::path::PathBuf,
}

/// The result of `fleetmesh demo --model smollm2`.
#[derive(Debug, Clone, Serialize)]
pub struct LlmDemoSummary {
    /// Prompts submitted.
    pub jobs: usize,
    /// Prompts with a verified generation.
    pub verified: usize,
    /// Prompts that failed.
    pub failed: usize,
    /// Verified generations that differ from this machine's own generation of the same prompt (must be 0).
    pub accepted_wrong: usize,
    /// Workers that changed tokens.
    pub malicious: usize,
    /// Tokens of the verified generations.
    pub tokens: usize,
    /// Verified tokens per second, first offer to last verdict.
    pub tokens_per_s: f64,
    /// Workers assigned per prompt, on average.
    pub mean_replicas: f64,
    /// Receipts the submitter issued.
    pub receipts: usize,
    /// Seconds from the first offer to the last verdict.
    pub elapsed_s: f64,
    /// Each prompt and its verified answer (empty when it failed).
    pub answers: Vec<(String, String)>,
}

/// Runs a small verified batch of prompts through SmolLM2 on a local fleet; progress goes to stderr.
pub async fn run_llm(cfg: LlmDemoConfig) -> Result<LlmDemoSummary, DemoError> {
    use crate::inference::smollm2::{Generation, GenerationJob, SmolLm2};
    if cfg.nodes <= usize::from(cfg.replicas) || cfg.nodes <= 2 * cfg.malicious + 1 {
        return Err(DemoError::Settings(
            "need more nodes than replicas, and honest workers outnumbering the malicious".into(),
        ));
    }
    let Some(model) = SmolLm2::from_assets(&cfg.assets)? else {
        return Err(DemoError::Settings(format!(
            "smollm2 is not installed in {} (run scripts/fetch-assets.sh smollm2)",
            cfg.assets.display()
        )));
    };
    let model = Arc::new(model);
    let prompts: Vec<&str> = (0..cfg.jobs)
        .map(|i| LLM_PROMPTS[i % LLM_PROMPTS.len()])
        .collect();
    let inputs = prompts
        .iter()
        .map(|p| {
            model
                .prompt_input(&inference::Prompt::chat(p, cfg.max_tokens))
                .unwrap_or_else(|| Err(inference::InferenceError::UnknownModel("smollm2".into())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "generating the {} answers locally first (the reference the verified ones are compared with) ...",
        prompts.len()
    );
    let jobs = inputs
        .iter()
        .map(|i| GenerationJob::decode(i, model.config().vocab))
        .collect::<Result<Vec<_>, _>>()?;
    let local = model.generate(&jobs, |_, _| {}, None)?;
    let registry = Registry::default();
    registry.insert(model.clone());
    let behaviours: Vec<WorkerBehaviour> = (0..cfg.nodes)
        .map(|i| {
            if i >= 1 && i <= cfg.malicious {
                WorkerBehaviour::WrongToken
            } else {
                WorkerBehaviour::Honest
            }
        })
        .collect();
    eprintln!(
        "starting {} nodes on 127.0.0.1 ({} changing one token of each answer) ...",
        cfg.nodes, cfg.malicious
    );
    let settings = JobsConfig {
        step_timeout_ms: 120_000,
        deadline_ms: 600_000,
        ..JobsConfig::default()
    };
    let fleet = Fleet::start_custom(registry, behaviours, None, settings).await?;
    let submitter = fleet.submitter();
    eprintln!(
        "submitting {} prompts from node {} ({}, at most {} new tokens each)",
        prompts.len(),
        submitter.node_id().short(),
        if cfg.adaptive {
            "adaptive replication".to_string()
        } else {
            format!("replicas {}", cfg.replicas)
        },
        cfg.max_tokens
    );
    let begun = Instant::now();
    let mut waits = Vec::new();
    for input in &inputs {
        let (jobs, input, id, replicas, adaptive) = (
            submitter.clone(),
            input.clone(),
            model.id(),
            cfg.replicas,
            cfg.adaptive,
        );
        waits.push(tokio::spawn(async move {
            let job = if adaptive {
                jobs.submit_auto(id, input).await?
            } else {
                jobs.submit(id, input, replicas).await?
            };
            jobs.wait(job).await
        }));
    }
    let (mut verified, mut failed, mut wrong, mut tokens, mut assigned, mut receipts) = (0, 0, 0, 0, 0, 0);
    let mut answers = Vec::new();
    for ((wait, prompt), expected) in waits.into_iter().zip(&prompts).zip(&local) {
        let result = wait
            .await
            .map_err(|e| DemoError::Settings(format!("a submit task failed: {e}")))?;
        let answer = match result {
            Ok(r) => {
                assigned += r.workers_assigned;
                receipts += r.receipts;
                match r.outcome {
                    Outcome::Accepted { output, .. } => {
                        verified += 1;
                        let generation = Generation::decode(&output)?;
                        wrong += usize::from(&generation != expected);
                        tokens += generation.tokens.len();
                        model.output_text(&output).unwrap_or_default()
                    }
                    Outcome::Failed(reason) => {
                        failed += 1;
                        tracing::warn!(?reason, "prompt failed");
                        String::new()
                    }
                }
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(error = %e, "prompt could not be submitted");
                String::new()
            }
        };
        eprintln!(
            "  [{:>5.1} s] {prompt:?} -> {answer:?}",
            begun.elapsed().as_secs_f64()
        );
        answers.push((prompt.to_string(), answer));
    }
    let elapsed = begun.elapsed().as_secs_f64();
    fleet.stop().await;
    Ok(LlmDemoSummary {
        jobs: prompts.len(),
        verified,
        failed,
        accepted_wrong: wrong,
        malicious: cfg.malicious,
        tokens,
        tokens_per_s: tokens as f64 / elapsed.max(1e-9),
        mean_replicas: assigned as f64 / prompts.len().max(1) as f64,
        receipts,
        elapsed_s: elapsed,
        answers,
    })
}
