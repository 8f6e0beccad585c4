"""`eluserve pack`: a trained run as one small tar, to carry from the machine that trained it to the
machine that exports and serves it.

The training checkpoint holds the optimiser's momentum beside the weights (twice the weights' size);
export needs neither it nor fp32 storage when the model ships with fp16 storage anyway. A packed run
holds the weights only (optionally rounded to fp16 exactly as `eluserve export --fp16-storage` rounds
them), and the run's config, summary, metrics and curves, so `tar -x` gives a folder `eluserve
export` reads as it reads the original.

A schedule that spans GPU sessions travels the other way too: `--resumable` keeps the checkpoint
whole (weights, momentum, epoch, random streams), and the session script splits the tar into pieces
that fit a device call's 64 MiB (the flagship's is about 350 MB: six 60 MiB pieces).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import torch

FP16_MIN_ELEMENTS = 1024  # small tensors (biases, BN) stay fp32: they cost nothing to store
RUN_FILES = ("config.json", "summary.json", "metrics.jsonl", "curves.png")


def to_fp16_storage(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 for float32 tensors of at least FP16_MIN_ELEMENTS elements; others unchanged."""
    if tensor.dtype == torch.float32 and tensor.numel() >= FP16_MIN_ELEMENTS:
        return tensor.half()
    return tensor


def pack_run(run_dir: Path, tar_path: Path, fp16: bool = False, resumable: bool = False) -> dict[str, int]:
    """Write `tar_path`: the run's files under the run folder's name, and the checkpoint: weights
    only, or whole when `resumable`.

    Returns the size in bytes of each member.
    """
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu")
    buffer = io.BytesIO()
    if resumable:
        torch.save(checkpoint, buffer)
    else:
        weights = {k: to_fp16_storage(v) if fp16 else v for k, v in checkpoint["model"].items()}
        torch.save({"model": weights, "epoch": checkpoint["epoch"]}, buffer)
    sizes = {}
    with tarfile.open(tar_path, "w") as tar:
        for name in RUN_FILES:
            if (run_dir / name).exists():
                tar.add(run_dir / name, arcname=f"{run_dir.name}/{name}")
                sizes[name] = (run_dir / name).stat().st_size
        info = tarfile.TarInfo(f"{run_dir.name}/checkpoint.pt")
        info.size = buffer.tell()
        buffer.seek(0)
        tar.addfile(info, buffer)
        sizes["checkpoint.pt"] = info.size
    return sizes
