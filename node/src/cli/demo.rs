//! `fleetmesh demo`: a local fleet in this process doing verified inference on the embedded digits model
//! (or, with `--model smollm2`, verified text generation). Its flags, and the summary it prints at the end.

use fleetmesh_node::demo;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Nodes in the fleet (the first one submits the jobs).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// The model: `digits` (embedded) or `smollm2` (needs scripts/fetch-assets.sh smollm2).
    #[arg(long, default_value = "digits", value_parser = ["digits", "smollm2"])]
    model: String,
    /// Jobs to submit: held-out digits images [default: 500], or smollm2 prompts [default: 10].
    #[arg(long)]
    jobs: Option<usize>,
    /// smollm2: most new tokens per prompt.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=512))]
    max_tokens: u16,
    /// Agreeing workers required per job.
    #[arg(long, default_value_t = 2)]
    replicas: u8,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Nodes that misbehave (alternately: wrong outputs, lazy made-up outputs); demo only.
    #[arg(long, default_value_t = 0)]
    malicious: usize,
    /// Adaptive replication: replicas follow the workers' reputation instead of --replicas.
    #[arg(long)]
    adaptive: bool,
    /// Where every car's simulated clock starts, "ddd hh:mm" (cars commute on weekdays 07:15-17:45).
    #[arg(long, default_value = "tue 01:00", value_parser = parse_clock)]
    clock: String,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    /// Workers whose driver gets in halfway through: their running jobs are preempted and reassigned.
    #[arg(long, default_value_t = 0)]
    drivers_return: usize,
    /// Print the summary as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// `--clock`: a simulated week time such as "tue 01:00".
fn parse_clock(s: &str) -> Result<String, String> {
    fleetmesh_node::vehicle::parse_week_time(s).map(|_| s.to_string())
}

/// Runs the fleet and prints its summary (and, with `--json`, the summary as JSON on the last line).
pub(crate) fn run(assets: &std::path::Path, args: DemoArgs) -> anyhow::Result<()> {
    if args.model == "smollm2" {
        return run_llm(assets, args);
    }
    let DemoArgs {
        nodes,
        jobs,
        replicas,
        in_flight,
        malicious,
        adaptive,
        clock,
        speed,
        drivers_return,
        json,
        ..
    } = args;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = runtime.block_on(demo::run(demo::DemoConfig {
        nodes,
        jobs: jobs.unwrap_or(500),
        replicas,
        in_flight,
        malicious,
        adaptive,
        clock,
        speed,
        drivers_return,
    }))?;
    print_summary(&summary);
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// `fleetmesh demo --model smollm2`: a small verified batch of prompts; prints the totals (and JSON).
fn run_llm(assets: &std::path::Path, args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let s = runtime.block_on(demo::run_llm(demo::LlmDemoConfig {
        nodes: args.nodes,
        jobs: args.jobs.unwrap_or(demo::LLM_PROMPTS.len()),
        replicas: args.replicas,
        adaptive: args.adaptive,
        malicious: args.malicious,
        max_tokens: args.max_tokens,
        assets: assets.to_path_buf(),
    }))?;
    println!(
        "verified {}/{} prompts ({} failed), {} tokens at {:.1} verified tokens/s, {:.2} workers per prompt, \
         {} receipts, {} accepted wrong ({} workers changing tokens), {:.1} s",
        s.verified,
        s.jobs,
        s.failed,
        s.tokens,
        s.tokens_per_s,
        s.mean_replicas,
        s.receipts,
        s.accepted_wrong,
        s.malicious,
        s.elapsed_s
    );
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}

/// The summary: totals, then one row per car.
fn print_summary(s: &demo::DemoSummary) {
    println!(
        "fleetmesh demo: {} jobs, {} verified, {} failed in {:.1} s",
        s.jobs, s.verified, s.failed, s.elapsed_s
    );
    println!("  accuracy of verified outputs  {:.2}%", s.accuracy * 100.0);
    println!("  verified jobs/s               {:.1}", s.jobs_per_s);
    println!("  mean replicas per job         {:.2}", s.mean_replicas);
    println!(
        "  wrong outputs accepted        {} ({} adversarial nodes)",
        s.accepted_wrong, s.malicious
    );
    println!("  receipts                      {}", s.receipts);
    println!("  jobs preempted by drivers     {}", s.preempted);
    let header = [
        "car",
        "role",
        "state at the end",
        "admission",
        "admitted",
        "wakes",
        "jobs",
        "energy µWh",
        "credit (µc)",
        "elec (µc)",
    ];
    println!(
        "  {:<9} {:<10} {:<33} {:<19} {:>8} {:>5} {:>5} {:>10} {:>11} {:>9}",
        header[0],
        header[1],
        header[2],
        header[3],
        header[4],
        header[5],
        header[6],
        header[7],
        header[8],
        header[9]
    );
    let (mut jobs, mut energy, mut credit, mut elec) = (0, 0, 0, 0.0);
    for c in &s.cars {
        println!(
            "  {:<9} {:<10} {:<33} {:<19} {:>7.1}s {:>5} {:>5} {:>10} {:>11} {:>9.2}",
            c.node,
            c.role,
            c.state,
            c.admission,
            c.admitted_s,
            c.wakes,
            c.jobs,
            c.energy_uwh,
            c.credit,
            c.electricity
        );
        jobs += c.jobs;
        energy += c.energy_uwh;
        credit += c.credit;
        elec += c.electricity;
    }
    println!(
        "  {:<9} {:<10} {:<33} {:<19} {:>8} {:>5} {:>5} {:>10} {:>11} {:>9.2}",
        "total", "", "", "", "", "", jobs, energy, credit, elec
    );
    if energy != s.total_energy_uwh || credit != s.total_credit {
        println!(
            "  (the ledger also pays nodes outside this fleet: {} µWh, {} µc in all)",
            s.total_energy_uwh, s.total_credit
        );
    }
}
