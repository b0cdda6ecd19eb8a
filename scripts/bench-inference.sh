#!/usr/bin/env bash
# burn vs PyTorch CPU on the same weights and inputs, measured in one run: mnist-cnn images/s at batch 1
# and 64, minilm sentences/s at batch 1 and 32, and the ratio burn / PyTorch.
#
#   scripts/bench-inference.sh            (BENCH_SECS=3 per case by default)
#   scripts/bench-inference.sh --setup    only create .venv with torch, safetensors, tokenizers
#
# Installs PyTorch CPU into a project-local virtualenv (.venv) if missing; fetches the assets if missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$root/.venv

if ! "$venv/bin/python" -c 'import torch, safetensors, tokenizers' 2>/dev/null; then
    echo "installing PyTorch CPU, safetensors, tokenizers into $venv (a few minutes, once) ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch safetensors tokenizers numpy >&2
fi
[ "${1:-}" = "--setup" ] && exit 0

scripts/fetch-assets.sh mnist minilm

echo "== burn (cargo bench -p fleetmesh-node --bench inference)" >&2
burn=$(cargo bench -q -p fleetmesh-node --bench inference 2>/dev/null | grep '^RESULT')
echo "== PyTorch (scripts/bench_torch.py)" >&2
# The environment may set OPENBLAS_* for old OpenBLAS builds; they slow current ones, so unset them here only.
torch=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$venv/bin/python" scripts/bench_torch.py | grep '^RESULT')

python3 - "$burn" "$torch" <<'PY'
import sys
parse = lambda text: {(l.split()[1], l.split()[2]): float(l.split()[3]) for l in text.splitlines() if l.strip()}
burn, torch = parse(sys.argv[1]), parse(sys.argv[2])
print(f"{'model':<10} {'batch':>5} {'burn/s':>10} {'torch/s':>10} {'burn/torch':>10}")
for key in sorted(burn, key=lambda k: (k[0], int(k[1]))):
    t = torch.get(key)
    ratio = f"{burn[key] / t:.2f}x" if t else "-"
    ts = f"{t:.1f}" if t else "-"
    print(f"{key[0]:<10} {key[1]:>5} {burn[key]:>10.1f} {ts:>10} {ratio:>10}")
PY
