"""`eluserve throughput-ratio`: a zoo architecture's raw ONNX Runtime CPU throughput against a shipped
model's, measured side by side in one process before any GPU time is spent on training it.

Throughput does not depend on what the weights have learnt, so an untrained candidate exported
through the real path (BN folded, fused ELU ops, fp32) measures what the trained one will serve at.
The machine these figures come from is shared, so the two sessions are measured in alternation,
`rounds` times each, and the report gives the median of each and the median of the per-round ratios
(a neighbour's burst then hits both sides of a round alike).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from eluserve.core.throughput import cpu_session, measure_session
from eluserve.export.exporter import finalize, to_onnx
from eluserve.export.fusion import fuse_elu
from eluserve.export.untrained import untrained_classifier


@dataclass(frozen=True)
class RatioRow:
    batch_size: int
    candidate_images_per_second: float
    baseline_images_per_second: float
    ratio: float  # median of the per-round ratios


def export_untrained(model: str, out: Path, activation: str = "elu", seed: int = 0) -> dict[str, int]:
    """Export an untrained `model` as `eluserve export` would (fused); returns the rewrite counts."""
    proto = to_onnx(untrained_classifier(model, activation, seed), 32)
    counts = fuse_elu(proto)
    onnx.save(finalize(proto), out)
    return dict(counts)


def measure_ratio(
    candidate: Path,
    baseline: Path,
    images: np.ndarray,
    batch_sizes: tuple[int, ...] = (1, 32, 128),
    rounds: int = 5,
    seconds: float = 1.0,
) -> list[RatioRow]:
    """Alternate the two sessions `rounds` times per batch size; medians of each and of the ratios."""
    sessions = {"candidate": cpu_session(str(candidate)), "baseline": cpu_session(str(baseline))}
    rows = []
    for batch_size in batch_sizes:
        batch = np.resize(images, (batch_size, *images.shape[1:]))
        rates: dict[str, list[float]] = {"candidate": [], "baseline": []}
        for _ in range(rounds):
            for name, session in sessions.items():
                rates[name].append(measure_session(session, batch, seconds=seconds).images_per_second)
        ratios = [c / b for c, b in zip(rates["candidate"], rates["baseline"], strict=True)]
        rows.append(
            RatioRow(
                batch_size,
                statistics.median(rates["candidate"]),
                statistics.median(rates["baseline"]),
                statistics.median(ratios),
            )
        )
    return rows


def run(
    model: str | Path, baseline: Path, batch_sizes: tuple[int, ...], rounds: int, seconds: float
) -> dict[str, Any]:
    """Measure the candidate against `baseline`: an exported file as it is (a `Path`), or a zoo
    architecture exported untrained to a temporary folder (its name)."""
    images = np.random.default_rng(0).integers(0, 256, (128, 32, 32, 3), dtype=np.uint8)
    if isinstance(model, Path):
        rows = measure_ratio(model, baseline, images, batch_sizes, rounds, seconds)
        rewrites: dict[str, int] = {}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{model}.onnx"
            rewrites = export_untrained(model, path)
            rows = measure_ratio(path, baseline, images, batch_sizes, rounds, seconds)
    return {
        "candidate": str(model),
        "baseline": str(baseline),
        "rewrites": rewrites,
        "rounds": rounds,
        "seconds_per_measurement": seconds,
        "rows": [row.__dict__ for row in rows],
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['candidate']} vs {report['baseline']} (rewrites {report['rewrites']}; "
        f"medians of {report['rounds']} alternating rounds)",
        "| batch | candidate images/s | baseline images/s | ratio |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['batch_size']} | {row['candidate_images_per_second']:.0f} | "
            f"{row['baseline_images_per_second']:.0f} | {row['ratio']:.2f} |"
        )
    return "\n".join(lines)
