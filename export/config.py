"""The training configuration, kept free of torch so the CLI can build its flags without importing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Everything that determines a training run; written to config.json beside the checkpoint."""

    data: str
    out: str
    model: str = "elufast"
    activation: str = "elu"
    num_classes: int = 10
    input_size: int = 32
    normalization: str | None = None  # None: the model's default (mean_std or gcn_zca)
    epochs: int = 30
    batch_size: int = 512
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    schedule: str = "onecycle"  # onecycle | step (the paper's: lr ÷ 10 at each milestone)
    milestones: tuple[int, ...] = ()
    # onecycle: linear from lr_start × lr up to lr at warmup_fraction of the run, then linear down to
    # lr_end × lr (0, 0: the classic one-cycle; airbench's triangle: 0.2, 0.23, 0.07).
    warmup_fraction: float = 0.2
    lr_start: float = 0.0
    lr_end: float = 0.0
    # weight_decay is the per-step shrink at the peak lr, whatever lr is (export/recipe.py)
    decoupled_weight_decay: bool = False
    # learning-rate multiplier of biases and norm parameters (airbench: 64, with frozen BN scales)
    bias_lr_scale: float = 1.0
    freeze_bn_weights: bool = False
    bn_momentum: float | None = None  # running-statistics momentum; None: torch's 0.1
    dirac_init: bool = False
    lookahead: bool = False
    # train the whitening stem's bias for the first N epochs only, then freeze it (airbench: 3)
    whiten_bias_epochs: int | None = None
    # Clip the global gradient norm to this (None: no clipping). Nets without batch norm need it:
    # the paper's 19-layer net takes steps of the gradient's full size into divergence otherwise.
    grad_clip: float | None = None
    val_per_class: int = 500
    train_limit: int | None = None  # use only this many training images (smoke runs)
    augment: bool = True
    # Reflect-pad and random-crop by this many pixels (with the flip): 4 is the ELU paper's and
    # ResNet-9's, 2 airbench's (its translate 2: a 32×32 net loses less of the object).
    crop_pad: int = 4
    # random: a fair coin per image and step; alternating: a coin per image, flipped every other epoch
    flip: str = "random"
    seed: int = 0
    device: str = "auto"
    # bf16 autocast; None: on only where the device computes bf16 natively (and, on a CPU, measures
    # faster). Emulated bf16 on an AVX2 CPU is 15× slower than fp32. config.json records the choice.
    amp: bool | None = None
    # None: the architecture's measured default (its zoo config's `channels_last`)
    channels_last: bool | None = None
    threads: int | None = None
    # Train as many epochs as fit in this many minutes (measured on the first steps; a lent GPU's
    # time is fixed). The epoch count it settles on replaces `epochs` in config.json, so the recorded
    # command reproduces the run without the budget.
    time_budget_min: float | None = None
    # Stop after the epoch that would overrun this many minutes, with a resumable checkpoint; the
    # schedule stays that of `epochs`, so the next run (same command) resumes it exactly. A schedule
    # longer than one lent GPU session trains in segments this way.
    segment_min: float | None = None


#: Named sets of TrainConfig values; `eluserve train --recipe NAME` starts from one, flags override it.
RECIPES: dict[str, dict[str, object]] = {
    # Keller Jordan's airbench94 hyper-parameters, translated from its summed loss to our mean loss
    # at batch 1024 (lr 11.5 per kilostep → 1.5; decay 0.0153 × 1024 / 7851 → 0.002 per step).
    "airbench": {
        "batch_size": 1024,
        "lr": 1.5,
        "momentum": 0.85,
        "weight_decay": 0.002,
        "decoupled_weight_decay": True,
        "label_smoothing": 0.2,
        "schedule": "onecycle",
        "warmup_fraction": 0.23,
        "lr_start": 0.2,
        "lr_end": 0.07,
        "bias_lr_scale": 64.0,
        "freeze_bn_weights": True,
        "bn_momentum": 0.4,
        "dirac_init": True,
        "lookahead": True,
        "whiten_bias_epochs": 3,
        "crop_pad": 2,
        "flip": "alternating",
        "epochs": 10,
    },
}
