//! In-process mesh tests over real libp2p TCP on loopback: discovery, gossip validation, request-response,
//! relay.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetmesh_consensus::directory::{Family, Shard};
use fleetmesh_node::config::{KadMode, NetConfig};
use fleetmesh_node::metrics::{GossipOutcome, Metrics};
use fleetmesh_node::net::{self, NetClient, NetEvent, Topic};
use fleetmesh_protocol::messages::{AgreementRule, JobInput, JobOffer, MAX_INLINE_INPUT};
use fleetmesh_protocol::{ModelId, NodeKey, Signed, codec};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct TestNode {
    client: NetClient,
    events: mpsc::Receiver<NetEvent>,
    metrics: Metrics,
    key: NodeKey,
    addr: Multiaddr,
}

/// The one shard of offers for `model` (every test node joins it, and the shard of the "other" model).
fn shard_topic(model: &[u8]) -> String {
    Shard {
        family: Family::Model(ModelId::of(model)),
        shards: 1,
        index: 0,
    }
    .topic()
}

/// Where test offers (for "digits") are published.
fn offers_topic() -> String {
    shard_topic(b"digits")
}

fn net_config(bootstrap: Vec<Multiaddr>, mode: KadMode, target_peers: usize) -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        kademlia_mode: mode,
        target_peers,
        random_walk_secs: 2,
        ..NetConfig::default()
    }
}

async fn spawn(seed: u8, cfg: NetConfig, cancel: &CancellationToken) -> TestNode {
    spawn_with(seed, cfg, net::GossipPolicy::open(), cancel).await
}

async fn spawn_with(
    seed: u8,
    cfg: NetConfig,
    policy: net::GossipPolicy,
    cancel: &CancellationToken,
) -> TestNode {
    let key = NodeKey::from_seed([seed; 32]);
    let metrics = Metrics::default();
    let (client, events, _task) = net::start(&cfg, &key, metrics.clone(), policy, cancel.clone()).unwrap();
    for topic in [offers_topic(), shard_topic(b"other")] {
        client.subscribe(topic, true).await.unwrap();
    }
    let addr = wait_for(Duration::from_secs(5), || async {
        let status = client.status().await.unwrap();
        status
            .listen_addrs
            .first()
            .map(|a| a.parse::<Multiaddr>().unwrap())
    })
    .await
    .expect("node did not start listening");
    let addr = if cfg.listen.is_empty() {
        addr
    } else {
        addr.with_p2p(client.peer_id()).unwrap()
    };
    TestNode {
        client,
        events,
        metrics,
        key,
        addr,
    }
}

async fn wait_for<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn offer(key: &NodeKey, nonce: u64, input_len: usize, created_ms: u64, ttl_ms: u64) -> JobOffer {
    JobOffer {
        submitter: key.node_id(),
        nonce,
        model: ModelId::of(b"digits"),
        input: JobInput::Inline(vec![7; input_len]),
        rule: AgreementRule::Exact,
        replicas: 2,
        reward: 1_000,
        created_ms,
        expires_ms: created_ms + ttl_ms,
        deadline_ms: created_ms + ttl_ms + 1_000,
        budget: fleetmesh_node::pay::issue(
            &NodeKey::from_seed([0xFA; 32]),
            key.node_id(),
            1,
            u64::MAX,
            u64::MAX,
        ),
    }
}

/// The payer every offer of [`offer`] names.
fn test_payer() -> NodeKey {
    NodeKey::from_seed([0xFA; 32])
}

fn signed_offer_bytes(key: &NodeKey, offer: JobOffer) -> Vec<u8> {
    codec::encode(&Signed::sign(offer, key).unwrap())
}

/// Drains gossip events for `limit`, returning the data of each.
async fn gossip_received(node: &mut TestNode, limit: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, node.events.recv()).await {
        if let NetEvent::Gossip { data, .. } = event {
            got.push(data);
        }
    }
    got
}

async fn start_fleet(n: u8, cancel: &CancellationToken) -> Vec<TestNode> {
    let first = spawn(1, net_config(vec![], KadMode::Server, 8), cancel).await;
    let boot = first.addr.clone();
    let mut nodes = vec![first];
    for seed in 2..=n {
        nodes.push(spawn(seed, net_config(vec![boot.clone()], KadMode::Server, 8), cancel).await);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_discover_each_other_gossip_and_answer_requests() {
    let cancel = CancellationToken::new();
    let mut nodes = start_fleet(10, &cancel).await;
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.client.peer_id()).collect();

    // Every routing table holds the 9 others within 10 s, knowing only node 1 at start.
    let started = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        let others: Vec<PeerId> = ids.iter().copied().filter(|p| *p != ids[i]).collect();
        let full = wait_for(
            Duration::from_secs(10).saturating_sub(started.elapsed()),
            || async {
                let table = node.client.status().await.unwrap().routing_table;
                others.iter().all(|p| table.contains(p)).then_some(())
            },
        )
        .await;
        assert!(
            full.is_some(),
            "node {} routing table incomplete after 10 s",
            i + 1
        );
    }
    println!("all 10 routing tables complete after {:?}", started.elapsed());

    // A Kademlia lookup of any node from any node succeeds.
    for (i, node) in nodes.iter().enumerate() {
        let target = ids[(i + 3) % ids.len()];
        let addrs = node.client.find_peer(target).await.unwrap();
        assert!(
            !addrs.is_empty(),
            "lookup of {target} from node {} found no address",
            i + 1
        );
    }

    // Once the gossip mesh has formed, a signed offer from any node reaches all 10 within 2 s.
    let meshed = wait_for(Duration::from_secs(20), || async {
        for node in &nodes {
            let s = node.client.status().await.unwrap();
            if s.mesh_peers == 0 || s.topic_peers < s.connected_peers {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(meshed.is_some(), "the gossip mesh did not form");
    for publisher in [0usize, 6] {
        let data = signed_offer_bytes(
            &nodes[publisher].key,
            offer(&nodes[publisher].key, publisher as u64, 64, now_ms(), 60_000),
        );
        nodes[publisher]
            .client
            .publish_on(offers_topic(), data.clone())
            .await
            .unwrap();
        let start = Instant::now();
        for (i, node) in nodes.iter_mut().enumerate() {
            if i == publisher {
                continue;
            }
            let got = gossip_received(node, Duration::from_secs(2).saturating_sub(start.elapsed())).await;
            assert!(
                got.contains(&data),
                "node {} did not get the offer of node {} within 2 s",
                i + 1,
                publisher + 1
            );
        }
    }

    // Request-response between any two nodes: the responder echoes with a prefix.
    for (a, b) in [(0usize, 9usize), (4, 2), (8, 1)] {
        let client_a = nodes[a].client.clone();
        let target = ids[b];
        let ask = tokio::spawn(async move { client_a.request(target, b"ping".to_vec()).await });
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(NetEvent::Request { data, channel, .. }) = nodes[b].events.recv().await {
                    nodes[b]
                        .client
                        .respond(channel, [b"pong:".as_slice(), &data].concat())
                        .await
                        .unwrap();
                    break;
                }
            }
        })
        .await;
        assert!(answered.is_ok(), "node {} got no request", b + 1);
        assert_eq!(ask.await.unwrap().unwrap(), b"pong:ping".to_vec());
    }

    // An oversize request is refused by the receiver's codec: the sender gets an error, the node nothing.
    let big = vec![0u8; NetConfig::default().max_request_bytes + 1];
    let err = nodes[0].client.request(ids[1], big).await;
    assert!(err.is_err(), "oversize request was answered");
    let leaked = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(NetEvent::Request { .. }) = nodes[1].events.recv().await {
                break;
            }
        }
    })
    .await;
    assert!(leaked.is_err(), "an oversize request reached the node");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_gossip_is_rejected_at_the_first_hop_and_not_forwarded() {
    // A chain A - B - C: A and C are DHT clients, so neither learns of the other and only B links them.
    let cancel = CancellationToken::new();
    let b = spawn(21, net_config(vec![], KadMode::Server, 1), &cancel).await;
    let a = spawn(20, net_config(vec![b.addr.clone()], KadMode::Client, 1), &cancel).await;
    let mut c = spawn(22, net_config(vec![b.addr.clone()], KadMode::Client, 1), &cancel).await;
    let mut b = b;
    let connected = wait_for(Duration::from_secs(10), || async {
        let (sa, sc) = (a.client.status().await.unwrap(), c.client.status().await.unwrap());
        (sa.connected_peers == 1 && sc.connected_peers == 1).then_some(())
    })
    .await;
    assert!(connected.is_some(), "chain did not form");
    let meshed = wait_for(Duration::from_secs(20), || async {
        let (sa, sb, sc) = (
            a.client.status().await.unwrap(),
            b.client.status().await.unwrap(),
            c.client.status().await.unwrap(),
        );
        (sa.mesh_peers == 1 && sb.mesh_peers == 2 && sc.mesh_peers == 1).then_some(())
    })
    .await;
    assert!(meshed.is_some(), "the gossip mesh did not form");

    // A valid offer crosses B to C.
    let valid = signed_offer_bytes(&a.key, offer(&a.key, 1, 32, now_ms(), 60_000));
    a.client.publish_on(offers_topic(), valid.clone()).await.unwrap();
    assert!(
        gossip_received(&mut c, Duration::from_secs(2))
            .await
            .contains(&valid)
    );

    // Bad signature, expired, oversize.
    let mut bad_sig = signed_offer_bytes(&a.key, offer(&a.key, 2, 32, now_ms(), 60_000));
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    let expired = signed_offer_bytes(&a.key, offer(&a.key, 3, 32, now_ms() - 120_000, 60_000));
    let mut oversize = signed_offer_bytes(&a.key, offer(&a.key, 4, MAX_INLINE_INPUT, now_ms(), 60_000));
    oversize.extend(vec![0u8; 4096]);
    for data in [&bad_sig, &expired, &oversize] {
        a.client.publish_on(offers_topic(), data.clone()).await.unwrap();
    }
    // A valid offer on the shard of another model: it would cost that shard's members.
    let astray = signed_offer_bytes(&a.key, offer(&a.key, 5, 32, now_ms(), 60_000));
    a.client.publish_on(shard_topic(b"other"), astray).await.unwrap();
    let at_c = gossip_received(&mut c, Duration::from_secs(2)).await;
    let at_b = gossip_received(&mut b, Duration::from_millis(100)).await;
    assert!(
        at_c.is_empty() && at_b.iter().all(|d| *d == valid),
        "an invalid offer was delivered"
    );

    let topic = Topic::Offers.name();
    for outcome in [
        GossipOutcome::BadSignature,
        GossipOutcome::Expired,
        GossipOutcome::Oversize,
        GossipOutcome::WrongShard,
    ] {
        assert_eq!(
            b.metrics.gossip_count(topic, outcome),
            1,
            "B should reject one {outcome:?}"
        );
        assert_eq!(
            c.metrics.gossip_count(topic, outcome),
            0,
            "{outcome:?} was forwarded to C"
        );
    }
    assert_eq!(c.metrics.gossip_count(topic, GossipOutcome::Accepted), 1);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfunded_and_too_frequent_offers_are_dropped_and_an_invalid_sender_is_ignored() {
    // B honours one payer and lets each submitter through at 5 offers/s (10 at once); A, its only peer,
    // publishes for several submitter keys.
    let cancel = CancellationToken::new();
    let policy = net::GossipPolicy {
        payers: Some(fleetmesh_consensus::payment::Payers::new(
            [test_payer().node_id()],
        )),
        offers_per_s: 5.0,
        offer_burst: 10.0,
    };
    let mut b = spawn_with(31, net_config(vec![], KadMode::Server, 1), policy, &cancel).await;
    let a = spawn(30, net_config(vec![b.addr.clone()], KadMode::Client, 1), &cancel).await;
    let meshed = wait_for(Duration::from_secs(20), || async {
        let (sa, sb) = (a.client.status().await.unwrap(), b.client.status().await.unwrap());
        (sa.mesh_peers == 1 && sb.mesh_peers == 1).then_some(())
    })
    .await;
    assert!(meshed.is_some(), "the gossip mesh did not form");
    let topic = Topic::Offers.name();

    // Offers paid from a budget of a payer B does not honour: dropped before their signature is checked.
    let stranger = NodeKey::from_seed([0x33; 32]);
    for n in 0..5 {
        let mut o = offer(&stranger, n, 32, now_ms(), 60_000);
        o.budget = fleetmesh_node::pay::issue(&stranger, stranger.node_id(), 1, u64::MAX, u64::MAX);
        a.client
            .publish_on(offers_topic(), signed_offer_bytes(&stranger, o))
            .await
            .unwrap();
    }
    // One submitter publishing 30 funded offers at once: its burst passes, the rest waits its rate.
    let busy = NodeKey::from_seed([0x34; 32]);
    for n in 0..30 {
        let data = signed_offer_bytes(&busy, offer(&busy, 100 + n, 32, now_ms(), 60_000));
        a.client.publish_on(offers_topic(), data).await.unwrap();
    }
    let delivered = gossip_received(&mut b, Duration::from_secs(2)).await;
    assert_eq!(b.metrics.gossip_count(topic, GossipOutcome::Unfunded), 5);
    assert!(
        (10..=22).contains(&delivered.len()),
        "{} of 30 offers of one submitter delivered",
        delivered.len()
    );
    assert!(b.metrics.gossip_count(topic, GossipOutcome::RateLimited) >= 8);

    // A forwards offers with broken signatures: its score falls below the graylist threshold and B
    // ignores it, valid offers included, and drops it from its mesh.
    // The first three go one at a time, each after B has judged the one before: sent at once, all of
    // them can reach B before its first verdict lowers A's score, and that is not what is tested here.
    let forger = NodeKey::from_seed([0x35; 32]);
    let forged = |n: u64| {
        let mut bad = signed_offer_bytes(&forger, offer(&forger, 200 + n, 32, now_ms(), 60_000));
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        bad
    };
    for n in 0..3 {
        a.client.publish_on(offers_topic(), forged(n)).await.unwrap();
        let rejected = wait_for(Duration::from_secs(5), || async {
            (b.metrics.gossip_count(topic, GossipOutcome::BadSignature) > n).then_some(())
        })
        .await;
        assert!(rejected.is_some(), "forged offer {n} did not reach B");
    }
    // Three invalid messages put A below the graylist threshold: the rest never reach validation.
    for n in 3..6 {
        a.client.publish_on(offers_topic(), forged(n)).await.unwrap();
    }
    let accepted_before = b.metrics.gossip_count(topic, GossipOutcome::Accepted);
    let fresh = NodeKey::from_seed([0x36; 32]);
    let valid = signed_offer_bytes(&fresh, offer(&fresh, 300, 32, now_ms(), 60_000));
    a.client.publish_on(offers_topic(), valid.clone()).await.unwrap();
    assert!(
        !gossip_received(&mut b, Duration::from_secs(2))
            .await
            .contains(&valid),
        "a graylisted peer's offer was delivered"
    );
    assert_eq!(
        b.metrics.gossip_count(topic, GossipOutcome::Accepted),
        accepted_before
    );
    let pruned = wait_for(Duration::from_secs(5), || async {
        (b.client.status().await.unwrap().mesh_peers == 0).then_some(())
    })
    .await;
    assert!(pruned.is_some(), "B kept the invalid sender in its mesh");
    assert!(
        b.metrics.gossip_count(topic, GossipOutcome::BadSignature) < 6,
        "every forged offer was validated: the sender was never ignored"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_listener_is_reachable_through_a_relay() {
    let cancel = CancellationToken::new();
    let relay_cfg = NetConfig {
        relay_server: true,
        public: true,
        ..net_config(vec![], KadMode::Server, 4)
    };
    let relay = spawn(30, relay_cfg, &cancel).await;

    // C listens on nothing but a circuit through the relay.
    let mut c_cfg = net_config(vec![relay.addr.clone()], KadMode::Client, 1);
    c_cfg.listen.clear();
    let key_c = NodeKey::from_seed([31; 32]);
    let (client_c, mut events_c, _t) = net::start(
        &c_cfg,
        &key_c,
        Metrics::default(),
        net::GossipPolicy::open(),
        cancel.clone(),
    )
    .unwrap();
    let circuit = relay.addr.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
    let reserved = wait_for(Duration::from_secs(10), || async {
        if client_c.listen_on(circuit.clone()).await.is_err() {
            return None;
        }
        wait_for(Duration::from_secs(2), || async {
            let s = client_c.status().await.unwrap();
            s.listen_addrs
                .iter()
                .any(|a| a.contains("p2p-circuit"))
                .then_some(())
        })
        .await
    })
    .await;
    assert!(reserved.is_some(), "C got no relay reservation");
    let status = client_c.status().await.unwrap();
    assert!(
        status.listen_addrs.iter().all(|a| a.contains("p2p-circuit")),
        "{:?}",
        status.listen_addrs
    );

    // A reaches C only by the circuit address.
    let a = spawn(32, net_config(vec![], KadMode::Client, 1), &cancel).await;
    let via_relay = circuit.with_p2p(client_c.peer_id()).unwrap();
    a.client.dial(via_relay).await.expect("dial through the relay");
    let ask = {
        let client = a.client.clone();
        let target = client_c.peer_id();
        tokio::spawn(async move { client.request(target, b"hello over a relay".to_vec()).await })
    };
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(NetEvent::Request { data, channel, .. }) = events_c.recv().await {
                client_c.respond(channel, data).await.unwrap();
                break;
            }
        }
    })
    .await;
    assert!(served.is_ok(), "C got no request through the relay");
    assert_eq!(ask.await.unwrap().unwrap(), b"hello over a relay".to_vec());
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_dht_clients_provider_record_is_found_by_another_client_and_it_stays_out_of_routing_tables()
{
    // The capacity directory behind NAT: cars listen only through a relay circuit and stay DHT clients;
    // one announces a shard key at the server, another finds it (a provider record carries the
    // announcing car's circuit address: without an address, Kademlia hands out no record of a peer
    // outside its routing table).
    let cancel = CancellationToken::new();
    let relay_cfg = NetConfig {
        relay_server: true,
        public: true,
        ..net_config(vec![], KadMode::Server, 4)
    };
    let server = spawn(70, relay_cfg, &cancel).await;
    let circuit = server.addr.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
    let relayed = |seed: u8| {
        let mut cfg = net_config(vec![server.addr.clone()], KadMode::Client, 1);
        cfg.listen = vec![circuit.clone()];
        spawn(seed, cfg, &cancel)
    };
    let a = relayed(71).await;
    let b = relayed(72).await;
    assert!(a.addr.to_string().contains("p2p-circuit"), "{}", a.addr);
    let key = b"fleetmesh test shard key".to_vec();
    a.client.provide(key.clone()).await.unwrap();
    let found = wait_for(Duration::from_secs(20), || async {
        // (A lookup that timed out is an error: look again.)
        let providers = b.client.get_providers(key.clone()).await.unwrap_or_default();
        providers.contains(&a.client.peer_id()).then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "the relayed client's provider record was not found"
    );
    let table = server.client.status().await.unwrap().routing_table;
    assert!(
        !table.contains(&a.client.peer_id()) && !table.contains(&b.client.peer_id()),
        "a DHT client is in the server's routing table: {table:?}"
    );
    cancel.cancel();
}
