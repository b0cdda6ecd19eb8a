#!/usr/bin/env bash
# Scale run: N fleetmesh nodes in one process over libp2p's memory transport (noise + yamux), 5 % DHT servers
# and relays, the rest DHT clients reachable only through relay circuits, each a full node on the embedded
# digits model; up to 10 servers submit verified jobs (replicas 2). Prints progress on stderr and, as its
# last line, one JSON object (node/src/testkit/scale.rs computes each field; fields this version does
# not measure yet are null).
#
#   scripts/bench-scale.sh N [--secs S] [--rate JOBS_PER_S] [--idle S] [--join-rate CLIENTS_PER_S]
#   (defaults: 100 nodes, 60 s, 10 jobs/s, 10 s idle first, 20 clients joining a second)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n=${1:-100}
[[ "$n" =~ ^[0-9]+$ ]] || { echo "bench-scale: the node count must be a number, got '$n'" >&2; exit 2; }
shift || true
# Each node holds a few sockets (listener, API, connections, sled files).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build -q --release -p fleetmesh-examples --example scale
target=${CARGO_TARGET_DIR:-$root/target}
exec "$target/release/examples/scale" "$n" "$@"
