//! A client for a node's local HTTP API (loopback, JSON, on `ureq`), used by `fleetmesh submit`, `status`
//! and `earnings`, the examples and the tests.

use std::net::SocketAddr;
use std::time::Duration;

/// Why a call to the local API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node answers at the address.
    #[error("no fleetmesh node answers at {addr} (start one with `fleetmesh run`, or pass --api): {source}")]
    Unreachable {
        /// The API address.
        addr: SocketAddr,
        /// The connection error.
        source: std::io::Error,
    },
    /// The node answered with an error.
    #[error("the node refused: {0}")]
    Refused(String),
    /// The answer was not understood.
    #[error("unexpected answer from the node: {0}")]
    Protocol(String),
}

/// Answers larger than this are refused (the API's largest, `/v1/jobs` with outputs, is far smaller).
const MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

/// How long a connection to the local API may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a request and returns the status code and the JSON body.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), ClientError> {
    call_with_token(addr, method, path, body, timeout, None)
}

/// [`call`], with the node's API token (what state-changing calls need; see [`crate::api`]).
pub fn call_with_token(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
    token: Option<&str>,
) -> Result<(u16, serde_json::Value), ClientError> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (code, value) = exchange(addr, method, path, &body, timeout, token)?;
    if code >= 400 {
        let msg = value
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("error")
            .to_string();
        return Err(ClientError::Refused(msg));
    }
    Ok((code, value))
}

/// One request with a raw body, returning any status code (4xx and 5xx included) and the JSON answer.
pub fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
    token: Option<&str>,
) -> Result<(u16, serde_json::Value), ClientError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // The API is on loopback: never through a proxy named in the environment (it would see the token).
        .proxy(None)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(timeout + CONNECT_TIMEOUT))
        // 4xx and 5xx answers carry the node's reason in JSON: read them, do not turn them into errors.
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("Content-Type", "application/json");
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(body.to_string())
        .map_err(|e| ClientError::Protocol(format!("bad request: {e}")))?;
    let mut response = agent.run(request).map_err(|e| failed(addr, e))?;
    let code = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(format!("body is not JSON: {e}")))?;
    Ok((code, value))
}

/// A failed call: nobody listening (or nothing answering within the connect timeout) is `Unreachable`;
/// anything else is a protocol failure.
fn failed(addr: SocketAddr, e: ureq::Error) -> ClientError {
    use std::io::{Error, ErrorKind};
    let source = match e {
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset | ErrorKind::AddrNotAvailable
            ) =>
        {
            io
        }
        ureq::Error::ConnectionFailed => Error::new(ErrorKind::ConnectionRefused, "connection failed"),
        ureq::Error::Timeout(ureq::Timeout::Connect) => Error::new(ErrorKind::TimedOut, "connect timed out"),
        other => return ClientError::Protocol(other.to_string()),
    };
    ClientError::Unreachable { addr, source }
}
