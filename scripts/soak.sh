#!/usr/bin/env bash
# Soak: a 5-process loopback testnet under steady jobs (4 clients submitting digits jobs to node 1 and
# waiting for each verdict) for MINUTES; the testnet's summed RSS is sampled every 30 s. Passes when the
# RSS at the end is within 10 % of its value after 5 minutes.
#
#   scripts/soak.sh [MINUTES, default 60]
#
# Prints the samples and, as its last line, one JSON object: minutes, jobs_per_s, rss_5min_mb,
# rss_end_mb, growth (end / 5 min), pass.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-60}
[[ "$minutes" =~ ^[0-9]+$ && "$minutes" -ge 6 ]] || { echo "usage: scripts/soak.sh [MINUTES >= 6]" >&2; exit 2; }
target=${CARGO_TARGET_DIR:-$root/target}
echo "building the release binary ..." >&2
# The same build as bench-flood.sh (one feature set, one build for all three scripts).
(cd "$root" && cargo build --release -q --bin fleetmesh --example flood) >&2

dir=$(mktemp -d)
export TESTNET_DIR=$dir TESTNET_PORT=${TESTNET_PORT:-4900} TESTNET_API_PORT=${TESTNET_API_PORT:-7990}
export FLEETMESH_BIN=$target/release/fleetmesh
api=$TESTNET_API_PORT
cleanup() {
    [ -n "${load_pid:-}" ] && kill "$load_pid" 2>/dev/null || true
    "$root/scripts/testnet.sh" stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
"$root/scripts/testnet.sh" start 5 >&2

rss() {
    local total=0 kb pid
    while read -r pid; do
        kb=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${kb:-0}))
    done < "$dir/pids"
    echo $((total / 1024))
}

until curl -sf --max-time 1 "http://127.0.0.1:$api/v1/status" >/dev/null 2>&1; do sleep 0.2; done
sleep_until() { while [ "$(date +%s)" -lt "$1" ]; do sleep 1; done; }
start=$(date +%s)
python3 "$root/scripts/fleet_load.py" rate "$api" "$dir/node1/api.token" $((minutes * 60)) 4 > "$dir/rate" &
load_pid=$!
rss5=""
for t in $(seq 30 30 $((minutes * 60))); do
    sleep_until $((start + t))
    now=$(rss)
    printf 'minute %5.1f  testnet RSS %s MB\n' "$(awk -v t="$t" 'BEGIN { print t / 60 }')" "$now"
    [ "$t" -eq 300 ] && rss5=$now
    end_rss=$now
done
wait "$load_pid" || true
rate=$(cat "$dir/rate" 2>/dev/null || echo 0)
growth=$(awk -v a="$end_rss" -v b="$rss5" 'BEGIN { printf "%.3f", a / b }')
pass=$(awk -v g="$growth" 'BEGIN { print (g <= 1.10 && g >= 0.90) ? "true" : "false" }')
printf '{"minutes":%s,"jobs_per_s":%s,"rss_5min_mb":%s,"rss_end_mb":%s,"growth":%s,"pass":%s}\n' \
    "$minutes" "$rate" "$rss5" "$end_rss" "$growth" "$pass"
