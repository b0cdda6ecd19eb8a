//! `fleetmesh submit`: jobs through a running node's local API, one per input row (or line of text), and a
//! line per job with its state and result.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fleetmesh_node::inference::{self, digits, mnist};
use fleetmesh_node::{client, input};

#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// Model name (see `fleetmesh models`).
    #[arg(long)]
    model: String,
    /// Input file: CSV rows or a PNG for image models, one sentence per line for minilm.
    #[arg(long, required_unless_present = "prompt")]
    input: Option<PathBuf>,
    /// smollm2: the user's message, answered through the chat template (one job).
    #[arg(long, conflicts_with = "input")]
    prompt: Option<String>,
    /// smollm2: most new tokens (1-512).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=512))]
    max_tokens: u16,
    /// Agreeing workers required per job [default: the node chooses by the workers' reputation
    /// (adaptive replication)].
    #[arg(long)]
    replicas: Option<u8>,
    /// Wait for each job's verdict and print it.
    #[arg(long)]
    wait: bool,
    /// The node's local API.
    #[arg(long, default_value = "127.0.0.1:7700")]
    api: std::net::SocketAddr,
    /// The node's API token file [default: HOME/api.token].
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Idempotency key: row N is submitted with key `KEY-N`, so running the same command again (after
    /// a dropped connection, say) returns the jobs already submitted instead of submitting new ones.
    #[arg(long)]
    key: Option<String>,
}

/// Submits one job per input and prints each job's id, state and result.
pub(crate) fn run(home: &Path, args: SubmitArgs) -> anyhow::Result<()> {
    let token_file = args.token_file.clone().unwrap_or_else(|| home.join("api.token"));
    // Without a readable token the node refuses; its answer then says why, with the reason here.
    let token = fleetmesh_node::keyfile::load_token(&token_file);
    let result = submit(&args, token.as_ref().ok().map(String::as_str));
    match (result, token) {
        (Err(e), Err(why)) if matches!(e.downcast_ref(), Some(client::ClientError::Refused(_))) => {
            Err(anyhow::anyhow!(
                "{e} (the API token could not be read: {why}; pass the node's --home or --token-file, as the user \
             who runs the node)"
            ))
        }
        (result, _) => result,
    }
}

/// Submits `model` jobs from `input`; `replicas` none lets the node choose by reputation.
fn submit(args: &SubmitArgs, token: Option<&str>) -> anyhow::Result<()> {
    let SubmitArgs {
        model,
        input,
        prompt,
        max_tokens,
        replicas,
        wait,
        api,
        key,
        ..
    } = args;
    let (model, replicas, wait, api) = (model.as_str(), *replicas, *wait, *api);
    let bodies: Vec<serde_json::Value> = match (input, prompt) {
        (_, Some(prompt)) => vec![serde_json::json!({
            "model": model, "prompt": prompt, "max_tokens": max_tokens, "replicas": replicas, "wait": wait
        })],
        (Some(input), None) => bodies(model, input, replicas, wait)?,
        (None, None) => anyhow::bail!("give --input FILE (or --prompt TEXT for smollm2)"),
    };
    for (i, mut body) in bodies.into_iter().enumerate() {
        if let Some(key) = key {
            body["key"] = format!("{key}-{i}").into();
        }
        let (_, view) = client::call_with_token(
            api,
            "POST",
            "/v1/jobs",
            Some(&body),
            std::time::Duration::from_secs(300),
            token,
        )?;
        let job = view["job"].as_str().unwrap_or("?");
        let state = view["state"].as_str().unwrap_or("?");
        let detail = match (view["text"].as_str(), view["values"].as_array()) {
            (Some(text), _) => format!("{text:?}"),
            (None, Some(v)) if v.len() == 10 => {
                let values: Vec<f32> = v.iter().map(|x| x.as_f64().unwrap_or(f64::MIN) as f32).collect();
                format!("class {}", inference::argmax(&values))
            }
            (None, Some(v)) => format!("{} values", v.len()),
            (None, None) => view["reason"].as_str().unwrap_or("").to_string(),
        };
        println!(
            "row {i}: job {job} {state} {detail} receipts {}",
            view["receipts"]
        );
    }
    Ok(())
}

/// The request bodies of `model` jobs read from `input`: one per image row or line of text.
fn bodies(
    model: &str,
    input: &Path,
    replicas: Option<u8>,
    wait: bool,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let bodies: Vec<serde_json::Value> = match model {
        "digits" | "mnist-cnn" => {
            let (pixels, side, max) = if model == "digits" {
                (digits::PIXELS, 8, digits::MAX_PIXEL)
            } else {
                (mnist::PIXELS, 28, 255)
            };
            input::read_images(input, pixels, side, max)?
                .into_iter()
                .map(|(x, _)| serde_json::json!({ "model": model, "input": x, "replicas": replicas, "wait": wait }))
                .collect()
        }
        _ => std::fs::read_to_string(input)
            .with_context(|| format!("cannot read {}", input.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::json!({ "model": model, "text": l, "replicas": replicas, "wait": wait }))
            .collect(),
    };
    anyhow::ensure!(!bodies.is_empty(), "{}: no inputs", input.display());
    Ok(bodies)
}
