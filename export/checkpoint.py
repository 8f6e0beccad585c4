"""What a checkpoint carries beyond the weights and the optimiser, so a resumed run trains the same
weights as one that never stopped: every random stream the run draws from, and a log cut back to the
checkpoint's epoch."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream a run draws from, for an exact resume.

    Tensors and plain Python values only, so `torch.load`'s safe default (weights_only) reads it.
    """
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])


def keep_metrics(path: Path, epochs: int) -> None:
    """Drop the log rows past the checkpoint's epoch: a resumed run trains those epochs again."""
    if path.exists():
        rows = path.read_text().splitlines()[:epochs]
        path.write_text("".join(row + "\n" for row in rows))
