//! `fleetmesh status`: a compact summary of a running node (peers, jobs, models, its own earnings), or the
//! JSON it returned.

use fleetmesh_node::client;

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The node's local API.
    #[arg(long, default_value = "127.0.0.1:7700")]
    api: std::net::SocketAddr,
    /// Print the JSON the node returned.
    #[arg(long)]
    json: bool,
}

/// Asks the node at `--api` for its status and earnings and prints them.
pub(crate) fn run(args: StatusArgs) -> anyhow::Result<()> {
    let StatusArgs { api, json } = args;
    let timeout = std::time::Duration::from_secs(10);
    let (code, s) = client::call(api, "GET", "/v1/status", None, timeout)?;
    anyhow::ensure!(code == 200, "the node answered {code}: {s}");
    if json {
        println!("{s}");
        return Ok(());
    }
    let (_, earnings) = client::call(api, "GET", "/v1/earnings", None, timeout)?;
    let mine = earnings
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"] == s["node_id"]))
        .cloned()
        .unwrap_or_default();
    let j = &s["jobs"];
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    let models: Vec<String> = s["models"]
        .as_array()
        .map(|m| m.iter().map(str_of).collect())
        .unwrap_or_default();
    println!(
        "node     {} (fleetmesh {})",
        str_of(&s["peer_id"]),
        str_of(&s["version"])
    );
    println!("uptime   {} s", s["uptime_s"]);
    println!(
        "mesh     {} peers connected, {} in the DHT routing table",
        s["connected_peers"], s["routing_table_peers"]
    );
    println!(
        "jobs     {} submitted: {} accepted, {} failed, {} pending; {} computed as a worker",
        j["submitted"], j["accepted"], j["failed"], j["pending"], j["work_done"]
    );
    println!(
        "earned   {} µc for {} accepted jobs, {} µWh ({} receipts held)",
        mine["credit"].as_u64().unwrap_or(0),
        mine["jobs"].as_u64().unwrap_or(0),
        mine["energy_uwh"].as_u64().unwrap_or(0),
        j["receipts"]
    );
    println!("models   {}", models.join(", "));
    println!("dashboard http://{api}/");
    Ok(())
}
