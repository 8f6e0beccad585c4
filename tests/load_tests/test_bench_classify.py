"""`python -m load_tests bench-classify` (and `eluserve bench-classify` from a checkout)."""

from __future__ import annotations

import re
import socket
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


def test_ray_head_needs_the_ray_runner(
    tiny_model_path: Path, cifar_zip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench-classify", "--model", str(tiny_model_path), "--data", str(cifar_zip), "--ray-head"]
    assert main(argv) == 2
    assert "add --runner ray" in capsys.readouterr().err


@pytest.mark.integration
def test_ray_head_runs_a_ray_apart_and_stops_only_it() -> None:
    """The head `--ray-head` starts is reachable at the address it yields, and gone afterwards, with its
    temporary folder (so `ray stop`, which would stop every Ray on the machine, is never needed)."""
    pytest.importorskip("ray", reason="--ray-head needs the distributed extra")
    from load_tests.bench_classify import ray_head

    before = set(Path("/tmp").glob("ray-head-*"))
    with ray_head(1) as address:
        host, port = address.rsplit(":", 1)
        folders = set(Path("/tmp").glob("ray-head-*")) - before
        with socket.create_connection((host, int(port)), timeout=10):
            pass
    assert len(folders) == 1 and not any(folder.exists() for folder in folders)
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=10):
        pass
