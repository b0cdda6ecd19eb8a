#!/usr/bin/env bash
# SmolLM2-135M-Instruct text generation, burn (the packed llama forward jobs run) vs PyTorch (transformers)
# on the same GGUF weights dequantised to f32, the same chat prompts and thread count, in one run: tokens/s
# at batch 1 and 8 and the ratio burn / PyTorch, and the teacher-forced check's cost as a fraction of
# generating the same tokens.
#
#   scripts/bench-llm.sh            the benchmark
#   scripts/bench-llm.sh --setup    only create .venv with torch, transformers, gguf, accelerate
#
# Installs PyTorch CPU and transformers into a project-local virtualenv (.venv) if missing; fetches the
# asset if missing. Figures vary 15-40 % between runs on shared machines: compare the ratios.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$root/.venv

if ! "$venv/bin/python" -c 'import torch, transformers, gguf, accelerate' 2>/dev/null; then
    echo "installing PyTorch CPU, transformers, gguf, accelerate into $venv (a few minutes, once) ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch transformers gguf accelerate numpy >&2
fi
[ "${1:-}" = "--setup" ] && exit 0

scripts/fetch-assets.sh smollm2

echo "== burn (cargo bench -p fleetmesh-node --bench llm)" >&2
burn=$(RAYON_NUM_THREADS=2 cargo bench -q -p fleetmesh-node --bench llm | grep '^RESULT')
echo "== PyTorch (scripts/bench_llm_torch.py)" >&2
# The environment may set OPENBLAS_* for old OpenBLAS builds; they slow current ones, so unset them here only.
torch=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$venv/bin/python" scripts/bench_llm_torch.py 2>/dev/null | grep '^RESULT')

python3 - "$burn" "$torch" <<'PY'
import json, sys
parse = lambda text: {(l.split()[1], l.split()[2]): float(l.split()[3]) for l in text.splitlines() if l.strip()}
burn, torch = parse(sys.argv[1]), parse(sys.argv[2])
print(f"{'batch':>5} {'burn tok/s':>11} {'torch tok/s':>12} {'burn/torch':>10}")
report = {}
for batch in ("1", "8"):
    b, t = burn[("smollm2", batch)], torch[("smollm2", batch)]
    print(f"{batch:>5} {b:>11.1f} {t:>12.1f} {b / t:>9.2f}x")
    report[f"burn_tokens_per_s_batch{batch}"] = b
    report[f"torch_tokens_per_s_batch{batch}"] = t
    report[f"ratio_batch{batch}"] = round(b / t, 3)
verify = burn[("verify", "1")]
print(f"teacher-forced check: {verify:.3f} of the time to generate the same tokens (batch 1)")
report["verify_fraction"] = verify
print(json.dumps(report))
PY
