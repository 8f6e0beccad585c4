"""Calibration figures on constructed examples whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from eluserve.export.calibration import (
    ECE_BINS,
    calibration_report,
    expected_calibration_error,
    per_class_recall,
    reliability_bins,
)


def top1(confidences: list[float], num_classes: int = 10) -> np.ndarray:
    """Probability rows whose top-1 class is 0 with the given confidence (the rest spread evenly)."""
    rows = []
    for c in confidences:
        row = np.full(num_classes, (1 - c) / (num_classes - 1))
        row[0] = c
        rows.append(row)
    return np.array(rows)


def test_ece_of_two_bins_worked_by_hand() -> None:
    # 10 images at confidence 0.8, 6 right: gap 0.2; 10 at 0.5 (bin (0.467, 0.533]), 5 right: gap 0.
    probabilities = top1([0.8] * 10 + [0.5] * 10)
    labels = np.array([0] * 6 + [1] * 4 + [0] * 5 + [1] * 5)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(10 / 20 * 0.2)


def test_perfectly_calibrated_predictions_score_zero() -> None:
    probabilities = top1([0.9] * 10 + [0.6] * 5)
    labels = np.array([0] * 9 + [3] + [0] * 3 + [2] * 2)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-12)


def test_confident_and_always_wrong_scores_the_confidence() -> None:
    probabilities = top1([0.99] * 7)
    assert expected_calibration_error(probabilities, np.full(7, 4)) == pytest.approx(0.99)


def test_bins_are_fifteen_equal_and_closed_above() -> None:
    # 1.0 belongs to the last bin (bins are (lo, hi]); 0.85 to (0.8, 0.867]; 0.1 to (0.067, 0.133].
    rows = reliability_bins(top1([1.0, 0.85, 0.1]), np.array([0, 2, 0]))
    assert len(rows) == ECE_BINS and rows[0]["low"] == 0.0 and rows[-1]["high"] == 1.0
    counts = [r["count"] for r in rows]
    assert counts[14] == 1 and counts[12] == 1 and counts[1] == 1 and sum(counts) == 3
    assert rows[12]["accuracy"] == 0.0 and rows[14]["accuracy"] == 1.0 and rows[5]["accuracy"] is None


def test_report_and_recall_agree_with_the_counts() -> None:
    probabilities = top1([0.7] * 4)
    probabilities[3] = probabilities[3][::-1]  # predicts the last class
    labels = np.array([0, 1, 9, 9])  # right, wrong, wrong, right
    report = calibration_report(probabilities, labels)
    assert report["accuracy"] == pytest.approx(0.5) and report["mean_confidence"] == pytest.approx(0.7)
    assert report["ece"] == pytest.approx(0.2)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, probabilities.argmax(1)), 1)
    recall = per_class_recall(confusion, [f"c{i}" for i in range(10)])
    assert recall["c0"] == 1.0 and recall["c1"] == 0.0 and recall["c9"] == 0.5
