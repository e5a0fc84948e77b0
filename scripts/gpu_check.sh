#!/usr/bin/env bash
# One-command GPU check (issue 8): the CUDA tests, full-size runs, then the comparison with the sources, with the
# records in a log dir of their own.
#
#   scripts/gpu_check.sh [--quick] [DATA] [LOG_DIR]
#     --quick  for a GPU held by the quarter hour (its time limits add up to 9 minutes): the CUDA tests,
#              airbench94 x3, tta x2, final x1 and airbench94_muon x2, each step under a time limit (a run cut short
#              is logged as interrupted, with its epochs so far). Without it: the CUDA tests, the post-1 ladder and
#              the records ladder x3 (half an hour by the sources' own times, more on a slower card).
#     DATA     a CIFAR-10 source for repro.resnet --data (default: the copy beside a development checkout, ../shared/data/cifar10-jpeg.tar.gz)
#     LOG_DIR  where the records go (default logs/gpu-check-<UTC date and time>)
#
# Runs from a checkout without installing it (the machine's own torch is used). Commit the records under
# logs/reference/ afterwards if they are to be the reference.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
PY=${PYTHON:-python}
DATA=${1:-../shared/data/cifar10-jpeg.tar.gz}
LOG_DIR=${2:-logs/gpu-check-$(date -u +%Y%m%d-%H%M%S)}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: $PY cannot import torch or sees no CUDA device (torch.cuda.is_available() is False)" >&2
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

failed=0
# step LIMIT_S TITLE COMMAND...: a step that fails or runs out of time is reported and the check goes on
step() {
    local limit=$1 title=$2; shift 2
    echo "== $title"
    timeout "$limit" "$@" || { echo "!! $title: exit status $?"; failed=1; }
}
RESNET=("$PY" -m repro.resnet --preset full --device cuda --data "$DATA" --log-dir "$LOG_DIR")

# --quick's limits (75 + 90 + 65 + 270 + 40 s) come from the H200 check of 2026-12-04 (docs/results.md), where
# the steps took 45, 42, 52, about 250 (final: 233 s on the blog's clock) and 23 s. The first run step also
# decodes the data into the cache.
step $(( QUICK ? 75 : 900 )) "pytest -m gpu" "$PY" -m pytest -m gpu -rs -p no:cacheprovider --junitxml "$LOG_DIR/pytest-gpu.xml"
# pytest writes skip reasons with absolute paths: the results name files relative to the checkout instead
[ -f "$LOG_DIR/pytest-gpu.xml" ] && sed -i "s#$PWD/##g" "$LOG_DIR/pytest-gpu.xml"
if [ "$QUICK" = 1 ]; then
    step 90 "airbench94, 3 runs" "${RESNET[@]}" --stage airbench94 --runs 3
    step 65 "tta, 2 runs" "${RESNET[@]}" --stage tta --runs 2
    step 270 "final, once" "${RESNET[@]}" --stage final
    step 40 "airbench94_muon, 2 runs" "${RESNET[@]}" --stage airbench94_muon --runs 2
else
    step 7200 "the post-1 ladder" "${RESNET[@]}" --stage all
    step 7200 "airbench94 and the later records, 3 runs each" "${RESNET[@]}" --ladder records --runs 3
fi

echo "== comparison with the sources"
"$PY" -m repro.report --log-dir "$LOG_DIR" || failed=1
echo "records: $LOG_DIR/runs.jsonl"
exit "$failed"
