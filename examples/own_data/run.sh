#!/usr/bin/env bash
# From a folder of PNG tiles and masks to predicted masks and a Dice table.
#
#   bash examples/own_data/run.sh [--work DIR] [--tiny] [SOURCE TARGET [TEST]]
#   bash examples/own_data/run.sh                       # no data: makes a synthetic set
#
# SOURCE: labelled stain (SOURCE/images/NAME.png + SOURCE/masks/NAME.png)
# TARGET: the stain to segment (TARGET/images/; its masks/, if any, are not used to train)
# TEST:   a labelled folder to predict and score (default: TARGET, which needs masks/ then)
# --work: where the run, the predictions and the table go (default: a new temporary folder)
# --tiny or STAINADAPT_EXAMPLE_TINY=1: shrink training to seconds (what CI runs).
set -euo pipefail

TINY="${STAINADAPT_EXAMPLE_TINY:-0}"
WORK=""
POSITIONAL=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tiny) TINY=1; shift ;;
    --work) WORK="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
set -- "${POSITIONAL[@]+"${POSITIONAL[@]}"}"
if [[ $# -eq 1 || $# -gt 3 ]]; then
  echo "usage: run.sh [--work DIR] [--tiny] [SOURCE TARGET [TEST]]" >&2; exit 2
fi
WORK="${WORK:-$(mktemp -d -t stainadapt-own-data-XXXX)}"
mkdir -p "$WORK"

if [[ $# -ge 2 ]]; then
  SOURCE="$1"; TARGET="$2"; TEST="${3:-$2}"
else
  # No data given: lay out a small synthetic set exactly as real data is laid out.
  if [[ "$TINY" == "1" ]]; then N=6; SIZE=96; else N=40; SIZE=256; fi
  stainadapt synth "$WORK/data" --stain pasm --stain masson -n "$N" --size "$SIZE"
  stainadapt synth "$WORK/test" --stain masson -n "$(( N / 4 + 2 ))" --size "$SIZE" --seed 1
  SOURCE="$WORK/data/pasm"; TARGET="$WORK/data/masson"; TEST="$WORK/test/masson"
fi
echo "source: $SOURCE"; echo "target: $TARGET"; echo "test:   $TEST"; echo "work:   $WORK"

if [[ "$TINY" == "1" ]]; then
  BUDGET=(--backbone resnet18 --image-size 64 --batch-size 2 --pretrain-epochs 1
          --disc-epochs 1 --adv-epochs 1 --steps-per-epoch 1 --samples 0)
else  # a CPU-sized budget; on a GPU drop these flags for the paper's schedule
  BUDGET=(--backbone resnet18 --image-size 128 --pretrain-epochs 6 --disc-epochs 2
          --adv-epochs 10 --steps-per-epoch 10 --lr 3e-4 --disc-lr 1e-4 --dice-weight 1)
fi

# 1. Train: adapt SOURCE -> TARGET without target labels (the paper's UDA-sed).
stainadapt train --source "$SOURCE" --target "$TARGET" --mode uda \
    --disc mirrored --disc shape "${BUDGET[@]}" --out "$WORK/run"

# 2. Predict every image of the test folder (masks 0/255, same names as the images).
stainadapt predict "$TEST/images" --model "$WORK/run" --out "$WORK/pred"

# 3. Score them against the test folder's ground truth: per image, mean ± std, pooled.
#    (add --json for machine-readable output)
stainadapt evaluate "$WORK/pred" "$TEST/masks"
echo "run: $WORK/run   predictions: $WORK/pred"
