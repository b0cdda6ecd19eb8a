//! An attacker's offer flood against a running fleet (what `scripts/bench-flood.sh` measures): joins
//! through a bootstrap address with keys of its own and gossips validly signed offers for models nobody
//! has, as fast as it is told.
//!
//! ```text
//! cargo run --release -p fleetmesh-examples --example flood -- BOOTSTRAP_ADDR [OFFERS] [SECONDS] [PAYER_KEY]
//! ```
//!
//! Without `PAYER_KEY` every offer comes from a fresh submitter key with a budget of a payer of the
//! attacker's own (unfunded: no honest node honours it). With the key file of a payer the fleet honours,
//! all offers come from one submitter that payer funded (a paying submitter gone rogue). Prints one JSON
//! line: offers published (those gossipsub took), offers asked for, seconds taken.

use std::time::{Duration, Instant};

use fleetmesh_node::config::{KadMode, NetConfig};
use fleetmesh_node::metrics::Metrics;
use fleetmesh_node::net::{self, GossipPolicy, Topic};
use fleetmesh_protocol::messages::{AgreementRule, JobInput, JobOffer};
use fleetmesh_protocol::{ModelId, NodeKey, Signed, codec};

const USAGE: &str =
    "usage: flood BOOTSTRAP_ADDR [OFFERS, default 10000] [SECONDS, default 10] [PAYER_KEY_FILE]";

fn fresh_key() -> anyhow::Result<NodeKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    Ok(NodeKey::from_seed(seed))
}

/// A signed offer of `submitter` for a model nobody has, paid from `budget`.
fn offer(
    submitter: &NodeKey,
    budget: Signed<fleetmesh_protocol::messages::Budget>,
    n: u64,
) -> anyhow::Result<Vec<u8>> {
    let now = fleetmesh_node::clock::now_ms();
    let offer = JobOffer {
        submitter: submitter.node_id(),
        nonce: n,
        model: ModelId::of(&n.to_le_bytes()),
        input: JobInput::Inline(vec![0; 64]),
        rule: AgreementRule::Exact,
        replicas: 2,
        reward: 1_000,
        created_ms: now,
        expires_ms: now + 10_000,
        deadline_ms: now + 60_000,
        budget,
    };
    Ok(codec::encode(&Signed::sign(offer, submitter)?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bootstrap: libp2p::Multiaddr = args
        .first()
        .ok_or_else(|| anyhow::anyhow!(USAGE))?
        .parse()
        .map_err(|e| anyhow::anyhow!("{USAGE}: {e}"))?;
    let offers: u64 = args
        .get(1)
        .map_or(Ok(10_000), |s| s.parse())
        .map_err(|e| anyhow::anyhow!("{USAGE}: {e}"))?;
    let seconds: f64 = args
        .get(2)
        .map_or(Ok(10.0), |s| s.parse())
        .map_err(|e| anyhow::anyhow!("{USAGE}: {e}"))?;
    let payer = args
        .get(3)
        .map(|p| fleetmesh_node::keyfile::load(std::path::Path::new(p)))
        .transpose()?;

    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        bootstrap: vec![bootstrap],
        kademlia_mode: KadMode::Client,
        ..NetConfig::default()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let (client, _events, _task) = net::start(
        &cfg,
        &fresh_key()?,
        Metrics::default(),
        GossipPolicy::open(),
        cancel,
    )?;
    let started = Instant::now();
    while client.status().await?.mesh_peers == 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "no gossip mesh after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expires = fleetmesh_node::clock::now_ms() + 3_600_000;
    let rogue = fresh_key()?;
    let t0 = Instant::now();
    let mut published = 0u64;
    for n in 0..offers {
        let data = match &payer {
            // One funded submitter.
            Some(payer) => offer(
                &rogue,
                fleetmesh_node::pay::issue(payer, rogue.node_id(), 1, u64::MAX / 2, expires),
                n,
            )?,
            // A fresh unfunded key per offer.
            None => {
                let key = fresh_key()?;
                let budget = fleetmesh_node::pay::issue(&key, key.node_id(), 1, u64::MAX / 2, expires);
                offer(&key, budget, n)?
            }
        };
        // gossipsub refuses a publish when no peer takes the topic: only offers that left count.
        if client.publish(Topic::Offers, data).await.is_ok() {
            published += 1;
        }
        // Keep to the asked rate.
        let due = Duration::from_secs_f64(seconds * (n + 1) as f64 / offers as f64);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    println!(
        "{}",
        serde_json::json!({ "published": published, "asked": offers, "seconds": t0.elapsed().as_secs_f64(), "funded": payer.is_some() })
    );
    Ok(())
}
