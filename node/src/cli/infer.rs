//! `fleetmesh infer`: one local inference on an installed model, printed per row (class and logits, with
//! the accuracy when the input is labelled), for minilm per sentence (embedding and cosine similarity), and
//! for smollm2 as text streamed to the terminal token by token.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fleetmesh_node::inference::executor::{Executor, ExecutorConfig};
use fleetmesh_node::inference::smollm2::{self, SmolLm2};
use fleetmesh_node::inference::{self, Prompt, Registry, digits, mnist};
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
    #[arg(long, required_unless_present = "prompt")]
    input: Option<PathBuf>,
    /// smollm2: the user's message (sent through the chat template unless --raw).
    #[arg(long, conflicts_with = "input")]
    prompt: Option<String>,
    /// smollm2: most new tokens (1-512).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=512))]
    max_tokens: u16,
    /// smollm2: continue the prompt as plain text instead of answering it as a chat message.
    #[arg(long)]
    raw: bool,
    /// smollm2: sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// smollm2: candidates considered when sampling (with --temperature).
    #[arg(long, default_value_t = 40)]
    top_k: u16,
    /// smollm2: seed of the sampling draws (with --temperature).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `--model` on `--input` (or `--prompt`) with the models installed under `assets`.
pub(crate) fn run(assets: &Path, args: InferArgs) -> anyhow::Result<()> {
    if args.model == smollm2::NAME {
        return generate(assets, &args);
    }
    let Some(input) = &args.input else {
        anyhow::bail!(
            "--prompt is for smollm2; model '{}' reads --input FILE",
            args.model
        );
    };
    infer(assets, &args.model, input)
}

/// `fleetmesh infer --model smollm2 --prompt TEXT`: generates locally and streams the text as it comes.
fn generate(assets: &Path, args: &InferArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let Some(prompt) = &args.prompt else {
        anyhow::bail!("smollm2 needs --prompt TEXT");
    };
    let Some(model) = SmolLm2::from_assets(assets)? else {
        anyhow::bail!(
            "model 'smollm2' is not installed in {} (run scripts/fetch-assets.sh smollm2)",
            assets.display()
        );
    };
    let job = model.job_for(&Prompt {
        text: prompt.clone(),
        raw: args.raw,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
    })?;
    let started = std::time::Instant::now();
    model.llama()?;
    let loaded = started.elapsed();
    let mut stream = model.tokenizer().decode_stream(false);
    let mut stdout = std::io::stdout().lock();
    let mut first = None;
    let mut failed = None;
    let out = model.generate(
        std::slice::from_ref(&job),
        |_, token| {
            first.get_or_insert_with(|| started.elapsed());
            if token == model.eos() {
                return;
            }
            match stream.step(token) {
                Ok(Some(text)) => {
                    let _ = write!(stdout, "{text}");
                    let _ = stdout.flush();
                }
                Ok(None) => {}
                Err(e) => failed = Some(e.to_string()),
            }
        },
        None,
    )?;
    let _ = writeln!(stdout);
    if let Some(e) = failed {
        anyhow::bail!("cannot decode the generated tokens: {e}");
    }
    let total = started.elapsed();
    let generated = out[0].tokens.len();
    let decode = total - first.unwrap_or(total);
    eprintln!(
        "{generated} tokens ({} prompt tokens, stop: {:?}); weights {:.2} s, first token {:.2} s, then {:.1} tokens/s",
        job.prompt.len(),
        out[0].stop,
        loaded.as_secs_f64(),
        (first.unwrap_or(total) - loaded).as_secs_f64(),
        (generated.saturating_sub(1)) as f64 / decode.as_secs_f64().max(1e-9),
    );
    Ok(())
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
        "smollm2" => anyhow::bail!("smollm2 reads --prompt TEXT, not --input"),
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
