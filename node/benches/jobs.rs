//! Verified jobs vs unverified local inference on the digits model, and the mesh overhead per job:
//! offer-to-verdict latency minus the workers' compute time, one job at a time (p50/p99).
//!
//! `cargo bench -p fleetmesh-node --bench jobs`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fleetmesh_consensus::job::Outcome;
use fleetmesh_node::demo;
use fleetmesh_node::inference::executor::{CancelFlag, Executor, ExecutorConfig};
use fleetmesh_node::inference::{Registry, digits};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let images = digits::held_out().unwrap();
        let registry = Registry::with_defaults(None).unwrap();
        let model = registry.by_name("digits").unwrap().id();

        // Unverified: the same jobs (one image each) straight into one local executor, 32 in flight.
        let executor = Executor::start(registry.clone(), ExecutorConfig::default());
        let n = 2_000;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..n {
            let (ex, px) = (executor.clone(), images[i % images.len()].pixels.clone());
            tasks.push(tokio::spawn(async move {
                ex.run(&model, vec![px], CancelFlag::default()).await
            }));
            if tasks.len() >= 32 {
                tasks.remove(0).await.unwrap().unwrap();
            }
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let local_rate = n as f64 / start.elapsed().as_secs_f64();

        // Verified: the demo fleet (5 nodes, 2 replicas, 32 in flight).
        let summary = demo::run(demo::DemoConfig {
            jobs: n,
            ..demo::DemoConfig::default()
        })
        .await
        .unwrap();
        println!("fleetmesh jobs benchmark: digits model, 5 nodes in one process, TCP loopback, replicas 2");
        println!("unverified local inference        {local_rate:>9.1} jobs/s");
        println!(
            "verified jobs (offer to verdict)  {:>9.1} jobs/s",
            summary.jobs_per_s
        );
        println!(
            "verified / unverified             {:>9.3}",
            summary.jobs_per_s / local_rate
        );

        // Overhead: one job in flight; latency minus the compute the workers reported.
        let fleet = demo::Fleet::start(5).await.unwrap();
        let jobs = fleet.submitter();
        let mut overhead = Vec::new();
        for i in 0..300 {
            let t = Instant::now();
            let id = jobs
                .submit(model, images[i % images.len()].pixels.clone(), 2)
                .await
                .unwrap();
            let result = jobs.wait(id).await.unwrap();
            let latency = t.elapsed();
            assert!(matches!(result.outcome, Outcome::Accepted { .. }));
            let compute = Duration::from_micros(result.compute_us_max);
            overhead.push(latency.saturating_sub(compute));
        }
        fleet.stop().await;
        overhead.drain(..20);
        overhead.sort();
        println!(
            "mesh overhead per job (n={}): p50 {:.2} ms  p99 {:.2} ms  (targets 5 / 25 ms)",
            overhead.len(),
            percentile(&overhead, 0.5),
            percentile(&overhead, 0.99)
        );
    });
}
