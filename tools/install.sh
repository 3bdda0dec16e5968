#!/usr/bin/env bash
# Install vltool into ./.venv. `--test` adds the test extras.
# torch comes first and pinned: an unpinned torch would pull a multi-GB CUDA build on a CPU
# machine. On a GPU machine, install your CUDA torch into .venv first; it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0"
fi
# DeepSpeed builds its ops just in time on first use (needs g++), not at install
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q -e ".${extras}"
.venv/bin/python -c "import torch, transformers, mmengine; print(f'vltool installed: torch {torch.__version__}, transformers {transformers.__version__}, mmengine {mmengine.__version__}')"
