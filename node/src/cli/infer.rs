//! `fleetmesh infer`: one local inference on an installed model, printed per row (class and logits, with
//! the accuracy when the input is labelled) or, for minilm, per sentence (embedding and cosine similarity).

use std::path::{Path, PathBuf};

use anyhow::Context;
use fleetmesh_node::inference::executor::{Executor, ExecutorConfig};
use fleetmesh_node::inference::{self, Registry, digits, mnist};
use fleetmesh_node::input;

#[derive(Debug, clap::Args)]
pub(crate) struct InferArgs {
    /// Model name (see `fleetmesh models`).
    #[arg(long)]
    model: String,
    /// Input file. Image models: CSV rows (the model's pixel count of integers, 0..=16 for digits and
    /// 0..=255 for mnist-cnn, optionally followed by a label), or one PNG of the model's size (8x8 or
    /// 28x28) of any colour type and bit depth: read as a bright digit on a dark background (an image with
    /// a light border is inverted; in an image with transparency, a quarter of it or more not fully
    /// opaque, the opaque strokes are the digit).
    /// minilm: one sentence per line.
    #[arg(long)]
    input: PathBuf,
}

/// Runs `--model` on `--input` with the models installed under `assets`.
pub(crate) fn run(assets: &Path, args: InferArgs) -> anyhow::Result<()> {
    infer(assets, &args.model, &args.input)
}

/// `fleetmesh infer --model minilm`: one sentence per line; prints each embedding's first values and the
/// cosine similarity of consecutive sentences.
fn embed_texts(registry: &Registry, id: fleetmesh_protocol::ModelId, input: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(input).with_context(|| format!("cannot read {}", input.display()))?;
    let lines: Vec<Vec<u8>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    anyhow::ensure!(!lines.is_empty(), "{}: no text lines", input.display());
    let executor = Executor::start(registry.clone(), ExecutorConfig::default());
    let out = executor.run_blocking(&id, lines.clone())?;
    let vectors: Vec<Vec<f32>> = out.outputs.iter().map(|o| inference::f32s(o)).collect();
    for (i, (line, v)) in lines.iter().zip(&vectors).enumerate() {
        let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:.4}")).collect();
        println!(
            "line {i}: {} dims [{}, ...]  {:?}",
            v.len(),
            head.join(", "),
            String::from_utf8_lossy(line)
        );
    }
    for (i, pair) in vectors.windows(2).enumerate() {
        let cos: f32 = pair[0].iter().zip(&pair[1]).map(|(a, b)| a * b).sum();
        println!("cosine(line {i}, line {}) = {cos:.4}", i + 1);
    }
    Ok(())
}

/// Classifies each row of `input` with the image model `name` (minilm: embeds each line).
fn infer(assets: &Path, name: &str, input: &Path) -> anyhow::Result<()> {
    // Only the model asked for is loaded (minilm alone takes ~350 ms).
    let Some(registry) = Registry::with_one(name, assets)? else {
        let known: Vec<String> = Registry::with_defaults(Some(assets))?
            .models()
            .iter()
            .map(|m| m.manifest().name.clone())
            .collect();
        anyhow::bail!("unknown model '{name}' (installed: {})", known.join(", "));
    };
    let model = registry
        .by_name(name)
        .ok_or_else(|| anyhow::anyhow!("model '{name}' did not load"))?;
    let rows = match name {
        "digits" => input::read_images(input, digits::PIXELS, 8, digits::MAX_PIXEL)?,
        "mnist-cnn" => input::read_images(input, mnist::PIXELS, 28, 255)?,
        "minilm" => return embed_texts(&registry, model.id(), input),
        other => anyhow::bail!("no input reader for model '{other}'"),
    };
    let executor = Executor::start(registry.clone(), ExecutorConfig::default());
    let inputs: Vec<Vec<u8>> = rows.iter().map(|(x, _)| x.clone()).collect();
    let out = executor.run_blocking(&model.id(), inputs)?;
    let mut correct = 0;
    for (i, (output, (_, label))) in out.outputs.iter().zip(&rows).enumerate() {
        let logits = inference::f32s(output);
        let class = inference::argmax(&logits);
        let rounded: Vec<String> = logits.iter().map(|v| format!("{v:.3}")).collect();
        match label {
            Some(l) => {
                correct += usize::from(class == usize::from(*l));
                println!(
                    "row {i}: class {class} (label {l})  logits [{}]",
                    rounded.join(", ")
                );
            }
            None => println!("row {i}: class {class}  logits [{}]", rounded.join(", ")),
        }
    }
    if rows.iter().any(|(_, l)| l.is_some()) {
        println!(
            "accuracy {}/{} in {:.1} ms",
            correct,
            rows.len(),
            out.compute.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
