//! A running node: network task, local API, and the loop that handles what the mesh delivers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use fleetmesh_protocol::NodeKey;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::api::{self, ApiState};
use crate::config::NodeConfig;
use crate::inference::Registry;
use crate::inference::executor::{Executor, ExecutorConfig};
use crate::jobs::{Jobs, JobsConfig};
use crate::metrics::Metrics;
use crate::net::{self, NetClient, NetEvent};
use crate::share::{Share, ShareConfig};
use crate::store::{Store, StoreError};
use crate::vehicle::Car;
use fleetmesh_protocol::codec::{self, Kind};
use fleetmesh_protocol::messages::Reply;

/// A started node. Dropping it does not stop it: cancel the token given to [`start`], then [`Node::join`].
pub struct Node {
    /// Handle to the network task.
    pub net: NetClient,
    /// Where the local API listens.
    pub api_addr: SocketAddr,
    /// The token the local API's state-changing calls need.
    pub api_token: String,
    /// The node's metrics.
    pub metrics: Metrics,
    /// The job roles (submit work, run work).
    pub jobs: Jobs,
    /// Model distribution (serve and fetch models).
    pub share: Share,
    /// The car this node runs on (or a stationary node).
    pub car: Car,
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

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The database could not be opened (another process may hold it).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The models could not be loaded.
    #[error(transparent)]
    Models(#[from] crate::inference::InferenceError),
    /// A budget in the configuration is held by another node.
    #[error("a budget of payer {payer} is held by {holder}, not by this node ({me})")]
    ForeignBudget {
        /// The budget's payer.
        payer: fleetmesh_protocol::NodeId,
        /// Who holds it.
        holder: fleetmesh_protocol::NodeId,
        /// This node.
        me: fleetmesh_protocol::NodeId,
    },
    /// The car settings are not valid.
    #[error("car: {0}")]
    Car(String),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The API token could not be read or made.
    #[error(transparent)]
    Token(#[from] crate::keyfile::KeyFileError),
    /// The system gave no randomness.
    #[error("no system randomness: {0}")]
    Random(#[from] getrandom::Error),
    /// The local API could not bind its address.
    #[error(transparent)]
    Api(#[from] api::ApiError),
}

/// Starts a node with `key` and `cfg`, keeping its database in `home/db` and loading fetched models from
/// `assets` (if given); it runs until `cancel` fires.
pub async fn start(
    key: NodeKey,
    cfg: NodeConfig,
    home: &std::path::Path,
    assets: Option<&std::path::Path>,
    cancel: CancellationToken,
) -> Result<Node, NodeError> {
    let store = Store::open(&home.join("db"))?;
    let mut cfg = cfg;
    if cfg.api.token_file.is_none() {
        cfg.api.token_file = Some(home.join("api.token"));
    }
    let registry = Registry::with_defaults(assets)?;
    let jobs = cfg.jobs.jobs_config()?;
    if let Some(b) = jobs.budgets.iter().find(|b| b.body.holder != key.node_id()) {
        return Err(NodeError::ForeignBudget {
            payer: b.body.payer,
            holder: b.body.holder,
            me: key.node_id(),
        });
    }
    start_with(key, cfg, registry, jobs, ShareConfig::default(), store, cancel).await
}

/// Starts a node with the given models, job settings and store. What the store holds from an earlier run
/// (unfinished jobs, unrevealed results, receipts) is picked up.
pub async fn start_with(
    key: NodeKey,
    cfg: NodeConfig,
    registry: Registry,
    jobs_cfg: JobsConfig,
    share_cfg: ShareConfig,
    store: Store,
    cancel: CancellationToken,
) -> Result<Node, NodeError> {
    cfg.validate()?;
    // This node paces its own offers to the per-submitter limit it applies to others'.
    let jobs_cfg = JobsConfig {
        offers_per_s: cfg.net.offers_per_submitter_per_s,
        offer_burst: cfg.net.offer_burst_per_submitter,
        ..jobs_cfg
    };
    let exec_cfg = ExecutorConfig {
        workers: cfg.jobs.threads,
        linger: std::time::Duration::from_millis(cfg.jobs.batch_linger_ms),
        ..ExecutorConfig::default()
    };
    let car = Car::new(cfg.car_config(), exec_cfg.workers, Some(store.clone())).map_err(NodeError::Car)?;
    let mut metrics_registry = MetricsRegistry::default();
    let metrics = Metrics::register(&mut metrics_registry);
    // The network outlives the node's own cancellation by the moment it takes to hand running work back.
    let net_cancel = CancellationToken::new();
    let policy = net::GossipPolicy::funded_by(jobs_cfg.payers.clone(), &cfg.net);
    let (net, events, net_task) = net::start(&cfg.net, &key, metrics.clone(), policy, net_cancel.clone())?;
    // Stops the network if the node fails to start from here on, or once the event handler ends.
    let stop_net = net_cancel.drop_guard();
    let executor = Executor::start(registry, exec_cfg);
    let node_id = key.node_id();
    let share = Share::new(net.clone(), store.clone(), executor.clone(), share_cfg);
    share.start().await;
    let jobs = Jobs::new(
        key,
        net.clone(),
        executor,
        jobs_cfg,
        store,
        share.clone(),
        car.clone(),
        metrics.clone(),
    );
    // Reading back every receipt and record is disk work: off the async worker threads.
    let resumer = jobs.clone();
    tokio::task::spawn_blocking(move || resumer.resume())
        .await
        .map_err(|e| NodeError::Store(StoreError::Task(e.to_string())))?;
    // Into the offer shards of the models it serves before its peers learn its subscriptions.
    jobs.keep_shards().await;
    let token = match &cfg.api.token_file {
        Some(path) => crate::keyfile::load_or_create_token(path)?,
        None => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret)?;
            hex::encode(secret)
        }
    };
    let state = ApiState {
        token: Arc::from(token.as_str()),
        net: net.clone(),
        jobs: jobs.clone(),
        node_id,
        started: Instant::now(),
        registry: Arc::new(metrics_registry),
        metrics: metrics.clone(),
        car: car.clone(),
    };
    let (api_addr, api_task) = api::serve(cfg.api.listen, state, cancel.clone()).await?;
    info!(peer_id = %net.peer_id(), node_id = %node_id, api = %api_addr, "node started");
    let car_task = tokio::spawn(drive_car(
        car.clone(),
        jobs.clone(),
        share.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    let handler = tokio::spawn(handle_events(
        events,
        jobs.clone(),
        share.clone(),
        net.clone(),
        cancel,
        stop_net,
    ));
    Ok(Node {
        net,
        api_addr,
        api_token: token,
        metrics,
        jobs,
        share,
        car,
        tasks: vec![net_task, api_task, car_task, handler],
    })
}

/// Keeps the car's clock going, and preempts running work the moment the car leaves admission (a state
/// pushed through the API wakes this task at once; the clock is read four times a second).
async fn drive_car(
    car: Car,
    jobs: Jobs,
    share: Share,
    metrics: crate::metrics::Metrics,
    cancel: CancellationToken,
) {
    let mut signal = car.subscribe();
    let mut ended = signal.borrow_and_update().ended;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {
                car.refresh();
                share.set_link_limit(car.download_limit());
                metrics.vehicle_admitted.set(i64::from(car.admitted()));
                metrics.car_awake.set(i64::from(car.awake()));
            }
            changed = signal.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = *signal.borrow_and_update();
                metrics.vehicle_admitted.set(i64::from(now.admitted));
                // Admission ended since the last look (even if it has come back meanwhile): preempt, without
                // holding up the clock while the withdrawals travel.
                if now.ended > ended {
                    ended = now.ended;
                    info!(reason = ?car.view().reason, "the car left admission; preempting work");
                    let jobs = jobs.clone();
                    tokio::spawn(async move { jobs.preempt().await });
                }
                if now.admitted {
                    info!("the car admits work");
                }
            }
        }
    }
}

/// Manifest and chunk requests served at once; more are refused (the fetcher asks another provider).
const MODEL_REQUESTS_AT_ONCE: usize = 8;

/// Routes what the mesh delivers to the job roles, and ticks their clocks. When the node stops, hands its
/// unfinished work back ([`Jobs::shutdown`]), then stops the network.
async fn handle_events(
    mut events: mpsc::Receiver<NetEvent>,
    jobs: Jobs,
    share: Share,
    net: NetClient,
    cancel: CancellationToken,
    _stop_net: tokio_util::sync::DropGuard,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let serving = Arc::new(tokio::sync::Semaphore::new(MODEL_REQUESTS_AT_ONCE));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                jobs.shutdown(std::time::Duration::from_secs(2)).await;
                break;
            }
            _ = tick.tick() => jobs.tick(),
            event = events.recv() => match event {
                Some(NetEvent::Gossip { topic, data, from }) => {
                    debug!(?topic, bytes = data.len(), %from, "gossip received");
                    jobs.on_gossip(topic, &data);
                }
                Some(NetEvent::Request { peer, data, channel }) => {
                    let (jobs, share, net, serving) = (jobs.clone(), share.clone(), net.clone(), serving.clone());
                    tokio::spawn(async move {
                        let answer = match codec::peek_kind(&data) {
                            // Chunks are read from files and the store: off the async worker threads, a
                            // few at a time, so that serving models never takes the blocking threads
                            // commits and verdicts are stored from.
                            Ok((kind @ (Kind::ManifestRequest | Kind::ChunkRequest | Kind::ClaimRequest), false)) => match serving.try_acquire_owned() {
                                Ok(permit) => tokio::task::spawn_blocking(move || {
                                    let _permit = permit;
                                    match kind {
                                        Kind::ClaimRequest => jobs.on_claim_request(&data),
                                        _ => share.on_request(&data),
                                    }
                                })
                                .await
                                .unwrap_or_else(|_| codec::encode(&Reply::refused("cannot serve now"))),
                                Err(_) => codec::encode(&Reply::refused("busy serving models; ask another provider")),
                            },
                            _ => jobs.on_request(peer, &data).await,
                        };
                        let _ = net.respond(channel, answer).await;
                    });
                }
                None => break,
            }
        }
    }
}
