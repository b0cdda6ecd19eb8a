//! SmolLM2 generations verified by a fleet: five real libp2p nodes on loopback in this process (one
//! submits, four work, one of them changes one token of every generation it returns). Ten prompts are
//! verified with two agreeing replicas (Exact rule), every accepted output equals local generation, the
//! lying worker is out-voted, receipts are issued, and the teacher-forced check catches the one-token lie.
//! Skips with a printed reason when the asset is absent (fails instead when `CI=true`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleetmesh_consensus::job::Outcome;
use fleetmesh_node::demo::Fleet;
use fleetmesh_node::inference::smollm2::{Generation, GenerationJob, SmolLm2};
use fleetmesh_node::inference::{Model, Prompt, Registry};
use fleetmesh_node::jobs::{JobsConfig, WorkerBehaviour};

const PROMPTS: [&str; 10] = [
    "What is the capital of France?",
    "Name a colour of the sky.",
    "What is 3 times 4?",
    "Say hello in Spanish.",
    "What do bees make?",
    "Name a planet.",
    "What is the opposite of hot?",
    "How many days are in a week?",
    "What animal barks?",
    "Name a fruit that is yellow.",
];
/// Credit per generated token (the fleet's default price per unit of work), in micro-credits.
const PRICE: u64 = 1_000;
/// New tokens per job: short answers keep the test well under a minute.
const MAX_TOKENS: u16 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_verifies_generations_and_out_votes_a_worker_that_changes_one_token() {
    let dir = std::env::var_os("FLEETMESH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets")));
    let Some(model) = SmolLm2::from_assets(&dir).unwrap() else {
        fleetmesh_node::testkit::skip_unless_ci(&format!(
            "smollm2 asset not in {} (run scripts/fetch-assets.sh smollm2)",
            dir.display()
        ));
        return;
    };
    let model = Arc::new(model);
    let registry = Registry::default();
    registry.insert(model.clone());
    let mut behaviours = vec![WorkerBehaviour::Honest; 4];
    behaviours.push(WorkerBehaviour::WrongToken);
    // Generations take seconds, not milliseconds: room to commit and reveal behind a queue of them.
    let settings = JobsConfig {
        step_timeout_ms: 120_000,
        deadline_ms: 300_000,
        ..JobsConfig::default()
    };
    let fleet = Fleet::start_custom(registry, behaviours, None, settings.clone())
        .await
        .unwrap();
    let liar = *fleet.node_ids().last().unwrap();
    let submitter = fleet.submitter();
    let inputs: Vec<Vec<u8>> = PROMPTS
        .iter()
        .map(|p| model.prompt_input(&Prompt::chat(p, MAX_TOKENS)).unwrap().unwrap())
        .collect();
    let mut waits = Vec::new();
    for input in &inputs {
        let (jobs, input, id) = (submitter.clone(), input.clone(), model.id());
        waits.push(tokio::spawn(async move {
            let job = jobs.submit(id, input, 2).await?;
            jobs.wait(job).await
        }));
    }
    let results = tokio::time::timeout(Duration::from_secs(240), async {
        let mut out = Vec::new();
        for w in waits {
            out.push(w.await.unwrap().unwrap());
        }
        out
    })
    .await
    .expect("10 generation jobs not verified within 240 s");

    let jobs: Vec<GenerationJob> = inputs
        .iter()
        .map(|i| GenerationJob::decode(i, model.config().vocab).unwrap())
        .collect();
    let local = model.generate(&jobs, |_, _| {}, None).unwrap();
    let mut receipts = 0;
    // Credit per token: each agreeing worker is paid the price times the tokens it generated.
    let mut credit_due = 0;
    for ((result, expected), prompt) in results.iter().zip(&local).zip(PROMPTS) {
        let Outcome::Accepted { output, agreeing, .. } = &result.outcome else {
            panic!("{prompt:?}: {:?}", result.outcome);
        };
        let generation = Generation::decode(output).unwrap();
        println!(
            "{prompt:?} -> {:?} ({} workers assigned, {} receipts)",
            model.output_text(output).unwrap(),
            result.workers_assigned,
            result.receipts
        );
        assert_eq!(
            &generation, expected,
            "{prompt:?}: the fleet's output differs from local generation"
        );
        assert!(
            !agreeing.contains(&liar),
            "{prompt:?}: the lying worker is among the agreeing"
        );
        assert!(agreeing.len() >= 2);
        receipts += result.receipts;
        credit_due += agreeing.len() as u64 * PRICE * generation.tokens.len() as u64;
    }
    let paid: u64 = submitter.earnings().values().map(|e| e.credit).sum();
    println!("credit paid {paid} µc for the verified tokens ({credit_due} µc due at {PRICE} µc a token)");
    assert_eq!(paid, credit_due, "receipts do not credit per token");
    assert!(
        receipts >= 2 * PROMPTS.len(),
        "{receipts} receipts for 10 jobs of 2 replicas"
    );
    let record = submitter.reputation_of(&liar);
    println!("the lying worker: {record:?}");
    assert!(
        record.invalid > 0,
        "the lying worker was never out-voted (never assigned?)"
    );
    // Jobs of two replicas are verified by agreement: the submitter's own check is for outputs a verdict
    // would rest on alone (see the test of replicas 1 below).
    assert_eq!(fleet.submitter_metrics().refuted.get(), 0);

    // The same lie, caught without a second generation: one teacher-forced pass over the prompt and output.
    let mut lie = local[0].clone();
    lie.tokens[0] ^= 1;
    assert!(
        model.check(&jobs[0], &lie).is_err(),
        "the teacher-forced check accepted a changed token"
    );
    model.check(&jobs[0], &local[0]).unwrap();

    // The OpenAI-compatible chat API of the submitting node: the same verified answer, plain and streamed.
    let (api, token) = (fleet.submitter_api(), fleet.submitter_token());
    let body = serde_json::json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "max_tokens": MAX_TOKENS,
    });
    let expected = model.output_text(&local[0].encode()).unwrap();
    let (plain, streamed, job_stream) = tokio::task::spawn_blocking(move || {
        let plain = post(api, &token, "/v1/chat/completions", &body);
        let mut stream = body;
        stream["stream"] = true.into();
        let streamed = post(api, &token, "/v1/chat/completions", &stream);
        let job = serde_json::json!({
            "model": "smollm2", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "stream": true
        });
        (plain, streamed, post(api, &token, "/v1/jobs", &job))
    })
    .await
    .unwrap();
    let (head, json) = plain.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{plain}");
    let reply: serde_json::Value = serde_json::from_str(json).unwrap();
    println!("chat completion: {reply}");
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["choices"][0]["message"]["content"], expected.as_str());
    assert_eq!(reply["usage"]["completion_tokens"], local[0].tokens.len());
    assert_eq!(reply["fleetmesh"]["state"], "accepted");
    assert!(!reply["fleetmesh"]["receipt_ids"].as_array().unwrap().is_empty());
    let (head, events) = streamed.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("text/event-stream"), "{head}");
    let events = dechunk(head, events);
    let chunks: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .collect();
    let deltas: Vec<String> = chunks
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str().map(String::from))
        .filter(|d| !d.is_empty())
        .collect();
    println!("streamed chat deltas: {deltas:?}");
    assert_eq!(deltas.concat(), expected);
    // More than one piece: text arrived from the worker's partials before the verdict's rest.
    assert!(deltas.len() >= 2, "the text came in one piece: {deltas:?}");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["fleetmesh"]["state"], "accepted");
    assert_eq!(last["fleetmesh"]["streamed_text_verified"], true);
    assert!(events.trim_end().ends_with("data: [DONE]"));

    // POST /v1/jobs with "stream": true: token events, then the verdict.
    let (head, events) = job_stream.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{job_stream}");
    let events = dechunk(head, events);
    let mut tokens = String::new();
    let mut verdict = None;
    let mut kind = "";
    for line in events.lines() {
        if let Some(k) = line.strip_prefix("event: ") {
            kind = if k == "token" { "token" } else { "verdict" };
        } else if let Some(data) = line.strip_prefix("data: ") {
            let value: serde_json::Value = serde_json::from_str(data).unwrap();
            match kind {
                "token" => tokens.push_str(value["text"].as_str().unwrap()),
                _ => verdict = Some(value),
            }
        }
    }
    let verdict = verdict.expect("no verdict event");
    assert_eq!(tokens, expected);
    assert_eq!(verdict["state"], "accepted");
    assert_eq!(verdict["text"], expected.as_str());
    assert_eq!(verdict["streamed_text_verified"], true);
    fleet.stop().await;

    // One replica asked for: the verdict would rest on one worker's word, so the submitter, which has the
    // model, scores the output itself. Two workers, one changing a token: each job it draws is refuted
    // and runs again on the other worker; no changed answer is accepted.
    let behaviours = vec![
        WorkerBehaviour::Honest,
        WorkerBehaviour::WrongToken,
        WorkerBehaviour::Honest,
    ];
    let registry = Registry::default();
    registry.insert(model.clone());
    let fleet = Fleet::start_custom(registry, behaviours, None, settings)
        .await
        .unwrap();
    let liar = fleet.node_ids()[1];
    let submitter = fleet.submitter();
    for (input, expected) in inputs.iter().zip(&local).take(8) {
        let job = submitter.submit(model.id(), input.clone(), 1).await.unwrap();
        let result = tokio::time::timeout(Duration::from_secs(120), submitter.wait(job))
            .await
            .expect("a job of one replica not decided within 120 s")
            .unwrap();
        let Outcome::Accepted { output, agreeing, .. } = &result.outcome else {
            panic!("{:?}", result.outcome);
        };
        assert_eq!(&Generation::decode(output).unwrap(), expected);
        assert!(!agreeing.contains(&liar));
        assert!(result.unverified);
    }
    let refuted = fleet.submitter_metrics().refuted.get();
    let record = submitter.reputation_of(&liar);
    println!("one replica: {refuted} outputs refuted by the submitter's check; the lying worker: {record:?}");
    // It is drawn at random among the two until refuted (then it is on probation and no longer drawn).
    assert!(refuted >= 1, "the lying worker was never drawn");
    assert_eq!(record.invalid, refuted);
    fleet.stop().await;
}

/// The body of a response with `Transfer-Encoding: chunked`, put back together (other bodies as they are).
fn dechunk(head: &str, body: &str) -> String {
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_string();
    }
    let (mut out, mut rest) = (Vec::new(), body.as_bytes());
    while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&rest[end + 2..end + 2 + size]);
        rest = &rest[end + 2 + size + 2..];
    }
    String::from_utf8(out).unwrap()
}

/// A plain HTTP/1.1 POST of JSON with the API token; the whole response (head and body) as text.
fn post(api: std::net::SocketAddr, token: &str, path: &str, body: &serde_json::Value) -> String {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}
