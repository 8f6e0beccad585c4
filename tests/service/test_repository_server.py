"""The model repository in a real `bentoml serve` with two workers and ELUSERVE_MODEL_CONTROL=explicit.

Loads and unloads land on one worker and must reach the other: after each answer, many requests on
fresh connections (the kernel spreads them over both workers) must all see the new state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.session import ModelSession
from tests.conftest import build_tiny_model
from tests.deadlines import STARTUP_S
from tests.service.bento_server import BentoServer, running_server
from tests.service.image_samples import encode, gradient
from tests.service.metrics_scrape import Scrape

pytestmark = pytest.mark.integration

#: Requests on fresh connections after a change; with two workers, each is missed with odds 2^-16.
PROBES = 16


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    build_tiny_model(root / "tiny-a" / "model.onnx", name="tiny-a", version="1")
    build_tiny_model(root / "tiny-b" / "1" / "model.onnx", name="tiny-b", version="1", seed=1)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, repository: Path) -> Iterator[BentoServer]:
    with running_server(
        tmp_path_factory.mktemp("repository-server"),
        {
            "ELUSERVE_MODEL_REPOSITORY": str(repository),
            "ELUSERVE_DEFAULT_MODEL": "tiny-a",
            "ELUSERVE_MODEL_CONTROL": "explicit",
            "ELUSERVE_WORKERS": "2",
        },
    ) as running:
        yield running


IMAGE = encode(gradient(50, 40, seed=5), "JPEG")


def classify(server: BentoServer, path: str) -> httpx.Response:
    # A new connection per request, so that requests reach both workers.
    return httpx.post(server.url + path, files={"image": ("x.jpg", IMAGE, "image/jpeg")}, timeout=30)


def probe(server: BentoServer, path: str) -> set[str]:
    """What `PROBES` requests answered: the `model` tag, or the error code."""
    answers = set()
    for _ in range(PROBES):
        body = classify(server, path).json()
        answers.add(body.get("model") or body["error"]["code"])
    return answers


def test_models_are_listed_and_classify_per_model(server: BentoServer, repository: Path) -> None:
    listing = httpx.get(server.url + "/models", timeout=30).json()
    assert listing["default_model"] == "tiny-a" and listing["model_control"] == "explicit"
    assert [model["name"] for model in listing["models"]] == ["tiny-a", "tiny-b"]
    (version,) = listing["models"][1]["versions"]
    assert version["version"] == "1" and version["execution_provider"] == "CPUExecutionProvider"

    reference = ModelSession.from_path(repository / "tiny-b" / "1", intra_op_threads=1)
    crop = load_image(IMAGE, reference.info.preprocessing, Limits())
    expected = reference.classify([crop], top_k=5)[0]
    for path in ("/models/tiny-b/classify", "/models/tiny-b/versions/1/classify"):
        body = classify(server, path).json()
        assert body["model"] == "tiny-b:1" and body["label"] == expected["label"]
        assert body["probability"] == pytest.approx(expected["probability"], abs=1e-6)
    assert classify(server, "/classify").json()["model"] == "tiny-a:1"

    for path in ("/models/nope/classify", "/models/tiny-b/versions/7/classify"):
        response = classify(server, path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert httpx.get(server.url + "/models/nope", timeout=30).status_code == 404


def test_a_new_version_reaches_every_worker(server: BentoServer, repository: Path) -> None:
    build_tiny_model(repository / "tiny-b" / "2" / "model.onnx", name="tiny-b", version="2", seed=2)
    before = Scrape.of(server.url)
    response = httpx.post(server.url + "/v2/repository/models/tiny-b/load", json={}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "tiny-b", "state": "loaded", "versions": ["1", "2"], "workers": 2}
    assert probe(server, "/models/tiny-b/classify") == {"tiny-b:2"}
    assert probe(server, "/models/tiny-b/versions/1/classify") == {"tiny-b:1"}
    after = Scrape.of(server.url)
    # Every series carries the version it was served by.
    assert after.value("eluserve_images_total", model="tiny-b", version="2", outcome="ok") == PROBES
    assert after.value("eluserve_predictions_total", model="tiny-b", version="2") == PROBES
    loads = {"model": "tiny-b", "version": "2", "outcome": "ok"}
    assert after.value("eluserve_model_loads_total", **loads) == 2  # once per worker
    assert before.value("eluserve_model_loads_total", **loads) is None
    index = httpx.post(server.url + "/v2/repository/index", json={}, timeout=30).json()
    assert {"name": "tiny-b", "version": "2", "state": "READY"} in index


def test_a_broken_file_is_named_and_nothing_changes(server: BentoServer, repository: Path) -> None:
    broken = repository / "tiny-b" / "3" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes((repository / "tiny-b" / "2" / "model.onnx").read_bytes()[:300])
    try:
        response = httpx.post(server.url + "/v2/repository/models/tiny-b/load", json={}, timeout=120)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "model_load_failed" and str(broken) in error["message"]
        assert probe(server, "/models/tiny-b/classify") == {"tiny-b:2"}
    finally:
        shutil.rmtree(broken.parent)


def test_unload_reaches_every_worker_and_load_brings_it_back(server: BentoServer) -> None:
    response = httpx.post(server.url + "/v2/repository/models/tiny-b/unload", json={}, timeout=120)
    assert response.status_code == 200, response.text
    assert probe(server, "/models/tiny-b/classify") == {"model_not_found"}
    info = Scrape.of(server.url).series("eluserve_model_info")
    wanted = {"model": "tiny-b", "version": "2", "provider": "CPUExecutionProvider"}
    assert any(wanted.items() <= series.items() for series in info), info
    assert Scrape.of(server.url).value("eluserve_model_info", model="tiny-b") == 0

    refused = httpx.post(server.url + "/v2/repository/models/tiny-a/unload", json={}, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "default_model"
    missing = httpx.post(server.url + "/v2/repository/models/nope/load", json={}, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

    again = httpx.post(server.url + "/v2/repository/models/tiny-b/load", json={}, timeout=120)
    assert again.status_code == 200
    assert probe(server, "/models/tiny-b/classify") == {"tiny-b:2"}


def worker_pids(server: BentoServer) -> set[int]:
    """BentoML's worker processes now (a killed one lingers as a zombie until reaped: skipped)."""
    pids = set()
    for child in psutil.Process(server.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(child.cmdline()):
                pids.add(child.pid)
    return pids


def test_a_restarted_worker_serves_what_the_others_serve(server: BentoServer) -> None:
    unload = httpx.post(server.url + "/v2/repository/models/tiny-b/unload", json={}, timeout=120)
    assert unload.status_code == 200, unload.text
    before = worker_pids(server)
    assert len(before) == 2, before
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + STARTUP_S
    while len(worker_pids(server) - before) < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker_pids(server) - before, "BentoML did not restart the killed worker"
    server.wait_for("/readyz")
    assert probe(server, "/models/tiny-b/classify") == {"model_not_found"}
    assert probe(server, "/classify") == {"tiny-a:1"}
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_repository_bodies_are_checked(server: BentoServer) -> None:
    """Triton's optional bodies: nothing or a small object with the route's options, else a 400."""
    index = server.url + "/v2/repository/index"
    everything = httpx.post(index, timeout=30).json()
    ready = httpx.post(index, json={"ready": True}, timeout=30).json()
    assert ready and all(row["state"] == "READY" for row in ready) and len(ready) <= len(everything)
    deep = b"[" * 200_000 + b"]" * 200_000
    for url, body in (
        (index, deep),
        (index, b"{"),
        (index, b"[]"),
        (index, b'{"ready": 1}'),
        (index, b'{"ready": true, "x": 1}'),
        (index, b"{}" + b" " * 70_000),
        (server.url + "/v2/repository/models/tiny-a/load", b'{"parameters": {"config": "{}"}}'),
        (server.url + "/v2/repository/models/tiny-a/unload", deep),
        (server.url + "/v2/repository/models/tiny-a/unload", b'{"unload_dependents": "yes"}'),
    ):
        response = httpx.post(url, content=body, timeout=30)
        assert response.status_code == 400, (url, body[:40], response.text)
        assert response.json()["error"]["code"] == "invalid_request"
