"""Calibration and per-class recall of a classifier's probabilities, for the model card.

Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the
top-1 confidences are cut into 15 equal-width bins over [0, 1]; ECE is the bin-size-weighted mean of
|accuracy − mean confidence| over the bins. 15 bins is that paper's choice and the common one, so
figures compare with published ones. The reliability diagram plots each bin's accuracy against its
confidence. Label smoothing (the default recipe uses 0.2) pulls confidences down, so an ELU net
trained with it tends to be under- rather than over-confident: the diagram shows which.

`eluserve calibrate MODEL_DIR` adds both to an exported model folder from its ONNX file alone (what
the service serves), without re-exporting: the shipped `model.onnx` is left byte for byte as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 15


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin: its range, image count, mean confidence and accuracy.

    A confidence exactly on an edge goes to the bin below it (bins are (lo, hi]), as in Guo et al.;
    a confidence of 0 cannot occur for a top-1 softmax over C ≥ 2 classes (it is at least 1/C).
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        member = which == b
        count = int(member.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[member].mean()) if count else None,
                "accuracy": float(correct[member].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-width bins of top-1 confidence: Σ (n_b / N) · |acc_b − conf_b|."""
    total = len(labels)
    return float(
        sum(
            row["count"] / total * abs(row["accuracy"] - row["confidence"])
            for row in reliability_bins(probabilities, labels, bins)
            if row["count"]
        )
    )


def per_class_recall(confusion: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Recall of each class from a confusion matrix (rows: true class)."""
    recall = confusion.diagonal() / confusion.sum(axis=1).clip(min=1)
    return {name: float(r) for name, r in zip(classes, recall, strict=True)}


def calibration_report(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """What the card stores: ECE, the bins, the mean confidence against the accuracy."""
    return {
        "ece": expected_calibration_error(probabilities, labels, bins),
        "bins": bins,
        "images": len(labels),
        "mean_confidence": float(probabilities.max(axis=1).mean()),
        "accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
        "reliability": reliability_bins(probabilities, labels, bins),
    }


def plot_reliability(report: dict[str, Any], png: Path, title: str) -> None:
    """The reliability diagram: accuracy per confidence bin (bars) and the bin's mean confidence
    (dots) against the diagonal; image counts below. Bars above their dots: under-confident."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["reliability"] if r["count"]]
    width = 1.0 / report["bins"]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lows = [r["low"] for r in rows]
    accuracy = [r["accuracy"] for r in rows]
    top.bar(lows, accuracy, width=width, align="edge", edgecolor="black", label="accuracy")
    centres = [low + width / 2 for low in lows]
    top.plot(centres, [r["confidence"] for r in rows], "o", color="C3", label="mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1)
    title = f"{title}\nECE ({report['bins']} bins) {100 * report['ece']:.2f} %"
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    top.legend(loc="upper left")
    bottom.bar(lows, [r["count"] for r in rows], width=width, align="edge", color="C0")
    bottom.set(xlabel="top-1 confidence", ylabel="images", yscale="log")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def calibrate_model_folder(model_dir: Path, data: str | None = None, sample: int | None = None) -> dict:
    """Add calibration and per-class recall to an exported folder's card (JSON, Markdown, PNG).

    Scores `model_dir/model.onnx` in ONNX Runtime on the validation split its card names (or `data`),
    the whole split unless `sample` is given; returns the updated card.
    """
    from eluserve.core.throughput import cpu_session
    from eluserve.export.data import load_dataset, split_train_val
    from eluserve.export.model_card import render_markdown
    from eluserve.export.verify import ort_probabilities, sample_index

    card_path = model_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    split = card["data"]["validation_split"]
    val_per_class = int(split.split()[1])  # "last 500 images of each class, in file order"
    size = card["input"]["shape"][1]
    dataset = load_dataset(data or card["data"]["source"], size, len(card["labels"]))
    _, val = split_train_val(dataset, val_per_class)
    index = sample_index(len(val.labels), sample)
    probabilities = ort_probabilities(cpu_session(str(model_dir / "model.onnx")), val.images[index])
    labels = val.labels[index]
    report = calibration_report(probabilities, labels)
    confusion = np.zeros((len(card["labels"]),) * 2, dtype=np.int64)
    np.add.at(confusion, (labels, probabilities.argmax(axis=1)), 1)
    card["calibration"] = report
    card["per_class_recall"] = per_class_recall(confusion, card["labels"])
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    plot_reliability(report, model_dir / "reliability.png", f"{card['name']} v{card['version']}")
    (model_dir / "MODEL_CARD.md").write_text(render_markdown(card))
    return card
