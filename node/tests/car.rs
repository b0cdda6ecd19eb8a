//! The car in a real fleet (libp2p over loopback, burn inference on the embedded digits model): a driver
//! returning preempts running work within a second and the job completes elsewhere with no credit for the
//! preempted car; a car about to leave does not bid; receipts carry metered energy.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fleetmesh_consensus::job::Outcome;
use fleetmesh_node::config::NodeConfig;
use fleetmesh_node::inference::{Model, Registry, digits};
use fleetmesh_node::jobs::JobsConfig;
use fleetmesh_node::node::Node;
use fleetmesh_node::vehicle::SourceKind;
use fleetmesh_node::vehicle::{Link, VehicleState};

mod common;

fn parked() -> serde_json::Value {
    serde_json::to_value(VehicleState {
        parked: true,
        driver_present: false,
        plugged_in: true,
        charging: true,
        soc_pct: 70.0,
        battery_temp_c: 21.0,
        cabin_temp_c: 19.0,
        link: Link::Wifi,
    })
    .unwrap()
}

/// `POST /v1/vehicle` on a node's local API, as a vehicle integration would (with the node's API token,
/// or `None`).
async fn try_report_with(
    node: &Node,
    token: Option<String>,
    state: serde_json::Value,
) -> Result<(u16, serde_json::Value), fleetmesh_node::client::ClientError> {
    let api = node.api_addr;
    tokio::task::spawn_blocking(move || {
        fleetmesh_node::client::call_with_token(
            api,
            "POST",
            "/v1/vehicle",
            Some(&state),
            Duration::from_secs(5),
            token.as_deref(),
        )
    })
    .await
    .unwrap()
}

async fn report(node: &Node, state: serde_json::Value) -> (u16, serde_json::Value) {
    try_report_with(node, Some(node.api_token.clone()), state)
        .await
        .unwrap()
}

/// Waits until `car` is in the offer shards of its models and `submitter` knows `members` peers (the car
/// among them) subscribed to each.
async fn joined_shards(submitter: &Node, car: &Node, members: usize) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let topics = car.net.status().await.unwrap().offer_topics;
        let mut known = !topics.is_empty();
        for t in topics {
            known &= submitter.net.topic_peers(t).await.unwrap() >= members;
        }
        if known {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The error message of a report the node refused.
async fn refused(node: &Node, state: serde_json::Value) -> String {
    match try_report_with(node, Some(node.api_token.clone()), state).await {
        Err(fleetmesh_node::client::ClientError::Refused(message)) => message,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_driver_preempts_running_work_within_a_second_and_the_job_completes_elsewhere() {
    let registry = Registry::with_defaults(None).unwrap();
    let jobs = |price: u64| JobsConfig {
        price,
        step_timeout_ms: 10_000,
        adaptive: None,
        // Every node's bid reaches the window even on a loaded machine.
        bid_window_ms: 200,
        ..JobsConfig::default()
    };
    // Node 1 submits; node 2 is a car fed by its vehicle integration, the cheapest worker, whose inference
    // thread gathers a batch for 8 s (so its jobs are still in the executor when the driver returns);
    // nodes 3 and 4 are stationary workers; node 5 is a simulated car at Tuesday 07:05, minutes before its
    // owner usually leaves.
    let car = common::Spec {
        config: Some(Box::new(|cfg: &mut NodeConfig| {
            cfg.car.source = SourceKind::External;
            cfg.jobs.batch_linger_ms = 8_000;
        })),
        ..common::Spec::new(registry.clone(), jobs(400))
    };
    let leaving = common::Spec {
        config: Some(Box::new(|cfg: &mut NodeConfig| {
            cfg.car.source = SourceKind::Simulated;
            cfg.car.sim_start = "tue 07:05".into();
            cfg.car.seed = 3;
        })),
        ..common::Spec::new(registry.clone(), jobs(100))
    };
    let specs = vec![
        common::Spec::new(registry.clone(), jobs(1_000)),
        car,
        common::Spec::new(registry.clone(), jobs(1_000)),
        common::Spec::new(registry.clone(), jobs(1_000)),
        leaving,
    ];
    let nodes = common::fleet(specs, 90, None, 0).await;
    let (submitter, car, leaving) = (&nodes[0].0, &nodes[1].0, &nodes[4].0);

    // Before its first report the car takes no work; the leaving car is parked but refuses to bid.
    assert!(!car.car.admitted());
    let v = leaving.car.view();
    assert!(v.admitted, "{v:?}");
    assert_eq!(v.predicted_parked_min, Some(0), "{v:?}");
    // Bad reports get a clear error and change nothing.
    let err = refused(car, serde_json::json!({ "parked": true })).await;
    assert!(err.contains("missing field `driver_present`"), "{err}");
    let mut full = parked();
    full["soc_pct"] = 140.0.into();
    let err = refused(car, full).await;
    assert!(err.contains("soc_pct must be 0 to 100"), "{err}");
    let err = refused(submitter, parked()).await;
    assert!(err.contains("vehicle source is 'none'"), "{err}");
    assert!(!car.car.admitted());
    // Without the node's API token (or with a wrong one) a report is refused with 401 and changes nothing.
    for token in [None, Some("0".repeat(64))] {
        let err = try_report_with(car, token, parked()).await;
        assert!(
            matches!(&err, Err(fleetmesh_node::client::ClientError::Refused(m)) if m.contains("API token")),
            "{err:?}"
        );
        assert!(!car.car.admitted());
    }
    let (code, view) = report(car, parked()).await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["admitted"], true, "{view}");
    // Admitted, the car joins the offer shards of its models, and the submitter learns it.
    assert!(
        joined_shards(submitter, car, nodes.len() - 1).await,
        "the car did not join its offer shards"
    );

    // Three jobs: the car bids cheapest and gets all three.
    let samples: Vec<digits::Sample> = digits::held_out().unwrap().into_iter().take(4).collect();
    let model = digits::Digits::embedded().unwrap();
    let mut ids = Vec::new();
    for s in &samples[..3] {
        ids.push(
            submitter
                .jobs
                .submit(model.id(), s.pixels.clone(), 1)
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    while car.jobs.work_counts().0 < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the car was not assigned the jobs"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The driver returns: every running job is cancelled and handed back with a signed Withdraw.
    let t0 = Instant::now();
    let mut driver = parked();
    driver["driver_present"] = true.into();
    let (code, view) = report(car, driver).await;
    assert_eq!(
        (code, &view["reason"]),
        (200, &serde_json::json!("driver_present")),
        "{view}"
    );
    let withdrawn = loop {
        let n = submitter.metrics.withdrawals.get();
        if n >= 3 {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "withdrawals: {n}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    eprintln!("driver returned -> 3 jobs cancelled and withdrawn at the submitter in {withdrawn:?}");
    assert!(withdrawn < Duration::from_secs(1), "{withdrawn:?}");
    assert_eq!(car.jobs.work_counts(), (0, 0));
    let v = car.car.view();
    assert!(!v.admitted && v.preempted == 3, "{v:?}");
    assert_eq!(car.metrics.preemptions.get(), 3);

    // The jobs complete on the stationary workers, with outputs equal to local inference.
    for (id, s) in ids.iter().zip(&samples) {
        let r = tokio::time::timeout(Duration::from_secs(20), submitter.jobs.wait(*id))
            .await
            .unwrap()
            .unwrap();
        let Outcome::Accepted { output, agreeing, .. } = r.outcome else {
            panic!("job failed: {r:?}");
        };
        assert_eq!(output, model.run_batch(&[&s.pixels]).unwrap()[0]);
        assert!(!agreeing.contains(&car.jobs.node_id()));
        assert!(!agreeing.contains(&leaving.jobs.node_id()));
    }
    // While the driver is in, the car does not bid.
    let id = submitter
        .jobs
        .submit(model.id(), samples[3].pixels.clone(), 1)
        .await
        .unwrap();
    let r = submitter.jobs.wait(id).await.unwrap();
    let Outcome::Accepted { agreeing, .. } = r.outcome else {
        panic!("job failed: {r:?}");
    };
    assert!(!agreeing.contains(&car.jobs.node_id()));

    // No credit for the preempted car or for the car that did not bid; the others' receipts carry energy.
    let paid_jobs = || submitter.jobs.earnings().values().map(|e| e.jobs).sum::<u64>();
    assert!(
        common::eventually(Duration::from_secs(10), || paid_jobs() >= 4).await,
        "only {} jobs paid",
        paid_jobs()
    );
    let ledger = submitter.jobs.earnings();
    assert!(
        ledger.get(&car.jobs.node_id()).is_none_or(|e| e.credit == 0),
        "{ledger:?}"
    );
    assert!(!ledger.contains_key(&leaving.jobs.node_id()), "{ledger:?}");
    let paid: u64 = ledger.values().map(|e| e.jobs).sum();
    assert_eq!(paid, 4);
    assert!(ledger.values().all(|e| e.energy_uwh > 0), "{ledger:?}");
    assert!(leaving.car.view().bids_refused >= 4);

    for (node, cancel) in nodes {
        cancel.cancel();
        node.join().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_submitter_prefers_an_awake_car_in_off_peak_hours_and_the_other_stays_asleep() {
    let registry = Registry::with_defaults(None).unwrap();
    let jobs = JobsConfig {
        adaptive: None,
        bid_window_ms: 200,
        ..JobsConfig::default()
    };
    // Two simulated cars with the same price, both parked and asleep: one at Tuesday 01:00 (off-peak), one
    // at Saturday 15:00 (peak tariff; home from its errand).
    let car_at = |clock: &'static str| common::Spec {
        config: Some(Box::new(move |cfg: &mut NodeConfig| {
            cfg.car.source = SourceKind::Simulated;
            cfg.car.sim_start = clock.into();
        })),
        ..common::Spec::new(registry.clone(), jobs.clone())
    };
    let specs = vec![
        common::Spec::new(registry.clone(), jobs.clone()),
        car_at("tue 01:00"),
        car_at("sat 15:00"),
    ];
    let nodes = common::fleet(specs, 110, None, 0).await;
    let (submitter, offpeak, peak) = (&nodes[0].0, &nodes[1].0, &nodes[2].0);
    let (v_off, v_peak) = (offpeak.car.view(), peak.car.view());
    assert!(v_off.admitted && v_off.offpeak && !v_off.awake, "{v_off:?}");
    assert!(v_peak.admitted && !v_peak.offpeak && !v_peak.awake, "{v_peak:?}");

    let model = digits::Digits::embedded().unwrap();
    let samples = digits::held_out().unwrap();
    for s in samples.iter().take(10) {
        let id = submitter
            .jobs
            .submit(model.id(), s.pixels.clone(), 1)
            .await
            .unwrap();
        submitter.jobs.wait(id).await.unwrap();
    }
    let paid_jobs = || submitter.jobs.earnings().values().map(|e| e.jobs).sum::<u64>();
    assert!(
        common::eventually(Duration::from_secs(10), || paid_jobs() >= 10).await,
        "only {} jobs paid",
        paid_jobs()
    );
    let ledger = submitter.jobs.earnings();
    let jobs_of = |n: &fleetmesh_node::node::Node| ledger.get(&n.jobs.node_id()).map_or(0, |e| e.jobs);
    assert_eq!((jobs_of(offpeak), jobs_of(peak)), (10, 0), "{ledger:?}");
    let (v_off, v_peak) = (offpeak.car.view(), peak.car.view());
    assert_eq!((v_off.wakes, v_peak.wakes), (1, 0));
    assert!(v_off.awake && !v_peak.awake);

    for (node, cancel) in nodes {
        cancel.cancel();
        node.join().await;
    }
}
