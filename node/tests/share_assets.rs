//! The fetched models travel P2P: a node without one fetches it from two peers that serve it over real
//! libp2p (every chunk checked against its blake3 in the manifest), builds it, and computes the same bits as
//! the original. `smollm2` is one file (the 98 MB GGUF holds weights, vocabulary and merges); `minilm` is
//! three (weights, tokenizer, config), travelling as one bundle. Skips with a printed reason when an asset
//! is absent (fails instead when `CI=true`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmesh_node::inference::minilm::{ARCHITECTURE, FILES, MiniLm};
use fleetmesh_node::inference::smollm2::{GenerationJob, SmolLm2};
use fleetmesh_node::inference::{Model, Registry, bundle};
use fleetmesh_node::jobs::JobsConfig;

mod common;
use common::Spec;

fn assets() -> PathBuf {
    std::env::var_os("FLEETMESH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets")))
}

/// Starts two nodes serving `model` and one without it (key seeds from `seed`), has the third fetch it once
/// both providers are found, checks the fetch, and returns the model the third node installed.
async fn fetch_from_two_peers(model: Arc<dyn Model>, seed: u8) -> Arc<dyn Model> {
    let id = model.id();
    let with = Registry::default();
    with.insert(model.clone());
    let nodes = common::fleet(
        vec![
            Spec::new(with.clone(), JobsConfig::default()),
            Spec::new(with, JobsConfig::default()),
            Spec::new(Registry::default(), JobsConfig::default()),
        ],
        seed,
        None,
        0,
    )
    .await;
    let fetcher = &nodes[2].0;
    assert!(fetcher.jobs.registry().get(&id).is_none());
    // Both providers' records must be found before the fetch can spread over them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = fetcher
            .net
            .get_providers(id.as_bytes().to_vec())
            .await
            .unwrap_or_default();
        if found.len() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "providers found: {found:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let report = fetcher.share.fetch(id, None).await.unwrap();
    println!(
        "{}: fetched {} chunks ({:.0} MB) from {} providers in {:.1} s: {report:?}",
        model.manifest().name,
        report.fetched,
        model.manifest().weights_len as f64 / 1e6,
        report.served_by,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(report.fetched, model.manifest().chunks.len(), "{report:?}");
    assert_eq!((report.providers, report.served_by), (2, 2), "{report:?}");
    assert_eq!(report.corrupt_refused, 0);
    let fetched = fetcher
        .jobs
        .registry()
        .get(&id)
        .expect("fetched model not installed");
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
    fetched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fetches_smollm2_from_two_peers_chunk_by_chunk_and_generates_the_same_tokens() {
    let Some(model) = SmolLm2::from_assets(&assets()).unwrap() else {
        fleetmesh_node::testkit::skip_unless_ci(
            "smollm2 asset missing (run scripts/fetch-assets.sh smollm2)",
        );
        return;
    };
    let model = Arc::new(model);
    let input = GenerationJob::greedy(model.chat_ids("What is the capital of France?").unwrap(), 8).encode();
    let fetched = fetch_from_two_peers(model.clone(), 170).await;
    assert_eq!(
        fetched.run_batch(&[&input]).unwrap(),
        model.run_batch(&[&input]).unwrap(),
        "the fetched model generates other tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fetches_minilms_three_files_from_two_peers_and_embeds_the_same_bits() {
    let dir = assets();
    let Some(model) = MiniLm::from_assets(&dir).unwrap() else {
        fleetmesh_node::testkit::skip_unless_ci("minilm assets missing (run scripts/fetch-assets.sh minilm)");
        return;
    };
    assert_eq!(model.manifest().architecture, ARCHITECTURE);
    // The same three files in another order would be another bundle, another id: refused.
    let read = |name: &str| std::fs::read(dir.join("minilm").join(name)).unwrap();
    let (w, t, c) = (read(FILES[0].0), read(FILES[1].0), read(FILES[2].0));
    let reordered = bundle::pack(&[(FILES[1].0, &t), (FILES[0].0, &w), (FILES[2].0, &c)]);
    assert!(MiniLm::from_bundle(&reordered).is_err());
    assert!(MiniLm::from_bundle(&bundle::pack(&[(FILES[0].0, &w), (FILES[1].0, &t)])).is_err());
    let model = Arc::new(model);
    let fetched = fetch_from_two_peers(model.clone(), 180).await;
    let sentences: [&[u8]; 2] = [b"A man is eating food.", b"Parked cars lend their computers."];
    assert_eq!(
        fetched.run_batch(&sentences).unwrap(),
        model.run_batch(&sentences).unwrap(),
        "the fetched model embeds to other bits"
    );
}
