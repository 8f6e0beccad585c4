"""`--evaluate`: folder names as true labels; accuracy, per-class precision/recall, confusion matrix."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eluserve.classify.files import UsageError


class Evaluation:
    """Accuracy, per-class precision/recall and the confusion matrix, for the ImageFolder layout.

    A file's true class is the name of the folder holding it; files in folders that are not a label of
    the model are counted apart and left out, as are files that failed.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self._index = {label: i for i, label in enumerate(self.labels)}
        self.confusion = np.zeros((len(self.labels), len(self.labels)), dtype=np.int64)
        self.unlabelled = 0
        self.failed = 0

    def add(self, path: str, predicted: str | None) -> None:
        truth = self._index.get(os.path.basename(os.path.dirname(path)))
        if truth is None:
            self.unlabelled += 1
        elif predicted is None or predicted not in self._index:
            self.failed += 1
        else:
            self.confusion[truth, self._index[predicted]] += 1

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    def report(self) -> str:
        """A text report: the summary line, the per-class table and the matrix of the classes seen."""
        head = f"evaluation: {self.total} images in folders named after the model's labels"
        extra = [
            f"{n} {what}"
            for n, what in ((self.failed, "failed"), (self.unlabelled, "outside class folders"))
            if n
        ]
        head += f" ({', '.join(extra)}, not counted)" if extra else ""
        if self.total == 0:
            return (
                head + "; nothing to evaluate (expected folders such as " + f"{'/'.join(self.labels[:3])}/)"
            )
        correct = int(np.trace(self.confusion))
        lines = [head, f"accuracy: {correct / self.total:.4f} ({correct}/{self.total})", ""]
        predicted = self.confusion.sum(axis=0)
        actual = self.confusion.sum(axis=1)
        seen = [i for i in range(len(self.labels)) if predicted[i] or actual[i]]
        width = max(len("class"), *(len(self.labels[i]) for i in seen))
        lines.append(f"{'class':<{width}}  precision  recall  support")
        for i in seen:
            precision = f"{self.confusion[i, i] / predicted[i]:.4f}" if predicted[i] else "-"
            recall = f"{self.confusion[i, i] / actual[i]:.4f}" if actual[i] else "-"
            lines.append(f"{self.labels[i]:<{width}}  {precision:>9}  {recall:>6}  {actual[i]:>7}")
        lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
        digits = len(str(int(self.confusion.max())))
        cells = {j: max(len(self.labels[j]), digits) for j in seen}
        lines.append(" " * width + "".join(f"  {self.labels[j]:>{cells[j]}}" for j in seen))
        for i in seen:
            counts = "".join(f"  {self.confusion[i, j]:>{cells[j]}}" for j in seen)
            lines.append(f"{self.labels[i]:<{width}}{counts}")
        return "\n".join(lines)

    def save_png(self, path: str | Path, title: str) -> None:
        """The confusion matrix as a PNG (needs matplotlib; `require_matplotlib` checks before a run)."""
        from matplotlib.figure import Figure  # deferred: not part of the lean serving install

        n = len(self.labels)
        size = max(4.0, 0.55 * n + 2.0)
        figure = Figure(figsize=(size, size * 0.9), layout="constrained")
        axes = figure.add_subplot()
        image = axes.imshow(self.confusion, cmap="Blues")
        figure.colorbar(image, ax=axes, shrink=0.8)
        axes.set_xticks(range(n), self.labels, rotation=45, ha="right")
        axes.set_yticks(range(n), self.labels)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        accuracy = np.trace(self.confusion) / self.total if self.total else float("nan")
        axes.set_title(f"{title}: accuracy {accuracy:.4f} on {self.total} images")
        if n <= 30:
            threshold = self.confusion.max() / 2
            for (i, j), count in np.ndenumerate(self.confusion):
                color = "white" if count > threshold else "black"
                axes.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
        figure.savefig(path, dpi=120)


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(
            "--confusion-png needs matplotlib, which the serving install leaves out; "
            "`pip install matplotlib` (or install the train extra), or drop --confusion-png"
        )
