#!/usr/bin/env bash
# Creates .venv-clients: a small project-local virtualenv with the official `openai` Python client (pinned),
# which node/tests/openai_client.rs drives against a node's /v1/chat/completions. Idempotent.
#
#   scripts/client-venv.sh        (about 20 s the first time; needs PyPI)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv-clients
want=3.63.0
if "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$want')" 2>/dev/null; then
    echo "ok  $venv (openai $want)" >&2
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q "openai==$want" >&2
echo "new $venv (openai $want)" >&2
