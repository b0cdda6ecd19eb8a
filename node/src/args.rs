//! Command-line parsing shared by fleetmesh's binaries: a mistake is one line on stderr and exit code 2.

use std::process::ExitCode;

/// Parses the process's arguments into `T`. `--help` and `--version` print and return
/// `Err(ExitCode::SUCCESS)`; a mistake prints one line, `{program}: {what clap found}`, and returns
/// `Err(2)` (clap's own message is several lines: usage and a hint).
pub fn parse<T: clap::Parser>(program: &str) -> Result<T, ExitCode> {
    match T::try_parse() {
        Ok(args) => Ok(args),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            // clap's first line names the argument and the problem.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("{program}: {}", first.trim_start_matches("error: "));
            Err(ExitCode::from(2))
        }
    }
}
