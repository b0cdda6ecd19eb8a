//! `fleetmesh keys`: create this node's identity key, or show the node id (or libp2p peer id) of a key
//! file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use fleetmesh_node::{keyfile, net};
use fleetmesh_protocol::NodeKey;

#[derive(Debug, Subcommand)]
pub(crate) enum KeysAction {
    /// Write a new ed25519 key file (mode 0600) and print its node id.
    Generate {
        /// Key file to write [default: HOME/node.key].
        #[arg(long)]
        key: Option<PathBuf>,
        /// Replace an existing key file (its identity, credit and reputation are lost).
        #[arg(long)]
        force: bool,
    },
    /// Print the node id of a key file.
    Show {
        /// Key file to read [default: HOME/node.key].
        #[arg(long)]
        key: Option<PathBuf>,
        /// Print the libp2p peer id instead of the node id.
        #[arg(long)]
        peer_id: bool,
    },
}

/// Runs a `keys` action; key files default to `HOME/node.key`.
pub(crate) fn run(home: &Path, action: KeysAction) -> anyhow::Result<()> {
    match action {
        KeysAction::Generate { key, force } => {
            let path = key.unwrap_or_else(|| home.join("node.key"));
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).context("the system random source failed")?;
            let node_key = NodeKey::from_seed(seed);
            keyfile::save(&path, &node_key, force)?;
            println!("{}", node_key.node_id());
            eprintln!("wrote {}", path.display());
        }
        KeysAction::Show { key, peer_id } => {
            let path = key.unwrap_or_else(|| home.join("node.key"));
            let node_key = keyfile::load(&path)?;
            if peer_id {
                println!("{}", net::peer_id_of(&node_key.node_id()));
            } else {
                println!("{}", node_key.node_id());
            }
        }
    }
    Ok(())
}
