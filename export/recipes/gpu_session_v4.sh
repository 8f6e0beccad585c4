#!/usr/bin/env bash
# The next lent-H200 session: the v4 default candidate (airbench-style `elubench94`, ELU),
# its spread over seeds, its ReLU twin, and the next segment of the flagship's longer schedule.
# Prepared on the 2-core CPU; every choice below is fixed before the run.
#
#   bash export/recipes/gpu_session_v4.sh start    # carry .data: copies the zip, starts the runs detached
#   bash export/recipes/gpu_session_v4.sh finish   # waits for the runs, packs, sends the first pieces
#   bash export/recipes/gpu_session_v4.sh rest     # the next pieces (repeat until "left: 0")
# and, only in a session that resumes the flagship, before `start`:
#   bash export/recipes/gpu_session_v4.sh carry    # carry .resume: stores one call's resume pieces
#
# Device budget (15 min, machine start included): start ~1.5 min, the runs ~8 min (FLAGSHIP_SEGMENT_MIN
# ends the flagship's segment in time), then ~0.3 min a call for the pieces: about 27 of 15 MiB, the
# small results (part-a*) first, then the flagship's resumable checkpoint (part-b*), 4 a call. Each call must follow the
# last within the machine's 30 s warm window: runs/ and /tmp are lost with the machine. What every
# session does alike is in gpu_session_common.sh.
#
# A call carries at most 64 MiB: the zip is 49.4 MiB, so before the first call
# `git rm --cached -q models/elu-paper18-cifar10/model.onnx` and move that 97 MB file out of the
# checkout (afterwards move it back and `git reset -q` that path); then
# mkdir -p .data && cp ../shared/data/cifar10-jpeg/train.zip .data/
# Back here, with the pieces in one folder: cat part-a* > results.tar and cat part-b* > flagship.tar
# (the sha256 sums `finish` printed must match); tar -x -f results.tar, then tar -x -C runs/ -f RUN.tar
# and `eluserve export runs/RUN ...`. The next session carries flagship.tar's pieces in .resume/
# (4 a call, `carry`) and `start` resumes the flagship from them.
#
# What trains, fixed in advance:
# - `elubench94` (docs/log/gpu-sessions.md: 118 M MACs, ≥ 0.8× the v3 default's ORT CPU throughput
#   measured side by side), ELU, 100 epochs (v3's count, so the architecture is what changed), batch
#   512, one-cycle SGD at peak lr 0.3, label smoothing 0.2, weight decay 5e-4, reflect-pad 2 + crop +
#   flip (airbench's translate 2), whitening stem fitted on 5 000 training images; seeds 0, 1, 2.
#   Seed 0 is the candidate; 1 and 2 say how much of its score is luck.
# - its ReLU twin, seed 0, same recipe: the ELU-vs-ReLU comparison at the new default's scale.
# - the flagship (`elu_paper18`, the paper's network and GCN+ZCA preprocessing), segment by segment of
#   a 300-epoch one-cycle schedule (the paper trained ~330 epochs) (batch 256, peak lr 0.06, gradient clip 2.0, label smoothing 0.1,
#   bf16, channels-last, data and augmentation on the GPU); the checkpoint comes back whole
#   (`eluserve pack --resumable`, ~350 MB in 15 MiB pieces) and the next session resumes it.
# What ships, fixed in advance:
# - seed 0 ships as `elufast-cifar10` version 4 (v3 stays available under models/) when its fp32
#   validation accuracy is ≥ v3's 90.54 % + 1 point and its exported file's ORT CPU throughput is
#   ≥ 0.8× v3's, measured side by side on the 2-core machine after export; the 93 % goal is met
#   only if seed 0 reaches it. No other seed replaces it.
# - the flagship ships as version 2 once its schedule has finished, if it beats version 1 (88.26 %)
#   by FLAGSHIP_GAIN points.
set -euo pipefail
STAGE=${1:?usage: gpu_session_v4.sh carry|start|finish|rest}
. export/recipes/gpu_session_common.sh
RESUME=/tmp/eluserve-resume
DEFAULT_EPOCHS=${DEFAULT_EPOCHS:-100}
FLAGSHIP_EPOCHS=${FLAGSHIP_EPOCHS:-300}
FLAGSHIP_SEGMENT_MIN=${FLAGSHIP_SEGMENT_MIN:-7.5}
CANDIDATE=elubench94-seed0
SPREAD=(elubench94-seed1 elubench94-seed2)
RELU=elubench94-relu-seed0
RUNS=("$CANDIDATE" "${SPREAD[@]}" "$RELU" "$FLAGSHIP")

case "$STAGE" in
carry)  # a resuming session: one call's pieces of the flagship's resumable tar, kept for `start`
    mkdir -p "$RESUME"
    cp .resume/part-* "$RESUME/"
    ls "$RESUME"
    ;;
start)
    rm -rf "$PACK" runs/elubench94-* && mkdir -p "$PACK" "$(dirname "$DATA")" runs
    [ -f "$DATA" ] || cp .data/train.zip "$DATA"
    if [ -n "$(ls -A "$RESUME" 2>/dev/null)" ]; then
        cat "$RESUME"/part-* >"$PACK/resume.tar"
        sha256sum "$PACK/resume.tar"  # must match what the last session's `finish` printed
        rm -rf "runs/$FLAGSHIP" && tar -x -C runs -f "$PACK/resume.tar" && rm "$PACK/resume.tar"
    else
        rm -rf "runs/$FLAGSHIP"
    fi
    start_jobs 25
    progress
    ;;
jobs)  # the detached part of `start`
    report_torch
    $TRAIN --out "runs/$FLAGSHIP" $FLAGSHIP_RECIPE --epochs "$FLAGSHIP_EPOCHS" \
        --segment-min "$FLAGSHIP_SEGMENT_MIN" $TRAIN_ARGS >"$PACK/$FLAGSHIP.log" 2>&1 &
    RECIPE="--model elubench94 --epochs $DEFAULT_EPOCHS --batch-size 512 --lr 0.3 --label-smoothing 0.2 --crop-pad 2"
    seed=0
    for run in "$CANDIDATE" "${SPREAD[@]}"; do
        $TRAIN --out "runs/$run" $RECIPE --seed $seed $TRAIN_ARGS >"$PACK/$run.log" 2>&1 &
        seed=$((seed + 1))
    done
    $TRAIN --out "runs/$RELU" $RECIPE --activation relu --seed 0 $TRAIN_ARGS >"$PACK/$RELU.log" 2>&1 &
    jobs_done
    ;;
finish)
    wait_for_runs "validation accuracy\|segment ended\|Traceback\|Error"
    collect_results
    for run in "$CANDIDATE" "${SPREAD[@]}" "$RELU"; do  # ~8 MB each: all of them come back
        $ELUSERVE pack "runs/$run" --out "$PACK/$run.tar" && MEMBERS+=("$run.tar")
    done
    # small results first: if the device time runs out during `rest`, they are already here
    tar -cf "$PACK/results.tar" -C "$PACK" "${MEMBERS[@]}"
    split -b "$PIECE" -d -a 2 "$PACK/results.tar" "$PACK/part-a"
    sha256sum "$PACK/results.tar"
    if [ -e "runs/$FLAGSHIP/summary.json" ]; then  # the schedule has finished: the bar decides
        if flagship_beats_bar; then
            $ELUSERVE pack "runs/$FLAGSHIP" --out "$PACK/flagship.tar" --fp16
        fi
    elif [ -e "runs/$FLAGSHIP/checkpoint.pt" ]; then  # a segment: bring it back whole, to resume
        $ELUSERVE pack "runs/$FLAGSHIP" --out "$PACK/flagship.tar" --resumable
    fi
    if [ -e "$PACK/flagship.tar" ]; then
        split -b "$PIECE" -d -a 2 "$PACK/flagship.tar" "$PACK/part-b"
        sha256sum "$PACK/flagship.tar"
    fi
    send_pieces
    ;;
*)
    other_stage
    ;;
esac
