//! The `fleetmesh` command line: the clap types of the top level ([`Cli`], [`Command`]) and what several
//! subcommands share (the default home folder, logging). Each subcommand's flags and its work live in a
//! file of their own.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub(crate) mod budget;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod earnings;
pub(crate) mod infer;
pub(crate) mod keys;
pub(crate) mod models;
pub(crate) mod run;
pub(crate) mod status;
pub(crate) mod submit;
pub(crate) mod train;

/// fleetmesh: idle parked cars as one peer-to-peer inference fleet.
#[derive(Debug, Parser)]
#[command(name = "fleetmesh", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Folder for this node's key and data.
    #[arg(long, global = true, env = "FLEETMESH_HOME", default_value_os_t = default_home())]
    pub(crate) home: PathBuf,
    /// Folder of fetched models and data (scripts/fetch-assets.sh).
    #[arg(long, global = true, env = "FLEETMESH_ASSETS", default_value = "assets")]
    pub(crate) assets: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a local fleet in this process doing verified inference on the embedded digits model.
    Demo(demo::DemoArgs),
    /// Run this car's node: join the mesh and serve the local API until Ctrl-C.
    Run(run::RunArgs),
    /// Create or show this node's identity key.
    Keys {
        #[command(subcommand)]
        action: keys::KeysAction,
    },
    /// Issue a payer's budget to a submitter, or show a budget file.
    Budget {
        #[command(subcommand)]
        action: budget::BudgetAction,
    },
    /// Submit jobs through a running node's local API: one job per input row (or line of text).
    Submit(submit::SubmitArgs),
    /// Show a running node's state: peers, jobs, models, its own earnings.
    Status(status::StatusArgs),
    /// Show credit, jobs and energy per node, from the receipts a running node has seen.
    Earnings(earnings::EarningsArgs),
    /// List the installed models: name, id, weights size, agreement rule.
    Models,
    /// Run one local inference and print the result.
    Infer(infer::InferArgs),
    /// Train the embedded digits model from the committed data set and write its weights.
    TrainDigits(train::TrainDigitsArgs),
    /// Print the configuration file format with every default.
    Config {
        #[command(subcommand)]
        action: config::ConfigAction,
    },
}

/// `--home` when neither the flag nor `FLEETMESH_HOME` is given: `$HOME/.fleetmesh`.
fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".fleetmesh")
}

/// Logs to stderr at `level` (libp2p quieter), unless `RUST_LOG` says otherwise.
pub(crate) fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},libp2p=warn,libp2p_gossipsub=error"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
