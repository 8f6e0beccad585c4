#!/usr/bin/env bash
# The flagship: the paper's 18-layer ELU network (alpha = 1, no batch norm, dropout per stack,
# GCN + ZCA whitening, pad-crop-flip augmentation) on the shared CIFAR-10 JPEG training split, trained
# on one GPU, exported with the fused ELU ops and fp16 weight storage (39 M parameters: 157 MB as
# fp32, 79 MB as fp16; compute stays fp32 on CPU).
#
# Prepared for a lent GPU machine (see ../shared/GPU.md): copy the shared zip into an ignored folder
# of the repo first (mkdir -p .data && cp ../shared/data/cifar10-jpeg/train.zip .data/), carry `.data`,
# and run `bash export/recipes/flagship_gpu.sh` from the repo root. The exported model folder lands in
# $OUT (the device tool's output folder) or models/ when OUT is unset.
#
# Recipe: one-cycle SGD (Nesterov 0.9, peak lr 0.05, weight decay 5e-4), batch 256, bf16 autocast,
# channels_last, no label smoothing (the paper's loss), EPOCHS epochs (default 60).
set -euo pipefail
export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=True
DATA=${DATA:-.data/train.zip}
RUN=${RUN:-runs/elu-paper18-cifar10}
DEST=${OUT:-models}/elu-paper18-cifar10

python3 -m service.cli train --data "$DATA" --out "$RUN" --model elu_paper18 --normalization gcn_zca \
    --epochs "${EPOCHS:-60}" --batch-size 256 --lr 0.05 --weight-decay 5e-4 --label-smoothing 0 \
    --device cuda
python3 -m service.cli export "$RUN" --name elu-paper18-cifar10 --out "$DEST" --fp16-storage
cp "$RUN/metrics.jsonl" "$RUN/summary.json" "$DEST/"
