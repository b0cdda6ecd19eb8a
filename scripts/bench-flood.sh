#!/usr/bin/env bash
# Honest throughput and node memory on a 5-process loopback testnet, without and during an offer flood
# (examples/flood.rs, its own libp2p node): OFFERS validly signed offers in SECONDS for models nobody has,
# first each from a fresh key paid by a payer of the attacker's own (unfunded), then all from one
# submitter the testnet's payer funds (a paying submitter gone rogue).
#
#   scripts/bench-flood.sh [OFFERS, default 10000] [SECONDS, default 10]
#
# Honest load: 8 clients submitting digits jobs (2 replicas, waiting for each verdict) to node 1's API.
# Prints a table and, as its last line, one JSON object: baseline and flood throughput (jobs/s) and
# their ratios, the testnet's summed RSS (baseline and peak) and its ratio, offers dropped as unfunded
# and as rate-limited (summed over the nodes' /metrics), and the growth of the nodes' folders on disk.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
offers=${1:-10000}
seconds=${2:-10}
[[ "$offers" =~ ^[0-9]+$ && "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || {
    echo "usage: scripts/bench-flood.sh [OFFERS] [SECONDS]" >&2
    exit 2
}
target=${CARGO_TARGET_DIR:-$root/target}
echo "building the release binary and the flood example ..." >&2
(cd "$root" && cargo build --release -q --bin fleetmesh --example flood) >&2
bin=$target/release/fleetmesh
flood=$target/release/examples/flood

dir=$(mktemp -d)
export TESTNET_DIR=$dir TESTNET_PORT=${TESTNET_PORT:-4700} TESTNET_API_PORT=${TESTNET_API_PORT:-7900}
export FLEETMESH_BIN=$bin
api=$TESTNET_API_PORT
cleanup() {
    "$root/scripts/testnet.sh" stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
"$root/scripts/testnet.sh" start 5 >&2

py() { python3 - "$@"; }

# Until every node sees the four others (at most 30 s).
py "$api" <<'PY'
import json, sys, time, urllib.request
api = int(sys.argv[1])
deadline = time.time() + 30
while True:
    try:
        ok = all(json.load(urllib.request.urlopen(f"http://127.0.0.1:{api + i}/v1/status", timeout=2))
                 ["connected_peers"] >= 4 for i in range(5))
    except Exception:
        ok = False
    if ok:
        break
    if time.time() > deadline:
        sys.exit("testnet did not connect within 30 s")
    time.sleep(0.2)
PY

# Honest load for DURATION seconds; prints verified jobs per second.
load() { python3 "$root/scripts/fleet_load.py" rate "$api" "$dir/node1/api.token" "$1" 8; }

# The testnet's summed RSS in MB.
rss() {
    local total=0 kb pid
    while read -r pid; do
        kb=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${kb:-0}))
    done < "$dir/pids"
    echo $((total / 1024))
}

# Samples rss() every 0.5 s into FILE until it is removed.
sample_peak() {
    local file=$1 peak=0 now
    while [ -f "$file" ]; do
        now=$(rss)
        [ "$now" -gt "$peak" ] && peak=$now && echo "$peak" > "$file.peak"
        sleep 0.5
    done
}

# A counter summed over the nodes' /metrics: gossip messages with this outcome.
dropped() {
    py "$api" "$1" <<'PY'
import sys, urllib.request
api, outcome = int(sys.argv[1]), sys.argv[2]
total = 0
for i in range(5):
    text = urllib.request.urlopen(f"http://127.0.0.1:{api + i}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("fleetmesh_gossip_messages_total") and f'outcome="{outcome}"' in line:
            total += float(line.rsplit(" ", 1)[1])
print(int(total))
PY
}

disk() { du -sk "$dir"/node*/db | awk '{s += $1} END {print s}'; }

bootstrap=$(cat "$dir/bootstrap")
echo "warm-up (workers earn trust) ..." >&2
load 5 >/dev/null
disk_before=$(disk)
echo "baseline ..." >&2
rss_base=$(rss)
base=$(load "$seconds")

flooded() { # payer key or nothing -> jobs/s during a flood (the phase's peak RSS: $dir/sampling.peak)
    rm -f "$dir/sampling.peak"
    touch "$dir/sampling"
    sample_peak "$dir/sampling" &
    local sampler=$!
    "$flood" "$bootstrap" "$offers" "$seconds" "$@" > "$dir/flood.json" &
    local attacker=$!
    local rate
    rate=$(load "$seconds")
    wait "$attacker" || true
    rm -f "$dir/sampling"
    wait "$sampler" || true
    echo "$rate"
}
echo "flood from fresh unfunded keys ..." >&2
unfunded=$(flooded)
rss_peak_unfunded=$(cat "$dir/sampling.peak" 2>/dev/null || echo "$rss_base")
echo "flood from one funded submitter ..." >&2
funded=$(flooded "$dir/payer.key")
rss_peak_funded=$(cat "$dir/sampling.peak" 2>/dev/null || echo "$rss_base")
rss_peak=$(( rss_peak_unfunded > rss_peak_funded ? rss_peak_unfunded : rss_peak_funded ))
unfunded_dropped=$(dropped Unfunded)
rate_limited=$(dropped RateLimited)
"$root/scripts/testnet.sh" stop >/dev/null
disk_after=$(disk)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
printf '\n%-34s %10s\n' "phase" "jobs/s"
printf '%-34s %10s\n' "no flood" "$base"
printf '%-34s %10s  (%sx)\n' "flood, unfunded fresh keys" "$unfunded" "$(ratio "$unfunded" "$base")"
printf '%-34s %10s  (%sx)\n' "flood, one funded submitter" "$funded" "$(ratio "$funded" "$base")"
printf 'testnet RSS: %s MB before, peak %s MB during the unfunded flood and %s MB during the funded one (%sx at most); offers dropped unfunded %s, rate-limited %s; disk %+d kB\n' \
    "$rss_base" "$rss_peak_unfunded" "$rss_peak_funded" "$(ratio "$rss_peak" "$rss_base")" "$unfunded_dropped" \
    "$rate_limited" $((disk_after - disk_before))
printf '{"offers":%s,"seconds":%s,"baseline_jobs_per_s":%s,"unfunded_jobs_per_s":%s,"unfunded_ratio":%s,"funded_jobs_per_s":%s,"funded_ratio":%s,"rss_baseline_mb":%s,"rss_peak_mb":%s,"rss_ratio":%s,"dropped_unfunded":%s,"dropped_rate_limited":%s,"disk_growth_kb":%s}\n' \
    "$offers" "$seconds" "$base" "$unfunded" "$(ratio "$unfunded" "$base")" "$funded" "$(ratio "$funded" "$base")" \
    "$rss_base" "$rss_peak" "$(ratio "$rss_peak" "$rss_base")" "$unfunded_dropped" "$rate_limited" \
    $((disk_after - disk_before))
