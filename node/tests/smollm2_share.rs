//! SmolLM2 travels P2P: a node without it fetches the 98 MB GGUF (weights, vocabulary and merges in one
//! file: 376 chunks of 256 KiB, each checked against its blake3 in the manifest) from two peers that serve
//! it over real libp2p, builds it, and generates the same tokens as the original. Skips with a printed
//! reason when the asset is absent (fails instead when `CI=true`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmesh_node::inference::smollm2::{GenerationJob, SmolLm2};
use fleetmesh_node::inference::{Model, Registry};
use fleetmesh_node::jobs::JobsConfig;

mod common;
use common::Spec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fetches_smollm2_from_two_peers_chunk_by_chunk_and_generates_the_same_tokens() {
    let assets = std::env::var_os("FLEETMESH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets")));
    let Some(model) = SmolLm2::from_assets(&assets).unwrap() else {
        fleetmesh_node::testkit::skip_unless_ci(&format!(
            "smollm2 asset not in {} (run scripts/fetch-assets.sh smollm2)",
            assets.display()
        ));
        return;
    };
    let model = Arc::new(model);
    let id = model.id();
    let chunks = model.manifest().chunks.len();
    let with = Registry::default();
    with.insert(model.clone());
    let nodes = common::fleet(
        vec![
            Spec::new(with.clone(), JobsConfig::default()),
            Spec::new(with, JobsConfig::default()),
            Spec::new(Registry::default(), JobsConfig::default()),
        ],
        170,
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
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fetched {} chunks ({:.0} MB) from {} providers in {secs:.1} s: {report:?}",
        report.fetched,
        model.manifest().weights_len as f64 / 1e6,
        report.served_by
    );
    assert_eq!(report.fetched, chunks, "{report:?}");
    assert_eq!((report.providers, report.served_by), (2, 2), "{report:?}");
    assert_eq!(report.corrupt_refused, 0);
    let fetched = fetcher
        .jobs
        .registry()
        .get(&id)
        .expect("fetched model not installed");
    let job = GenerationJob::greedy(model.chat_ids("What is the capital of France?").unwrap(), 8);
    let input = job.encode();
    assert_eq!(
        fetched.run_batch(&[&input]).unwrap(),
        model.run_batch(&[&input]).unwrap(),
        "the fetched model generates other tokens"
    );
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
}
