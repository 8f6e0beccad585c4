"""ELU vs ReLU, leaky ReLU and shifted ReLU: the paper's central comparison, at CPU scale.

The same architecture and recipe is trained once per activation and seed; the per-epoch training
loss and validation error are plotted (mean over seeds, shaded min–max) and tabulated, as the
paper's Figure 3 does for its 11-layer net on CIFAR-100.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from eluserve.export.config import TrainConfig
from eluserve.export.train import read_metrics, train

ACTIVATIONS = ("elu", "relu", "leaky_relu", "shifted_relu")


def run_comparison(base: TrainConfig, activations: tuple[str, ...], seeds: tuple[int, ...]) -> dict[str, Any]:
    """Train every (activation, seed) under `base.out`; finished runs are resumed, not repeated."""
    curves: dict[str, list[list[dict[str, float]]]] = {}
    for activation in activations:
        for seed in seeds:
            out = Path(base.out) / f"{activation}-seed{seed}"
            train(replace(base, activation=activation, seed=seed, out=str(out)))
            curves.setdefault(activation, []).append(read_metrics(out / "metrics.jsonl"))
    return {"config": {**base.__dict__, "seeds": list(seeds)}, "curves": curves}


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per activation: final validation error and training loss (mean, min, max over seeds)."""
    rows = []
    for activation, runs in result["curves"].items():
        errors = [100 * (1 - run[-1]["val_accuracy"]) for run in runs]
        losses = [run[-1]["train_loss"] for run in runs]
        best = [100 * (1 - max(r["val_accuracy"] for r in run)) for run in runs]
        rows.append(
            {
                "activation": activation,
                "seeds": len(runs),
                "final_val_error_mean": statistics.mean(errors),
                "final_val_error_min": min(errors),
                "final_val_error_max": max(errors),
                "best_val_error_mean": statistics.mean(best),
                "final_train_loss_mean": statistics.mean(losses),
            }
        )
    return sorted(rows, key=lambda r: r["final_val_error_mean"])


def plot(result: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (activation, runs) in enumerate(result["curves"].items()):
        epochs = [r["epoch"] for r in runs[0]]
        for axis, key, scale in ((left, "train_loss", 1.0), (right, "val_accuracy", -100.0)):
            series = [[(scale * r[key] + (100 if scale < 0 else 0)) for r in run] for run in runs]
            mean = [statistics.mean(values) for values in zip(*series, strict=True)]
            axis.plot(epochs, mean, color=f"C{i}", label=activation)
            axis.fill_between(
                epochs,
                [min(v) for v in zip(*series, strict=True)],
                [max(v) for v in zip(*series, strict=True)],
                color=f"C{i}",
                alpha=0.15,
            )
    left.set(xlabel="epoch", ylabel="training loss", title="training loss")
    right.set(xlabel="epoch", ylabel="validation error (%)", title="validation error")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    config = result["config"]
    fig.suptitle(
        f"{config['model']}, {len(config['seeds'])} seeds, {config['epochs']} epochs (mean, min–max)"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def write_report(result: dict[str, Any], out_md: Path, png: Path, command: str) -> None:
    rows = summarize(result)
    table = "\n".join(
        f"| {r['activation']} | {r['final_val_error_mean']:.2f} ({r['final_val_error_min']:.2f}–"
        f"{r['final_val_error_max']:.2f}) | {r['best_val_error_mean']:.2f} "
        f"| {r['final_train_loss_mean']:.4f} |"
        for r in rows
    )
    config = result["config"]
    out_md.write_text(
        f"""# ELU vs ReLU, leaky ReLU (0.1) and shifted ReLU (max(−1, x))

Made by: `{command}`

Model `{config["model"]}`, {config["epochs"]} epochs, {config.get("train_limit") or "all"} training images,
seeds {config["seeds"]}, {config["schedule"]} schedule, peak lr {config["lr"]}, label smoothing
{config["label_smoothing"]}; validation = the held-out split (last {config["val_per_class"]} images
per class).

| activation | final validation error % (min–max) | best-epoch validation error % | final training loss |
| --- | --- | --- | --- |
{table}

![curves]({png.name})
"""
    )
    (out_md.with_suffix(".json")).write_text(json.dumps({"summary": rows, **result}, indent=2) + "\n")
