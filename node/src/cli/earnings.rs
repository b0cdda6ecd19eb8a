//! `fleetmesh earnings`: the ledger a running node computes from the receipts it is party to, as a table
//! per node (with this node's line per job and net of electricity), the other nodes' claims it checked,
//! or the JSON it returned. With `--check NODE`, has the node check that node's claim first.

use fleetmesh_node::client;

#[derive(Debug, clap::Args)]
pub(crate) struct EarningsArgs {
    /// The node's local API.
    #[arg(long, default_value = "127.0.0.1:7700")]
    api: std::net::SocketAddr,
    /// Print the JSON the node returned.
    #[arg(long)]
    json: bool,
    /// Have the node ask this node (a node id) for its balance claim and check it against the epoch
    /// roots it published in the DHT; prints the result.
    #[arg(long, value_name = "NODE_ID")]
    check: Option<fleetmesh_protocol::NodeId>,
    /// With `--check`: the earliest epoch wanted, ms since the Unix epoch.
    #[arg(long, requires = "check", value_name = "MS")]
    from_ms: Option<u64>,
}

/// Asks the node at `--api` for the ledger and prints it.
pub(crate) fn run(args: EarningsArgs) -> anyhow::Result<()> {
    let EarningsArgs {
        api,
        json,
        check,
        from_ms,
    } = args;
    if let Some(node) = check {
        let path = format!("/v1/claims/{node}?from_ms={}", from_ms.unwrap_or(0));
        let (code, body) = client::call(api, "GET", &path, None, std::time::Duration::from_secs(120))?;
        anyhow::ensure!(
            code == 200,
            "{node}'s claim not confirmed: {}",
            body["error"].as_str().unwrap_or(&body.to_string())
        );
        if json {
            println!("{body}");
        } else {
            println!(
                "{node}: claim confirmed from {} epochs ({} receipts): {} jobs, credit {} µc, energy {} µWh",
                body["epochs"], body["receipts"], body["jobs"], body["credit"], body["energy_uwh"]
            );
        }
        return Ok(());
    }
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
    let all = body.as_array().cloned().unwrap_or_default();
    let (rows, checked): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r["source"] != "checked claim");
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
    if !checked.is_empty() {
        println!("claims checked (receipts + inclusion paths against published roots):");
        for r in &checked {
            println!(
                "{:<66} {:>8} {:>14} {:>12}  {} epochs",
                r["node"].as_str().unwrap_or("?"),
                r["jobs"],
                r["credit"],
                r["energy_uwh"],
                r["epochs"]
            );
        }
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
