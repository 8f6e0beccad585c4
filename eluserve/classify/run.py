"""One classification run: files in, rows out, counted in a `Summary`."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from eluserve.classify.evaluation import Evaluation
from eluserve.classify.rows import Row, RowSink
from eluserve.classify.runners import Runner


@dataclass
class Summary:
    """What one run did; `format` is the line printed to stderr at the end."""

    classified: int = 0
    failed: int = 0
    #: Files left out because the output already has a row for them (`--resume`).
    skipped: int = 0
    seconds: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def files(self) -> int:
        """Files seen this run, skipped ones included."""
        return self.classified + self.failed + self.skipped

    @property
    def images_per_second(self) -> float:
        return (self.classified + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def add(self, row: Row) -> None:
        if row.ok:
            self.classified += 1
        else:
            self.failed += 1
            self.failures[row.code] += 1

    def format(self) -> str:
        text = (
            f"files: {self.files}  classified: {self.classified}  failed: {self.failed}  "
            f"skipped: {self.skipped}  seconds: {self.seconds:.2f}  img/s: {self.images_per_second:.1f}"
        )
        if self.failures:
            text += "\nfailed by code: " + ", ".join(f"{code} {n}" for code, n in self.failures.most_common())
        return text


def classify_files(
    files: Iterable[str],
    runner: Runner,
    writer: RowSink,
    *,
    skip: Container[str] = frozenset(),
    evaluation: Evaluation | None = None,
    progress: bool = False,
    summary: Summary | None = None,
) -> Summary:
    """Classify `files` with `runner`, writing one row per file; the core of `eluserve classify`.

    Pass a `summary` to keep the counts of a run that ends in an exception (server gone, Ctrl-C).
    """
    summary = summary if summary is not None else Summary()

    def todo() -> Iterator[str]:
        for path in files:
            if path in skip:
                summary.skipped += 1
            else:
                yield path

    started = time.perf_counter()
    try:
        with tqdm(
            desc="classify", unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True
        ) as bar:
            for row in runner.classify(todo()):
                writer.write(row)
                summary.add(row)
                if evaluation is not None:
                    evaluation.add(row.path, row.label)
                bar.update(1)
                if not row.ok:
                    bar.set_postfix_str(f"failed={summary.failed}", refresh=False)
    finally:
        summary.seconds = time.perf_counter() - started
    return summary
