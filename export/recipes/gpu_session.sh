#!/usr/bin/env bash
# One lent-GPU session (docs/flagship.md): the paper's 18-layer flagship and
# three seeds of the CPU default's recipe train side by side in the background, while the next calls
# carry onnxruntime-gpu over for the GPU serving check; then the runs are packed for the trip back.
#
#   bash export/recipes/gpu_session.sh start    # carry .data: copies the zip, starts the runs detached
#   bash export/recipes/gpu_session.sh ferry    # carry .whl/pN: one piece of the serving packages
#   bash export/recipes/gpu_session.sh finish   # waits for the runs, GPU serving check, first pieces
#   bash export/recipes/gpu_session.sh rest     # the remaining pieces
#
# Each call must follow the last within the machine's 30 s warm window: the runs live in the
# machine's runs/ and /tmp, which a fresh machine does not have. The training runs are detached with
# setsid, so they go on between calls.
#
# A call carries at most 64 MiB of working tree, and the tracked flagship file alone is 97 MB: before
# the first call, `git rm --cached -q models/elu-paper18-cifar10/model.onnx` and move the file out of
# the checkout; afterwards move it back and `git reset -q` that path.
# Before the first call, here: mkdir -p .data && cp ../shared/data/cifar10-jpeg/train.zip .data/
# (the zip is put back at the path it has here, so the commands the model cards record are the ones
# that reproduce the runs). For the serving check, `load_tests/gpu_check.sh` says how the packages
# are made into pieces. Back here: cat part-* | tar -x, then tar -x -C runs/ -f RUN.tar and
# `eluserve export runs/RUN ...` (each model card records both commands).
#
# What trains, decided before the session (docs/flagship.md and the model cards say what came of it):
# - elufast_res with the shipped default's recipe, 100 epochs instead of 40, seeds 0, 1 and 2. Seed 0
#   is the candidate for the default; seeds 1 and 2 say how much of its score is luck.
# - the flagship with 150 epochs instead of 132 and label smoothing 0.1 against the overfitting the
#   first run showed. Its weights come back only if it beats the shipped flagship by FLAGSHIP_GAIN
#   points: each shipped version adds ~95 MB to the repository's history.
set -euo pipefail
export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=True
STAGE=${1:?usage: gpu_session.sh start|ferry|finish|rest}
OUT=${OUT:?the device tool sets OUT}
PACK=/tmp/eluserve-pack
PARTS=/tmp/eluserve-parts
PIECES_PER_CALL=4
DATA=../shared/data/cifar10-jpeg/train.zip
TRAIN="python3 -m eluserve train --data $DATA --device ${DEVICE:-cuda} --threads 4"
TRAIN_ARGS=${TRAIN_ARGS:-}  # e.g. "--train-limit 512 --epochs 1" for a smoke run on a CPU
FLAGSHIP=elu-paper18-v2
FLAGSHIP_SHIPPED=88.26  # validation accuracy of the shipped flagship (version 1)
FLAGSHIP_GAIN=${FLAGSHIP_GAIN:-1.0}
DEFAULT=elufast-cifar10-v3
DEFAULT_SEEDS=(elufast-res-e100-seed1 elufast-res-e100-seed2)
FINISH_WAIT_S=${FINISH_WAIT_S:-540}

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

progress() {  # the last epoch each run has finished
    for run in "$FLAGSHIP" "$DEFAULT" "${DEFAULT_SEEDS[@]}"; do
        printf '%-24s %s\n' "$run" "$(tail -n 1 "runs/$run/metrics.jsonl" 2>/dev/null || echo starting)"
    done
}

case "$STAGE" in
start)
    rm -rf "$PACK" "$PARTS" "runs/$FLAGSHIP" "runs/$DEFAULT"
    mkdir -p "$(dirname "$DATA")" "$PACK" "$PARTS"
    [ -f "$DATA" ] || cp .data/train.zip "$DATA"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    setsid nohup bash "$0" jobs >"$PACK/jobs.log" 2>&1 </dev/null &
    sleep 20
    cat "$PACK/jobs.log"
    ;;
jobs)  # the detached part of `start`
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
    $TRAIN --out "runs/$FLAGSHIP" --model elu_paper18 --normalization gcn_zca --epochs 150 \
        --batch-size 256 --lr 0.06 --grad-clip 2.0 --weight-decay 5e-4 --label-smoothing 0.1 \
        $TRAIN_ARGS >"$PACK/$FLAGSHIP.log" 2>&1 &
    seed=0
    for run in "$DEFAULT" "${DEFAULT_SEEDS[@]}"; do
        $TRAIN --out "runs/$run" --model elufast_res --epochs 100 --lr 0.3 --seed $seed $TRAIN_ARGS \
            >"$PACK/$run.log" 2>&1 &
        seed=$((seed + 1))
    done
    status=0
    wait || status=$?
    echo "$status" >"$PACK/done"
    ;;
ferry)
    mkdir -p "$PARTS"
    find .whl -type f -exec cp {} "$PARTS/" \;
    ls -l "$PARTS"
    progress
    ;;
finish)
    for _ in $(seq "$((FINISH_WAIT_S / 5))"); do
        [ -e "$PACK/done" ] && break
        sleep 5
    done
    progress
    grep -h "validation accuracy\|Traceback\|Error" "$PACK"/*.log || true
    [ -e "$PACK/done" ] || { echo "runs still going after ${FINISH_WAIT_S}s"; exit 1; }
    if [ -n "$(ls -A "$PARTS" 2>/dev/null)" ]; then
        WHEELS=$PARTS timeout 240 bash load_tests/gpu_check.sh 2>&1 | tee "$PACK/gpu_check.txt" || true
    fi
    for log in "$PACK"/*.log; do
        tr '\r' '\n' <"$log" | grep -v -E "step/s|s/step|it/s|img/s|^ *$" >"${log%.log}.txt" || true
    done
    members=()
    for run in "$FLAGSHIP" "$DEFAULT" "${DEFAULT_SEEDS[@]}"; do
        for file in metrics.jsonl summary.json config.json; do
            cp "runs/$run/$file" "$PACK/$run.$file" 2>/dev/null && members+=("$run.$file") || true
        done
    done
    members+=($(cd "$PACK" && ls ./*.txt))
    python3 -m eluserve pack "runs/$DEFAULT" --out "$PACK/$DEFAULT.tar" && members+=("$DEFAULT.tar")
    if python3 - "runs/$FLAGSHIP/summary.json" "$FLAGSHIP_SHIPPED" "$FLAGSHIP_GAIN" <<'PY'; then
import json, sys
accuracy = 100 * json.load(open(sys.argv[1]))["val_accuracy_fp32"]
bar = float(sys.argv[2]) + float(sys.argv[3])
print(f"flagship {accuracy:.2f} % against the bar {bar:.2f} %")
sys.exit(0 if accuracy >= bar else 1)
PY
        python3 -m eluserve pack "runs/$FLAGSHIP" --out "$PACK/$FLAGSHIP.tar" --fp16 \
            && members+=("$FLAGSHIP.tar")
    fi
    tar -cf "$PACK/all.tar" -C "$PACK" "${members[@]}"
    split -b 15M -d -a 2 "$PACK/all.tar" "$PACK/part-"
    sha256sum "$PACK/all.tar"
    send_pieces
    ;;
rest)
    send_pieces
    ;;
*)
    echo "unknown stage $STAGE" >&2
    exit 2
    ;;
esac
