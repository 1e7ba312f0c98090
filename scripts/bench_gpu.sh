#!/usr/bin/env bash
# The GPU measurement of docs/efficiency.md ("GPU measurement"): ProxyV vs the baseline on one GPU,
# full-depth Vicuna-7B with random weights in bf16, 50 text tokens + 5 crops; prefill, decoding step,
# training step with and without gradient checkpointing, under every attention backend, plus the
# tiny end-to-end training throughput. A few minutes on one H100 / H200.
#
#   bash scripts/bench_gpu.sh [options of python -m llava.eval.gpu_benchmark, e.g. --out DIR --quick]
#
# Writes bench-gpu/gpu_benchmark.json and bench-gpu/gpu_benchmark.md (--out to change).
#
# A machine whose Python lacks this package's dependencies (transformers 5.20 - 5.23), e.g. one
# with no package index: download the wheels where pip works, into .whl/ in the repository root
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl transformers==5.23.0
# (name any other package missing there the same way), copy the repository over, and this script
# installs them first into ${BENCH_SITE:-/tmp/proxyv-site}, ahead of the installed ones on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# No CUDA: one line and exit status 2, before anything is installed or imported.
if ! "${PYTHON}" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: scripts/bench_gpu.sh needs a CUDA GPU, and ${PYTHON} sees none (torch.cuda.is_available() is False or torch is missing)." >&2
  exit 2
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=${BENCH_SITE:-/tmp/proxyv-site}
  echo "Installing the carried wheels from .whl/ into ${SITE}: $(cd .whl && ls -- *.whl | tr '\n' ' ')"
  "${PYTHON}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${SITE}" .whl/*.whl
  export PYTHONPATH="${SITE}:${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
else
  export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
fi

# Every torch.compile recompilation is logged (flex_attention and its block masks compile): more
# than a few per backend means a compile cache miss is being timed, or flex fell back to eager.
export TORCH_LOGS="${TORCH_LOGS:-recompiles}"
exec "${PYTHON}" -m llava.eval.gpu_benchmark "$@"
