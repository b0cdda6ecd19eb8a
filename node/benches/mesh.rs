//! Mesh benchmark: gossip propagation across 10 nodes and request-response round trips, real libp2p over
//! TCP loopback, nodes in one process (like the bare rust-libp2p reference in shared/LIBP2P.md).
//!
//! `cargo bench -p fleetmesh-node --bench mesh` (scripts/bench-mesh.sh adds idle RSS / CPU of node processes).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetmesh_node::config::{KadMode, NetConfig};
use fleetmesh_node::metrics::Metrics;
use fleetmesh_node::net::{self, NetClient, NetEvent, Topic};
use fleetmesh_protocol::messages::{AgreementRule, JobInput, JobOffer};
use fleetmesh_protocol::{ModelId, NodeKey, Signed, codec};
use libp2p::Multiaddr;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<40} n={:<5} p50={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3
    );
}

async fn node(
    seed: u8,
    bootstrap: Vec<Multiaddr>,
    cancel: &CancellationToken,
) -> (NetClient, mpsc::Receiver<NetEvent>, Multiaddr) {
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        kademlia_mode: KadMode::Server,
        ..NetConfig::default()
    };
    let (client, events, _) = net::start(
        &cfg,
        &NodeKey::from_seed([seed; 32]),
        Metrics::default(),
        net::GossipPolicy::open(),
        cancel.clone(),
    )
    .unwrap();
    let addr = client.dialable_addr(Duration::from_secs(2)).await.unwrap();
    (client, events, addr)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cancel = CancellationToken::new();
        let (c0, e0, boot) = node(1, vec![], &cancel).await;
        let mut clients = vec![c0];
        let mut events = vec![e0];
        for seed in 2..=10u8 {
            let (c, e, _) = node(seed, vec![boot.clone()], &cancel).await;
            clients.push(c);
            events.push(e);
        }
        // Wait for a full mesh of connections and a formed gossip mesh.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let mut full = true;
            for c in &clients {
                full &= c.status().await.unwrap().connected_peers >= 9;
            }
            if full {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;

        // Gossip: node 1 publishes signed offers; time until the last of the other 9 delivers each.
        let key = NodeKey::from_seed([1; 32]);
        let mut to_last = Vec::new();
        let mut to_each = Vec::new();
        for round in 0..200u64 {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
            let offer = JobOffer {
                submitter: key.node_id(),
                nonce: round,
                model: ModelId::of(b"bench"),
                input: JobInput::Inline(vec![0; 512]),
                rule: AgreementRule::Exact,
                replicas: 2,
                reward: 1,
                created_ms: now,
                expires_ms: now + 60_000,
                deadline_ms: now + 120_000,
                budget: fleetmesh_node::pay::issue(
                    &NodeKey::from_seed([0xFA; 32]),
                    key.node_id(),
                    1,
                    u64::MAX,
                    u64::MAX,
                ),
            };
            let data = codec::encode(&Signed::sign(offer, &key).unwrap());
            let sent = Instant::now();
            clients[0].publish(Topic::Offers, data.clone()).await.unwrap();
            let mut last = Duration::ZERO;
            for rx in events.iter_mut().skip(1) {
                loop {
                    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                        Ok(Some(NetEvent::Gossip { data: d, .. })) if d == data => {
                            let t = sent.elapsed();
                            to_each.push(t);
                            last = last.max(t);
                            break;
                        }
                        Ok(Some(_)) => continue,
                        _ => panic!("gossip lost"),
                    }
                }
            }
            to_last.push(last);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("fleetmesh mesh benchmark: 10 nodes, one process, TCP loopback, 2 tokio workers");
        report("gossip 512 B offer, to the last of 9", to_last);
        report("gossip 512 B offer, to each node", to_each);

        // Request-response RTT, node 1 -> node 2, 64-byte messages, sequential.
        let target = clients[1].peer_id();
        let responder = clients[1].clone();
        let mut rx = events.remove(1);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let NetEvent::Request { data, channel, .. } = event {
                    let _ = responder.respond(channel, data).await;
                }
            }
        });
        let mut rtts = Vec::new();
        for i in 0..2_000u32 {
            let t = Instant::now();
            let reply = clients[0]
                .request(target, vec![(i % 251) as u8; 64])
                .await
                .unwrap();
            rtts.push(t.elapsed());
            assert_eq!(reply.len(), 64);
        }
        rtts.drain(..100); // warm-up
        report("request-response RTT, 64 B, sequential", rtts);
        cancel.cancel();
    });
}
