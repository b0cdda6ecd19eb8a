//! `fleetmesh config`: the configuration file format, as a commented example with every default, or a
//! file checked and printed with its defaults filled in.

use std::path::PathBuf;

use clap::Subcommand;
use fleetmesh_node::config::NodeConfig;

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigAction {
    /// Print a complete, commented default configuration.
    Example,
    /// Check a configuration file and print it with defaults filled in.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

/// Runs a `config` action; an invalid file is a [`ConfigError`](fleetmesh_node::config::ConfigError).
pub(crate) fn run(action: ConfigAction) -> anyhow::Result<()> {
    match action {
        ConfigAction::Example => print!("{}", NodeConfig::example()),
        ConfigAction::Check { file } => {
            let cfg = NodeConfig::load(&file)?;
            cfg.validate()?;
            print!("{}", toml::to_string_pretty(&cfg)?);
        }
    }
    Ok(())
}
