#!/usr/bin/env bash
# Screenshot of the submitting node's dashboard while `fleetmesh demo` runs, into docs/dashboard.png.
# Needs Debian's chromium (apt-get install chromium). Builds the release binary if FLEETMESH_BIN is unset.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/docs/dashboard.png}
bin=${FLEETMESH_BIN:-}
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --release -q -p fleetmesh-node)
    bin=$root/target/release/fleetmesh
fi
command -v chromium >/dev/null || { echo "dashboard-screenshot: chromium is not installed" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill "$demo" 2>/dev/null || true; rm -rf "$work"' EXIT
# Enough jobs, few in flight, to keep the fleet busy while the page is captured.
"$bin" demo --jobs 20000 --in-flight 4 --adaptive --malicious 1 --nodes 6 > "$work/demo.out" 2> "$work/demo.err" &
demo=$!
url=""
for _ in $(seq 1 100); do
    url=$(grep -o 'http://127.0.0.1:[0-9]*/' "$work/demo.err" | head -1 || true)
    [ -n "$url" ] && break
    sleep 0.2
done
[ -n "$url" ] || { echo "dashboard-screenshot: the demo printed no dashboard address" >&2; cat "$work/demo.err" >&2; exit 1; }
sleep 6 # let the chart fill
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$work/profile" --hide-scrollbars \
    --window-size=1280,860 --virtual-time-budget=4000 --screenshot="$out" "$url" 2>/dev/null
echo "wrote $out (from $url)"
