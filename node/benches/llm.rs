//! SmolLM2-135M-Instruct generation speed on the packed llama forward jobs run: tokens/s at batch 1 and 8
//! (greedy, 64 new tokens after each chat prompt of scripts/bench-llm-prompts.txt, end of turn ignored so
//! every sequence decodes the same count), and the teacher-forced check's time as a fraction of generating
//! the same tokens. Prints `RESULT smollm2 batch tokens_per_s` lines and `RESULT verify 1 fraction` for
//! scripts/bench-llm.sh, which runs PyTorch (transformers) on the same weights and prompts.
//!
//! `cargo bench -p fleetmesh-node --bench llm` (needs scripts/fetch-assets.sh smollm2).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use fleetmesh_node::inference::smollm2::{GenerationJob, Sampling, SmolLm2, StopRule};

/// The prompts both sides generate from (scripts/bench_llm_torch.py reads the same file).
const PROMPTS: &str = include_str!("../../scripts/bench-llm-prompts.txt");
/// New tokens per sequence.
const NEW: u16 = 64;

fn main() {
    let dir = std::env::var_os("FLEETMESH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets")));
    let Some(model) = SmolLm2::from_assets(&dir).unwrap() else {
        eprintln!(
            "smollm2 not in {} (run scripts/fetch-assets.sh smollm2)",
            dir.display()
        );
        std::process::exit(1);
    };
    let started = Instant::now();
    model.llama().unwrap();
    eprintln!("weights loaded in {:.2} s", started.elapsed().as_secs_f64());
    let jobs: Vec<GenerationJob> = PROMPTS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|p| GenerationJob {
            prompt: model.chat_ids(p).unwrap(),
            max_new: NEW,
            stop: StopRule::MaxTokens,
            sampling: Sampling::Greedy,
        })
        .collect();
    // Warm-up (page in the weights, grow the allocator's pools).
    model.generate(&jobs[..1], |_, _| {}, None).unwrap();
    for batch in [1, 8] {
        let batch_jobs = &jobs[..batch];
        let start = Instant::now();
        let out = model.generate(batch_jobs, |_, _| {}, None).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let tokens: usize = out.iter().map(|g| g.tokens.len()).sum();
        if batch == 1 {
            let start = Instant::now();
            model.check(&batch_jobs[0], &out[0]).unwrap();
            let check = start.elapsed().as_secs_f64();
            eprintln!(
                "teacher-forced check of {tokens} tokens: {check:.3} s vs {secs:.3} s to generate them"
            );
            println!("RESULT verify 1 {:.4}", check / secs);
        }
        eprintln!("batch {batch}: {tokens} tokens in {secs:.2} s");
        println!("RESULT smollm2 {batch} {:.2}", tokens as f64 / secs);
    }
}
