"""Faults in CI: workers killed under load, a bad model at start-up, SIGTERM with requests in flight.

The scenarios are `load_tests.faults` (which also runs them as a command, with figures); here they run
briefly against servers started by the suite's own helper, at a low request rate so that the load
generator's in-flight cap is never what limits the numbers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from load_tests.faults import (
    kill_worker_under_load,
    shutdown_with_requests_in_flight,
    slow_batch_shot,
    watch_startup,
)
from load_tests.fixtures import Attachment, multipart
from load_tests.soak import Shot
from tests.deadlines import STARTUP_S
from tests.service.bento_server import BentoServer, running_server, start_server
from tests.service.image_samples import encode, gradient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 5.0
MAX_RECOVERY_S = 45.0


def classify_shots() -> list[Shot]:
    """`POST /classify` of a few generated JPEGs (CI need not have the shared CIFAR zip)."""
    shots: list[Shot] = []
    for seed in range(4):
        body, content_type = multipart(
            "image", [Attachment("a.jpg", "image/jpeg", encode(gradient(48, 48, seed), "JPEG"))]
        )
        shots.append(("/classify", body, {"Content-Type": content_type}))
    return shots


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    with running_server(
        tmp_path_factory.mktemp("faults-server"), {"ELUSERVE_MODEL": str(serving_model_path)}
    ) as running:
        yield running


def test_a_killed_worker_is_replaced_and_the_service_answers_again(server: BentoServer) -> None:
    report = kill_worker_under_load(
        server.url,
        server.process.pid,
        "EluClassifier",
        classify_shots(),
        rate=RATE,
        before_s=1.0,
        max_after_s=MAX_RECOVERY_S,
    )
    print(report.summary())
    assert report.failures(MAX_RECOVERY_S) == []
    assert report.shed == 0
    # Only what was in flight when the worker died (or sent while it was down) may fail.
    assert sum(report.failed.values()) <= RATE * (report.recovery_s or 0) + 4


@pytest.mark.parametrize("kind", ["missing", "noise", "truncated", "empty"])
def test_a_bad_model_stops_the_start_up_with_a_message_naming_it(
    tmp_path: Path, serving_model_path: Path, kind: str
) -> None:
    model = tmp_path / "model.onnx"
    if kind == "noise":
        model.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        model.write_bytes(serving_model_path.read_bytes()[:2048])
    elif kind == "empty":
        model.write_bytes(b"")
    server = start_server(tmp_path, {"ELUSERVE_MODEL": str(model)})
    try:
        report = watch_startup(server.process, server.log, model, timeout_s=STARTUP_S)
    finally:
        server.stop()
    print(report.summary())
    assert report.failures() == [], report.log[-3000:]


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path, serving_model_path: Path) -> None:
    server = start_server(tmp_path, {"ELUSERVE_MODEL": str(serving_model_path)})
    try:
        server.wait_for("/readyz")
        report = shutdown_with_requests_in_flight(server.process, server.url, slow_batch_shot(), requests=3)
    finally:
        server.stop()
    print(report.summary())
    assert report.exit_code is not None
    assert report.outcomes == ["200"] * 3
