//! `fleet-sim`: runs the fleet simulator and prints its report as one JSON line (the last line).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fleetmesh_sim::{Adversary, JobMix, Profiles, SimConfig};

/// Simulates a fleet of cars running fleetmesh, deciding with fleetmesh's own code (admission,
/// departure prediction, capacity directory, submitter core), and prints one JSON report.
#[derive(Parser, Debug)]
#[command(name = "fleet-sim", version)]
struct Args {
    /// Cars in the fleet.
    #[arg(long, default_value_t = 10_000)]
    cars: usize,
    /// Simulated days (from a Monday 00:00).
    #[arg(long, default_value_t = 1)]
    days: u32,
    /// Simulated minutes instead of days (from a Monday 00:00; at least 3, as jobs submitted in the
    /// last two minutes are not counted): a run as long as a real-node scale run.
    #[arg(long, conflicts_with = "days")]
    minutes: Option<u32>,
    /// Seed of every random draw: a seed gives one run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fraction of owners taking part (0-1).
    #[arg(long, default_value_t = 1.0)]
    participation: f64,
    /// Fraction of cars that are reachable (DHT servers and relays).
    #[arg(long, default_value_t = 0.05)]
    reachable: f64,
    /// Submitting nodes (0: one per thousand cars, at least ten).
    #[arg(long, default_value_t = 0)]
    submitters: usize,
    /// Jobs submitted per car and day, fleet-wide on average.
    #[arg(long, default_value_t = 10.0)]
    jobs_per_car_day: f64,
    /// A fixed fleet-wide submission rate (jobs/s) instead of --jobs-per-car-day.
    #[arg(long)]
    jobs_per_s: Option<f64>,
    /// Job sizes: small (digits), mixed (digits, embeddings, LLM), large (LLM).
    #[arg(long, default_value = "mixed", value_parser = JobMix::parse)]
    job_mix: JobMix,
    /// Every car parked and plugged in all day (the shape of the real-node scale run).
    #[arg(long)]
    stationary: bool,
    /// Owners allow work only off-peak (00:00-07:00).
    #[arg(long)]
    off_peak_only: bool,
    /// No wifi anywhere: every link is cellular.
    #[arg(long)]
    cellular_only: bool,
    /// Adversaries: none, always-wrong, rare-liar[:P], colluding, silent, lazy, bid-cost-liar,
    /// underbidding-colluders.
    #[arg(long, default_value = "none", value_parser = Adversary::parse)]
    adversary: Adversary,
    /// The adversaries' share of the cars (0-1).
    #[arg(long, default_value_t = 0.1)]
    adversary_share: f64,
    /// Fixed replication with this many replicas (default: adaptive, as the node).
    #[arg(long)]
    replicas: Option<u8>,
    /// Only reachable cars submit (as in the real-node scale run).
    #[arg(long)]
    reachable_submitters: bool,
    /// Every link local, 1 ms each way and no loss (the real-node scale run's in-process transport).
    #[arg(long)]
    lan: bool,
    /// Folder for the SVG plots.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = match fleetmesh_node::args::parse::<Args>("fleet-sim") {
        Ok(args) => args,
        Err(code) => return code,
    };
    let cfg = SimConfig {
        cars: args.cars,
        days: args.days,
        minutes: args.minutes,
        seed: args.seed,
        participation: args.participation,
        reachable: args.reachable,
        submitters: args.submitters,
        jobs_per_car_day: args.jobs_per_car_day,
        jobs_per_s: args.jobs_per_s,
        mix: args.job_mix,
        profiles: if args.stationary {
            Profiles::Stationary
        } else {
            Profiles::Mixed
        },
        off_peak_only: args.off_peak_only,
        cellular_only: args.cellular_only,
        adversary: args.adversary,
        adversary_share: if args.adversary == Adversary::None {
            0.0
        } else {
            args.adversary_share
        },
        replicas: args.replicas,
        reachable_submitters: args.reachable_submitters,
        lan: args.lan,
        plots: args.plots,
        progress: !args.quiet,
    };
    match fleetmesh_sim::run(&cfg) {
        Ok(report) => {
            for file in &report.plots {
                eprintln!("plot: {file}");
            }
            println!("{}", report.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-sim: {e}");
            ExitCode::from(2)
        }
    }
}
