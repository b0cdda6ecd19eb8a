//! `fleetmesh`: the node binary every car runs. Parses the command line, starts logging where the
//! subcommand logs, runs the subcommand (see [`cli`]) and maps its failure to an exit code: 2 for bad
//! arguments or configuration, 1 for anything else.

use std::process::ExitCode;

use clap::Parser;
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
            cli::demo::run(args)
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first line names the argument and the problem.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("fleetmesh: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
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
