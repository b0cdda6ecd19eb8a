//! `fleetmesh`: the node binary every car runs.

use fleetmesh_node::keyfile;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetmesh_protocol::NodeKey;

/// fleetmesh: idle parked cars as one peer-to-peer inference fleet.
#[derive(Debug, Parser)]
#[command(name = "fleetmesh", version, about, long_about = None)]
struct Cli {
    /// Folder for this node's key and data.
    #[arg(long, global = true, env = "FLEETMESH_HOME", default_value_os_t = default_home())]
    home: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or show this node's identity key.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
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
    },
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".fleetmesh")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keys {
            action: KeysAction::Generate { key, force },
        } => {
            let path = key.unwrap_or_else(|| cli.home.join("node.key"));
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).context("the system random source failed")?;
            let node_key = NodeKey::from_seed(seed);
            keyfile::save(&path, &node_key, force)?;
            println!("{}", node_key.node_id());
            eprintln!("wrote {}", path.display());
        }
        Command::Keys {
            action: KeysAction::Show { key },
        } => {
            let path = key.unwrap_or_else(|| cli.home.join("node.key"));
            println!("{}", keyfile::load(&path)?.node_id());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetmesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}
