//! Inference throughput on burn (flex + simd + rayon): mnist-cnn images/s at batch 1 and 64, minilm
//! sentences/s at batch 1 and 32. Prints one `RESULT model batch per_second` line per case for
//! scripts/bench-inference.sh, which runs PyTorch on the same weights and inputs and prints the ratios.
//!
//! `cargo bench -p fleetmesh-node --bench inference` (needs scripts/fetch-assets.sh).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use fleetmesh_node::inference::minilm::MiniLm;
use fleetmesh_node::inference::mnist::{self, MnistCnn};
use fleetmesh_node::inference::{Model, digits::Digits};

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
    if selected(model, batch) {
        println!("RESULT {model} {batch} {:.1}", measure(batch, secs, call));
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
        }
        None => println!("SKIPPED minilm: run scripts/fetch-assets.sh minilm"),
    }
}
