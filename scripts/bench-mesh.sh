#!/usr/bin/env bash
# Mesh benchmark: gossip propagation and request-response RTT (10 nodes, one process), then idle RSS and CPU
# of each node process in a 5-node testnet after a settling period.
#
#   scripts/bench-mesh.sh            (IDLE_SECS=60 by default)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
idle=${IDLE_SECS:-60}

echo "== gossip and request-response (cargo bench -p fleetmesh-node --bench mesh)"
cargo bench -q -p fleetmesh-node --bench mesh 2>/dev/null

echo
echo "== idle node processes: 5-node testnet, ${idle} s window after 10 s settling"
cargo build -q --release -p fleetmesh-node
dir=$(mktemp -d)
export TESTNET_DIR=$dir FLEETMESH_BIN=$root/target/release/fleetmesh
export TESTNET_PORT=${TESTNET_PORT:-4300} TESTNET_API_PORT=${TESTNET_API_PORT:-7900}
trap 'scripts/testnet.sh stop >/dev/null; rm -rf "$dir"' EXIT
scripts/testnet.sh start 5 >/dev/null
sleep 10
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A t0
for pid in $(cat "$dir/pids"); do t0[$pid]=$(ticks "$pid"); done
sleep "$idle"
hz=$(getconf CLK_TCK)
i=0
for pid in $(cat "$dir/pids"); do
    i=$((i + 1))
    t1=$(ticks "$pid")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    awk -v n="$i" -v d="$((t1 - t0[$pid]))" -v hz="$hz" -v s="$idle" -v rss="$rss" \
        'BEGIN { printf "node%d  idle RSS %6.1f MB  idle CPU %5.2f%% of one core\n", n, rss / 1024, 100 * d / hz / s }'
done
scripts/testnet.sh status
