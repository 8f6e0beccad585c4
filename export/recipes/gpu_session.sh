#!/usr/bin/env bash
# One lent-GPU session (see ../shared/GPU.md and docs/flagship.md): the paper's 18-layer flagship
# (and, with WITH_DEFAULT=1, candidates for the CPU default) trained on one GPU, then packed for the
# trip back to the machine that exports and serves them.
#
#   bash export/recipes/gpu_session.sh train   # trains, packs, puts the first pieces in $OUT
#   bash export/recipes/gpu_session.sh rest    # the next call, at once: the remaining pieces
#
# The device tool returns at most 4 pieces of 15 MiB per call (64 MiB); the packed flagship alone is
# ~97 MB (39 M weights + the 3072² ZCA matrix as fp16), so it takes two calls. Back here:
#   cat part-* | tar -x  →  elu-paper18-lr<best>.tar, its metrics, logs.txt; then
#   tar -x -C runs/ -f elu-paper18-lr<best>.tar and `eluserve export runs/elu-paper18-lr<best>
#   --name elu-paper18-cifar10 --fp16-storage --sample 5000` (its model card records both commands).
#
# Before the first call, here: mkdir -p .data && cp ../shared/data/cifar10-jpeg/train.zip .data/
# and name `.data` in the call's carry. The zip is put back at the path it has here, so the commands
# the model cards record are the ones that reproduce the runs.
#
# Each learning rate in FLAGSHIP_LRS trains side by side (its no-batch-norm depth makes the step size
# the one setting a single try can get wrong), for as many epochs as fit in FLAGSHIP_MIN minutes (the
# trainer times its first steps and records the epoch count it settles on); the better final
# validation accuracy is packed. The defaults are the shipped flagship's run: one learning rate, the
# GPU to itself (2.2 s an epoch on an H200; side by side, each run gets half).
set -euo pipefail
export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=True
STAGE=${1:?usage: gpu_session.sh train|rest}
PACK=/tmp/eluserve-pack
PIECES_PER_CALL=4
OUT=${OUT:?the device tool sets OUT}
DATA=../shared/data/cifar10-jpeg/train.zip
TRAIN="python3 -m service.cli train --data $DATA --device ${DEVICE:-cuda}"
TRAIN_ARGS=${TRAIN_ARGS:-}  # e.g. "--train-limit 512 --epochs 1" for a smoke run on a CPU
FLAGSHIP_MIN=${FLAGSHIP_MIN:-5.5}
FLAGSHIP_LRS=${FLAGSHIP_LRS:-0.06}

send_pieces() {  # move the next pieces into $OUT and say what is left
    local sent=0
    for piece in "$PACK"/part-*; do
        [ -e "$piece" ] || break
        [ "$sent" -lt "$PIECES_PER_CALL" ] || break
        mv "$piece" "$OUT/"
        sent=$((sent + 1))
    done
    echo "sent $sent pieces; left: $(find "$PACK" -name 'part-*' | wc -l)"
}

if [ "$STAGE" = rest ]; then
    send_pieces
    exit 0
fi

rm -rf "$PACK"
mkdir -p "$(dirname "$DATA")" "$PACK"
[ -f "$DATA" ] || cp .data/train.zip "$DATA"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"

if [ "${WITH_DEFAULT:-0}" = 1 ]; then  # elufast_res9 for the default: two seeds, 40 epochs
    $TRAIN --out runs/elufast-cifar10-v3 --model elufast_res9 --epochs 40 --lr 0.3 $TRAIN_ARGS \
        >"$PACK/default.log" 2>&1 &
    $TRAIN --out runs/elufast-res9-seed1 --model elufast_res9 --epochs 40 --lr 0.3 --seed 1 $TRAIN_ARGS \
        >"$PACK/default-seed1.log" 2>&1 &
fi
for lr in $FLAGSHIP_LRS; do
    $TRAIN --out "runs/elu-paper18-lr$lr" --model elu_paper18 --normalization gcn_zca \
        --time-budget-min "$FLAGSHIP_MIN" --batch-size 256 --lr "$lr" --grad-clip 2.0 \
        --weight-decay 5e-4 --label-smoothing 0 $TRAIN_ARGS >"$PACK/flagship-lr$lr.log" 2>&1 &
done
wait
grep -h "time budget\|validation accuracy\|Traceback\|Error" "$PACK"/*.log || true
cat "$PACK"/*.log | tr '\r' '\n' | grep -v "it/s\]\|step/s\]\|img/s\]\|^ *$" | tail -c 2000000 >"$PACK/logs.txt" || true

# The flagship that ships is the learning rate with the better final validation accuracy (the card
# and the note say so); both runs' metrics come back.
best=$(python3 - $FLAGSHIP_LRS <<'PY'
import json, sys
from pathlib import Path
scores = {}
for lr in sys.argv[1:]:
    summary = Path(f"runs/elu-paper18-lr{lr}/summary.json")
    if summary.exists():
        scores[lr] = json.loads(summary.read_text())["val_accuracy_fp32"]
print(f"elu-paper18-lr{max(scores, key=scores.get)}" if scores else "none")
print(f"flagship validation accuracy by lr: {scores}", file=sys.stderr)
PY
)
members=(logs.txt)  # smallest first: whatever the first call brings back is whole
for run in elufast-res9-seed1 $(printf "elu-paper18-lr%s " $FLAGSHIP_LRS); do  # their curves only
    for file in metrics.jsonl summary.json; do
        cp "runs/$run/$file" "$PACK/$run.$file" && members+=("$run.$file") || true
    done
done
for run in elufast-cifar10-v3 "$best"; do
    tail -n 2 "runs/$run/metrics.jsonl" || continue
    fp16=$([ "$run" = "$best" ] && echo --fp16 || true)
    python3 -m service.cli pack "runs/$run" --out "$PACK/$run.tar" $fp16 && members+=("$run.tar")
done
tar -cf "$PACK/all.tar" -C "$PACK" "${members[@]}"
split -b 15M -d -a 2 "$PACK/all.tar" "$PACK/part-"
sha256sum "$PACK/all.tar"
send_pieces
