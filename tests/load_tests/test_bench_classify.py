"""`python -m load_tests bench-classify` (and `eluserve bench-classify` from a checkout)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from load_tests.__main__ import main


def test_bench_classify_runs(
    tiny_model_path: Path, cifar_zip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A smoke run, so the benchmark command keeps working; its figures mean nothing at this size."""
    argv = ["bench-classify", "--model", str(tiny_model_path), "--data", str(cifar_zip), "--images", "64"]
    assert main([*argv, "--rounds", "1", "--seconds", "0.05", "--batch-sizes", "16,64"]) == 0
    report = capsys.readouterr().out
    assert "fastest raw engine: " in report and "raw openvino img/s by batch size" in report
    assert re.search(r"classify in-process, batch 16 +[\d.]+ img/s +[\d.]+ of raw best", report), report
    assert "classify in-process, batch 64" in report
