//! `fleetmesh run`: this car's node. Its flags, the config file and key it starts from, and the node's life
//! until Ctrl-C.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fleetmesh_node::config::{ConfigError, KadMode, NodeConfig};
use fleetmesh_node::keyfile;
use fleetmesh_protocol::NodeKey;
use libp2p::Multiaddr;
use tokio_util::sync::CancellationToken;

/// The binary's log target (not this module's path), so that log lines and `RUST_LOG` filters read as
/// they did when everything was in main.rs.
const LOG_TARGET: &str = "fleetmesh";

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Configuration file (TOML) [default: HOME/fleetmesh.toml if it exists].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Key file [default: HOME/node.key; created on first run].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Listen address (repeatable; replaces net.listen), e.g. /ip4/0.0.0.0/tcp/4001.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Bootstrap peer (repeatable; added to net.bootstrap), e.g. /ip4/192.0.2.1/tcp/4001/p2p/12D3Koo...
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// External address others can reach this node at (repeatable).
    #[arg(long = "external", value_name = "MULTIADDR")]
    external: Vec<Multiaddr>,
    /// Local API address (replaces api.listen).
    #[arg(long, value_name = "IP:PORT")]
    api: Option<std::net::SocketAddr>,
    /// Kademlia mode (replaces net.kademlia_mode).
    #[arg(long, value_enum)]
    kad_mode: Option<KadMode>,
    /// Serve as a relay for peers behind NAT (sets net.relay_server).
    #[arg(long)]
    relay_server: bool,
    /// The listen addresses are reachable as they are: advertise them (sets net.public).
    #[arg(long)]
    public: bool,
    /// Honour this payer's budgets (a node id; repeat for several; adds to jobs.payers).
    #[arg(long = "payer", value_name = "NODE_ID")]
    payers: Vec<String>,
    /// Pay this node's jobs from this budget file (repeat for several; adds to jobs.budgets).
    #[arg(long = "budget", value_name = "FILE")]
    budgets: Vec<PathBuf>,
    /// With fewer than three peers, accept two agreeing workers without history here (a local testnet of
    /// one owner; sets jobs.small_fleet). Off by default: two fresh keys cost an attacker nothing.
    #[arg(long)]
    small_fleet: bool,
}

/// The config file given with `--config`, else `HOME/fleetmesh.toml` if it exists, else the defaults.
fn load_config(home: &Path, explicit: Option<&Path>) -> Result<NodeConfig, ConfigError> {
    match explicit {
        Some(path) => NodeConfig::load(path),
        None => {
            let default = home.join("fleetmesh.toml");
            if default.exists() {
                NodeConfig::load(&default)
            } else {
                Ok(NodeConfig::default())
            }
        }
    }
}

/// The node's key from `path`, created there on first run.
fn load_or_create_key(path: &Path) -> anyhow::Result<NodeKey> {
    match keyfile::load(path) {
        Ok(key) => Ok(key),
        Err(keyfile::KeyFileError::Missing(_)) => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).context("the system random source failed")?;
            let key = NodeKey::from_seed(seed);
            keyfile::save(path, &key, false)?;
            tracing::info!(target: LOG_TARGET, path = %path.display(), "created a new node key");
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts the node with the config file and the flags on top, prints its peer id and API address, and
/// runs it until Ctrl-C.
pub(crate) fn run(home: &Path, assets: &Path, args: RunArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(home, args.config.as_deref())?;
    if !args.listen.is_empty() {
        cfg.net.listen = args.listen;
    }
    cfg.net.bootstrap.extend(args.bootstrap);
    cfg.net.external_addresses.extend(args.external);
    if let Some(api) = args.api {
        cfg.api.listen = api;
    }
    if let Some(mode) = args.kad_mode {
        cfg.net.kademlia_mode = mode;
    }
    cfg.net.relay_server |= args.relay_server;
    cfg.jobs.small_fleet |= args.small_fleet;
    cfg.net.public |= args.public;
    cfg.jobs.payers.extend(args.payers);
    cfg.jobs.budgets.extend(args.budgets);
    cfg.validate()?;
    let key = load_or_create_key(&args.key.unwrap_or_else(|| home.join("node.key")))?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let cancel = CancellationToken::new();
        let home = home.to_path_buf();
        let assets = assets.is_dir().then(|| assets.to_path_buf());
        let node = fleetmesh_node::node::start(key, cfg, &home, assets.as_deref(), cancel.clone()).await?;
        println!("peer_id {}", node.net.peer_id());
        println!("api http://{}", node.api_addr);
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        tracing::info!(target: LOG_TARGET, "shutting down");
        cancel.cancel();
        node.join().await;
        Ok(())
    })
}
