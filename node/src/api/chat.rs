//! The OpenAI-compatible chat API (`POST /v1/chat/completions`) and the streaming answers of text
//! generation: a job's text as its first streaming worker produces it (from the [`Partial`]s the worker
//! sends), then the verified rest and the verdict, as server-sent events.
//!
//! [`Partial`]: fleetmesh_protocol::messages::Partial

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use fleetmesh_protocol::JobId;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{
    ApiState, DEFAULT_MAX_TOKENS, error, prompt_input, submit_failed, unauthorized, view_off_thread,
};
use crate::inference::Model;
use crate::inference::smollm2::{Generation, StopReason};
use crate::jobs::JobView;

/// One message of a chat (`POST /v1/chat/completions`).
#[derive(Debug, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message's text.
    pub content: String,
}

/// `POST /v1/chat/completions` body: the OpenAI chat-completions request, as far as a fleet job can
/// honour it (other fields are accepted and ignored, as OpenAI-compatible servers do).
#[derive(Debug, serde::Deserialize)]
pub struct ChatRequest {
    /// Model name (`smollm2`).
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Most new tokens (1-512, default 128).
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<u16>,
    /// Sampling temperature (default 0: greedy, so independent cars reproduce each other bit for bit).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Seed of the sampling draws.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
}

/// Most messages of one chat request, and bytes of one message.
const MAX_CHAT_MESSAGES: usize = 64;
const MAX_CHAT_MESSAGE: usize = 32 * 1024;

/// `POST /v1/chat/completions`: the OpenAI-compatible chat API. The conversation runs as one verified
/// fleet job (adaptive replication); the answer is the accepted output, and the `fleetmesh` field carries
/// the job id, verdict, agreeing workers and receipt ids. With `stream: true` the text comes as server-sent
/// `chat.completion.chunk` events while the job's first streaming worker generates it, then the verified
/// rest; see [`chat_stream`] for what ends the stream.
pub(super) async fn chat_completions(
    State(s): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: Result<Json<ChatRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(denied) = unauthorized(&s, &headers) {
        return denied;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if req.model != crate::inference::smollm2::NAME {
        return error(
            StatusCode::NOT_FOUND,
            format!("model '{}' has no chat (try 'smollm2')", req.model),
        );
    }
    let Some(model) = s.jobs.registry().by_name(&req.model) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("model '{}' is not installed here", req.model),
        );
    };
    let roles_ok = req.messages.iter().all(|m| {
        matches!(m.role.as_str(), "system" | "user" | "assistant") && m.content.len() <= MAX_CHAT_MESSAGE
    });
    if req.messages.is_empty() || req.messages.len() > MAX_CHAT_MESSAGES || !roles_ok {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "'messages' must hold 1 to {MAX_CHAT_MESSAGES} messages of role system, user or assistant, each \
                 at most {MAX_CHAT_MESSAGE} bytes"
            ),
        );
    }
    let turns: Vec<(&str, &str)> = req
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    // (A greedy job, temperature 0, has no top-k: `job_for` leaves it out.)
    let prompt = crate::inference::Prompt {
        text: crate::inference::smollm2::chat_prompt(&turns),
        raw: true,
        max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        temperature: req.temperature.unwrap_or(0.0),
        top_k: 40,
        seed: req.seed.unwrap_or(0),
    };
    let input = match prompt_input(model.as_ref(), &prompt) {
        Ok(input) => input,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let prompt_tokens = crate::inference::smollm2::GenerationJob::decode(&input, usize::MAX)
        .map(|j| j.prompt.len())
        .unwrap_or(0);
    let job = match s.jobs.submit_auto(model.id(), input).await {
        Ok(job) => job,
        Err(e) => return submit_failed(e),
    };
    let id = format!("chatcmpl-{job}");
    let created = crate::clock::now_ms() / 1000;
    if req.stream {
        return chat_stream(follow(s, model, job), id, created, req.model);
    }
    if let Err(e) = s.jobs.wait(job).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    let Some(view) = view_off_thread(&s, job).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "job vanished");
    };
    let (Some(generation), Some(text)) = (generation_of(&view), view.text.clone()) else {
        return error(
            StatusCode::BAD_GATEWAY,
            format!(
                "the fleet gave no verified answer: {}",
                view.reason.as_deref().unwrap_or(view.state)
            ),
        );
    };
    let completion = generation.tokens.len();
    Json(serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason(&view),
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        },
        "fleetmesh": fleet_field(&view),
    }))
    .into_response()
}

/// The accepted generation of a job's view, if it has one.
fn generation_of(view: &JobView) -> Option<Generation> {
    let output = hex::decode(view.output_hex.as_ref()?).ok()?;
    Generation::decode(&output).ok()
}

/// Why the generation stopped, as OpenAI names it (`stop` when the job has no accepted generation).
fn finish_reason(view: &JobView) -> &'static str {
    match generation_of(view).map(|g| g.stop) {
        Some(StopReason::MaxTokens) => "length",
        _ => "stop",
    }
}

/// The `fleetmesh` field of a chat answer: the job, its verdict, the agreeing workers and the receipts.
fn fleet_field(view: &JobView) -> serde_json::Value {
    serde_json::json!({
        "job": view.job,
        "state": view.state,
        "unverified": view.unverified,
        "agreeing": view.agreeing,
        "receipt_ids": view.receipt_ids,
        "reason": view.reason,
    })
}

/// What a streaming answer carries.
pub(super) enum Streamed {
    /// The job was offered.
    Start,
    /// More text: from the first streaming worker while it runs, then the verified rest.
    Text(String),
    /// The job's end: its view (none if it vanished), and whether the job was accepted with a text that
    /// continues the text streamed before the verdict (it does not when the job failed, or when the
    /// streaming worker was out-voted).
    Done {
        /// The job's view at the verdict.
        view: Option<Box<JobView>>,
        /// The verified text starts with everything streamed.
        continues: bool,
    },
}

/// Follows a submitted generation job: its first streaming worker's text as it grows, then the verified
/// rest and the verdict. Stops following early when the receiver is dropped (the client left).
pub(super) fn follow(s: ApiState, model: Arc<dyn Model>, job: JobId) -> mpsc::Receiver<Streamed> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut sent = String::new();
        if tx.send(Streamed::Start).await.is_err() {
            return;
        }
        let mut partials = s.jobs.follow_partials(job);
        {
            let wait = s.jobs.wait(job);
            tokio::pin!(wait);
            loop {
                let next = async {
                    match partials.as_mut() {
                        Some(rx) => rx.changed().await.ok().map(|()| rx.borrow_and_update().clone()),
                        None => std::future::pending().await,
                    }
                };
                let latest = tokio::select! {
                    _ = &mut wait => break,
                    latest = next => latest,
                };
                let Some(latest) = latest else {
                    partials = None;
                    continue;
                };
                let Some(text) = latest.and_then(|(_, out)| model.output_text(&out)) else {
                    continue;
                };
                // A character cut between two tokens decodes as U+FFFD until its last byte comes.
                let stable = text.trim_end_matches('\u{fffd}');
                if stable.len() > sent.len() && stable.starts_with(sent.as_str()) {
                    let delta = stable[sent.len()..].to_string();
                    sent = stable.to_string();
                    if tx.send(Streamed::Text(delta)).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(partials);
        s.jobs.unfollow_partials(&job);
        let view = view_off_thread(&s, job).await;
        let accepted = view
            .as_ref()
            .is_some_and(|v| matches!(v.state, "accepted" | "revised"));
        let verified = view.as_ref().and_then(|v| v.text.clone()).unwrap_or_default();
        let continues = accepted && verified.starts_with(sent.as_str());
        if continues && verified.len() > sent.len() {
            let _ = tx.send(Streamed::Text(verified[sent.len()..].to_string())).await;
        }
        let _ = tx
            .send(Streamed::Done {
                view: view.map(Box::new),
                continues,
            })
            .await;
    });
    rx
}

/// A server-sent-events response of what `rx` carries, each item made into events by `events`.
pub(super) fn sse(
    rx: mpsc::Receiver<Streamed>,
    events: impl Fn(Streamed) -> Vec<Event> + Send + 'static,
) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
        .flat_map(move |m| futures::stream::iter(events(m).into_iter().map(Ok::<_, Infallible>)));
    Sse::new(stream).into_response()
}

/// The streamed chat answer: `chat.completion.chunk` events (the role, then text as it comes), a last
/// chunk with the finish reason and the `fleetmesh` field (its `streamed_text_verified` says whether the
/// verified text continues what was streamed), then `[DONE]`. When the job failed, or the streamed text is
/// not the verified one, an `error` event (as OpenAI sends one; its clients raise it) replaces the last
/// chunk: the client must not keep what it was shown.
fn chat_stream(rx: mpsc::Receiver<Streamed>, id: String, created: u64, model: String) -> Response {
    sse(rx, move |m| {
        let chunk = |delta: serde_json::Value, finish: Option<&str>, fleet: Option<serde_json::Value>| {
            let mut event = serde_json::json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            if let Some(fleet) = fleet {
                event["fleetmesh"] = fleet;
            }
            Event::default().data(event.to_string())
        };
        match m {
            Streamed::Start => vec![chunk(
                serde_json::json!({"role": "assistant", "content": ""}),
                None,
                None,
            )],
            Streamed::Text(text) => vec![chunk(serde_json::json!({"content": text}), None, None)],
            Streamed::Done { view, continues } => {
                let (finish, mut fleet) = match &view {
                    Some(v) => (finish_reason(v), fleet_field(v)),
                    None => ("stop", serde_json::json!({"state": "unknown"})),
                };
                fleet["streamed_text_verified"] = continues.into();
                let last = if continues {
                    chunk(serde_json::json!({}), Some(finish), Some(fleet))
                } else {
                    let message = match &view {
                        Some(v) if v.state == "accepted" || v.state == "revised" => format!(
                            "the streamed text was not verified (its worker was out-voted); the verified \
                             answer is: {}",
                            v.text.as_deref().unwrap_or("")
                        ),
                        Some(v) => format!(
                            "the fleet gave no verified answer: {}",
                            v.reason.as_deref().unwrap_or(v.state)
                        ),
                        None => "the job vanished".to_string(),
                    };
                    let error = serde_json::json!({
                        "error": {"message": message, "type": "fleetmesh_unverified", "code": null},
                        "fleetmesh": fleet,
                    });
                    Event::default().data(error.to_string())
                };
                vec![last, Event::default().data("[DONE]")]
            }
        }
    })
}

/// The streamed answer of `POST /v1/jobs` with `"stream": true`: `token` events (`{"text": ...}`) as the
/// text comes, then one `verdict` event: the job's view, with `streamed_text_verified`.
pub(super) fn job_stream(rx: mpsc::Receiver<Streamed>) -> Response {
    sse(rx, |m| match m {
        Streamed::Start => Vec::new(),
        Streamed::Text(text) => vec![
            Event::default()
                .event("token")
                .data(serde_json::json!({ "text": text }).to_string()),
        ],
        Streamed::Done { view, continues } => {
            let mut verdict = serde_json::to_value(&view).unwrap_or_default();
            if verdict.is_object() {
                verdict["streamed_text_verified"] = continues.into();
            }
            vec![Event::default().event("verdict").data(verdict.to_string())]
        }
    })
}
