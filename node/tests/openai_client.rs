//! The official `openai` Python client (scripts/client-venv.sh installs it into .venv-clients) against the
//! OpenAI-compatible `/v1/chat/completions` of a node of a 3-node fleet: a plain and a streamed completion
//! give the same text as `fleetmesh infer` on the same message. Skips with a printed reason when the
//! smollm2 asset or the client's virtualenv is absent (fails instead when `CI=true`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use fleetmesh_node::demo::Fleet;
use fleetmesh_node::inference::Registry;
use fleetmesh_node::inference::smollm2::SmolLm2;
use fleetmesh_node::jobs::{JobsConfig, WorkerBehaviour};

const MESSAGE: &str = "What is the capital of France?";
const MAX_TOKENS: &str = "12";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_gets_the_text_fleetmesh_infer_prints() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let assets = std::env::var_os("FLEETMESH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("assets"));
    let python = root.join(".venv-clients/bin/python");
    let Some(model) = SmolLm2::from_assets(&assets).unwrap() else {
        fleetmesh_node::testkit::skip_unless_ci(&format!(
            "smollm2 asset not in {} (run scripts/fetch-assets.sh smollm2)",
            assets.display()
        ));
        return;
    };
    if !python.exists() {
        fleetmesh_node::testkit::skip_unless_ci(&format!(
            "{} missing (run scripts/client-venv.sh)",
            python.display()
        ));
        return;
    }
    let infer = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmesh"))
        .args([
            "infer",
            "--model",
            "smollm2",
            "--prompt",
            MESSAGE,
            "--max-tokens",
            MAX_TOKENS,
        ])
        .arg("--assets")
        .arg(&assets)
        .output()
        .unwrap();
    assert!(
        infer.status.success(),
        "{}",
        String::from_utf8_lossy(&infer.stderr)
    );
    let expected = String::from_utf8(infer.stdout).unwrap();
    let expected = expected.strip_suffix('\n').unwrap_or(&expected).to_string();
    println!("fleetmesh infer: {expected:?}");

    let registry = Registry::default();
    registry.insert(Arc::new(model));
    let settings = JobsConfig {
        step_timeout_ms: 120_000,
        deadline_ms: 300_000,
        ..JobsConfig::default()
    };
    let fleet = Fleet::start_custom(registry, vec![WorkerBehaviour::Honest; 3], None, settings)
        .await
        .unwrap();
    let (api, token) = (fleet.submitter_api(), fleet.submitter_token());
    let script = root.join("scripts/openai_client_check.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(["--api", &api.to_string(), "--token", &token, "--message", MESSAGE])
            .args(["--max-tokens", MAX_TOKENS])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    fleet.stop().await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("openai client: {reply}");
    assert_eq!(reply["plain"], expected.as_str());
    assert_eq!(reply["stream"], expected.as_str());
    // Streamed as the worker generated it (its partials), not in one piece after the verdict.
    assert!(reply["stream_pieces"].as_u64().unwrap() >= 2, "{reply}");
    assert_eq!(reply["fleetmesh"]["state"], "accepted");
    assert!(reply["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}
