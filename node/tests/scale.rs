//! The scale run with 100 nodes in this test process (5 DHT servers and relays, 95 clients reachable only
//! through relay circuits; see `fleetmesh_node::testkit::scale`): every job verified, no client in a
//! server's routing table, no offer on a fleet-wide topic, and offers split into shards. The 1,000-node
//! run is `scripts/bench-scale.sh 1000` (README, Scale).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use fleetmesh_node::testkit::scale::{self, ScaleArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_nodes_behind_relays_verify_every_job_on_sharded_offers() {
    let report = scale::run(ScaleArgs {
        nodes: 100,
        secs: 20,
        rate: 5.0,
        idle_secs: 0,
        join_per_s: 100.0,
    })
    .await
    .unwrap();
    println!("{report}");
    assert!(report["success"].as_f64().unwrap() >= 0.99, "{report}");
    assert_eq!(report["clients_in_server_tables"], 0, "{report}");
    assert_eq!(report["fleet_topic_offers"], 0, "{report}");
    // Every node joined a shard of offers for digits and one for any model.
    assert!(report["offer_topics"].as_u64().unwrap() >= 2, "{report}");
    assert!(report["largest_shard_members"].as_u64().unwrap() >= 2, "{report}");
}
