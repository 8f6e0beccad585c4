"""Fixtures for the `eluserve classify` tests: one shared folder tree, and the CLI run in-process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from eluserve.cli import main
from tests.classify.trees import build_tree


@dataclass(frozen=True)
class Tree:
    root: Path
    #: {path relative to root: expected error code, None when it must be classified}
    expected: dict[str, str | None]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory, cifar_zip: Path) -> Tree:
    """The shared tree; tests only read it."""
    root = tmp_path_factory.mktemp("photos")
    return Tree(root, build_tree(root, cifar_zip))


@pytest.fixture
def classify(capfd: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run `eluserve classify ARGS` in this process; rows on stdout are written to fd 1, hence capfd."""

    def run(*args: str | Path) -> Result:
        capfd.readouterr()
        code = main(["classify", *map(str, args)])
        out, err = capfd.readouterr()
        return Result(code, out, err)

    return run
