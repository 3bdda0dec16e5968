#!/usr/bin/env bash
# The prepared GPU check (docs/benchmarks.md, "GPU check"): the 0.5B and 7B recipes' training steps
# at real shapes with random weights, and a 7B QLoRA step's peak memory; about 5 minutes on one H100.
#
#   tools/gpu_check.sh [--wheels DIR] [CHECK OPTIONS]     (python -m vltool.cli.gpu_check --help)
#
# --wheels DIR installs the wheels in DIR (tools/gpu_check_wheels.sh downloads them) into a folder
# of their own, offline and without dependency resolution, and puts it first on PYTHONPATH: the
# packages a bare GPU machine lacks (mmengine, bitsandbytes, ...) or has in another version
# (transformers). Without --wheels, ./.whl is used when it holds wheels. Nothing is downloaded.
# PYTHON picks the interpreter (default python3); GPU_CHECK_SITE the install folder.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=""
if [[ "${1:-}" == "--wheels" ]]; then
    wheels=${2:?--wheels needs a folder}
    shift 2
elif compgen -G ".whl/*.whl" >/dev/null; then
    wheels=.whl
fi
if [[ -n "$wheels" ]]; then
    site=${GPU_CHECK_SITE:-/tmp/vltool_gpu_check_site}
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site"
fi
# belt and braces: the check reads only the folders it writes
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$python" -m vltool.cli.gpu_check "$@"
