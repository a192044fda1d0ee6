#!/usr/bin/env bash
# One prepared GPU call: everything a lent H200 should measure,
# in one call of the device tool, inside its 600 s limit. Usage, from the repo root:
#
#   bash benchmarks/device/prepare.sh                      # here, once (wheels)
#   mkdir -p .device-data && cp -r ../shared/data/real-pas-aidpath .device-data/   # the real tiles
#   run(command="bash benchmarks/device/run.sh", carry=[".whl", ".device-data"], timeout_s=600)
#
# Stages (each under `timeout`, cut to what is left of DEADLINE seconds; all output
# under $OUT, which comes back even if the call is killed):
#   env     versions, nvidia-smi
#   smoke   the CUDA path through the public CLI: train uda (mirrored + shape) with
#           --amp bf16 for a few steps, predict, evaluate
#   real    benchmarks/real_tissue.py --budget full on fold 0 (the `real` recipe and the
#           plain smp loop, resnet34, 4000 steps) on the real PAS tiles in
#           .device-data/real-pas-aidpath (or REAL_DATA); resumable: a later call
#           continues it
#   slide   (not in the default STAGES) benchmarks/predict_memory.py --slide: predict a 40000 px Aperio-style SVS
#           (a third tissue) and its all-glass twin with an untrained resnet18: peak
#           RSS, wall over the model's own time per window (the slides are written
#           under /tmp, not $OUT)
#   report  benchmarks/report.py three times: fp32 eager, bf16 + channels_last,
#           bf16 + channels_last + torch.compile (batch 32, 256 px)
#   table   benchmarks/paper_table.py, FULL budget, one seed, the rows that decide
#           whether UDA closes the gap (source-only, its longer twin, Macenko, UDA-sed,
#           its alpha=0 control, SDA-sed, UDA-sed + self-training); resumable: a later
#           call continues it
# STAGES="env smoke report" runs a subset. SA_DRY=1 runs the same plumbing on the CPU
# with tiny sizes (what the test suite cannot check: this script itself).
set -uo pipefail
OUT=${OUT:-/tmp/stainadapt-device}
DEADLINE=${DEADLINE:-560}
STAGES=${STAGES:-"env smoke real report table"}
REAL_DATA=${REAL_DATA:-}
for d in .device-data/real-pas-aidpath shared/data/real-pas-aidpath ../shared/data/real-pas-aidpath; do
    [ -z "$REAL_DATA" ] && [ -d "$d/images" ] && REAL_DATA=$d
done
mkdir -p "$OUT"
START=$(date +%s)
export PYTHONUNBUFFERED=1 STAINADAPT_CACHE="$OUT/cache"

if ls .whl/*.whl >/dev/null 2>&1 && [ -z "${SA_DRY:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 3; }
    export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH"
fi
if [ -n "${SA_DRY:-}" ]; then
    DEV=cpu; AMP=off; BATCH=2; SIZE=64; REPORT_EXTRA="--quick --skip smp,macenko,predict"
    TABLE_ARGS="--budget tiny"; SLIDE_SIZE=1024; REAL_BUDGET=tiny
else
    DEV=cuda; AMP=bf16; BATCH=32; SIZE=256; REPORT_EXTRA="--skip smp,macenko"
    TABLE_ARGS="--budget full --seeds 1"; SLIDE_SIZE=40000; REAL_BUDGET=full
fi

left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
stage() {  # stage NAME LIMIT CMD...: run CMD with min(LIMIT, time left), log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    local t; t=$(left)
    (( t < limit )) && limit=$t
    if (( limit < 20 )); then echo "[$name] skipped: ${t}s left"; return; fi
    echo "[$name] up to ${limit}s: $*"
    local s; s=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "[$name] rc=$rc in $(( $(date +%s) - s ))s"
    tail -n 5 "$OUT/$name.log"
}
want() { [[ " $STAGES " == *" $1 "* ]]; }

if want env; then
    stage env 60 bash -c 'nvidia-smi || true; python3 -c "
import sys, torch, timm, kornia, stainadapt
print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"-\")
print(\"timm\", timm.__version__, \"kornia\", kornia.__version__, \"stainadapt\", stainadapt.__version__)"'
fi
if want smoke; then
    stage smoke 120 bash -c "
set -e
stainadapt synth $OUT/smoke-data --stain pasm --stain masson -n 8 --size 128 --seed 0
stainadapt train --source $OUT/smoke-data/pasm --target $OUT/smoke-data/masson --mode uda \
    --disc mirrored --disc shape --backbone resnet18 --image-size $SIZE --batch-size 4 \
    --pretrain-epochs 1 --disc-epochs 1 --adv-epochs 1 --steps-per-epoch 3 \
    --device $DEV --amp $AMP --out $OUT/smoke-run
stainadapt predict $OUT/smoke-data/masson/images --model $OUT/smoke-run --out $OUT/smoke-masks --device $DEV
stainadapt evaluate $OUT/smoke-masks $OUT/smoke-data/masson/masks"
fi
if want real; then
    if [ -n "$REAL_DATA" ]; then
        stage real 240 python3 benchmarks/real_tissue.py "$REAL_DATA" --budget $REAL_BUDGET \
            --device $DEV --only recipe,smp --folds 0 --out "$OUT/real" --md "$OUT/REAL_TISSUE.md"
    else
        echo "[real] skipped: no real tiles (.device-data/real-pas-aidpath or REAL_DATA)"
    fi
fi
if want slide; then
    stage slide 300 bash -c "python3 benchmarks/predict_memory.py \
        --slide --size $SLIDE_SIZE --backbone resnet18 --device $DEV --amp $AMP \
        --batch-size $BATCH --workdir /tmp/stainadapt-slide > $OUT/slide.json"
fi
if want report; then
    for cfg in "fp32:" "bf16:--amp $AMP --channels-last" "compile:--amp $AMP --channels-last --compile"; do
        name=${cfg%%:*}; flags=${cfg#*:}
        limit=150; skip=$REPORT_EXTRA
        [ "$name" = compile ] && { limit=200; skip="--skip smp,macenko,predict ${SA_DRY:+--quick}"; }
        stage "report-$name" $limit bash -c "python3 benchmarks/report.py --json --device $DEV \
            --batch $BATCH --size $SIZE $flags $skip > $OUT/report-$name.json"
    done
fi
if want table; then
    stage table 400 python3 benchmarks/paper_table.py $TABLE_ARGS --device $DEV \
        --only source-only,source-only-longer,macenko,uda-sed,uda-sed-zero,sda-sed,uda-sed-st \
        --out "$OUT/paper-table" --md "$OUT/PAPER_TABLE.md"
fi
echo "done in $(( $(date +%s) - START ))s; outputs in $OUT"
