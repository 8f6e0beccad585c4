"""Two workers, each with its own session: readiness gated on warm-up, metrics summed over processes,
connections spread evenly over the workers."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from eluserve.core.contract import read_model_info
from load_tests.wrk import cifar_body, run_wrk
from tests.deadlines import REQUEST_S
from tests.service.bento_server import BentoServer, running_server, start_server
from tests.service.image_samples import encode, gradient
from tests.service.metrics_scrape import MetricsDelta, Scrape

pytestmark = pytest.mark.integration

WARMUP_SECONDS = 6


@dataclass
class Started:
    server: BentoServer
    #: /readyz as soon as /livez answered: the workers are up, the warm-up is not done. None where it
    #: was answered more than WARMUP_SECONDS after the server started (a busy machine): the warm-up
    #: may have been over by then, so the answer tells nothing.
    readyz_while_warming: int | None


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[Started]:
    folder = tmp_path_factory.mktemp("workers-server")
    started_at = time.monotonic()  # before the workers, so before their warm-up starts
    server = start_server(
        folder,
        {
            "ELUSERVE_MODEL": str(serving_model_path),
            "ELUSERVE_CONTROL_DIR": str(folder / "control"),
            "ELUSERVE_WORKERS": "2",
            "ELUSERVE_WARMUP_MIN_SECONDS": str(WARMUP_SECONDS),
        },
    )
    try:
        server.wait_for("/livez")
        while_warming: int | None = httpx.get(server.url + "/readyz", timeout=REQUEST_S).status_code
        if time.monotonic() - started_at >= WARMUP_SECONDS:
            while_warming = None
        server.wait_for("/readyz")
        yield Started(server, while_warming)
    finally:
        server.stop()


def test_readyz_turns_ready_only_after_warm_up(started: Started) -> None:
    assert started.readyz_while_warming in (503, None)
    assert httpx.get(started.server.url + "/readyz", timeout=REQUEST_S).status_code == 200
    assert httpx.get(started.server.url + "/livez", timeout=REQUEST_S).status_code == 200


def test_metrics_are_summed_over_all_worker_processes(started: Started, serving_model_path: Path) -> None:
    server = started.server
    info = read_model_info(serving_model_path)
    images = [encode(gradient(48, 40, seed=seed), "JPEG") for seed in range(4)]

    def classify(index: int) -> int:
        # A fresh connection per request lets the kernel hand requests to either HTTP worker.
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            files = {"image": ("image", images[index % len(images)])}
            return http.post("/classify", files=files).status_code

    def batch(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            files = [("images", (str(i), data)) for i, data in enumerate([*images, b"broken"])]
            return http.post("/classify_batch", files=files).status_code

    with MetricsDelta(server.url) as delta, concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(classify, range(40))) + list(pool.map(batch, range(6)))
    assert statuses == [200] * 46

    assert delta("eluserve_images_total", model=info.name, outcome="ok") == 40 + 6 * 4
    assert delta("eluserve_images_total", model=info.name, outcome="error") == 6
    assert delta("eluserve_client_errors_total", code="invalid_image") == 6
    assert delta.sum("eluserve_predictions_total", model=info.name) == 64
    assert delta("eluserve_batch_size_sum", model=info.name) == 64
    assert delta("eluserve_preprocess_duration_seconds_count", model=info.name) == 70

    model_info = delta.after.series("eluserve_model_info")
    document = httpx.get(server.url + "/model", timeout=30).json()
    assert model_info == [
        {
            "model": info.name,
            "version": info.version,
            "engine": document["engine"],
            "provider": document["execution_provider"],
            "precision": "fp32",
        }
    ]
    assert delta.after.value("eluserve_model_info") == 1

    # Both workers really served (and wrote metrics of their own): the sums above span two processes.
    assert delta("eluserve_worker_images_total", worker="1") > 0
    assert delta("eluserve_worker_images_total", worker="2") > 0
    counter_files = {
        path.name for path in (server.log_path.parent / "control" / "prometheus").glob("counter_*.db")
    }
    assert len(counter_files) >= 2, counter_files


def test_bentoml_metrics_are_there_too(started: Started) -> None:
    scrape = Scrape.of(started.server.url)
    assert scrape.value("bentoml_service_request_total", endpoint="/classify") is not None


def test_few_keep_alive_connections_spread_evenly_over_the_workers(started: Started) -> None:
    """Four kept-alive connections, opened one after another: two per worker, so each serves half."""
    server = started.server
    image = encode(gradient(32, 32, seed=7), "JPEG")
    requests_per_connection = 25
    clients = [httpx.Client(base_url=server.url, timeout=30.0) for _ in range(4)]
    try:
        with MetricsDelta(server.url) as delta:
            for client in clients:  # each client's one connection opens and is counted before the next
                assert client.post("/classify", files={"image": ("a.jpg", image)}).status_code == 200

            def keep_sending(client: httpx.Client) -> list[int]:
                return [
                    client.post("/classify", files={"image": ("a.jpg", image)}).status_code
                    for _ in range(requests_per_connection - 1)
                ]

            with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                statuses = [status for batch in pool.map(keep_sending, clients) for status in batch]
    finally:
        for client in clients:
            client.close()
    assert statuses == [200] * (4 * (requests_per_connection - 1))
    per_worker = {worker: delta("eluserve_worker_images_total", worker=worker) for worker in ("1", "2")}
    assert per_worker == {"1": 2 * requests_per_connection, "2": 2 * requests_per_connection}


def test_a_burst_of_connections_spreads_evenly_over_the_workers(started: Started) -> None:
    """Sixteen connections opened at once (as wrk and connection pools do) are split 8/8, ±1."""
    server = started.server
    host, port = server.url.removeprefix("http://").split(":")
    connections = [socket.create_connection((host, int(port))) for _ in range(16)]
    try:
        deadline = time.monotonic() + REQUEST_S
        owners: collections.Counter[int] = collections.Counter()
        while time.monotonic() < deadline:
            owners = _connection_owners(server, int(port))
            if sum(owners.values()) == 16:
                break
            time.sleep(0.05)
    finally:
        for connection in connections:
            connection.close()
    assert sum(owners.values()) == 16, owners
    assert len(owners) == 2 and max(owners.values()) <= 9, owners


def _connection_owners(server: BentoServer, port: int) -> collections.Counter[int]:
    """Established connections on `port`, counted by the worker process that holds them."""
    server.remember_processes()
    owners: collections.Counter[int] = collections.Counter()
    for child in psutil.Process(server.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in child.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port:
                    owners[child.pid] += 1
    return owners


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_sixty_four_connections_meet_no_concurrency_limit_and_no_5xx(started: Started) -> None:
    """With the default limits, 64 single-image connections stay within BentoML's concurrency limit
    (before: its share of 128 per pinned worker refused half of them). On a 2-core machine of its own
    their queue is ~0.1 s, far inside the 1 s latency budget, so every answer is a 200; a machine
    slowed several-fold by other tenants may exceed the budget, and then each 429 is the batcher's,
    counted as such."""
    body, content_type = cifar_body(1)
    with MetricsDelta(started.server.url) as delta:
        result = run_wrk(
            started.server.url + "/classify",
            body,
            content_type,
            connections=64,
            duration_s=2,
            timeout_s=REQUEST_S,
        )
    assert result.ok > 0
    assert set(result.statuses) <= {200, 429} and not result.socket_errors, result.to_dict()
    assert delta("eluserve_requests_rejected_total", reason="max_concurrency") == 0
    # wrk does not count answers to the (at most 64) requests in flight when it stops.
    refused = delta("eluserve_requests_rejected_total", reason="latency_budget")
    assert result.count(429) <= refused <= result.count(429) + 64


def test_a_second_server_on_the_host_leaves_the_first_ones_metrics(
    started: Started, tmp_path: Path, serving_model_path: Path
) -> None:
    """Both servers share BENTOML_HOME, whose metrics folder every `bentoml serve` empties as it starts."""
    first = started.server
    image = {"image": ("a.jpg", encode(gradient(32, 32, seed=3), "JPEG"))}

    def classified(url: str) -> float:
        return Scrape.of(url).value("eluserve_images_total", outcome="ok") or 0.0

    assert httpx.post(first.url + "/classify", files=image, timeout=30).status_code == 200
    before = classified(first.url)
    env = {
        "ELUSERVE_MODEL": str(serving_model_path),
        "ELUSERVE_WORKERS": "1",
        "BENTOML_HOME": str(first.home),
    }
    with running_server(tmp_path, env) as second:
        assert httpx.post(first.url + "/classify", files=image, timeout=30).status_code == 200
        assert classified(first.url) == before + 1
        assert classified(second.url) == 0


def test_the_server_removes_its_control_folder_when_it_stops(
    tmp_path: Path, serving_model_path: Path
) -> None:
    """The folder holds the workers' metrics files too: one left behind per start would fill /tmp."""
    with running_server(
        tmp_path, {"ELUSERVE_MODEL": str(serving_model_path), "ELUSERVE_WORKERS": "1"}
    ) as server:
        workers = psutil.Process(server.process.pid).children(recursive=True)
        folders = {worker.environ().get("ELUSERVE_CONTROL_DIR") for worker in workers} - {None}
        assert len(folders) == 1, folders
        folder = Path(folders.pop())
        assert (folder / "prometheus").is_dir()
    assert not folder.exists()
