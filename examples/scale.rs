//! N fleetmesh nodes in this one process (see `fleetmesh_node::testkit::scale`): prints progress on
//! stderr and, as its last line, the run's JSON report. `scripts/bench-scale.sh N` runs it in release mode.
//!
//! ```sh
//! cargo run --release -p fleetmesh-examples --example scale -- 100 --secs 60 --rate 10
//! ```

use fleetmesh_node::testkit::scale::{self, ScaleArgs};

fn parse() -> anyhow::Result<ScaleArgs> {
    let mut args = ScaleArgs {
        nodes: 100,
        secs: 60,
        rate: 10.0,
        idle_secs: 10,
        join_per_s: 20.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| anyhow::anyhow!("{name} needs a value"));
        match a.as_str() {
            "--secs" => args.secs = value("--secs")?.parse()?,
            "--rate" => args.rate = value("--rate")?.parse()?,
            "--idle" => args.idle_secs = value("--idle")?.parse()?,
            "--join-rate" => args.join_per_s = value("--join-rate")?.parse()?,
            "-h" | "--help" => {
                println!(
                    "usage: scale [NODES (default 100)] [--secs S (default 60)] [--rate JOBS_PER_S (default 10)] [--idle S (default 10)] [--join-rate CLIENTS_PER_S (default 20)]"
                );
                std::process::exit(0);
            }
            n => {
                args.nodes = n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("expected a node count, got {n:?}"))?
            }
        }
    }
    anyhow::ensure!(args.nodes >= 4, "at least 4 nodes");
    anyhow::ensure!(
        args.rate > 0.0 && args.secs > 0 && args.join_per_s > 0.0,
        "--rate, --secs and --join-rate must be positive"
    );
    Ok(args)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // Logs only when asked (RUST_LOG=...): a thousand nodes log a lot.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let report = scale::run(parse()?).await?;
    println!("{report}");
    Ok(())
}
