#!/usr/bin/env bash
# One-command GPU check: the CUDA tests, the anchors' own code beside the suite's matching stages on this card, then
# the comparison with the sources, with the records in a log dir of their own.
#
#   scripts/gpu_check.sh [--quick] [DATA] [LOG_DIR]
#     --quick  for a GPU held by the quarter hour (its time limits add up to 9 minutes): the CUDA tests, then
#              scripts/anchor_side_by_side.py: airbench94, airbench94_compiled, airbench94_muon and hiverge's
#              record, each anchor and its stage for as many runs as its limit allows (a run cut short is logged
#              as interrupted), one table (LOG_DIR/side-by-side/side_by_side.md). Without it: the CUDA tests, the
#              side-by-side with 25 runs a side, the post-1 ladder and the records ladder x3 (an hour or more).
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

# --quick's limits: 60 s of CUDA tests (45 s on the H200, 2026-12-04), then 40 s a side for airbench94 and Muon,
# 60 for the compiled pair, 80 for hiverge's anchor and 40 for the suite's eager hiverge94 (compilation first; the
# H200 ran airbench94 in 4 s, Muon in 2.3 s), the anchors' data cache (about 20 s): about 9 minutes in all.
step $(( QUICK ? 60 : 900 )) "pytest -m gpu" "$PY" -m pytest -m gpu -rs -p no:cacheprovider --junitxml "$LOG_DIR/pytest-gpu.xml"
# pytest writes skip reasons with absolute paths: the results name files relative to the checkout instead
[ -f "$LOG_DIR/pytest-gpu.xml" ] && sed -i "s#$PWD/##g" "$LOG_DIR/pytest-gpu.xml"
step $(( QUICK ? 520 : 3600 )) "the anchors beside the suite" "$PY" scripts/anchor_side_by_side.py --python "$PY" \
    --data "$DATA" --log-dir "$LOG_DIR/side-by-side" --limit $(( QUICK ? 40 : 300 ))
if [ "$QUICK" = 0 ]; then
    step 7200 "the post-1 ladder" "${RESNET[@]}" --stage all
    step 7200 "airbench94 and the later records, 3 runs each" "${RESNET[@]}" --ladder records --runs 3
fi

echo "== comparison with the sources"
suite_logs=()
for log in "$LOG_DIR" "$LOG_DIR"/side-by-side/suite-*; do [ -f "$log/runs.jsonl" ] && suite_logs+=(--log-dir "$log"); done
[ ${#suite_logs[@]} -gt 0 ] && { "$PY" -m repro.report "${suite_logs[@]}" --out "$LOG_DIR/report" || failed=1; }
echo "records: $LOG_DIR/runs.jsonl"
exit "$failed"
