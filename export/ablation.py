"""`eluserve ablate`: the short-schedule ingredients toggled one at a time on the same seed and data.

Every variant is the airbench recipe (export/config.py `RECIPES`) with one ingredient switched off
or swapped, trained for the same few epochs into `<out>/<variant>/`. Runs go one after another and
stop on a checkpoint before `--until`, so the command can be repeated (same flags) across sessions
until every variant is done; finished variants are not trained again. Each call ends by writing the
table (`ablation.md`, `ablation.json`) and its plot (`ablation.png`) from whatever has finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from eluserve.export.config import RECIPES, TrainConfig

log = logging.getLogger(__name__)

BASELINE = "airbench"
_DEFAULTS = TrainConfig(data="", out="")
#: variant → what it changes in the airbench recipe, most informative first (the order runs go in).
VARIANTS: dict[str, dict[str, Any]] = {
    BASELINE: {},
    # every ingredient off: the trainer's plain one-cycle defaults at the same epochs (the "before")
    "plain_defaults": {
        key: getattr(_DEFAULTS, key)
        for key, value in RECIPES[BASELINE].items()
        if key not in ("epochs", "whiten_bias_epochs") and getattr(_DEFAULTS, key) != value
    }
    | {"whiten_bias_epochs": None},
    # the ELU paper's claim at this scale: the same recipe with ReLU in place of every ELU
    "relu": {"activation": "relu"},
    "no_lookahead": {"lookahead": False},
    "random_flip": {"flip": "random"},
    "no_dirac": {"dirac_init": False},
    "whiten_bias_always": {"whiten_bias_epochs": None},
    "bias_lr_1x": {"bias_lr_scale": 1.0},
    "bn_weights_trained": {"freeze_bn_weights": False},
    "no_label_smoothing": {"label_smoothing": 0.0},
    "translate_4": {"crop_pad": 4},
    "onecycle_from_zero": {"lr_start": 0.0, "lr_end": 0.0, "warmup_fraction": 0.2},
}
MIN_MINUTES_TO_START = 4.0  # a run started with less than this left would only decode the data


def variant_config(name: str, data: str, out: Path, model: str, epochs: int, seed: int) -> TrainConfig:
    """The recipe at `epochs` (whitening-bias epochs scaled as airbench's 3 of 10), then `name`'s change."""
    values = {**RECIPES[BASELINE], "epochs": epochs, "whiten_bias_epochs": max(1, round(0.3 * epochs))}
    values.update(VARIANTS[name])
    return TrainConfig(data=data, out=str(out / name), model=model, seed=seed, **values)


def minutes_until(deadline: datetime) -> float:
    return (deadline - datetime.now()).total_seconds() / 60


def parse_until(text: str | None) -> datetime | None:
    """`HH:MM` today (tomorrow if already past), or None: no deadline."""
    if text is None:
        return None
    clock = datetime.strptime(text, "%H:%M").time()
    deadline = datetime.combine(datetime.now().date(), clock)
    return deadline if deadline > datetime.now() else deadline + timedelta(days=1)


def run_ablation(
    data: str,
    out: Path,
    model: str = "elubench94",
    epochs: int = 3,
    seed: int = 0,
    variants: list[str] | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Train every unfinished variant in order until the deadline; then tabulate what finished."""
    from eluserve.export.train import train

    for name in variants or list(VARIANTS):
        config = variant_config(name, data, out, model, epochs, seed)
        if (Path(config.out) / "summary.json").exists():
            continue
        if until is not None:
            left = minutes_until(until)
            if left < MIN_MINUTES_TO_START:
                log.info("%.1f min before the deadline: stopping before %s", left, name)
                break
            config = dataclasses.replace(config, segment_min=left)
        log.info("ablation variant %s: %s", name, VARIANTS[name] or "the recipe as it is")
        started = time.perf_counter()
        result = train(config)
        state = "finished" if result["finished"] else "paused"
        log.info("%s: %s after %.0f s", name, state, time.perf_counter() - started)
        if not result["finished"]:
            break
    return write_table(out)


def collect(out: Path) -> list[dict[str, Any]]:
    """One row per finished variant, in `VARIANTS` order."""
    rows = []
    for name, change in VARIANTS.items():
        summary_path = out / name / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        rows.append(
            {
                "variant": name,
                "change": change,
                "val_accuracy": summary["val_accuracy_fp32"],
                "epochs": len(metrics),
                "train_minutes": sum(m["seconds"] for m in metrics) / 60,
            }
        )
    return rows


def write_table(out: Path) -> dict[str, Any]:
    """ablation.json, ablation.md (accuracy and its difference to the full recipe) and ablation.png."""
    rows = collect(out)
    base = next((r["val_accuracy"] for r in rows if r["variant"] == BASELINE), None)
    lines = [
        "| variant | change to the recipe | validation accuracy | Δ vs recipe (points) | epochs | minutes |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        row["delta_points"] = None if base is None else 100 * (row["val_accuracy"] - base)
        delta = "" if row["delta_points"] is None else f"{row['delta_points']:+.2f}"
        change = ", ".join(f"{k}={v}" for k, v in row["change"].items()) or "—"
        lines.append(
            f"| {row['variant']} | {change} | {100 * row['val_accuracy']:.2f} % | {delta} | "
            f"{row['epochs']} | {row['train_minutes']:.0f} |"
        )
    report = {"rows": rows, "baseline": BASELINE}
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    if rows:
        plot_table(rows, out / "ablation.png")
    return report


def plot_table(rows: list[dict[str, Any]], png: Path) -> None:
    """Validation accuracy per variant, the full recipe's as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    names = [r["variant"] for r in rows][::-1]
    values = [100 * r["val_accuracy"] for r in rows][::-1]
    ax.barh(names, values, color=["C3" if n == BASELINE else "C0" for n in names])
    ax.set_xlim(min(values) - 1.0, max(values) + 0.5)
    ax.set_xlabel("validation accuracy (%), single crop")
    ax.set_title("one ingredient off at a time (same seed, same epochs)")
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
