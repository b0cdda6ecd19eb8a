//! P2P model distribution over real libp2p: a node without a model fetches it from peers (Kademlia
//! providers, manifest, blake3-checked chunks from several providers in parallel), refuses corrupted
//! chunks, resumes an interrupted fetch, and keeps the model across a restart. Runs on the embedded digits
//! weights, distributed in 16 KiB chunks (10 chunks; another model id than the embedded one, so nodes
//! start without it): no fetched assets needed.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use fleetmesh_consensus::job::Outcome;
use fleetmesh_node::adversary::ServeBehaviour;
use fleetmesh_node::inference::digits::{self, Digits};
use fleetmesh_node::inference::{Model, Registry};
use fleetmesh_node::jobs::JobsConfig;
use fleetmesh_node::share::{FetchError, ShareConfig};
use fleetmesh_node::store::Store;

mod common;
use common::Spec;

/// The embedded digits weights as a model of its own, chunked small.
fn chunked_digits() -> Arc<Digits> {
    Arc::new(Digits::from_weights_chunked(digits::WEIGHTS, 16 * 1024).unwrap())
}

fn with_model(model: &Arc<Digits>) -> Registry {
    let registry = Registry::with_defaults(None).unwrap();
    registry.insert(model.clone());
    registry
}

fn jobs_config() -> JobsConfig {
    JobsConfig {
        step_timeout_ms: 5_000,
        ..JobsConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_model_fetch_it_from_peers_and_verify_its_jobs() {
    let model = chunked_digits();
    let images: Vec<Vec<u8>> = digits::held_out()
        .unwrap()
        .into_iter()
        .map(|s| s.pixels)
        .collect();
    let id = model.id();
    assert!(model.manifest().chunks.len() >= 8);
    let bare = Registry::with_defaults(None).unwrap();
    // Node 0 submits, node 1 runs the model from the start, nodes 2 and 3 do not have it.
    let nodes = common::fleet(
        vec![
            Spec::new(with_model(&model), jobs_config()),
            Spec::new(with_model(&model), jobs_config()),
            Spec::new(bare.clone(), jobs_config()),
            Spec::new(bare, jobs_config()),
        ],
        120,
        None,
        0,
    )
    .await;
    assert!(nodes[2].0.jobs.registry().get(&id).is_none());
    let submitter = nodes[0].0.jobs.clone();
    let mut jobs = Vec::new();
    for pixels in &images[..12] {
        jobs.push(submitter.submit(id, pixels.clone(), 2).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut accepted_by = std::collections::HashSet::new();
    for (job, pixels) in jobs.into_iter().zip(&images) {
        let result = tokio::time::timeout(Duration::from_secs(60), submitter.wait(job))
            .await
            .unwrap()
            .unwrap();
        let Outcome::Accepted { output, agreeing, .. } = result.outcome else {
            panic!("job failed: {:?}", result.outcome);
        };
        assert_eq!(output, model.run_batch(&[pixels]).unwrap()[0]);
        accepted_by.extend(agreeing);
    }
    for (node, _) in &nodes[2..] {
        assert!(
            node.jobs.registry().get(&id).is_some(),
            "node {} did not fetch the model",
            node.jobs.node_id().short()
        );
    }
    // With replicas 2 and only node 1 holding the model at first, the fetchers did verified work.
    let fetchers = [nodes[2].0.jobs.node_id(), nodes[3].0.jobs.node_id()];
    assert!(
        fetchers.iter().any(|f| accepted_by.contains(f)),
        "no fetching node took part in a verdict"
    );
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_is_refused_and_fetched_from_another_provider() {
    let model = chunked_digits();
    let id = model.id();
    let corrupt = Spec {
        share: ShareConfig {
            behaviour: ServeBehaviour::CorruptChunks,
            ..ShareConfig::default()
        },
        ..Spec::new(with_model(&model), jobs_config())
    };
    let fetcher_store = Store::temporary().unwrap();
    let fetcher = Spec {
        store: fetcher_store.clone(),
        ..Spec::new(Registry::with_defaults(None).unwrap(), jobs_config())
    };
    let mut nodes = common::fleet(vec![corrupt, fetcher], 140, None, 0).await;

    // The only provider serves corrupted chunks: every one is refused, nothing is installed or kept.
    let err = nodes[1].0.share.fetch(id, None).await.unwrap_err();
    assert!(matches!(err, FetchError::ChunkUnavailable { .. }), "{err}");
    assert!(nodes[1].0.jobs.registry().get(&id).is_none());
    for chunk in &model.manifest().chunks {
        assert!(
            fetcher_store.chunk(chunk).is_none(),
            "a corrupted chunk was stored"
        );
    }

    // An interrupted fetch left two verified chunks behind; the next fetch keeps them.
    let weights = digits::WEIGHTS;
    let size = model.manifest().chunk_size as usize;
    for (i, chunk) in weights.chunks(size).take(2).enumerate() {
        fetcher_store
            .put_chunk(&model.manifest().chunks[i], chunk)
            .unwrap();
    }

    // An honest provider joins: each chunk the corrupt one serves is refused and fetched from it.
    let boot = nodes[0]
        .0
        .net
        .dialable_addr(Duration::from_secs(2))
        .await
        .unwrap();
    let honest = common::fleet(
        vec![Spec::new(with_model(&model), jobs_config())],
        142,
        Some(boot),
        2,
    )
    .await;
    nodes.extend(honest);
    // Once the honest node's provider record is found, the fetch takes chunks from both providers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = nodes[1].0.share.fetch(id, None).await;
        match report {
            Ok(r) => break r,
            Err(e) if std::time::Instant::now() < deadline => {
                println!("fetch before the honest provider is known: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(report.providers, 2, "{report:?}");
    assert_eq!(report.reused, 2, "{report:?}");
    assert_eq!(report.fetched, model.manifest().chunks.len() - 2, "{report:?}");
    assert!(report.corrupt_refused >= 1, "{report:?}");
    assert!(nodes[1].0.jobs.registry().get(&id).is_some());

    // The fetched model is in the store: a restarted node installs it without the network.
    let (fetcher, cancel) = nodes.remove(1);
    cancel.cancel();
    fetcher.join().await;
    let restarted = Spec {
        store: fetcher_store,
        ..Spec::new(Registry::with_defaults(None).unwrap(), jobs_config())
    };
    let again = common::fleet(vec![restarted], 141, None, 0).await;
    assert!(
        again[0].0.jobs.registry().get(&id).is_some(),
        "fetched model lost on restart"
    );
    for (_, cancel) in nodes.iter().chain(&again) {
        cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_metered_link_a_car_does_not_download_a_model_over_the_owners_limit() {
    let model = chunked_digits();
    let id = model.id();
    let car = Spec {
        config: Some(Box::new(|cfg: &mut fleetmesh_node::config::NodeConfig| {
            cfg.car.source = fleetmesh_node::vehicle::SourceKind::External;
            cfg.owner.metered_max_download_mib = 0; // nothing may be downloaded on a metered link
        })),
        ..Spec::new(Registry::with_defaults(None).unwrap(), jobs_config())
    };
    let nodes = common::fleet(
        vec![Spec::new(with_model(&model), jobs_config()), car],
        150,
        None,
        0,
    )
    .await;
    let fetcher = &nodes[1].0;
    let state = |link: &str| {
        serde_json::json!({
            "parked": true, "driver_present": false, "plugged_in": false, "charging": false,
            "soc_pct": 80.0, "battery_temp_c": 20.0, "cabin_temp_c": 20.0, "link": link,
        })
    };
    let report = |link: &'static str| {
        let (api, body, token) = (fetcher.api_addr, state(link), fetcher.api_token.clone());
        tokio::task::spawn_blocking(move || {
            fleetmesh_node::client::call_with_token(
                api,
                "POST",
                "/v1/vehicle",
                Some(&body),
                Duration::from_secs(5),
                Some(&token),
            )
            .unwrap()
        })
    };
    // The car task applies the link's limit (4 Hz).
    let limit_becomes = |limit: u64| {
        let share = fetcher.share.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while share.link_limit() != limit {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the link limit stayed {}",
                    share.link_limit()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(report("metered").await.unwrap().0, 200);
    limit_becomes(0).await;
    let err = fetcher.share.fetch(id, None).await.unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { limit: 0, .. }), "{err}");
    assert!(fetcher.jobs.registry().get(&id).is_none());
    // Back on wifi, the same model downloads.
    assert_eq!(report("wifi").await.unwrap().0, 200);
    limit_becomes(u64::MAX).await;
    fetcher.share.fetch(id, None).await.unwrap();
    assert!(fetcher.jobs.registry().get(&id).is_some());
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_model_whose_weights_do_not_build_is_deleted_at_start() {
    // What a fetch of junk weights leaves behind (chunks that match their manifest, weights that build
    // no model) does not stay on disk: the node deletes it when it starts.
    let store = Store::temporary().unwrap();
    let real = chunked_digits().manifest().clone();
    let junk = vec![7u8; 40_000];
    let manifest = fleetmesh_node::inference::manifest_for(
        "junk",
        1,
        &real.architecture,
        &junk,
        16 * 1024,
        real.input.clone(),
        real.output.clone(),
        real.rule,
    );
    for (i, bytes) in junk.chunks(16 * 1024).enumerate() {
        store.put_chunk(&manifest.chunks[i], bytes).unwrap();
    }
    store.put_manifest(&manifest).unwrap();
    let spec = Spec {
        store: store.clone(),
        ..Spec::new(Registry::with_defaults(None).unwrap(), jobs_config())
    };
    let nodes = common::fleet(vec![spec], 150, None, 0).await;
    assert!(
        store.manifest(&manifest.id()).is_none(),
        "the junk manifest stayed"
    );
    assert!(
        manifest.chunks.iter().all(|c| store.chunk(c).is_none()),
        "junk chunks stayed"
    );
    assert!(nodes[0].0.jobs.registry().get(&manifest.id()).is_none());
    for (node, cancel) in nodes {
        cancel.cancel();
        node.join().await;
    }
}
