//! `fleetmesh`: the node binary every car runs. Parses the command line, starts logging where the
//! subcommand logs, runs the subcommand (see [`cli`]) and maps its failure to an exit code: 2 for bad
//! arguments or configuration, 1 for anything else.

use std::process::ExitCode;

use fleetmesh_node::config::ConfigError;

mod cli;

use cli::{Cli, Command, init_logging};

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            init_logging(cli.log_format, "info");
            cli::run::run(&cli.home, &cli.assets, args)
        }
        Command::Keys { action } => cli::keys::run(&cli.home, action),
        Command::Budget { action } => cli::budget::run(&cli.home, action),
        Command::Demo(args) => {
            init_logging(cli.log_format, "warn");
            cli::demo::run(&cli.assets, args)
        }
        Command::Submit(args) => cli::submit::run(&cli.home, args),
        Command::Earnings(args) => cli::earnings::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Models => cli::models::run(&cli.assets),
        Command::Infer(args) => cli::infer::run(&cli.assets, args),
        Command::TrainDigits(args) => cli::train::run(args),
        Command::Config { action } => cli::config::run(action),
    }
}

fn main() -> ExitCode {
    let cli = match fleetmesh_node::args::parse::<Cli>("fleetmesh") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetmesh: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
