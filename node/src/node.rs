//! A running node: network task, local API, and the loop that handles what the mesh delivers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use fleetmesh_protocol::NodeKey;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::api::{self, ApiState};
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::net::{self, NetClient, NetEvent};

/// A started node. Dropping it does not stop it: cancel the token given to [`start`], then [`Node::join`].
pub struct Node {
    /// Handle to the network task.
    pub net: NetClient,
    /// Where the local API listens.
    pub api_addr: SocketAddr,
    /// The node's metrics.
    pub metrics: Metrics,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Waits for every task of the node to finish (after cancellation).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts a node with `key` and `cfg`; it runs until `cancel` fires.
pub async fn start(key: NodeKey, cfg: NodeConfig, cancel: CancellationToken) -> anyhow::Result<Node> {
    cfg.validate()?;
    let mut registry = Registry::with_prefix("");
    let metrics = Metrics::register(&mut registry);
    let (net, events, net_task) = net::start(&cfg.net, &key, metrics.clone(), cancel.clone())?;
    let state = ApiState {
        net: net.clone(),
        node_id: key.node_id(),
        started: Instant::now(),
        registry: Arc::new(registry),
    };
    let (api_addr, api_task) = api::serve(cfg.api.listen, state, cancel.clone()).await?;
    info!(peer_id = %net.peer_id(), node_id = %key.node_id(), api = %api_addr, "node started");
    let handler = tokio::spawn(handle_events(events, cancel));
    Ok(Node {
        net,
        api_addr,
        metrics,
        tasks: vec![net_task, api_task, handler],
    })
}

async fn handle_events(mut events: mpsc::Receiver<NetEvent>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            event = events.recv() => match event {
                Some(NetEvent::Gossip { topic, data, from }) => {
                    debug!(?topic, bytes = data.len(), %from, "gossip received");
                }
                Some(NetEvent::Request { peer, .. }) => {
                    // The job protocol answers requests; until it is wired in, the request is dropped.
                    debug!(%peer, "request received");
                }
                None => break,
            }
        }
    }
}
