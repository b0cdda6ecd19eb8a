//! Inference throughput: mnist-cnn images/s at batch 1 and 64 and minilm sentences/s at batch 1 and 32 on
//! the packed forwards jobs run (`inference::cnn`, `inference::bert`), and the same on burn's stock flex
//! forward (`mnist-flex`, `minilm-flex`) as the in-run reference. Prints one `RESULT model batch per_second` line per case for
//! scripts/bench-inference.sh, which runs PyTorch on the same weights and inputs and prints the ratios.
//!
//! `{model}-exec1xN` and `{model}-exec2x1` (batch column 1: one-input jobs) compare a node's executor with
//! one worker using every core against two single-threaded workers, on 128 jobs queued at once.
//!
//! `cargo bench -p fleetmesh-node --bench inference` (needs scripts/fetch-assets.sh).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmesh_node::inference::executor::{CancelFlag, Executor, ExecutorConfig};
use fleetmesh_node::inference::minilm::MiniLm;
use fleetmesh_node::inference::mnist::{self, MnistCnn};
use fleetmesh_node::inference::{Model, Registry, digits::Digits};

/// The sentences both sides embed (scripts/bench_torch.py reads the same file).
const SENTENCES: &str = include_str!("../../scripts/bench-sentences.txt");

/// `BENCH_ONLY=model/batch` (e.g. `mnist-cnn/1`) runs one case only, for profiling.
fn selected(model: &str, batch: usize) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only == format!("{model}/{batch}"))
}

fn measure(items_per_call: usize, min_secs: f64, mut call: impl FnMut()) -> f64 {
    call(); // warm-up
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed().as_secs_f64() < min_secs {
        call();
        calls += 1;
    }
    (calls * items_per_call) as f64 / start.elapsed().as_secs_f64()
}

/// Prints one result line, if the case is selected.
fn case(model: &str, batch: usize, secs: f64, call: impl FnMut()) {
    case_of(model, batch, batch, secs, call);
}

/// [`case`] for a call that handles `items` items in jobs of `batch`.
fn case_of(model: &str, batch: usize, items: usize, secs: f64, call: impl FnMut()) {
    if selected(model, batch) {
        println!("RESULT {model} {batch} {:.1}", measure(items, secs, call));
    }
}

/// Jobs in flight in the executor cases.
const EXEC_JOBS: usize = 128;

/// A node's executor fed [`EXEC_JOBS`] one-input jobs at once (batched as the node batches them): one
/// worker on the process-wide pool (`{model}-exec1x2`: both cores inside each forward) against two workers
/// of one thread each (`{model}-exec2x1`), when the machine has at least two cores.
fn executor_cases(model: Arc<dyn Model>, inputs: &[&[u8]], secs: f64) {
    let name = model.manifest().name.clone();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores < 2 {
        return;
    }
    let registry = Registry::default();
    registry.insert(model.clone());
    for (workers, threads_per_worker) in [(1, 0), (2, 1)] {
        let label = format!(
            "{name}-exec{workers}x{}",
            if threads_per_worker == 0 { cores } else { 1 }
        );
        if !selected(&label, 1) {
            continue;
        }
        let exec = Executor::start(
            registry.clone(),
            ExecutorConfig {
                workers,
                threads_per_worker,
                linger: Duration::from_millis(1),
                ..ExecutorConfig::default()
            },
        );
        let id = model.id();
        case_of(&label, 1, EXEC_JOBS, secs, || {
            let jobs = (0..EXEC_JOBS).map(|i| {
                exec.run(
                    &id,
                    vec![inputs[i % inputs.len()].to_vec()],
                    CancelFlag::default(),
                )
            });
            for out in futures::executor::block_on(futures::future::join_all(jobs)) {
                drop(out.unwrap());
            }
        });
    }
}

fn main() {
    let assets = std::env::var_os("FLEETMESH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets")));
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);

    let digits = Digits::embedded().unwrap();
    let img = vec![8u8; 64];
    let batch: Vec<&[u8]> = vec![img.as_slice(); 64];
    case("digits", 1, secs, || drop(digits.run_batch(&batch[..1]).unwrap()));
    case("digits", 64, secs, || drop(digits.run_batch(&batch).unwrap()));

    match (
        MnistCnn::from_assets(&assets).unwrap(),
        mnist::eval_images(&assets).unwrap(),
    ) {
        (Some(model), Some(images)) => {
            let refs: Vec<&[u8]> = images.iter().take(64).map(|(x, _)| x.as_slice()).collect();
            case("mnist-cnn", 1, secs, || {
                drop(model.run_batch(&refs[..1]).unwrap())
            });
            case("mnist-cnn", 64, secs, || drop(model.run_batch(&refs).unwrap()));
            // burn's stock forward on the flex backend, same weights and images (the packed forward's
            // reference, measured in the same run).
            case("mnist-flex", 1, secs, || {
                drop(model.run_batch_burn(&refs[..1]).unwrap())
            });
            case("mnist-flex", 64, secs, || {
                drop(model.run_batch_burn(&refs).unwrap())
            });
            executor_cases(Arc::new(model), &refs, secs);
        }
        _ => println!("SKIPPED mnist-cnn: run scripts/fetch-assets.sh mnist"),
    }
    match MiniLm::from_assets(&assets).unwrap() {
        Some(model) => {
            let texts: Vec<&[u8]> = SENTENCES.lines().cycle().take(32).map(str::as_bytes).collect();
            let mut i = 0;
            case("minilm", 1, secs, || {
                i = (i + 1) % texts.len();
                drop(model.run_batch(&texts[i..i + 1]).unwrap())
            });
            case("minilm", 32, secs, || drop(model.run_batch(&texts).unwrap()));
            case("minilm-flex", 1, secs, || {
                i = (i + 1) % texts.len();
                drop(model.run_batch_burn(&texts[i..i + 1]).unwrap())
            });
            case("minilm-flex", 32, secs, || {
                drop(model.run_batch_burn(&texts).unwrap())
            });
            executor_cases(Arc::new(model), &texts, secs);
        }
        None => println!("SKIPPED minilm: run scripts/fetch-assets.sh minilm"),
    }
}
