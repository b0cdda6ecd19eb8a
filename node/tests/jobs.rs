//! Verified jobs end to end over real libp2p (TCP loopback), nodes in one process, each with its own key,
//! executor and job roles.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fleetmesh_consensus::job::Outcome;
use fleetmesh_consensus::trust::TrustConfig;
use fleetmesh_node::inference::{Model, Registry, digits};
use fleetmesh_node::jobs::{JobsConfig, WorkerBehaviour};
use fleetmesh_node::node::Node;
use fleetmesh_protocol::NodeId;
use tokio_util::sync::CancellationToken;

mod common;

fn jobs_config(behaviour: WorkerBehaviour) -> JobsConfig {
    JobsConfig {
        step_timeout_ms: 2_000,
        behaviour,
        // A small fleet: trust after 3 validated results, frequent spot checks and exploration.
        adaptive: Some(TrustConfig {
            trust_after: 3,
            probation_ms: 3_600_000,
            spot_check: 0.2,
            explore: 0.2,
        }),
        // Short epochs, so that receipts are sealed under published roots within the test.
        epoch_ms: 2_000,
        ..JobsConfig::default()
    }
}

/// Waits until every worker's own line in its ledger equals the submitter's line for it (receipts reach
/// their workers, and nobody else).
async fn workers_hold_their_receipts(nodes: &[(Node, CancellationToken)], submitter: usize) -> bool {
    let reference = nodes[submitter].0.jobs.earnings();
    common::eventually(Duration::from_secs(20), || {
        nodes.iter().enumerate().all(|(i, (n, _))| {
            let me = n.jobs.node_id();
            i == submitter || n.jobs.earnings().get(&me) == reference.get(&me)
        })
    })
    .await
}

/// Starts one node per behaviour, each with the digits model, and waits for a full mesh.
async fn fleet(behaviours: &[WorkerBehaviour]) -> Vec<(Node, CancellationToken)> {
    let registry = Registry::with_defaults(None).unwrap();
    let specs = behaviours
        .iter()
        .map(|b| common::Spec::new(registry.clone(), jobs_config(*b)))
        .collect();
    common::fleet(specs, 60, None, 0).await
}

/// What happens in the middle of a batch: `Some((k, f))` calls `f` once the first `k` jobs have their
/// verdict (a condition, not a time: a loaded machine may take seconds for the first verdicts).
type Midway = Option<(usize, Box<dyn FnOnce() + Send>)>;

/// Submits one job per sample from `jobs` (the i-th after `i * spacing`; `replicas` fixed, or adaptive if
/// `None`) and returns, per job, the sample, its accepted output (checked against local inference) and the
/// agreeing and disagreeing workers.
async fn run_jobs(
    jobs: &fleetmesh_node::jobs::Jobs,
    samples: Vec<digits::Sample>,
    spacing: Duration,
    replicas: Option<u8>,
    mut midway: Midway,
) -> Vec<(fleetmesh_node::jobs::JobResult, Vec<NodeId>, Vec<NodeId>)> {
    let local = digits::Digits::embedded().unwrap();
    let mut tasks = Vec::new();
    for (i, sample) in samples.into_iter().enumerate() {
        let (jobs, id) = (jobs.clone(), local.id());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(spacing * i as u32).await;
            let job = match replicas {
                Some(r) => jobs.submit(id, sample.pixels.clone(), r).await.unwrap(),
                None => jobs.submit_auto(id, sample.pixels.clone()).await.unwrap(),
            };
            (sample, jobs.wait(job).await.unwrap())
        }));
    }
    let mut results = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if midway.as_ref().is_some_and(|(k, _)| i == *k)
            && let Some((_, f)) = midway.take()
        {
            f();
        }
        let (sample, result) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
        let Outcome::Accepted {
            output,
            agreeing,
            disagreeing,
        } = result.outcome.clone()
        else {
            panic!("job failed: {:?}", result.outcome);
        };
        assert_eq!(
            output,
            local.run_batch(&[&sample.pixels]).unwrap()[0],
            "accepted output differs from local inference"
        );
        results.push((result, agreeing, disagreeing));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_jobs_are_verified_and_equal_local_inference() {
    let nodes = fleet(&[WorkerBehaviour::Honest; 5]).await;
    let images = digits::held_out().unwrap();
    let results = run_jobs(
        &nodes[0].0.jobs,
        images[..100].to_vec(),
        Duration::ZERO,
        Some(2),
        None,
    )
    .await;
    let mut receipts = 0;
    for (result, agreeing, disagreeing) in results {
        // Two agreeing workers, or three while nobody has validated history with the submitter yet.
        assert!(agreeing.len() >= 2 && disagreeing.is_empty());
        assert_eq!(result.receipts, agreeing.len());
        receipts += result.receipts as u64;
    }
    // Each receipt goes to its worker: every worker's own balance is what the submitter paid it.
    let reference = nodes[0].0.jobs.earnings();
    assert_eq!(reference.values().map(|e| e.jobs).sum::<u64>(), receipts);
    assert!(
        workers_hold_their_receipts(&nodes, 0).await,
        "a worker's own balance differs from the submitter's ledger"
    );
    // Once the epochs are sealed, any node confirms a worker's claim from its receipts, their inclusion
    // paths and the roots the worker published in the DHT: the same balance.
    // A worker that earned something (random draws over a loaded machine may leave one worker out), checked
    // by another worker.
    let earner = (1..nodes.len())
        .max_by_key(|i| reference.get(&nodes[*i].0.jobs.node_id()).map_or(0, |e| e.jobs))
        .unwrap();
    let other = if earner == 1 { 2 } else { 1 };
    let (worker, checker) = (nodes[earner].0.jobs.clone(), nodes[other].0.jobs.clone());
    let id = worker.node_id();
    let expected = reference[&id];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let claim = loop {
        let claim = checker.check_claim(id, 0).await;
        match &claim {
            Ok(c) if c.jobs == expected.jobs => break claim.unwrap(),
            _ if std::time::Instant::now() > deadline => panic!("claim not confirmed: {claim:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(
        (claim.credit, claim.energy_uwh),
        (expected.credit, expected.energy_uwh)
    );
    assert!(
        claim.epochs >= 1 && claim.receipts as u64 >= expected.jobs,
        "{claim:?}"
    );
    assert_eq!(checker.checked_claims().len(), 1);
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_worker_is_outvoted_and_a_stopped_worker_replaced() {
    let nodes = fleet(&[
        WorkerBehaviour::Honest,
        WorkerBehaviour::AlwaysWrong,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
    ])
    .await;
    let liar = nodes[1].0.jobs.node_id();
    let images = digits::held_out().unwrap();
    let submitter = nodes[0].0.jobs.clone();
    // One honest worker stops in the middle of the batch, once ten jobs are verified (the honest workers
    // then have the history that lets two of them verify a job): its jobs time out and are reassigned.
    let stop = nodes[4].1.clone();
    let results = run_jobs(
        &submitter,
        images[..40].to_vec(),
        Duration::from_millis(25),
        Some(2),
        Some((10, Box::new(move || stop.cancel()))),
    )
    .await;
    let mut outvoted = 0;
    for (_, agreeing, disagreeing) in results {
        assert!(!agreeing.contains(&liar), "a wrong output was accepted");
        outvoted += usize::from(disagreeing.contains(&liar));
    }
    assert!(outvoted > 0, "the liar was never drawn: the test proves nothing");
    let earnings = submitter.earnings();
    assert!(
        earnings.get(&liar).is_none_or(|e| e.credit == 0),
        "the liar earned credit"
    );
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_colluding_fresh_keys_that_underbid_get_no_wrong_result_accepted() {
    // Two fresh keys bid the least and return the same wrong output: with the cheapest bids winning and
    // reputation not consulted they would take both replicas of a fixed two-replica job.
    let nodes = fleet(&[
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::AlwaysWrong,
        WorkerBehaviour::AlwaysWrong,
    ])
    .await;
    let colluders = [nodes[4].0.jobs.node_id(), nodes[5].0.jobs.node_id()];
    let images = digits::held_out().unwrap();
    let submitter = nodes[0].0.jobs.clone();
    // run_jobs checks every accepted output against local inference.
    let results = run_jobs(
        &submitter,
        images[..30].to_vec(),
        Duration::from_millis(30),
        Some(2),
        None,
    )
    .await;
    let (mut outvoted, mut both) = (0, 0);
    for (_, agreeing, disagreeing) in &results {
        assert!(
            !agreeing.iter().any(|w| colluders.contains(w)),
            "a colluder's output was accepted"
        );
        outvoted += usize::from(disagreeing.iter().any(|w| colluders.contains(w)));
        both += usize::from(colluders.iter().all(|c| disagreeing.contains(c)));
    }
    eprintln!("{outvoted} of 30 jobs drew a colluder, {both} drew both");
    assert!(
        outvoted > 0,
        "no colluder was ever drawn: the test proves nothing"
    );
    let earnings = submitter.earnings();
    for c in &colluders {
        assert!(
            earnings.get(c).is_none_or(|e| e.credit == 0),
            "a colluder earned credit"
        );
    }
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_replaced_and_every_job_is_verified() {
    let nodes = fleet(&[
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Silent,
    ])
    .await;
    // The silent worker underbids, so it is among the first two drawn, and never commits.
    let silent = nodes[4].0.jobs.node_id();
    let images = digits::held_out().unwrap();
    let submitter = nodes[0].0.jobs.clone();
    let results = run_jobs(
        &submitter,
        images[..20].to_vec(),
        Duration::from_millis(25),
        Some(2),
        None,
    )
    .await;
    let mut replaced = 0;
    for (result, agreeing, _) in &results {
        assert!(!agreeing.contains(&silent), "the silent worker agreed");
        replaced += usize::from(result.workers_assigned >= 3);
    }
    // Every job was accepted (run_jobs checks it); the silent worker's slots timed out and were filled.
    // (Three misses in a row count as an invalid result; fewer leave a count of misses.)
    let record = submitter.reputation_of(&silent);
    assert!(
        record.invalid > 0 || record.missed > 0,
        "the silent worker was never drawn: the test proves nothing"
    );
    assert!(replaced > 0, "no job needed a replacement");
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_adaptive_replication_two_adversaries_get_nothing_accepted_and_nothing_paid() {
    let nodes = fleet(&[
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::AlwaysWrong,
        WorkerBehaviour::Lazy,
    ])
    .await;
    let adversaries = [nodes[4].0.jobs.node_id(), nodes[5].0.jobs.node_id()];
    let images = digits::held_out().unwrap();
    let submitter = nodes[0].0.jobs.clone();
    // Twenty jobs in which the workers earn (or lose) trust, then sixty more. (In one batch, a loaded
    // machine can plan every job before the first verdict, while nobody is trusted yet.)
    let warm_up = run_jobs(
        &submitter,
        images[..20].to_vec(),
        Duration::from_millis(30),
        None,
        None,
    )
    .await;
    let results = run_jobs(
        &submitter,
        images[20..80].to_vec(),
        Duration::from_millis(30),
        None,
        None,
    )
    .await;
    let mut assigned = 0;
    for (result, agreeing, _) in warm_up.iter().chain(&results) {
        assert!(
            !agreeing.iter().any(|w| adversaries.contains(w)),
            "an adversary's output was accepted"
        );
        assigned += result.workers_assigned;
    }
    // Trusted honest workers ran most jobs alone.
    let assigned_after: usize = results.iter().map(|(r, _, _)| r.workers_assigned).sum();
    assert!(
        assigned_after < 2 * results.len(),
        "{assigned_after} workers for {} jobs after the warm-up ({assigned} in all): replication did not adapt",
        results.len()
    );
    // Receipts reach their workers: each holds what the submitter paid it, and the adversaries are
    // paid nothing.
    let ledger = submitter.earnings();
    for a in &adversaries {
        assert!(
            ledger.get(a).is_none_or(|e| e.credit == 0),
            "an adversary earned credit"
        );
    }
    assert!(
        workers_hold_their_receipts(&nodes, 0).await,
        "a worker's own balance differs from the submitter's ledger"
    );
    println!("80 adaptive jobs: {assigned} workers assigned");
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_worker_caught_lying_has_its_unchecked_results_revoked_rechecked_and_revised() {
    // Three honest workers and one that lies on 30 % of jobs. It underbids, so once trusted (after two
    // validated results) it runs nearly every job alone until a spot check (15 %) catches it; after a
    // probation of 1 s it may earn trust again.
    let liar_behaviour = WorkerBehaviour::WrongPercent(30);
    let registry = Registry::with_defaults(None).unwrap();
    let specs = [
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        WorkerBehaviour::Honest,
        liar_behaviour,
    ]
    .iter()
    .map(|b| {
        let mut cfg = jobs_config(*b);
        cfg.adaptive = Some(TrustConfig {
            trust_after: 2,
            probation_ms: 1_000,
            spot_check: 0.15,
            explore: 0.3,
        });
        common::Spec::new(registry.clone(), cfg)
    })
    .collect();
    let nodes = common::fleet(specs, 90, None, 0).await;
    let liar = nodes[4].0.jobs.node_id();
    let submitter = nodes[0].0.jobs.clone();
    let local = digits::Digits::embedded().unwrap();
    let images = digits::held_out().unwrap();
    // Rounds of 30 jobs until a revision happened (the liar had a lie accepted alone, then was caught),
    // and until the liar has no result accepted on its word that is not rechecked yet (caught, or not
    // trusted at the moment): a lie of a liar never caught cannot be revised.
    let mut submitted = Vec::new();
    for round in 0..20 {
        let mut tasks = Vec::new();
        for (i, sample) in images
            .iter()
            .cycle()
            .skip(30 * round)
            .take(30)
            .cloned()
            .enumerate()
        {
            let (jobs, id) = (submitter.clone(), local.id());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20) * i as u32).await;
                let job = jobs.submit_auto(id, sample.pixels.clone()).await.unwrap();
                jobs.wait(job).await.unwrap();
                (job, sample)
            }));
        }
        for task in tasks {
            submitted.push(
                tokio::time::timeout(Duration::from_secs(60), task)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        if nodes[0].0.metrics.revisions.get() > 0 && submitter.unchecked_results(&liar) == 0 {
            break;
        }
    }
    assert!(
        nodes[0].0.metrics.revisions.get() > 0,
        "no lie accepted and then revised in {} jobs (rechecks: {})",
        submitted.len(),
        nodes[0].0.metrics.rechecks.get()
    );
    assert!(
        submitter.reputation_of(&liar).invalid > 0,
        "the liar was not caught"
    );
    assert_eq!(
        submitter.unchecked_results(&liar),
        0,
        "the liar ended trusted, its lies unchecked"
    );
    // Every job ends with the true output: accepted right, or revised once its recheck is decided.
    let truth = |pixels: &[u8]| hex::encode(&local.run_batch(&[pixels]).unwrap()[0]);
    let settled = common::eventually(Duration::from_secs(60), || {
        submitted.iter().all(|(job, sample)| {
            submitter
                .view(job)
                .is_some_and(|v| v.output_hex.as_deref() == Some(truth(&sample.pixels).as_str()))
        })
    })
    .await;
    let revised: Vec<_> = submitted
        .iter()
        .filter_map(|(job, _)| submitter.view(job).filter(|v| v.state == "revised"))
        .collect();
    assert!(settled, "some job still has a wrong output; revised: {revised:?}");
    assert!(!revised.is_empty());
    for v in &revised {
        assert!(v.first_output_hex.is_some() && v.revised_by.is_some(), "{v:?}");
        assert!(!v.agreeing.contains(&liar.to_string()), "{v:?}");
    }
    // The revocations count with their evidence at both parties: the liar is paid for fewer jobs than
    // it holds accepted receipts for, on the submitter's books and on its own.
    let liar_node = &nodes[4].0.jobs;
    // (A receipt or revocation that missed its worker once is sent again 2, 10 and 30 s later.)
    let paid_on_both = common::eventually(Duration::from_secs(60), || {
        [&submitter, liar_node].iter().all(|n| {
            let paid = n.earnings().get(&liar).map_or(0, |e| e.jobs) as usize;
            paid < n.receipts_of(&liar).len()
        }) && liar_node.earnings().get(&liar) == submitter.earnings().get(&liar)
    })
    .await;
    let books = |n: &fleetmesh_node::jobs::Jobs| {
        let e = n.earnings().get(&liar).copied();
        (e.map_or(0, |e| e.jobs), n.receipts_of(&liar).len(), e)
    };
    assert!(
        paid_on_both,
        "revocations not honoured by both parties: (paid, receipts, earnings) at the submitter {:?}, at the liar {:?}",
        books(&submitter),
        books(liar_node)
    );
    println!(
        "{} jobs, {} revised, {} receipts revoked",
        submitted.len(),
        revised.len(),
        nodes[0].0.metrics.rechecks.get()
    );
    for (_, cancel) in &nodes {
        cancel.cancel();
    }
}
