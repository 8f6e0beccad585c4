"""What the deploy/ tests share: where deploy/ is, and what to do when a tool is missing.

promtool and prometheus come from Debian's `prometheus` package (deploy/install-prometheus.sh),
kubernetes-validate from PyPI. Where one is missing the tests that need it skip and say how to get it,
rather than failing on a developer machine that was never set up; under CI (CI set) they fail instead,
because a green run that skipped them would hide a missing install step.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

from load_tests import REPO_ROOT

DEPLOY_DIR = REPO_ROOT / "deploy"
INSTALL_PROMETHEUS_HINT = "run `sudo sh deploy/install-prometheus.sh` (Debian's prometheus package)"


def missing(what: str, hint: str) -> NoReturn:
    """Skip (a developer machine) or fail (CI) because `what` is not installed; `hint` says how to get it."""
    message = f"{what} is not installed; {hint}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must install it)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_binary(name: str) -> str:
    """Path of executable `name` on PATH, or `missing` it."""
    path = shutil.which(name)
    if path is None:
        missing(name, INSTALL_PROMETHEUS_HINT)
    return path
