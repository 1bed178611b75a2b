#!/usr/bin/env bash
# The GPU run of the paper-scale check (docs/reproduction.md, "GPU run"), in one call of about 9 minutes:
#   1. the CUDA-only tests that CPU CI skips, in the background (small; they finish within the
#      first minute of training): tests/test_reliability.py::test_candidates_and_model_on_different_devices,
#      tests/test_views.py::test_views_same_on_cuda and tests/test_autocast.py's pinned-memory and
#      autocast tests (3 test cases);
#   2. examples/reproduce_gpu.py on data/cifar10-train-10k.npz with a TRAIN_SECONDS budget (default 420).
# Writes into OUT (argument, else $OUT, else runs/gpu) 8 files: gpu_tests.log, run.log, results.json,
# tables.md, report.json, history.json, f.pt, g.pt.
#
# usage (repository root, after benchmarks/gpu_prepare.sh):  benchmarks/gpu_run.sh [OUT]
# env: TRAIN_SECONDS (420), PYTHON (python3), EXTRA (more reproduce_gpu.py options)
set -uo pipefail
OUT="${1:-${OUT:-runs/gpu}}"
TRAIN_SECONDS="${TRAIN_SECONDS:-420}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then  # lightly, carried as a wheel (benchmarks/gpu_prepare.sh)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_run.sh: installing .whl/*.whl failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
[ -f data/cifar10-train-10k.npz ] || { echo "gpu_run.sh: data/cifar10-train-10k.npz missing: run benchmarks/gpu_prepare.sh and carry data/" >&2; exit 1; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c 'import torch, pytorch_lightning as pl, lightly; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "| lightning", pl.__version__, "| lightly", lightly.__version__)'
} 2>&1 | tee "$OUT/run.log"

( timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider \
    tests/test_reliability.py::test_candidates_and_model_on_different_devices \
    tests/test_views.py::test_views_same_on_cuda \
    tests/test_autocast.py::test_pinned_cuda_pass_gives_identical_results \
    tests/test_autocast.py::test_cuda_autocast_is_within_tolerance > "$OUT/gpu_tests.log" 2>&1
  echo "pytest exit status $?" >> "$OUT/gpu_tests.log" ) &
TESTS=$!

timeout $((${TRAIN_SECONDS%.*} + 150)) "$PY" examples/reproduce_gpu.py --data data/cifar10-train-10k.npz \
  --out "$OUT" --train-seconds "$TRAIN_SECONDS" ${EXTRA:-} 2>&1 | tee -a "$OUT/run.log"
STATUS=${PIPESTATUS[0]}
wait "$TESTS"
echo "== GPU-only tests"; tail -n 5 "$OUT/gpu_tests.log"
echo "== reproduce_gpu.py exit status $STATUS"; [ -f "$OUT/tables.md" ] && cat "$OUT/tables.md"
grep -q "5 passed" "$OUT/gpu_tests.log" && exit "$STATUS"
echo "gpu_run.sh: the GPU-only tests did not both pass (skipped = no CUDA)" >&2; exit 1
