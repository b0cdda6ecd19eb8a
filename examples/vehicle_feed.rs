//! A vehicle integration: pushes the car's state to its fleetmesh node once a second, the way a real car
//! would from its CAN bus or telematics unit, and prints the node's admission decision.
//!
//! Start a node whose car is fed from outside, then this feed:
//!
//! ```text
//! printf '[car]\nsource = "external"\n' > car.toml
//! cargo run --release -- run --config car.toml &
//! cargo run -p fleetmesh-examples --example vehicle_feed -- 127.0.0.1:7700 ~/.fleetmesh/api.token
//! ```
//!
//! The node's API token (`HOME/api.token`, readable by the owner only) authorizes the reports: without
//! it the node answers 401 and ignores them.
//!
//! The state here comes from fleetmesh's simulated commuter car on a clock running 600x (a simulated day
//! in 2.4 minutes); replace `read_sensors` with real signals. No location is sent: only whether the car is
//! parked, plugged in, charged and cool enough.

use std::time::{Duration, Instant};

use fleetmesh_node::client;
use fleetmesh_node::vehicle::{SimulatedCar, VehicleState};

/// The car's signals at `now_min` (minutes since a Monday 00:00).
fn read_sensors(car: &mut SimulatedCar, now_min: u64) -> VehicleState {
    car.advance(now_min, 0.0)
}

fn main() -> anyhow::Result<()> {
    const USAGE: &str =
        "usage: vehicle_feed [API address, e.g. 127.0.0.1:7700] [token file, e.g. ~/.fleetmesh/api.token]";
    let api: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7700".into())
        .parse()
        .map_err(|e| anyhow::anyhow!("{USAGE}: {e}"))?;
    let token_file = std::env::args()
        .nth(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".fleetmesh/api.token")
        });
    let token =
        fleetmesh_node::keyfile::load_token(&token_file).map_err(|e| anyhow::anyhow!("{USAGE}: {e}"))?;
    // Tuesday 05:00, so that the first simulated hours include the morning departure.
    let start_min = 24 * 60 + 5 * 60;
    let mut car = SimulatedCar::new(42, start_min);
    let started = Instant::now();
    loop {
        let now_min = start_min + (started.elapsed().as_secs_f64() * 600.0 / 60.0) as u64;
        let state = read_sensors(&mut car, now_min);
        let body = serde_json::to_value(state)?;
        let (code, answer) = client::call_with_token(
            api,
            "POST",
            "/v1/vehicle",
            Some(&body),
            Duration::from_secs(5),
            Some(&token),
        )?;
        anyhow::ensure!(code == 200, "the node refused the state ({code}): {answer}");
        println!(
            "car clock {}  parked {:<5} plugged {:<5} soc {:>5.1} %  -> admitted {:<5} ({})",
            fleetmesh_node::vehicle::week_time(now_min),
            state.parked,
            state.plugged_in,
            state.soc_pct,
            answer["admitted"],
            answer["reason"].as_str().unwrap_or("?"),
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}
