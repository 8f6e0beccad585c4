"""Top-k results in the HTTP contract's shape, shared by the service, the folder CLI and the baselines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from eluserve.core.errors import InvalidTopK

#: `top_k` when a client names none (capped at the number of classes).
DEFAULT_TOP_K = 5


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best classes per row, best first; equal probabilities keep index order.

    Returns:
        (indices int64 [N, k], probabilities float32 [N, k])
    """
    if not 1 <= k <= probs.shape[1]:
        raise ValueError(f"k must be in 1..{probs.shape[1]}, got {k}")
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


def format_results(probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """Per-row result objects of the HTTP contract (without "model")."""
    indices, values = top_k(probs, k)
    results = []
    # Whole arrays to Python numbers in one call each: converting element by element (`int(index)`,
    # `float(value)`) cost more than the sort itself for a single 10-class image.
    for row_indices, row_values in zip(indices.tolist(), values.tolist(), strict=True):
        ranked = [
            {"label": labels[index], "index": index, "probability": value}
            for index, value in zip(row_indices, row_values, strict=True)
        ]
        best = ranked[0]
        results.append({"label": best["label"], "probability": best["probability"], "top_k": ranked})
    return results


#: Digits a `top_k` text may have (no model has a billion classes).
MAX_TOP_K_DIGITS = 9


def parse_top_k(value: str | int | None, num_classes: int, default: int = DEFAULT_TOP_K) -> int:
    """Validate a client's `top_k`: an integer in 1..num_classes; absent means `default` (capped).

    Raises:
        InvalidTopK: for anything else, including booleans, floats and "3.0".
    """
    if value is None:
        return min(default, num_classes)
    if isinstance(value, bool):
        raise InvalidTopK(f"top_k must be an integer from 1 to {num_classes}, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        # A query string may carry thousands of digits, past what `int` converts (4300, a ValueError).
        if not (text.isascii() and text.isdigit()) or len(text) > MAX_TOP_K_DIGITS:
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise InvalidTopK(f"top_k must be an integer from 1 to {num_classes}, got {shown!r}")
        value = int(text)
    if not 1 <= value <= num_classes:
        raise InvalidTopK(f"top_k must be an integer from 1 to {num_classes}, got {value}")
    return value
