#!/usr/bin/env bash
# Prepare, on the CPU machine, what benchmarks/gpu_run.sh needs on a bare GPU machine
# (docs/reproduction.md, "GPU run"): the CIFAR-10 file in data/ and a lightly wheel in .whl/
# (the GPU image has torch, Lightning, torchmetrics, scikit-learn, SciPy, but not lightly).
# Both folders are git-ignored; name them in the device call's `carry`.
#
# usage: benchmarks/gpu_prepare.sh [path/to/cifar10-train-10k.npz]   (run from the repository root)
set -euo pipefail
SRC="${1:-../shared/data/cifar10-train-10k.npz}"
PY="${PYTHON:-python3}"
mkdir -p data .whl
cp -u "$SRC" data/cifar10-train-10k.npz
# lightly is pure Python (one wheel for every platform); its own dependencies are not needed to import
# lightly.loss / lightly.models.modules, which is all lightning_memloc.models.ssl uses.
VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("lightly"))' 2>/dev/null || echo 1.6.0)"
ls .whl/lightly-"$VERSION"-*.whl >/dev/null 2>&1 || "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl "lightly==$VERSION"
du -sh data .whl
