#!/usr/bin/env bash
# One-command GPU check (issue 8): the CUDA tests, one full-size `final`, and the post-1 ladder,
# with their records in a log dir of their own, then the comparison with the blog.
#
#   scripts/gpu_check.sh [DATA] [LOG_DIR]
#     DATA     a CIFAR-10 source for repro.resnet --data (default: the copy beside a development checkout, ../shared/data/cifar10-jpeg.tar.gz)
#     LOG_DIR  where the records go (default logs/gpu-check-<UTC date and time>)
#
# Commit the records under logs/reference/ afterwards if they are to be the reference.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
DATA=${1:-../shared/data/cifar10-jpeg.tar.gz}
LOG_DIR=${2:-logs/gpu-check-$(date -u +%Y%m%d-%H%M%S)}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: no CUDA device visible to $PY (torch.cuda.is_available() is False)" >&2
    exit 2
fi
mkdir -p "$LOG_DIR"
"$PY" - <<'PY' | tee "$LOG_DIR/environment.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
try:
    import nvidia.dali as dali
    print("nvidia-dali", dali.__version__)
except ImportError:
    print("nvidia-dali not installed: the DALI GPU test skips (pip install -e '.[dali]')")
PY

echo "== 1/4 pytest -m gpu"
"$PY" -m pytest -m gpu -rs 2>&1 | tee "$LOG_DIR/pytest-gpu.txt"

echo "== 2/4 final, preset full, once"
"$PY" -m repro.resnet --stage final --preset full --device cuda --data "$DATA" --log-dir "$LOG_DIR"

echo "== 3/4 the post-1 ladder, preset full"
"$PY" -m repro.resnet --stage all --preset full --device cuda --data "$DATA" --log-dir "$LOG_DIR"

echo "== 4/4 airbench94 and the later records (Muon, 95%), preset full, 3 runs each"
"$PY" -m repro.resnet --ladder records --preset full --device cuda --runs 3 --data "$DATA" --log-dir "$LOG_DIR"

echo "== comparison with the blog"
"$PY" -m repro.report --log-dir "$LOG_DIR"
echo "records: $LOG_DIR/runs.jsonl"
