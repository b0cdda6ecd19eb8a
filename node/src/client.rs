//! A minimal client for a node's local HTTP API (loopback, HTTP/1.0, JSON), used by `fleetmesh submit`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|source| ClientError::Unreachable { addr, source })?;
    let protocol = |e: std::io::Error| ClientError::Protocol(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(protocol)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(protocol)?;
    let mut response = Vec::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut response)
        .map_err(protocol)?;
    let text = String::from_utf8_lossy(&response);
    let (head, json) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol("no HTTP header".into()))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Protocol("no status code".into()))?;
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| ClientError::Protocol(format!("body is not JSON: {e}")))?;
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
