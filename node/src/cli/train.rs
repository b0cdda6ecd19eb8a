//! `fleetmesh train-digits`: trains the embedded digits model from the committed data set and writes its
//! weights, reporting each epoch on stderr.

use std::path::PathBuf;

#[cfg(feature = "train")]
use anyhow::Context;
#[cfg(feature = "train")]
use fleetmesh_node::inference::digits;

#[derive(Debug, clap::Args)]
#[cfg_attr(not(feature = "train"), allow(dead_code))]
pub(crate) struct TrainDigitsArgs {
    /// Where to write the safetensors weights.
    #[arg(long, default_value = "node/assets/digits/digits-cnn.safetensors")]
    out: PathBuf,
    /// Training epochs.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Random seed (initialisation and shuffling).
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Without the `train` feature: says how to get a build that trains.
#[cfg(not(feature = "train"))]
pub(crate) fn run(_args: TrainDigitsArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "this fleetmesh was built without training; run `cargo run --release --features train -- train-digits`"
    )
}

/// Trains, writes the weights to `--out` and prints the held-out accuracy.
#[cfg(feature = "train")]
pub(crate) fn run(args: TrainDigitsArgs) -> anyhow::Result<()> {
    let TrainDigitsArgs { out, epochs, seed } = args;
    let (weights, accuracy) = digits::train(epochs, seed, |epoch, loss, acc| {
        eprintln!(
            "epoch {epoch:>3}/{epochs}  loss {loss:.4}  held-out accuracy {:.2}%",
            acc * 100.0
        );
    })?;
    std::fs::write(&out, &weights).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "wrote {} ({} bytes), held-out accuracy {:.2}%",
        out.display(),
        weights.len(),
        accuracy * 100.0
    );
    Ok(())
}
