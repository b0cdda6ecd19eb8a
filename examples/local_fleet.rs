//! Start a small fleet in this process and have it verify a few digits classifications.
//!
//! ```sh
//! cargo run -p fleetmesh-examples --example local_fleet
//! ```

use fleetmesh_consensus::job::Outcome;
use fleetmesh_node::demo::Fleet;
use fleetmesh_node::inference::{argmax, digits, f32s};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Four nodes on 127.0.0.1, fully connected; node 1 submits, the others bid and compute.
    let fleet = Fleet::start(4).await?;
    let jobs = fleet.submitter();
    let model = jobs
        .registry()
        .by_name("digits")
        .ok_or_else(|| anyhow::anyhow!("no digits model"))?
        .id();

    for sample in digits::held_out()?.into_iter().take(5) {
        // Two independent workers must agree byte for byte before the output is accepted.
        let id = jobs.submit(model, sample.pixels.clone(), 2).await?;
        let result = jobs.wait(id).await?;
        match result.outcome {
            Outcome::Accepted { output, agreeing, .. } => println!(
                "job {}: digit {} (label {}), agreed by {} workers, {} receipts",
                id.short(),
                argmax(&f32s(&output)),
                sample.label,
                agreeing.len(),
                result.receipts
            ),
            Outcome::Failed(reason) => println!("job {}: failed ({reason:?})", id.short()),
        }
    }
    fleet.stop().await;
    Ok(())
}
