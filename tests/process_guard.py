"""Integration tests are the tests that start programs; this plugin holds every test to that.

A test that starts a program (`bentoml serve`, the `eluserve` command, a Python subprocess, prometheus,
promtool), in its body, a fixture or a helper, must carry the `integration` marker, so that
`pytest -m "not integration"` runs only in-process tests: fast, and with nothing left running.

Checked at run time, not by reading sources: an audit hook (PEP 578) sees every process start
(`subprocess.Popen`, `os.exec*`, `os.posix_spawn`, `os.system`) wherever it happens, including in
module-scoped fixtures and helpers a source scan would miss, and refuses it while an unmarked test
runs; the test fails naming the command.

tests/conftest.py loads it for the suite; `pytest -p tests.process_guard` loads it anywhere.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Generator
from typing import Any

import pytest

MARKER = "integration"
#: Audit events of a process start (https://docs.python.org/3/library/audit_events.html).
PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system"})

#: The test running now, unless it carries the marker (then anything goes).
_unmarked: pytest.Item | None = None


class UnmarkedProcessError(RuntimeError):
    """A test without the integration marker tried to start a program."""


_VIOLATION = pytest.StashKey[str]()


def _command(event: str, args: tuple[Any, ...]) -> list[str]:
    """The started program's argv, as far as the event tells it."""
    if event == "os.system":
        return shlex.split(os.fsdecode(args[0]))
    program, argv = (args[1], args[2]) if event == "os.spawn" else (args[0], args[1])
    if isinstance(argv, str | bytes | os.PathLike):
        words = shlex.split(os.fsdecode(argv))
    else:
        words = [os.fsdecode(word) for word in argv or ()]
    return [os.fsdecode(program), *words[1:]] if program is not None else words


def _audit(event: str, args: tuple[Any, ...]) -> None:
    item = _unmarked
    if item is None or event not in PROCESS_EVENTS:
        return
    command = _command(event, args)
    message = (
        f"{item.nodeid} starts a process ({shlex.join(command)[:200]}) but is not marked {MARKER}: "
        f"add `pytestmark = pytest.mark.{MARKER}` to its module (or @pytest.mark.{MARKER} to the test), "
        "so that `pytest -m 'not integration'` stays in-process"
    )
    item.stash[_VIOLATION] = message  # fails the test even where the code under test swallows the error
    raise UnmarkedProcessError(message)


def pytest_configure(config: pytest.Config) -> None:
    """The marker itself is registered in pyproject.toml ([tool.pytest.ini_options] markers)."""
    sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    global _unmarked
    _unmarked = None if item.get_closest_marker(MARKER) else item
    try:
        return (yield)
    finally:
        _unmarked = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    violation = item.stash.get(_VIOLATION, None)
    if violation is not None:
        del item.stash[_VIOLATION]  # one failed phase per violation
    if violation is not None and report.passed:
        report.outcome = "failed"
        report.longrepr = violation
    return report
