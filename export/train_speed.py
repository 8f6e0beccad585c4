"""`eluserve train-speed`: training images/s and minutes per epoch of one architecture, several
set-ups side by side in one run (interleaved rounds, median), so a before/after is one command.

The set-ups are the trainer's own knobs: bf16 autocast, memory layout, batch size, `torch.compile`.
Each is timed through the trainer's `train_step` (resident uint8 data, vectorised crop and flip, the
recipe's optimiser groups) on synthetic images: speed does not depend on what the pixels show.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eluserve.export.config import RECIPES, TrainConfig
from eluserve.export.recipe import native_bf16
from eluserve.export.train import build_classifier, seconds_per_image

EPOCH_IMAGES = 50_000
#: name → TrainConfig changes (plus `compile`), the first is "before": the trainer's defaults until this
#: round (bf16 autocast whatever the CPU, channels-last, batch 512).
SETUPS: dict[str, dict[str, Any]] = {
    "before: bf16, channels-last, batch 512": {"amp": True, "channels_last": True, "batch_size": 512},
    "fp32, NCHW, batch 512": {"amp": False, "channels_last": False, "batch_size": 512},
    "fp32, channels-last, batch 256": {"amp": False, "channels_last": True, "batch_size": 256},
    "fp32, channels-last, batch 512": {"amp": False, "channels_last": True, "batch_size": 512},
    "fp32, channels-last, batch 1024": {"amp": False, "channels_last": True, "batch_size": 1024},
    "fp32, NCHW, batch 1024, torch.compile": {
        "amp": False, "channels_last": False, "batch_size": 1024, "compile": True,
    },
    "fp32, channels-last, batch 1024, torch.compile": {
        "amp": False, "channels_last": True, "batch_size": 1024, "compile": True,
    },
}  # fmt: skip
SLOW_STEPS = 1  # emulated bf16 takes ~50 s a step here: time one step after one warm-up


def measure_setup(model_name: str, changes: dict[str, Any], steps: int, images: int) -> float:
    """Training images/s of `model_name` under `changes`, on a fresh model and synthetic data."""
    changes = dict(changes)
    compile_model = changes.pop("compile", False)
    config = TrainConfig(data="", out="", model=model_name, **{**RECIPES["airbench"], **changes})
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    model = build_classifier(config, pixels)
    if config.channels_last:
        model.net.to(memory_format=torch.channels_last)
    data = torch.from_numpy(pixels)
    labels = torch.from_numpy(rng.integers(0, 10, images))
    slow = config.amp and not native_bf16(torch.device("cpu"))
    warmup, timed = (1, SLOW_STEPS) if slow else (2, steps)
    per_image = seconds_per_image(
        model, data, labels, config, torch.device("cpu"), warmup, timed, compile_model=compile_model
    )
    return 1.0 / per_image


def run(
    model_name: str, setups: list[str] | None = None, rounds: int = 2, steps: int = 4, images: int = 4096
) -> dict[str, Any]:
    """Every set-up once per round, in order; the median of the rounds per set-up."""
    names = setups or list(SETUPS)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            samples[name].append(measure_setup(model_name, SETUPS[name], steps, images))
    rows = []
    for name in names:
        rate = statistics.median(samples[name])
        rows.append(
            {
                "setup": name,
                "images_per_s": rate,
                "samples": samples[name],
                "minutes_per_epoch": EPOCH_IMAGES / rate / 60,
            }
        )
    return {"model": model_name, "threads": torch.get_num_threads(), "rounds": rounds, "rows": rows}


def format_table(report: dict[str, Any]) -> str:
    before = report["rows"][0]["images_per_s"]
    lines = [
        f"{report['model']}, {report['threads']} threads, median of {report['rounds']} interleaved rounds",
        "",
        "| set-up | train img/s | × before | min per 50 000-image epoch |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['setup']} | {row['images_per_s']:.1f} | {row['images_per_s'] / before:.1f} | "
            f"{row['minutes_per_epoch']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(format_table(report))
