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
# setsid, so they go on between calls. What every session does alike is in gpu_session_common.sh.
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
STAGE=${1:?usage: gpu_session.sh start|ferry|finish|rest}
FINISH_WAIT_S=${FINISH_WAIT_S:-540}
. export/recipes/gpu_session_common.sh
PARTS=/tmp/eluserve-parts
DEFAULT=elufast-cifar10-v3
DEFAULT_SEEDS=(elufast-res-e100-seed1 elufast-res-e100-seed2)
RUNS=("$FLAGSHIP" "$DEFAULT" "${DEFAULT_SEEDS[@]}")

case "$STAGE" in
start)
    rm -rf "$PACK" "$PARTS" "runs/$FLAGSHIP" "runs/$DEFAULT"
    mkdir -p "$(dirname "$DATA")" "$PACK" "$PARTS"
    [ -f "$DATA" ] || cp .data/train.zip "$DATA"
    start_jobs 20
    ;;
jobs)  # the detached part of `start`
    report_torch
    $TRAIN --out "runs/$FLAGSHIP" $FLAGSHIP_RECIPE --epochs 150 $TRAIN_ARGS >"$PACK/$FLAGSHIP.log" 2>&1 &
    seed=0
    for run in "$DEFAULT" "${DEFAULT_SEEDS[@]}"; do
        $TRAIN --out "runs/$run" --model elufast_res --epochs 100 --lr 0.3 --seed $seed $TRAIN_ARGS \
            >"$PACK/$run.log" 2>&1 &
        seed=$((seed + 1))
    done
    jobs_done
    ;;
ferry)
    mkdir -p "$PARTS"
    find .whl -type f -exec cp {} "$PARTS/" \;
    ls -l "$PARTS"
    progress
    ;;
finish)
    wait_for_runs "validation accuracy\|Traceback\|Error"
    if [ -n "$(ls -A "$PARTS" 2>/dev/null)" ]; then
        WHEELS=$PARTS timeout 240 bash load_tests/gpu_check.sh 2>&1 | tee "$PACK/gpu_check.txt" || true
    fi
    collect_results
    $ELUSERVE pack "runs/$DEFAULT" --out "$PACK/$DEFAULT.tar" && MEMBERS+=("$DEFAULT.tar")
    if flagship_beats_bar; then
        $ELUSERVE pack "runs/$FLAGSHIP" --out "$PACK/$FLAGSHIP.tar" --fp16 && MEMBERS+=("$FLAGSHIP.tar")
    fi
    tar -cf "$PACK/all.tar" -C "$PACK" "${MEMBERS[@]}"
    split -b "$PIECE" -d -a 2 "$PACK/all.tar" "$PACK/part-"
    sha256sum "$PACK/all.tar"
    send_pieces
    ;;
*)
    other_stage
    ;;
esac
