//! `fleetmesh earnings`: the ledger a running node computes from the receipts it holds, as a table per node
//! (with this node's line per job and net of electricity), or the JSON it returned.

use fleetmesh_node::client;

#[derive(Debug, clap::Args)]
pub(crate) struct EarningsArgs {
    /// The node's local API.
    #[arg(long, default_value = "127.0.0.1:7700")]
    api: std::net::SocketAddr,
    /// Print the JSON the node returned.
    #[arg(long)]
    json: bool,
}

/// Asks the node at `--api` for the ledger and prints it.
pub(crate) fn run(args: EarningsArgs) -> anyhow::Result<()> {
    let EarningsArgs { api, json } = args;
    let (code, body) = client::call(
        api,
        "GET",
        "/v1/earnings",
        None,
        std::time::Duration::from_secs(10),
    )?;
    anyhow::ensure!(code == 200, "the node answered {code}: {body}");
    if json {
        println!("{body}");
        return Ok(());
    }
    let rows = body.as_array().cloned().unwrap_or_default();
    println!(
        "{:<66} {:>8} {:>14} {:>12}",
        "node", "jobs", "credit (uc)", "energy µWh"
    );
    for r in &rows {
        println!(
            "{:<66} {:>8} {:>14} {:>12}",
            r["node"].as_str().unwrap_or("?"),
            r["jobs"],
            r["credit"],
            r["energy_uwh"]
        );
    }
    if rows.is_empty() {
        println!("(no receipts yet)");
    }
    if let Some(me) = rows.iter().find(|r| r["this_node"] == true) {
        let jobs = me["jobs"].as_u64().unwrap_or(0);
        let credit = me["credit"].as_u64().unwrap_or(0) as f64;
        let wh = me["energy_uwh"].as_u64().unwrap_or(0) as f64 / 1e6;
        let elec = me["electricity"].as_f64().unwrap_or(0.0);
        let per = |x: f64| x / jobs.max(1) as f64;
        println!(
            "this node: {jobs} jobs; credit {credit:.0} µc ({:.1} per job); energy {wh:.6} Wh ({:.3} mWh per job); \
             electricity at its tariff {elec:.3} µc ({:.5} per job); net {:.1} µc",
            per(credit),
            per(wh * 1e3),
            per(elec),
            credit - elec
        );
    }
    Ok(())
}
