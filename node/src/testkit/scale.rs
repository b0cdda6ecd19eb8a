//! A scale run: N full nodes in this one process, over libp2p's memory transport with noise and yamux (as
//! over TCP, without a socket per connection, so that 1,000 nodes fit the open-file limit): 5 % reachable
//! DHT servers (also relays), the rest DHT clients that listen on nothing but a relay circuit through
//! one server (so they are reachable only through relays, and stay out of every routing table). Each
//! node has its own key, store, executor on the embedded digits model, job roles, offer shards and
//! receipts. The first (up to) 10 servers submit verified digits jobs (replicas 2) at a total rate for
//! a while; [`run`] returns what it measured as one JSON object. `scripts/bench-scale.sh N` runs it in
//! release mode (`examples/scale.rs`); `node/tests/scale.rs` runs 100 nodes as a test.
//!
//! Clients join at a steady pace; the report gives each client's time from its start to its relay
//! reservation and to its announced offer shards, and the most reservations and circuits a relay held.
//!
//! Not in this version (the report says `null`): churn (kills and new identities at the midpoint),
//! time to assignment.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleetmesh_consensus::job::Outcome;
use fleetmesh_consensus::payment::Payers;
use libp2p::{Multiaddr, PeerId};
use tokio_util::sync::CancellationToken;

use crate::config::KadMode;
use crate::demo::{DemoError, random_key};
use crate::inference::{Model, Registry, digits};
use crate::jobs::JobsConfig;
use crate::metrics::{GossipOutcome, Metrics};
use crate::net::Topic;
use crate::node::{self, Node};
use crate::store::Store;

/// What a scale run does.
#[derive(Debug, Clone, Copy)]
pub struct ScaleArgs {
    /// Nodes in all (5 % servers, at least 2).
    pub nodes: usize,
    /// Seconds of load.
    pub secs: u64,
    /// Jobs submitted per second, over all submitters.
    pub rate: f64,
    /// Seconds the fleet idles (connected, no jobs) before the load, for its idle CPU use.
    pub idle_secs: u64,
    /// Clients started per second (servers start at once, first).
    pub join_per_s: f64,
}

/// When each client joined, got its relay reservation and announced its offer shards, and the most
/// reservations and circuits any relay held: polled from the nodes' metrics.
struct Joins {
    started: Vec<Option<Instant>>,
    reserved: Vec<Option<Instant>>,
    published: Vec<Option<Instant>>,
    max_reservations: i64,
    max_circuits: i64,
}

impl Joins {
    fn new(n: usize) -> Self {
        Self {
            started: vec![None; n],
            reserved: vec![None; n],
            published: vec![None; n],
            max_reservations: 0,
            max_circuits: 0,
        }
    }

    /// Looks at every node started so far; returns whether every client has reserved and published.
    fn poll(&mut self, nodes: &[Node], servers: usize) -> bool {
        let now = Instant::now();
        let mut ready = true;
        for (i, node) in nodes.iter().enumerate() {
            let m = &node.metrics;
            if i < servers {
                self.max_reservations = self.max_reservations.max(m.relay_reservations_served.get());
                self.max_circuits = self.max_circuits.max(m.relay_circuits_served.get());
                continue;
            }
            if self.reserved[i].is_none() && m.relay_reservations_held.get() > 0 {
                self.reserved[i] = Some(now);
            }
            if self.published[i].is_none() && m.offer_shards.get() > 0 {
                self.published[i] = Some(now);
            }
            ready &= self.reserved[i].is_some() && self.published[i].is_some();
        }
        ready && nodes.len() == self.started.len()
    }

    /// Seconds from each client's start to `at` (clients that never got there are left out).
    fn delays(&self, at: &[Option<Instant>]) -> Vec<f64> {
        let mut d: Vec<f64> = self
            .started
            .iter()
            .zip(at)
            .filter_map(|(s, a)| Some(a.as_ref()?.duration_since(*s.as_ref()?).as_secs_f64()))
            .collect();
        d.sort_by(f64::total_cmp);
        d
    }
}

/// This process's resident memory now and at its peak, in MB.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds this process used so far.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command name: state is field 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// A point to measure this process's CPU use from.
struct CpuMark {
    cpu_s: f64,
    at: Instant,
}

impl CpuMark {
    fn now() -> Self {
        Self {
            cpu_s: cpu_s(),
            at: Instant::now(),
        }
    }

    /// CPU seconds a minute since the mark; the mark moves to now.
    fn per_min_since(&mut self) -> f64 {
        let now = Self::now();
        let rate = (now.cpu_s - self.cpu_s) / now.at.duration_since(self.at).as_secs_f64().max(1e-3) * 60.0;
        *self = now;
        rate
    }
}

const OUTCOMES: [GossipOutcome; 11] = [
    GossipOutcome::Accepted,
    GossipOutcome::Oversize,
    GossipOutcome::Malformed,
    GossipOutcome::BadSignature,
    GossipOutcome::Expired,
    GossipOutcome::UnknownTopic,
    GossipOutcome::WrongShard,
    GossipOutcome::Unfunded,
    GossipOutcome::RateLimited,
    GossipOutcome::Busy,
    GossipOutcome::OtherVersion,
];

/// (gossip messages, requests, bytes) a node received so far.
fn traffic(m: &Metrics) -> (u64, u64, u64) {
    let mut gossip = 0;
    for topic in [Topic::Offers.name(), Topic::Revocations.name(), "unknown"] {
        for o in &OUTCOMES {
            gossip += m.gossip_count(topic, *o);
        }
    }
    (gossip, m.requests_in.get(), m.bytes_in.get())
}

/// How much of the largest digits shard the directory shows: for a few of its slots, the members
/// whose slot it is (the truth), against the providers a sample finds (the first answer, what a
/// member's estimate counts) and a whole lookup finds, each asked by a client. Printed per slot;
/// returns the share of members that samples found.
async fn directory_accuracy(
    nodes: &[crate::node::Node],
    digits_topics: &[(fleetmesh_consensus::directory::Shard, usize)],
) -> Option<f64> {
    use fleetmesh_consensus::directory;
    let (shard, _) = digits_topics.iter().max_by_key(|(_, m)| *m)?;
    let asker = nodes.last()?;
    let (mut truth_all, mut sampled_all) = (0, 0);
    for slot in directory::sampled_slots(0) {
        let key = shard.provider_key(slot);
        let truth = nodes
            .iter()
            .filter(|n| {
                let me = n.net.peer_id().to_bytes();
                directory::slot_of(&me) == slot
                    && directory::Shard::of(shard.family, shard.shards, &me, crate::clock::now_ms()) == *shard
            })
            .count();
        let ask = |sample: bool| {
            let net = asker.net.clone();
            let key = key.clone();
            async move {
                let lookup = async {
                    if sample {
                        net.sample_providers(key).await
                    } else {
                        net.get_providers(key).await
                    }
                };
                // (A lookup may take up to the DHT's 30 s query timeout: the report waits 10 s each.)
                let found = tokio::time::timeout(Duration::from_secs(10), lookup).await;
                found.ok().and_then(Result::ok).map_or(0, |f| f.len())
            }
        };
        let sampled = ask(true).await;
        let whole = ask(false).await;
        eprintln!(
            "directory, slot {slot}: {truth} members, a sample finds {sampled}, a whole lookup {whole}"
        );
        truth_all += truth;
        sampled_all += sampled.min(truth);
    }
    (truth_all > 0).then(|| (sampled_all as f64 / truth_all as f64 * 100.0).round() / 100.0)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i])
}

/// Runs the scale run of `args` and returns its report (see the module's documentation). Progress goes
/// to stderr.
pub async fn run(args: ScaleArgs) -> Result<serde_json::Value, DemoError> {
    let started = Instant::now();
    let cpu0 = cpu_s();
    let n = args.nodes;
    let servers = (n * 5 / 100).max(2);
    let submitters = servers.min(10);
    let registry = Registry::with_defaults(None)?;
    let payer = random_key()?;
    let cancel = CancellationToken::new();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let mut server_addrs: Vec<Multiaddr> = Vec::new();
    let (rss_start, _) = rss_mb();
    eprintln!(
        "starting {n} nodes ({servers} servers at once, {} clients at {} a second)",
        n - servers,
        args.join_per_s
    );
    let mut joins = Joins::new(n);
    let mut cpu_mark = CpuMark::now();
    let mut last_poll = Instant::now();
    let mut clients_from = None;
    for i in 0..n {
        if i >= servers {
            let from = *clients_from.get_or_insert_with(Instant::now);
            let due = from + Duration::from_secs_f64((i - servers) as f64 / args.join_per_s.max(0.01));
            tokio::time::sleep_until(due.into()).await;
        }
        if last_poll.elapsed() >= Duration::from_millis(250) {
            joins.poll(&nodes, servers);
            last_poll = Instant::now();
        }
        let key = random_key()?;
        let server = i < servers;
        // Servers bootstrap from the first server; clients from three servers.
        let boot: Vec<Multiaddr> = if server {
            server_addrs.first().cloned().into_iter().collect()
        } else {
            (0..3)
                .map(|k| server_addrs[(i * 7 + k) % servers].clone())
                .collect()
        };
        let mut cfg = crate::demo::node_config(None, if server { 32 } else { 8 });
        cfg.net.bootstrap = boot;
        // libp2p's memory transport (noise and yamux on top, as over TCP): no socket per connection.
        cfg.net.listen = vec![
            "/memory/0"
                .parse()
                .map_err(|e| DemoError::Settings(format!("{e}")))?,
        ];
        if !server {
            // Reachable only through a relay: a reservation on one server, no listener of its own.
            let relay = server_addrs[i % servers].clone();
            cfg.net.listen = vec![relay.with(libp2p::multiaddr::Protocol::P2pCircuit)];
        }
        cfg.net.kademlia_mode = if server { KadMode::Server } else { KadMode::Client };
        cfg.net.public = server;
        cfg.net.relay_server = server;
        cfg.jobs.threads = 1;
        let jobs = if i < submitters {
            JobsConfig::default().funded_by(&payer, key.node_id())
        } else {
            JobsConfig {
                payers: Payers::new([payer.node_id()]),
                ..JobsConfig::default()
            }
        };
        let node = node::start_with(
            key,
            cfg,
            registry.clone(),
            jobs,
            Default::default(),
            Store::temporary()?,
            cancel.clone(),
        )
        .await?;
        if server {
            server_addrs.push(node.net.dialable_addr(Duration::from_secs(5)).await?);
        }
        joins.started[i] = Some(Instant::now());
        nodes.push(node);
        if (i + 1) % 100 == 0 {
            eprintln!(
                "  {} nodes started, RSS {:.0} MB, {:.1} CPU-s a minute since the last 100",
                i + 1,
                rss_mb().0,
                cpu_mark.per_min_since()
            );
        }
    }
    // Joined: every client holds a relay reservation and has announced its offer shards (or two
    // minutes have passed).
    let join_deadline = Instant::now() + Duration::from_secs(120);
    while !joins.poll(&nodes, servers) && Instant::now() < join_deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let join_s = started.elapsed().as_secs_f64();
    let (rss_idle, _) = rss_mb();
    // The mean of `value` over the nodes in `range`.
    let mean = |range: std::ops::Range<usize>, value: &dyn Fn(&crate::node::Node) -> f64| {
        let len = range.len().max(1) as f64;
        nodes[range].iter().map(value).sum::<f64>() / len
    };
    let peers_mean = |range| mean(range, &|n| n.net.connected_peers() as f64);
    let (client_peers, server_peers) = (peers_mean(servers..n), peers_mean(0..servers));
    eprintln!("connected peers: {client_peers:.1} per client, {server_peers:.1} per server on average");
    let reserve = joins.delays(&joins.reserved);
    let publish = joins.delays(&joins.published);
    eprintln!(
        "all started in {join_s:.1} s: {} of {} clients reserved (slowest {:.1} s after its start), {} published; RSS {rss_idle:.0} MB",
        reserve.len(),
        n - servers,
        reserve.last().copied().unwrap_or(0.0),
        publish.len()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Idle: what the fleet costs with nothing to do.
    let opened = |range: std::ops::Range<usize>| -> u64 {
        nodes[range]
            .iter()
            .map(|n| n.metrics.connections_opened.get())
            .sum()
    };
    let kad = |range: std::ops::Range<usize>| -> Vec<(u64, u64)> {
        crate::metrics::KAD_KINDS
            .iter()
            .map(|kind| {
                nodes[range.clone()]
                    .iter()
                    .map(|n| n.metrics.kad_count(kind))
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
            })
            .collect()
    };
    let idle_cpu = if args.idle_secs > 0 {
        let opened_before = (opened(servers..n), opened(0..servers));
        let kad_before = kad(servers..n);
        let (mut whole, mut last, t) = (CpuMark::now(), CpuMark::now(), Instant::now());
        while t.elapsed() < Duration::from_secs(args.idle_secs) {
            tokio::time::sleep(Duration::from_secs(10).min(Duration::from_secs(args.idle_secs))).await;
            eprintln!(
                "  idle {:.0} s: {:.1} CPU-s a minute",
                t.elapsed().as_secs_f64(),
                last.per_min_since()
            );
        }
        let per_min = whole.per_min_since();
        eprintln!(
            "connected peers after idling: {:.1} per client, {:.1} per server on average; routing tables {:.1} \
             peers per client",
            peers_mean(servers..n),
            peers_mean(0..servers),
            mean(servers..n, &|n| n.metrics.routing_table_peers.get() as f64)
        );
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "connections opened while idle: {:.1} a second by clients' count, {:.1} by servers'",
            (opened(servers..n) - opened_before.0) as f64 / secs,
            (opened(0..servers) - opened_before.1) as f64 / secs
        );
        let per_client_min = 60.0 / secs / (n - servers).max(1) as f64;
        for ((kind, after), before) in crate::metrics::KAD_KINDS
            .iter()
            .zip(kad(servers..n))
            .zip(kad_before)
        {
            eprintln!(
                "  kad {kind}: {:.2} queries and {:.1} requests a minute per client",
                (after.0 - before.0) as f64 * per_client_min,
                (after.1 - before.1) as f64 * per_client_min
            );
        }
        eprintln!("idle for {} s: {per_min:.1} CPU-s a minute", args.idle_secs);
        Some((per_min * 10.0).round() / 10.0)
    } else {
        None
    };

    // The workload.
    let model = digits::Digits::embedded()?.id();
    let samples = digits::held_out()?;
    let before: Vec<(u64, u64, u64)> = nodes.iter().map(|n| traffic(&n.metrics)).collect();
    let run_start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let total = (args.rate * args.secs as f64).round() as usize;
    for j in 0..total {
        let due = run_start + Duration::from_secs_f64(j as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let jobs = nodes[j % submitters].jobs.clone();
        let pixels = samples[j % samples.len()].pixels.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            // A job not verified within a minute of its submission counts as failed.
            let limit = Duration::from_secs(60);
            let id = match tokio::time::timeout(limit, jobs.submit(model, pixels, 2)).await {
                Ok(Ok(id)) => id,
                Ok(Err(e)) => return Err(format!("submit: {e}")),
                Err(_) => return Err("not submitted within a minute".to_string()),
            };
            match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), jobs.wait(id)).await {
                Ok(Ok(result)) => match result.outcome {
                    Outcome::Accepted { .. } => Ok(t0.elapsed().as_secs_f64() * 1e3),
                    Outcome::Failed(why) => Err(format!("failed: {why:?}")),
                },
                Ok(Err(e)) => Err(format!("wait: {e}")),
                // Where the job stood: its state and its workers' (what a failure is made of).
                Err(_) => Err(match jobs.view(&id) {
                    Some(v) => {
                        let mut workers: Vec<&str> = v.workers.iter().map(|w| w.state).collect();
                        workers.sort_unstable();
                        format!("no verdict within a minute ({}; workers {workers:?})", v.state)
                    }
                    None => "no verdict within a minute (job unknown)".to_string(),
                }),
            }
        });
        if (j + 1) % 100 == 0 {
            eprintln!("  {} of {total} jobs submitted", j + 1);
        }
    }
    let mut verdicts = Vec::new();
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    let mut finished = 0;
    while let Some(done) = tasks.join_next().await {
        finished += 1;
        match done {
            Ok(Ok(ms)) => verdicts.push(ms),
            Ok(Err(why)) => *failures.entry(why).or_default() += 1,
            Err(e) => *failures.entry(format!("task: {e}")).or_default() += 1,
        }
        if finished % 500 == 0 {
            eprintln!(
                "  {finished} of {total} jobs finished, {} verified",
                verdicts.len()
            );
        }
    }
    eprintln!(
        "{} of {total} verified; failures: {failures:?}; collecting the report ...",
        verdicts.len()
    );
    let run_s = run_start.elapsed().as_secs_f64();
    verdicts.sort_by(f64::total_cmp);

    // Traffic per node and role over the run.
    let mut client_msgs = Vec::new();
    let mut client_bytes = Vec::new();
    let mut server_requests = Vec::new();
    // Requests the submitters received (bids, commits, reports): a shard whose members over-bid shows.
    let mut submitter_requests = 0;
    for (i, node) in nodes.iter().enumerate() {
        let (g, r, b) = traffic(&node.metrics);
        let (g0, r0, b0) = before[i];
        if i < submitters {
            submitter_requests += r - r0;
        }
        let per_s = |x: u64, x0: u64| (x - x0) as f64 / run_s;
        if i < servers {
            server_requests.push(per_s(r, r0));
        } else {
            client_msgs.push(per_s(g + r, g0 + r0));
            client_bytes.push(per_s(b, b0));
        }
    }
    // Receipts a client holds (its own work only).
    let client_receipts: Vec<f64> = nodes[servers..]
        .iter()
        .map(|n| n.metrics.receipts.get() as f64)
        .collect();
    client_msgs.sort_by(f64::total_cmp);
    client_bytes.sort_by(f64::total_cmp);
    server_requests.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    // Offers sent on a fleet-wide topic are refused there as malformed revocations.
    let fleet_topic_offers: u64 = nodes
        .iter()
        .map(|n| {
            n.metrics
                .gossip_count(Topic::Revocations.name(), GossipOutcome::Malformed)
        })
        .sum();
    let clients: HashSet<PeerId> = nodes[servers..].iter().map(|n| n.net.peer_id()).collect();
    let mut in_tables = HashSet::new();
    let status = |node: &Node| {
        let net = node.net.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(2), net.status())
                .await
                .ok()
                .and_then(Result::ok)
        }
    };
    // Every node asked at once, each answer awaited at most 2 s.
    let statuses = futures::future::join_all(nodes.iter().map(status)).await;
    let unanswered = statuses.iter().filter(|s| s.is_none()).count();
    for s in statuses[..servers].iter().flatten() {
        for p in &s.routing_table {
            if clients.contains(p) {
                in_tables.insert(*p);
            }
        }
    }
    // The offer shards the nodes are in at the end, and the largest shard count of the digits model.
    let mut topics = std::collections::BTreeMap::<String, usize>::new();
    for s in statuses.into_iter().flatten() {
        for t in s.offer_topics {
            *topics.entry(t).or_default() += 1;
        }
    }
    let digits_topics: Vec<_> = topics
        .iter()
        .filter_map(|(t, members)| {
            let shard = fleetmesh_consensus::directory::Shard::parse(t)?;
            (shard.family == fleetmesh_consensus::directory::Family::Model(model))
                .then_some((shard, *members))
        })
        .collect();
    let digits_shards = digits_topics.iter().map(|(s, _)| s.shards).max();
    let largest_shard = digits_topics.iter().map(|(_, m)| *m).max();
    let directory_found = directory_accuracy(&nodes, &digits_topics).await;
    joins.poll(&nodes, servers);
    let (rss, peak) = rss_mb();
    let wall_s = started.elapsed().as_secs_f64();
    let tenths = |v: Option<f64>| v.map(|v| (v * 10.0).round() / 10.0);
    let joining = serde_json::json!({
        "join_per_s": args.join_per_s,
        "clients_reserved": reserve.len(),
        "clients_published": publish.len(),
        "reserve_p50_s": tenths(percentile(&reserve, 0.5)),
        "reserve_max_s": tenths(reserve.last().copied()),
        "publish_p50_s": tenths(percentile(&publish, 0.5)),
        "publish_max_s": tenths(publish.last().copied()),
        "max_circuits_per_relay": joins.max_circuits,
        "client_peers_mean": tenths(Some(client_peers)),
        "server_peers_mean": tenths(Some(server_peers)),
    });
    let mut report = serde_json::json!({
        "nodes": n,
        "servers": servers,
        "submitters": submitters,
        "wall_s": (wall_s * 10.0).round() / 10.0,
        "join_s": (join_s * 10.0).round() / 10.0,
        "rss_start_mb": rss_start.round(),
        "rss_idle_mb": rss_idle.round(),
        "rss_total_mb": rss.round(),
        "rss_peak_mb": peak.round(),
        "rss_per_node_mb": ((rss_idle - rss_start) / n as f64 * 100.0).round() / 100.0,
        "cpu_s_per_min": ((cpu_s() - cpu0) / (wall_s / 60.0) * 10.0).round() / 10.0,
        "cpu_s_per_min_idle": idle_cpu,
        "jobs": total,
        "jobs_per_s": args.rate,
        "run_s": (run_s * 10.0).round() / 10.0,
        "success": verdicts.len() as f64 / total.max(1) as f64,
        "success_churn": null,
        "failures": failures,
        "assign_p50_ms": null,
        "assign_p99_ms": null,
        "verdict_p50_ms": percentile(&verdicts, 0.5).map(f64::round),
        "verdict_p99_ms": percentile(&verdicts, 0.99).map(f64::round),
        "client_msgs_per_s": (mean(&client_msgs) * 1000.0).round() / 1000.0,
        "client_msgs_per_s_p99": percentile(&client_msgs, 0.99),
        "client_msgs_per_s_max": client_msgs.last(),
        "client_bytes_per_s": mean(&client_bytes).round(),
        "client_bytes_per_s_p99": percentile(&client_bytes, 0.99).map(f64::round),
        "client_receipts_mean": (mean(&client_receipts) * 10.0).round() / 10.0,
        "client_receipts_max": client_receipts.iter().copied().fold(0.0, f64::max),
        "submitter_requests_per_job": (submitter_requests as f64 / total.max(1) as f64 * 10.0).round() / 10.0,
        "server_requests_per_s": (mean(&server_requests) * 10.0).round() / 10.0,
        "server_requests_per_s_max": server_requests.last().map(|v| (v * 10.0).round() / 10.0),
        "fleet_topic_offers": fleet_topic_offers,
        "status_unanswered": unanswered,
        "offer_topics": topics.len(),
        "digits_shards": digits_shards,
        "largest_shard_members": largest_shard,
        "directory_found_share": directory_found,
        "clients_in_server_tables": in_tables.len(),
        "max_reservations_per_relay": joins.max_reservations,
        "recover_s": null,
    });
    if let (Some(report), serde_json::Value::Object(joining)) = (report.as_object_mut(), joining) {
        report.extend(joining);
    }
    eprintln!("{report}");
    // Every node stops at once; a run does not wait on stragglers for more than 20 s.
    cancel.cancel();
    let joins = futures::future::join_all(nodes.into_iter().map(Node::join));
    let _ = tokio::time::timeout(Duration::from_secs(20), joins).await;
    Ok(report)
}
