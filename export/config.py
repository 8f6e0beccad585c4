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
    warmup_fraction: float = 0.2
    # Clip the global gradient norm to this (None: no clipping). Nets without batch norm need it:
    # the paper's 19-layer net takes steps of the gradient's full size into divergence otherwise.
    grad_clip: float | None = None
    val_per_class: int = 500
    train_limit: int | None = None  # use only this many training images (smoke runs)
    augment: bool = True
    # Reflect-pad and random-crop by this many pixels (with the flip): 4 is the ELU paper's and
    # ResNet-9's, 2 airbench's (its translate 2: a 32×32 net loses less of the object).
    crop_pad: int = 4
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int | None = None
    # Train as many epochs as fit in this many minutes (measured on the first steps; a lent GPU's
    # time is fixed). The epoch count it settles on replaces `epochs` in config.json, so the recorded
    # command reproduces the run without the budget.
    time_budget_min: float | None = None
    # Stop after the epoch that would overrun this many minutes, with a resumable checkpoint; the
    # schedule stays that of `epochs`, so the next run (same command) resumes it exactly. A schedule
    # longer than one lent GPU session trains in segments this way.
    segment_min: float | None = None
