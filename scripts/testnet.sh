#!/usr/bin/env bash
# A local fleetmesh testnet on loopback: N node processes, node 1 the bootstrap peer of the others.
#
#   scripts/testnet.sh start N     start N nodes (default 5) and print their peer ids and API addresses;
#                                  the testnet has its own payer (TESTNET_DIR/payer.key): every node
#                                  honours it and holds a budget of 1,000 credits from it
#                                  (one owner's testnet: nodes run with --small-fleet, so a 3-node
#                                  testnet's jobs may rest on its two workers before either is trusted)
#   scripts/testnet.sh status      peer counts of every node
#   scripts/testnet.sh stop        stop exactly the processes this script started
#
# Environment: FLEETMESH_BIN (binary to run; default: build target/release/fleetmesh),
# TESTNET_DIR (default ./testnet), TESTNET_PORT (first P2P port, default 4100),
# TESTNET_API_PORT (first API port, default 7700), TESTNET_CAR (each node's vehicle source: none (default),
# simulated (a commuter car per node, seeded by its number, clock from TESTNET_CLOCK, default "tue 01:00", at
# TESTNET_SPEED simulated seconds per second, default 60) or external (POST /v1/vehicle to each node's API)),
# TESTNET_EPOCH_SECS (each node's [jobs] epoch_secs: how soon its receipts are sealed under a published
# root, which balance claims are checked against; default: the node's own default, 600).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${TESTNET_DIR:-$root/testnet}
p2p_base=${TESTNET_PORT:-4100}
api_base=${TESTNET_API_PORT:-7700}
car=${TESTNET_CAR:-none}

die() { echo "testnet: $*" >&2; exit 1; }

binary() {
    if [ -n "${FLEETMESH_BIN:-}" ]; then
        [ -x "$FLEETMESH_BIN" ] || die "FLEETMESH_BIN=$FLEETMESH_BIN is not an executable"
        echo "$FLEETMESH_BIN"
        return
    fi
    echo "building target/release/fleetmesh ..." >&2
    (cd "$root" && cargo build --release -q -p fleetmesh-node) >&2
    echo "$root/target/release/fleetmesh"
}

api_status() { # port -> JSON or nothing
    if command -v curl >/dev/null; then
        curl -sf --max-time 2 "http://127.0.0.1:$1/v1/status" || true
    else
        python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$1/v1/status', timeout=2).read().decode())" 2>/dev/null || true
    fi
}

json_field() { # json field -> value
    python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"
}

start() {
    local n=${1:-5}
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "start needs a node count, got '$n'"
    [ ! -s "$dir/pids" ] || die "a testnet is already running from $dir (run: $0 stop)"
    case "$car" in none|simulated|external) ;; *) die "TESTNET_CAR must be none, simulated or external, got '$car'" ;; esac
    local bin
    bin=$(binary)
    mkdir -p "$dir"
    : > "$dir/pids"
    local bootstrap=""
    # The testnet's own payer: every node honours it and holds a budget of it (1,000 credits).
    [ -f "$dir/payer.key" ] || "$bin" keys generate --key "$dir/payer.key" >/dev/null 2>&1
    local payer
    payer=$("$bin" keys show --key "$dir/payer.key")
    for i in $(seq 1 "$n"); do
        local home="$dir/node$i" port=$((p2p_base + i - 1)) api=$((api_base + i - 1))
        mkdir -p "$home"
        [ -f "$home/node.key" ] || "$bin" --home "$home" keys generate >/dev/null 2>&1
        if [ ! -f "$home/budget" ]; then
            "$bin" budget issue --key "$dir/payer.key" --holder "$("$bin" --home "$home" keys show)" \
                --credits 1000 --serial "$i" --out "$home/budget" >/dev/null 2>&1 \
                || die "cannot issue node$i's budget"
        fi
        if [ "$car" != none ]; then
            # The node reads HOME/fleetmesh.toml: its car.
            local speed=${TESTNET_SPEED:-60}
            [[ "$speed" =~ ^[0-9]+$ ]] && speed="$speed.0"
            [[ "$speed" =~ ^[0-9]+\.[0-9]+$ ]] || die "TESTNET_SPEED must be a number such as 60 or 0.5, got '$speed'"
            printf '[car]\nsource = "%s"\nseed = %s\nsim_start = "%s"\nsim_speed = %s\n' \
                "$car" "$i" "${TESTNET_CLOCK:-tue 01:00}" "$speed" > "$home/fleetmesh.toml"
        fi
        if [ -n "${TESTNET_EPOCH_SECS:-}" ]; then
            [[ "$TESTNET_EPOCH_SECS" =~ ^[0-9]+$ ]] || die "TESTNET_EPOCH_SECS must be a whole number of seconds"
            printf '[jobs]\nepoch_secs = %s\n' "$TESTNET_EPOCH_SECS" >> "$home/fleetmesh.toml"
        fi
        local args=(--home "$home" run --listen "/ip4/127.0.0.1/tcp/$port" --listen "/ip4/127.0.0.1/udp/$port/quic-v1"
            --api "127.0.0.1:$api" --kad-mode server --public --payer "$payer" --budget "$home/budget"
            --small-fleet)
        if [ "$i" -eq 1 ]; then
            args+=(--relay-server)
        else
            args+=(--bootstrap "$bootstrap")
        fi
        setsid "$bin" "${args[@]}" >"$home/node.log" 2>&1 < /dev/null &
        echo "$!" >> "$dir/pids"
        local peer
        peer=$("$bin" --home "$home" keys show --peer-id)
        [ "$i" -eq 1 ] && bootstrap="/ip4/127.0.0.1/tcp/$port/p2p/$peer"
        printf 'node%-3s peer_id %s  p2p /ip4/127.0.0.1/tcp/%s  api http://127.0.0.1:%s\n' "$i" "$peer" "$port" "$api"
    done
    echo "bootstrap address: $bootstrap"
    echo "$bootstrap" > "$dir/bootstrap"
}

status() {
    [ -s "$dir/pids" ] || die "no testnet running from $dir"
    local i=0
    while read -r pid; do
        i=$((i + 1))
        local api=$((api_base + i - 1)) json
        if ! kill -0 "$pid" 2>/dev/null; then
            printf 'node%-3s pid %-7s DEAD (see %s)\n' "$i" "$pid" "$dir/node$i/node.log"
            continue
        fi
        json=$(api_status "$api")
        if [ -z "$json" ]; then
            printf 'node%-3s pid %-7s api not answering yet\n' "$i" "$pid"
        else
            printf 'node%-3s pid %-7s connected_peers %s routing_table_peers %s\n' "$i" "$pid" \
                "$(json_field "$json" connected_peers)" "$(json_field "$json" routing_table_peers)"
        fi
    done < "$dir/pids"
}

stop() {
    [ -s "$dir/pids" ] || { echo "no testnet running from $dir"; return 0; }
    local pids
    pids=$(cat "$dir/pids")
    for pid in $pids; do kill -INT "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    : > "$dir/pids"
    echo "stopped $(echo "$pids" | wc -w) nodes"
}

case "${1:-}" in
    start) start "${2:-5}" ;;
    status) status ;;
    stop) stop ;;
    *) echo "usage: $0 start [N] | status | stop" >&2; exit 2 ;;
esac
