//! `fleetmesh demo`: a local fleet in one process — real libp2p nodes on loopback TCP, each with its own key,
//! executor and job roles — doing verified inference on the embedded digits model.

use std::io::{IsTerminal, Write};
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
}

/// One node's line in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct NodeLine {
    /// Short node id.
    pub node: String,
    /// Accepted jobs.
    pub jobs: u64,
    /// Credit earned (micro-credits).
    pub credit: u64,
    /// Energy spent on accepted jobs (µWh).
    pub energy_uwh: u64,
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
    /// Receipts the submitter holds (issued and gossiped).
    pub receipts: usize,
    /// Seconds from the first offer to the last verdict.
    pub elapsed_s: f64,
    /// Per worker: accepted jobs, credit and energy, from the receipts the submitter saw.
    pub credits: Vec<NodeLine>,
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
    cfg.api.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg
}

fn random_key() -> anyhow::Result<NodeKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(NodeKey::from_seed(seed))
}

/// A local fleet of nodes in this process, fully connected, with a formed gossip mesh.
pub struct Fleet {
    nodes: Vec<Node>,
    cancel: CancellationToken,
}

impl Fleet {
    /// Starts `n` nodes with fresh keys on loopback (node 1 is everyone's bootstrap peer) and waits until
    /// each is connected to all others.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_with_malicious(n, 0).await
    }

    /// Like [`Fleet::start`], with nodes 2 to `malicious + 1` misbehaving (alternately always wrong and
    /// lazy).
    pub async fn start_with_malicious(n: usize, malicious: usize) -> anyhow::Result<Self> {
        let cancel = CancellationToken::new();
        let registry = Registry::with_defaults(None)?;
        let start_node = |bootstrap: Option<Multiaddr>, behaviour: WorkerBehaviour| {
            let (registry, cancel) = (registry.clone(), cancel.clone());
            async move {
                let key = random_key()?;
                let cfg = node_config(bootstrap.as_ref(), n);
                let store = Store::temporary()?;
                let jobs = JobsConfig {
                    behaviour,
                    ..JobsConfig::default()
                };
                node::start_with(key, cfg, registry, jobs, Default::default(), store, cancel).await
            }
        };
        let first = start_node(None, WorkerBehaviour::Honest).await?;
        let boot = first.net.dialable_addr(Duration::from_secs(2)).await?;
        let mut nodes = vec![first];
        for i in 1..n {
            let behaviour = match (i <= malicious, i % 2) {
                (false, _) => WorkerBehaviour::Honest,
                (true, 1) => WorkerBehaviour::AlwaysWrong,
                (true, _) => WorkerBehaviour::Lazy,
            };
            nodes.push(start_node(Some(boot.clone()), behaviour).await?);
        }
        let started = Instant::now();
        loop {
            let mut connected = 0;
            for node in &nodes {
                connected += usize::from(node.net.status().await?.connected_peers + 1 >= n);
            }
            if connected == nodes.len() {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the fleet did not connect within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let gossipsub build its mesh before the first offer.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(Self { nodes, cancel })
    }

    /// The job roles of node 1, which submits.
    pub fn submitter(&self) -> crate::jobs::Jobs {
        self.nodes[0].jobs.clone()
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
pub async fn run(cfg: DemoConfig) -> anyhow::Result<DemoSummary> {
    anyhow::ensure!(
        cfg.nodes > usize::from(cfg.replicas),
        "need at least replicas + 1 nodes (one submits)"
    );
    let honest = cfg.nodes - 1 - cfg.malicious.min(cfg.nodes - 1);
    anyhow::ensure!(
        honest > cfg.malicious,
        "--malicious {} leaves {honest} honest workers: honest workers must outnumber adversaries",
        cfg.malicious
    );
    eprintln!(
        "starting {} nodes on 127.0.0.1 ({} returning wrong outputs) ...",
        cfg.nodes, cfg.malicious
    );
    let started = Instant::now();
    let fleet = Fleet::start_with_malicious(cfg.nodes, cfg.malicious).await?;
    let submitter = fleet.submitter();
    let model = submitter
        .registry()
        .by_name("digits")
        .ok_or_else(|| anyhow::anyhow!("digits model missing"))?
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
        "dashboard of the submitting node: http://{}/",
        fleet.submitter_api()
    );

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
    while let Some((sample, result)) = rx.recv().await {
        let label = sample.label;
        done += 1;
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
        // Live progress: redrawn in place on a terminal, a line a second otherwise.
        let every = if tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        if last_print.elapsed() > every || done == cfg.jobs {
            last_print = Instant::now();
            let rate = verified as f64 / begun.elapsed().as_secs_f64().max(1e-9);
            let line = format!(
                "  jobs {done:>5}/{}  verified {verified:>5}  failed {failed:>3}  {rate:>7.1} verified jobs/s",
                cfg.jobs
            );
            if tty {
                eprint!("\r{line}");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
        }
    }
    if tty {
        eprintln!();
    }
    let elapsed = begun.elapsed().as_secs_f64();
    // Give the last receipts a moment to be gossiped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let earnings = submitter.earnings();
    let credits = earnings
        .iter()
        .map(|(id, e)| NodeLine {
            node: id.short(),
            jobs: e.jobs,
            credit: e.credit,
            energy_uwh: e.energy_uwh,
        })
        .collect();
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
        credits,
    };
    fleet.stop().await;
    Ok(summary)
}
