#!/usr/bin/env bash
# The fleet simulator: cars with daily driving, parking and charging profiles, links, DHT and gossip
# modelled; admission, departure prediction, the capacity directory and every submitter decision made
# by fleetmesh's own code (see sim/src/lib.rs). Progress on stderr; the last line is one JSON object.
#
#   scripts/fleet-sim.sh --cars N --days D [--seed S] [what-if flags]
#   what-if flags: --participation F  --off-peak-only  --cellular-only  --stationary
#                  --adversary KIND --adversary-share F  --job-mix small|mixed|large
#                  --jobs-per-car-day J | --jobs-per-s R  --reachable F  --submitters K  --plots DIR
#   calibration against scripts/bench-scale.sh: --replicas 2 --reachable-submitters --lan --minutes M
#   (scripts/fleet-sim.sh --help lists them all)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build -q --release -p fleetmesh-sim
target=${CARGO_TARGET_DIR:-$root/target}
exec "$target/release/fleet-sim" "$@"
