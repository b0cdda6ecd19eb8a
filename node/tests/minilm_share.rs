//! minilm travels P2P although it is three files: a node without it fetches the bundle of its weights,
//! tokenizer and config (one manifest, every chunk blake3-checked; every file checked against its pinned
//! hash when unpacked) from two peers over real libp2p, and embeds sentences to the same bits as the
//! original. Skips with a printed reason when the asset is absent (fails instead when `CI=true`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmesh_node::inference::bundle;
use fleetmesh_node::inference::minilm::{ARCHITECTURE, FILES, MiniLm};
use fleetmesh_node::inference::{Model, Registry};
use fleetmesh_node::jobs::JobsConfig;

mod common;
use common::Spec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fetches_minilms_three_files_from_two_peers_and_embeds_the_same_bits() {
    let assets = std::env::var_os("FLEETMESH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets")));
    let Some(model) = MiniLm::from_assets(&assets).unwrap() else {
        fleetmesh_node::testkit::skip_unless_ci(&format!(
            "minilm assets not in {} (run scripts/fetch-assets.sh minilm)",
            assets.display()
        ));
        return;
    };
    assert_eq!(model.manifest().architecture, ARCHITECTURE);
    // The same three files in another order would be another bundle, another id: refused.
    let read = |name: &str| std::fs::read(assets.join("minilm").join(name)).unwrap();
    let (w, t, c) = (read(FILES[0].0), read(FILES[1].0), read(FILES[2].0));
    let reordered = bundle::pack(&[(FILES[1].0, &t), (FILES[0].0, &w), (FILES[2].0, &c)]);
    assert!(MiniLm::from_bundle(&reordered).is_err());
    assert!(MiniLm::from_bundle(&bundle::pack(&[(FILES[0].0, &w), (FILES[1].0, &t)])).is_err());
    let model = Arc::new(model);
    let id = model.id();
    let with = Registry::default();
    with.insert(model.clone());
    let nodes = common::fleet(
        vec![
            Spec::new(with.clone(), JobsConfig::default()),
            Spec::new(with, JobsConfig::default()),
            Spec::new(Registry::default(), JobsConfig::default()),
        ],
        180,
        None,
        0,
    )
    .await;
    let fetcher = &nodes[2].0;
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
    let report = fetcher.share.fetch(id, None).await.unwrap();
    println!("{report:?}");
    assert_eq!(report.fetched, model.manifest().chunks.len());
    assert_eq!((report.providers, report.served_by), (2, 2), "{report:?}");
    let fetched = fetcher
        .jobs
        .registry()
        .get(&id)
        .expect("fetched model not installed");
    let sentences: [&[u8]; 2] = [b"A man is eating food.", b"Parked cars lend their computers."];
    assert_eq!(
        fetched.run_batch(&sentences).unwrap(),
        model.run_batch(&sentences).unwrap(),
        "the fetched model embeds to other bits"
    );
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
}
