"""Fixtures for the deploy/ tests: the Prometheus binaries, skipped (or failed in CI) when absent."""

from __future__ import annotations

import pytest

from tests.deploy.support import require_binary


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool: rule and configuration checks, rule unit tests."""
    return require_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Path of the prometheus server binary, for tests that start one."""
    return require_binary("prometheus")
