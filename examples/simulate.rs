//! A simulated fleet of 1,000 workers and 100,000 jobs over the sans-IO core (no network): for each kind
//! of adversary at 10 % of the fleet, how many wrong outputs were accepted, how many of them were revised
//! after the fact (a worker caught lying has the results it ran alone revoked and rechecked), how many
//! replicas a job needs at steady state (rechecks included), how long an honest newcomer takes to be
//! trusted, and what each kind of worker earned (revoked receipts pay nothing).
//!
//! ```text
//! cargo run --release -p fleetmesh-examples --example simulate            # the full table
//! cargo run --release -p fleetmesh-examples --example simulate -- 10000   # fewer jobs
//! cargo run --release -p fleetmesh-examples --example simulate -- 100000 100   # 100 workers, 1,000 jobs each
//! ```

use fleetmesh_consensus::simulation::{self, Behaviour, SimConfig};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simulate: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let jobs: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|_| anyhow::anyhow!("the job count must be a number, got {n}"))?,
        None => 100_000,
    };
    let workers: usize =
        match std::env::args().nth(2) {
            Some(n) => n.parse().ok().filter(|w| *w >= 20).ok_or_else(|| {
                anyhow::anyhow!("the worker count must be a number of at least 20, got {n}")
            })?,
            None => 1_000,
        };
    let kinds = [
        Behaviour::AlwaysWrong,
        Behaviour::WrongWithProbability(0.5),
        Behaviour::WrongWithProbability(0.05),
        Behaviour::Lazy,
        Behaviour::Colluding,
        Behaviour::ReceiptForger,
        Behaviour::ReceiptReplayer,
        Behaviour::Silent,
    ];
    println!("{workers} workers (10 % adversaries of one kind per row), {jobs} jobs, 20 bidders per job");
    println!(
        "{:<18} {:>9} {:>7} {:>8} {:>12} {:>10} {:>10} {:>12} {:>12} {:>9} {:>9}",
        "adversary",
        "accepted",
        "wrong",
        "revised",
        "wrong after",
        "replicas",
        "steady",
        "newcomer",
        "credit/hon",
        "credit/adv",
        "refused"
    );
    for adversary in kinds {
        let start = std::time::Instant::now();
        let cfg = SimConfig {
            adversary,
            jobs,
            workers,
            ..SimConfig::default()
        };
        let r = simulation::run(&cfg);
        let credit = |k: &str| r.credit_per_worker.get(k).copied().unwrap_or(0.0);
        println!(
            "{:<18} {:>9} {:>7} {:>8} {:>12.2e} {:>10.3} {:>10.3} {:>12} {:>12.0} {:>9.0} {:>9}   ({:.1} s)",
            adversary.name(),
            r.accepted,
            r.accepted_wrong,
            r.revised,
            r.wrong_after_revision_rate(),
            r.mean_replicas,
            r.steady_replicas,
            r.newcomer_trusted_after
                .map_or("never".to_string(), |j| format!("{j} jobs")),
            credit("honest"),
            credit(&adversary.name()),
            r.forged_refused + r.duplicates_ignored,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
