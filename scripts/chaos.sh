#!/usr/bin/env bash
# Chaos on a 5-process loopback testnet: node 1 submits JOBS digits jobs (2 replicas) while, every 5 s, a
# random worker (nodes 2-5) is killed with SIGKILL and started again, and the submitter itself is killed
# and restarted twice (at a third and two thirds of the batch). The client submits every job with an
# idempotency key and retries (same key) while the submitter is down, so a retry never runs a job twice.
#
#   scripts/chaos.sh [JOBS, default 10000]
#
# CHAOS_KEEP=1 keeps the testnet's folder (logs, timeline) for a look afterwards.
# Prints a summary and, as its last line, one JSON object: jobs, distinct job ids, accepted, failed,
# wrong, lost, the longest stretch without a new verdict outside the submitter's restarts (from its kill
# until its API answers again, plus 5 s), worker and submitter kills.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${1:-10000}
[[ "$jobs" =~ ^[0-9]+$ && "$jobs" -gt 0 ]] || { echo "usage: scripts/chaos.sh [JOBS]" >&2; exit 2; }
target=${CARGO_TARGET_DIR:-$root/target}
echo "building the release binary ..." >&2
# The same build as bench-flood.sh (one feature set, one build for all three scripts).
(cd "$root" && cargo build --release -q --bin fleetmesh --example flood) >&2
bin=$target/release/fleetmesh

dir=$(mktemp -d)
export TESTNET_DIR=$dir TESTNET_PORT=${TESTNET_PORT:-4800} TESTNET_API_PORT=${TESTNET_API_PORT:-7950}
export FLEETMESH_BIN=$bin
api=$TESTNET_API_PORT
cleanup() {
    [ -n "${load_pid:-}" ] && kill "$load_pid" 2>/dev/null || true
    # Nodes started again by this script are in the pids file too.
    "$root/scripts/testnet.sh" stop >/dev/null 2>&1 || true
    if [ -n "${CHAOS_KEEP:-}" ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
"$root/scripts/testnet.sh" start 5 >&2

# A node's command line, saved at start (the kill loses /proc), to start it again the same way.
declare -a cmdlines
i=0
while read -r pid; do
    i=$((i + 1))
    cmdlines[$i]=$(tr '\0' '\037' < "/proc/$pid/cmdline")
done < "$dir/pids"

pid_of() { sed -n "${1}p" "$dir/pids"; }

restart() { # node number
    local n=$1 old args
    old=$(pid_of "$n")
    kill -9 "$old" 2>/dev/null || true
    wait "$old" 2>/dev/null || true
    # Until every thread is gone (the database lock with them).
    while [ -d "/proc/$old" ] && [ "$(ls "/proc/$old/task" 2>/dev/null | wc -l)" -gt 0 ] &&
        ! grep -q '^State:.*Z' "/proc/$old/status" 2>/dev/null; do
        sleep 0.05
    done
    while [ "$(ls "/proc/$old/task" 2>/dev/null | wc -l)" -gt 1 ]; do sleep 0.05; done
    IFS=$'\037' read -r -a args <<< "${cmdlines[$n]}"
    setsid "${args[@]}" >>"$dir/node$n/node.log" 2>&1 < /dev/null &
    local new=$!
    sed -i "${n}s/.*/$new/" "$dir/pids"
}

api_up() { curl -sf --max-time 1 "http://127.0.0.1:$1/v1/status" >/dev/null 2>&1; }

python3 - "$api" <<'PY'
import json, sys, time, urllib.request
api = int(sys.argv[1]); deadline = time.time() + 30
while True:
    try:
        if all(json.load(urllib.request.urlopen(f"http://127.0.0.1:{api + i}/v1/status", timeout=2))
               ["connected_peers"] >= 4 for i in range(5)):
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("testnet did not connect within 30 s")
    time.sleep(0.2)
PY

python3 "$root/scripts/fleet_load.py" batch "$api" "$dir/node1/api.token" "$jobs" 8 chaos \
    "$dir/timeline" > "$dir/result.json" &
load_pid=$!

: > "$dir/restarts"
worker_kills=0 submitter_kills=0
started=$(date +%s)
while kill -0 "$load_pid" 2>/dev/null; do
    sleep 5
    kill -0 "$load_pid" 2>/dev/null || break
    done_now=$(tail -n 1 "$dir/timeline" 2>/dev/null | awk '{print $2}')
    if [[ "$done_now" =~ ^[0-9]+$ ]] && { { [ "$submitter_kills" -eq 0 ] && [ "$done_now" -ge $((jobs / 3)) ]; } ||
        { [ "$submitter_kills" -eq 1 ] && [ "$done_now" -ge $((2 * jobs / 3)) ]; }; }; then
        t0=$(date +%s.%N)
        restart 1
        up_by=$(( $(date +%s) + 60 ))
        until api_up "$api"; do
            [ "$(date +%s)" -lt "$up_by" ] || { echo "the submitter did not come back within 60 s" >&2; break; }
            sleep 0.1
        done
        echo "$t0 $(date +%s.%N)" >> "$dir/restarts"
        submitter_kills=$((submitter_kills + 1))
        echo "submitter killed and restarted ($submitter_kills)" >&2
    else
        n=$((2 + RANDOM % 4))
        restart "$n"
        worker_kills=$((worker_kills + 1))
    fi
done
wait "$load_pid" || true
[ -s "$dir/result.json" ] || { echo "chaos: the load generator failed" >&2; exit 1; }
# How the submitter judges its workers at the end (a worker on probation takes no more of its jobs).
curl -sf --max-time 5 "http://127.0.0.1:$api/v1/reputation" > "$dir/reputation.json" 2>/dev/null || true
python3 - "$dir/reputation.json" >&2 <<'PY' || true
import json, sys
for w in json.load(open(sys.argv[1])):
    print(f"worker {w['node'][:8]}: {w['standing']}, {w['valid']} validated, {w['invalid']} invalid, missed {w['missed']}")
PY

# A verdict is an accepted or a failed job; once every job has one, there is nothing left to wait for (the
# load generator then reads every job's view, which takes a while).
gap=$(python3 - "$dir/timeline" "$dir/restarts" "$jobs" <<'PY'
import sys
restarts = [tuple(map(float, l.split())) for l in open(sys.argv[2]) if l.strip()]
excused = lambda t: any(a <= t <= b + 5 for a, b in restarts)
jobs = int(sys.argv[3])
last_t, last_n, gap = None, None, 0.0
for line in open(sys.argv[1]):
    t, acc, failed = line.split()
    if acc == "down":
        continue
    t, decided = float(t), int(acc) + int(failed)
    if last_n is None or decided != last_n:
        last_t, last_n = t, decided
    elif not excused(t) and not excused(last_t):
        gap = max(gap, t - last_t)
    if decided >= jobs:
        break
print(f"{gap:.1f}")
PY
)
result=$(cat "$dir/result.json")
echo "chaos: $worker_kills worker kills, $submitter_kills submitter kills in $(( $(date +%s) - started )) s;" \
    "longest stretch without verdicts outside the submitter's restarts: $gap s" >&2
python3 - "$result" "$gap" "$worker_kills" "$submitter_kills" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
r.update({"max_gap_s": float(sys.argv[2]), "worker_kills": int(sys.argv[3]), "submitter_kills": int(sys.argv[4])})
print(json.dumps(r))
PY
