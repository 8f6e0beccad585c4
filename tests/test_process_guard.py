"""tests/process_guard.py: a test that starts a process without the integration marker fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests import REPO_ROOT
from tests.deadlines import COMMAND_S

pytestmark = pytest.mark.integration  # runs pytest in a subprocess

SUITE = """
import os
import subprocess
import sys

import pytest


def test_in_process():
    assert sum(range(4)) == 6


def test_unmarked_subprocess():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_unmarked_swallowed():
    try:
        os.system("true")
    except Exception:
        pass


@pytest.mark.integration
def test_marked_subprocess():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


def test_unmarked_tests_that_start_processes_fail(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.process_guard", "-q", "-rf", "test_suite.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
    )
    assert "2 failed, 2 passed" in result.stdout, result.stdout + result.stderr
    assert "FAILED test_suite.py::test_unmarked_subprocess" in result.stdout
    assert "FAILED test_suite.py::test_unmarked_swallowed" in result.stdout
    assert "starts a process (true) but is not marked integration" in result.stdout
