//! The local HTTP API (loopback by default): status and metrics for the owner, scripts and dashboards.
//!
//! Reading is open to whoever reaches the address. Calls that change something (`POST /v1/jobs`, which
//! spends the owner's budget, and `POST /v1/vehicle`, which says whether the car may work) need the
//! node's API token as `Authorization: Bearer TOKEN`: the file `HOME/api.token` (mode 0600, created at the
//! first start), which only the owner can read. Without it they answer 401 and change nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleetmesh_protocol::NodeId;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::jobs::Jobs;
use crate::net::NetClient;

mod chat;

pub use chat::{ChatMessage, ChatRequest};

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The network task.
    pub net: NetClient,
    /// The job roles (submit and inspect jobs).
    pub jobs: Jobs,
    /// This node's id.
    pub node_id: NodeId,
    /// When the node started.
    pub started: Instant,
    /// The node's metrics registry.
    pub registry: Arc<Registry>,
    /// The node's metrics.
    pub metrics: crate::metrics::Metrics,
    /// The car this node runs on.
    pub car: crate::vehicle::Car,
    /// The token that state-changing calls must carry.
    pub token: Arc<str>,
}

/// A 401 answer unless `headers` carry `Authorization: Bearer` with the node's token (compared in
/// constant time).
fn unauthorized(s: &ApiState, headers: &axum::http::HeaderMap) -> Option<Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim)
        .unwrap_or("");
    let want = s.token.as_bytes();
    let same =
        given.len() == want.len() && given.bytes().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    (!same).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "this call needs the node's API token: send `Authorization: Bearer TOKEN`, TOKEN being the \
             content of HOME/api.token",
        )
    })
}

/// The dashboard page, embedded in the binary (no network at run time).
const DASHBOARD: &str = include_str!("dashboard.html");

/// Job counts in `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct JobCounts {
    /// Jobs this node submitted.
    pub submitted: u64,
    /// Of those, accepted by quorum.
    pub accepted: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Of those, still waiting for a verdict.
    pub pending: i64,
    /// Jobs this node computed as a worker.
    pub work_done: u64,
    /// Receipts this node holds.
    pub receipts: i64,
}

/// `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct StatusResponse {
    /// libp2p peer id.
    pub peer_id: String,
    /// fleetmesh node id (the ed25519 public key, hex).
    pub node_id: String,
    /// Node software version.
    pub version: &'static str,
    /// Listen and external addresses.
    pub listen_addrs: Vec<String>,
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Their peer ids.
    pub peers: Vec<String>,
    /// Peers in the Kademlia routing table.
    pub routing_table_peers: usize,
    /// Connected peers subscribed to every gossip topic (a published offer reaches them directly).
    pub topic_peers: usize,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Job counts.
    pub jobs: JobCounts,
    /// Names of the models this node runs.
    pub models: Vec<String>,
    /// The node's clock, ms since the Unix epoch (for rates computed by clients).
    pub now_ms: u64,
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

/// Runs `answer` on tokio's blocking threads: answers that read the store or go over every receipt
/// (ledgers, statements, a job's view) must not hold an async worker thread.
async fn off_thread(answer: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(answer)
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("answer failed: {e}")))
}

async fn status(State(s): State<ApiState>) -> Response {
    match s.net.status().await {
        Ok(n) => Json(StatusResponse {
            peer_id: n.peer_id,
            node_id: s.node_id.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            listen_addrs: n.listen_addrs,
            connected_peers: n.connected_peers,
            peers: n.peers,
            routing_table_peers: n.routing_table_peers,
            topic_peers: n.topic_peers,
            uptime_s: s.started.elapsed().as_secs(),
            jobs: job_counts(&s.jobs, &s.metrics),
            now_ms: crate::clock::now_ms(),
            models: s
                .jobs
                .registry()
                .models()
                .iter()
                .map(|m| m.manifest().name.clone())
                .collect(),
        })
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

fn job_counts(jobs: &crate::jobs::Jobs, m: &crate::metrics::Metrics) -> JobCounts {
    let c = jobs.submitted_counts();
    JobCounts {
        submitted: c.submitted,
        accepted: c.accepted,
        failed: c.failed,
        pending: i64::try_from(c.pending).unwrap_or(i64::MAX),
        work_done: m.work_done.get(),
        receipts: i64::try_from(jobs.receipt_count()).unwrap_or(i64::MAX),
    }
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn recent_jobs(State(s): State<ApiState>) -> Response {
    Json(s.jobs.recent(20)).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    off_thread(move || metrics_text(&s)).await
}

fn metrics_text(s: &ApiState) -> Response {
    // This node's balance, from the ledger of the receipts it holds (computed when scraped).
    let mine = s.jobs.earnings().get(&s.node_id).copied().unwrap_or_default();
    s.metrics.credit.set(mine.credit as i64);
    s.metrics.energy_uwh.set(mine.energy_uwh as i64);
    s.metrics.receipts.set(s.jobs.receipt_count() as i64);
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The input of a job asking `model` for a generation, or why it is refused (a client's mistake).
fn prompt_input(
    model: &dyn crate::inference::Model,
    prompt: &crate::inference::Prompt,
) -> Result<Vec<u8>, String> {
    match model.prompt_input(prompt) {
        Some(result) => result.map_err(|e| e.to_string()),
        None => Err(format!("model '{}' takes no prompt", model.manifest().name)),
    }
}

/// The answer to a submission the node could not make. What asking again cannot change is the client's
/// mistake; the rest may pass (a budget set aside by jobs in flight comes back, the mesh gets peers).
fn submit_failed(e: crate::jobs::JobsError) -> Response {
    match e {
        crate::jobs::JobsError::BadKey | crate::jobs::JobsError::Offer(_) => {
            error(StatusCode::BAD_REQUEST, e)
        }
        e => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

/// A job's view, read off the async threads (it may read the store).
async fn view_off_thread(s: &ApiState, job: fleetmesh_protocol::JobId) -> Option<crate::jobs::JobView> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || s.jobs.view(&job))
        .await
        .ok()
        .flatten()
}

/// New tokens of a generation job that does not say.
pub const DEFAULT_MAX_TOKENS: u16 = 128;

/// `POST /v1/jobs` body: a model name and one input (bytes, or text for text models).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Model name, as `fleetmesh models` lists it.
    #[serde(default)]
    pub model: String,
    /// The input bytes (e.g. 64 pixels 0..=16 for digits).
    #[serde(default)]
    pub input: Option<Vec<u8>>,
    /// The input as text (for minilm).
    #[serde(default)]
    pub text: Option<String>,
    /// For a text-generation model (smollm2): the user's message (answered through the chat template),
    /// or with `raw` the text to continue.
    #[serde(default)]
    pub prompt: Option<String>,
    /// With `prompt`: most new tokens (1-512, default 128).
    #[serde(default)]
    pub max_tokens: Option<u16>,
    /// With `prompt`: continue the text as it is instead of answering it.
    #[serde(default)]
    pub raw: bool,
    /// With `prompt`: sampling temperature (default 0: the most likely token).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// With `prompt` and `temperature`: candidates considered (default 40).
    #[serde(default)]
    pub top_k: Option<u16>,
    /// With `prompt` and `temperature`: seed of the sampling draws (default 0).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Agreeing workers required; absent: the node chooses by the workers' reputation (adaptive
    /// replication).
    #[serde(default)]
    pub replicas: Option<u8>,
    /// Wait for the verdict before answering.
    #[serde(default)]
    pub wait: bool,
    /// With `prompt`: answer as server-sent events, `token` events (`{"text": ...}`) as the job's first
    /// streaming worker produces the text, then one `verdict` event (the job's view).
    #[serde(default)]
    pub stream: bool,
    /// A client-chosen idempotency key (1 to 128 bytes): a request repeated with the same key returns
    /// the job the first one submitted (status 200 instead of 202), never a second job.
    #[serde(default)]
    pub key: Option<String>,
}

async fn submit(
    State(s): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: Result<Json<SubmitRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(denied) = unauthorized(&s, &headers) {
        return denied;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Some(model) = s.jobs.registry().by_name(&req.model) else {
        return error(StatusCode::NOT_FOUND, format!("unknown model '{}'", req.model));
    };
    let input = match (req.input, req.text, req.prompt) {
        (Some(bytes), None, None) => bytes,
        (None, Some(text), None) => text.into_bytes(),
        (None, None, Some(text)) => {
            let prompt = crate::inference::Prompt {
                text,
                raw: req.raw,
                max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                temperature: req.temperature.unwrap_or(0.0),
                top_k: req.top_k.unwrap_or(40),
                seed: req.seed.unwrap_or(0),
            };
            match prompt_input(model.as_ref(), &prompt) {
                Ok(input) => input,
                Err(why) => return error(StatusCode::BAD_REQUEST, why),
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of 'input' (bytes), 'text' or 'prompt'",
            );
        }
    };
    if let Err(e) = model.check_input(&input) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    if req.stream && !model.streams() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("model '{}' has no streaming answer", req.model),
        );
    }
    if let Some(key) = &req.key
        && (key.is_empty() || key.len() > crate::jobs::MAX_SUBMIT_KEY)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("'key' must be 1 to {} bytes", crate::jobs::MAX_SUBMIT_KEY),
        );
    }
    let submitted = match (&req.key, req.replicas) {
        (Some(key), r) => s.jobs.submit_once(key, model.id(), input, r).await,
        (None, Some(r)) => s.jobs.submit(model.id(), input, r).await.map(|id| (id, false)),
        (None, None) => s.jobs.submit_auto(model.id(), input).await.map(|id| (id, false)),
    };
    let (job, again) = match submitted {
        Ok(job) => job,
        Err(e) => return submit_failed(e),
    };
    if req.stream {
        return chat::job_stream(chat::follow(s, model, job));
    }
    if req.wait
        && let Err(e) = s.jobs.wait(job).await
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    let code = if again {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    off_thread(move || match s.jobs.view(&job) {
        Some(view) => (code, Json(view)).into_response(),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "job vanished"),
    })
    .await
}

async fn job(State(s): State<ApiState>, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    let Ok(id) = id.parse::<fleetmesh_protocol::JobId>() else {
        return error(StatusCode::BAD_REQUEST, "a job id is 64 hex digits");
    };
    off_thread(move || match s.jobs.view(&id) {
        Some(view) => Json(view).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no job {id} submitted from this node"),
        ),
    })
    .await
}

async fn reputation(State(s): State<ApiState>) -> Response {
    Json(s.jobs.reputation()).into_response()
}

async fn earnings(State(s): State<ApiState>) -> Response {
    off_thread(move || earnings_rows(&s)).await
}

/// `/v1/earnings`: the ledger of the receipts this node is party to (its own balance, and what it paid
/// each worker), then the claims of other nodes it checked (`"source": "checked claim"`).
fn earnings_rows(s: &ApiState) -> Response {
    let mut rows: Vec<serde_json::Value> = s
        .jobs
        .earnings()
        .into_iter()
        .map(|(node, e)| {
            let mut row = serde_json::json!({
                "node": node.to_string(),
                "jobs": e.jobs,
                "credit": e.credit,
                "energy_uwh": e.energy_uwh,
                "source": "receipts",
            });
            if node == s.node_id {
                // This car's electricity for those jobs, each at its tariff when it ran.
                let electricity = s.car.electricity_cost(&s.jobs.receipts_of(&node));
                row["this_node"] = true.into();
                row["electricity"] = electricity.into();
            }
            row
        })
        .collect();
    for c in s.jobs.checked_claims() {
        let mut row = serde_json::to_value(&c).unwrap_or_default();
        row["source"] = "checked claim".into();
        rows.push(row);
    }
    Json(rows).into_response()
}

/// `GET /v1/claims/{node}` query: where the claim starts.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimQuery {
    /// Earliest epoch start wanted, ms since the Unix epoch (default: all the node still shows).
    #[serde(default)]
    pub from_ms: Option<u64>,
}

/// Asks a node for its balance claim and checks it against the roots it published.
async fn check_claim(
    State(s): State<ApiState>,
    axum::extract::Path(node): axum::extract::Path<String>,
    query: Result<axum::extract::Query<ClaimQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Ok(node) = node.parse::<fleetmesh_protocol::NodeId>() else {
        return error(StatusCode::BAD_REQUEST, "a node id is 64 hex digits");
    };
    use crate::jobs::books::CheckError;
    match s.jobs.check_claim(node, q.from_ms.unwrap_or(0)).await {
        Ok(claim) => Json(claim).into_response(),
        Err(e @ (CheckError::Refused(_) | CheckError::TooLong)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e @ CheckError::Own) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ (CheckError::Unreachable { .. } | CheckError::Malformed { .. })) => {
            error(StatusCode::BAD_GATEWAY, e)
        }
    }
}

/// `GET /v1/statement` query: the epoch, ms since the Unix epoch (default: all time).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    /// Start (inclusive).
    #[serde(default)]
    pub from_ms: Option<u64>,
    /// End (exclusive).
    #[serde(default)]
    pub to_ms: Option<u64>,
}

async fn statement(
    State(s): State<ApiState>,
    query: Result<axum::extract::Query<StatementQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (from_ms, to_ms) = (q.from_ms.unwrap_or(0), q.to_ms.unwrap_or(u64::MAX));
    if from_ms > to_ms {
        return error(StatusCode::BAD_REQUEST, "from_ms must not be after to_ms");
    }
    off_thread(move || statement_of(&s, from_ms, to_ms)).await
}

fn statement_of(s: &ApiState, from_ms: u64, to_ms: u64) -> Response {
    let st = s.jobs.statement(from_ms, to_ms);
    let by_payer: Vec<serde_json::Value> = st
        .by_payer
        .iter()
        .map(|(payer, e)| {
            serde_json::json!({
                "payer": payer.to_string(), "jobs": e.jobs, "credit": e.credit, "energy_uwh": e.energy_uwh,
            })
        })
        .collect();
    let void: Vec<serde_json::Value> = st
        .void_budgets
        .iter()
        .map(|(payer, holder, serial)| {
            serde_json::json!({ "payer": payer.to_string(), "holder": holder.to_string(), "serial": serial })
        })
        .collect();
    Json(serde_json::json!({
        "node": s.node_id.to_string(),
        "from_ms": from_ms,
        "to_ms": to_ms,
        "by_payer": by_payer,
        "receipt_ids": st.receipt_ids,
        "void_budgets": void,
    }))
    .into_response()
}

async fn vehicle(State(s): State<ApiState>) -> Response {
    Json(s.car.view()).into_response()
}

async fn report_vehicle(
    State(s): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: Result<Json<crate::vehicle::VehicleState>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(denied) = unauthorized(&s, &headers) {
        return denied;
    }
    let Json(state) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match s.car.report(state) {
        Ok(view) => Json(view).into_response(),
        Err(e @ crate::vehicle::ReportError::NotExternal(_)) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/v1/status", get(status))
        .route("/v1/jobs", axum::routing::post(submit).get(recent_jobs))
        .route("/v1/jobs/{id}", get(job))
        .route(
            "/v1/chat/completions",
            axum::routing::post(chat::chat_completions),
        )
        .route("/v1/earnings", get(earnings))
        .route("/v1/claims/{node}", get(check_claim))
        .route("/v1/reputation", get(reputation))
        .route("/v1/statement", get(statement))
        .route("/v1/vehicle", get(vehicle).post(report_vehicle))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Why the local API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Its address could not be bound (in use, or not this machine's).
    #[error("cannot bind the local API on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// Binds the API and serves it until `cancel` fires. Returns the bound address and the server task.
pub async fn serve(
    listen: SocketAddr,
    state: ApiState,
    cancel: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ApiError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ApiError::Bind { addr: listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ApiError::Bind { addr: listen, source })?;
    let app = router(state);
    let task = tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "local API stopped");
        }
    });
    Ok((addr, task))
}
