"""Shared device batching (ELUSERVE_DEVICE_BATCHING=shared) in real two-worker `bentoml serve` processes.

On CPU `auto` keeps per-worker batching, so these servers force `shared`: the workers decode, one
device host process per server runs the session and batches the crops of both workers. The engine
is pinned to ONNX Runtime so that the shared and the per-worker server run the same engine (`auto`
times engines and may choose differently in two servers).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from eluserve.core.contract import read_model_info
from eluserve.service.device.protocol import socket_path
from load_tests.wrk import listening_processes
from tests.conftest import build_tiny_model
from tests.deadlines import REQUEST_S, STARTUP_S
from tests.service.bento_server import BentoServer, running_server, start_server
from tests.service.image_samples import encode, gradient
from tests.service.metrics_scrape import MetricsDelta, Scrape
from tests.service.test_repository_server import probe, worker_pids

pytestmark = pytest.mark.integration

HOST_MODULE = "eluserve.service.device.host"
JPEGS = [encode(gradient(48, 40, seed=seed), "JPEG") for seed in range(8)]


def host_processes(control_dir: Path) -> list[psutil.Process]:
    """The live device host processes of the server whose control folder is `control_dir`."""
    hosts = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if HOST_MODULE in cmdline and str(control_dir) in cmdline and process.info["status"] != "zombie":
            hosts.append(process)
    return hosts


def wait_until(condition: object, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def batch_request(url: str, images: list[bytes], top_k: int = 5) -> httpx.Response:
    # A fresh connection per request lets the kernel hand requests to either HTTP worker.
    files = [("images", (f"{i}.img", data)) for i, data in enumerate(images)]
    return httpx.post(url + "/classify_batch", files=files, data={"top_k": str(top_k)}, timeout=60)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Path:
    root = tmp_path_factory.mktemp("device-repository")
    name = read_model_info(serving_model_path).name
    (root / name).mkdir()
    (root / name / "model.onnx").symlink_to(serving_model_path)
    build_tiny_model(root / "tiny-b" / "model.onnx", name="tiny-b", version="1", seed=1)
    return root


def server_env(repository: Path, serving_model_path: Path, mode: str) -> dict[str, str]:
    return {
        "ELUSERVE_MODEL_REPOSITORY": str(repository),
        "ELUSERVE_DEFAULT_MODEL": read_model_info(serving_model_path).name,
        "ELUSERVE_MODEL_CONTROL": "explicit",
        "ELUSERVE_WORKERS": "2",
        "ELUSERVE_ENGINE": "onnxruntime",
        "ELUSERVE_DEVICE_BATCHING": mode,
    }


@pytest.fixture(scope="module")
def control_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared-control")


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, repository: Path, serving_model_path: Path, control_dir: Path
) -> Iterator[BentoServer]:
    env = server_env(repository, serving_model_path, "shared") | {"ELUSERVE_CONTROL_DIR": str(control_dir)}
    with running_server(tmp_path_factory.mktemp("shared-server"), env) as server:
        yield server


def test_one_host_serves_both_workers_and_reports_the_engine_it_runs(
    shared: BentoServer, control_dir: Path, serving_model_path: Path
) -> None:
    (host,) = host_processes(control_dir)
    assert host.cmdline()[-2:] == ["--workers", "2"]  # its batches hold up to 2 × 64 images
    # The host loads the files its peers name: its socket is the user's alone, even in a control
    # folder that others may enter (this test's is the operator-named kind, made by pytest).
    assert stat.S_IMODE(socket_path(control_dir).stat().st_mode) == 0o600
    # The load tool's img/CPU-s counts the host's CPU too (it holds no listening socket).
    assert host.pid in {process.pid for process in listening_processes(shared.url)}
    assert shared.log().count("device batching: shared (ELUSERVE_DEVICE_BATCHING=shared, 2 workers") == 2
    name = read_model_info(serving_model_path).name
    document = httpx.get(shared.url + "/model", timeout=30).json()
    assert (document["engine"], document["execution_provider"]) == ("onnxruntime", "CPUExecutionProvider")
    versions = httpx.get(f"{shared.url}/models/{name}", timeout=30).json()["versions"]
    assert [version["execution_provider"] for version in versions] == ["CPUExecutionProvider"]
    series = [s for s in Scrape.of(shared.url).series("eluserve_model_info") if s["model"] == name]
    assert [(s["engine"], s["provider"], s["precision"]) for s in series] == [
        ("onnxruntime", "CPUExecutionProvider", "fp32")
    ]


def test_shared_batches_answer_as_per_worker_batches_do(
    shared: BentoServer, repository: Path, serving_model_path: Path, tmp_path: Path
) -> None:
    images = [*JPEGS, encode(gradient(90, 70, seed=11), "PNG"), b"broken"]
    top_k = read_model_info(serving_model_path).num_classes  # every class: the whole distribution
    with running_server(tmp_path, server_env(repository, serving_model_path, "worker")) as worker:
        assert "device batching: worker" in worker.log()
        expected = batch_request(worker.url, images, top_k).json()["results"]
    got = batch_request(shared.url, images, top_k).json()["results"]
    assert got[-1] == expected[-1] and got[-1]["error"]["code"] == "invalid_image"
    for mine, theirs in zip(got[:-1], expected[:-1], strict=True):
        assert [c["label"] for c in mine["top_k"]] == [c["label"] for c in theirs["top_k"]]
        assert [c["probability"] for c in mine["top_k"]] == pytest.approx(
            [c["probability"] for c in theirs["top_k"]], abs=1e-5
        )


def test_concurrent_requests_of_both_workers_are_merged_into_device_batches(
    shared: BentoServer, serving_model_path: Path
) -> None:
    name = read_model_info(serving_model_path).name
    requests = 96
    with MetricsDelta(shared.url) as delta, concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = [
            r.status_code for r in pool.map(lambda _: batch_request(shared.url, JPEGS), range(requests))
        ]
    assert statuses == [200] * requests
    images = requests * len(JPEGS)
    batches = delta("eluserve_device_batch_workers_count", model=name)
    one_worker = delta("eluserve_device_batch_workers_bucket", model=name, le="1.0")
    assert batches - one_worker > 0, (batches, one_worker)  # batches holding both workers' requests
    assert delta("eluserve_device_batch_workers_sum", model=name) <= 2 * batches
    # Observed once per device batch, by the host: the images add up, nothing is counted twice.
    assert delta("eluserve_batch_size_sum", model=name) == images
    assert delta("eluserve_batch_size_count", model=name) == batches
    assert delta("eluserve_inference_duration_seconds_count", model=name) == batches
    # Both workers decoded and sent crops, counted per worker as in per-worker mode.
    per_worker = [delta("eluserve_worker_images_total", worker=worker) for worker in ("1", "2")]
    assert min(per_worker) > 0 and sum(per_worker) == images
    assert delta("eluserve_images_total", model=name, outcome="ok") == images


def test_unload_releases_the_version_in_the_host_and_load_brings_it_back(shared: BentoServer) -> None:
    assert probe(shared, "/models/tiny-b/classify") == {"tiny-b:1"}
    # A reload of a loaded version opens it again before the old handle closes: the host keeps it.
    reload = httpx.post(shared.url + "/v2/repository/models/tiny-b/load", json={}, timeout=120)
    assert reload.status_code == 200, reload.text
    assert probe(shared, "/models/tiny-b/classify") == {"tiny-b:1"}
    time.sleep(1.0)  # the replaced handles close once their requests are answered
    assert "released tiny-b:1" not in shared.log()
    unload = httpx.post(shared.url + "/v2/repository/models/tiny-b/unload", json={}, timeout=120)
    assert unload.status_code == 200, unload.text
    assert probe(shared, "/models/tiny-b/classify") == {"model_not_found"}
    # Both workers closed it (each after its requests on it were answered): the host let it go.
    wait_until(lambda: "released tiny-b:1" in shared.log(), REQUEST_S, "the host kept the unloaded version")
    load = httpx.post(shared.url + "/v2/repository/models/tiny-b/load", json={}, timeout=120)
    assert load.status_code == 200, load.text
    assert load.json()["workers"] == 2
    assert probe(shared, "/models/tiny-b/classify") == {"tiny-b:1"}


def test_a_restarted_worker_leaves_the_host_and_the_other_worker_serving(
    shared: BentoServer, control_dir: Path
) -> None:
    (host,) = host_processes(control_dir)
    before = worker_pids(shared)
    os.kill(min(before), signal.SIGKILL)
    wait_until(lambda: worker_pids(shared) - before, STARTUP_S, "BentoML did not restart the killed worker")
    shared.wait_for("/readyz")
    assert [batch_request(shared.url, JPEGS[:2]).status_code for _ in range(16)] == [200] * 16
    assert host_processes(control_dir) == [host]


def test_a_killed_host_costs_at_most_503s_and_the_next_requests_start_a_new_one(
    shared: BentoServer, control_dir: Path
) -> None:
    (host,) = host_processes(control_dir)
    stop = threading.Event()
    answered: list[list[httpx.Response]] = [[] for _ in range(8)]  # by sender, in order

    def send(mine: list[httpx.Response]) -> None:
        while not stop.is_set():
            mine.append(batch_request(shared.url, JPEGS))

    def count() -> int:
        return sum(map(len, answered))

    def ended() -> bool:
        return any(sender.done() for sender in senders)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        senders = [pool.submit(send, mine) for mine in answered]
        # Counts, not seconds, however slow the machine: every sender answered before the kill, and
        # a round of answers after it (a sender that failed ends the waits; its result raises below).
        wait_until(lambda: all(answered) or ended(), REQUEST_S, "a sender got no answer before the kill")
        before_kill = count()
        host.kill()
        wait_until(lambda: count() >= before_kill + 8 or ended(), REQUEST_S, "no answers after the kill")
        stop.set()
        for sender in senders:
            sender.result()
    answers = [answer for mine in answered for answer in mine]
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[0] == 200
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["error"]["code"] == "device_unavailable"
            assert answer.headers["Retry-After"] == "1"
    # The next requests start a new host, which loads the version on first use.
    assert [batch_request(shared.url, JPEGS).status_code for _ in range(8)] == [200] * 8
    (restarted,) = host_processes(control_dir)
    assert restarted.pid != host.pid
    assert "Traceback" not in shared.log(), shared.log()[-3000:]


def test_overload_is_the_contracts_429_counted_once_and_the_host_goes_with_its_server(
    tmp_path: Path, serving_model_path: Path
) -> None:
    """A 1 ms latency budget: any request that would queue behind another is refused, by the worker's
    estimate before decoding or by the host's batcher, which sees both workers' queue."""
    env = {
        "ELUSERVE_MODEL": str(serving_model_path),
        "ELUSERVE_WORKERS": "2",
        "ELUSERVE_ENGINE": "onnxruntime",
        "ELUSERVE_DEVICE_BATCHING": "shared",
        "ELUSERVE_MAX_LATENCY_MS": "1",
        "ELUSERVE_MAX_BATCH_SIZE": "16",
    }
    server = start_server(tmp_path, env)
    try:
        server.wait_for("/readyz")
        folders = set()
        for process in psutil.Process(server.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a host candidate that lost the lock: a zombie
                folders.add(process.environ().get("ELUSERVE_CONTROL_DIR"))
        folders -= {None}
        assert len(folders) == 1, folders
        control = Path(folders.pop())
        pngs = [encode(gradient(200, 200, seed=seed), "PNG") for seed in range(8)]
        with MetricsDelta(server.url) as delta, concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: batch_request(server.url, pngs), range(48)))
        statuses = [answer.status_code for answer in answers]
        assert set(statuses) == {200, 429}, statuses
        for answer in answers:
            if answer.status_code == 429:
                assert answer.json()["error"]["code"] == "overloaded"
                assert answer.headers["Retry-After"] == "1"
        assert delta("eluserve_requests_rejected_total", reason="latency_budget") == statuses.count(429)
        assert delta("eluserve_requests_rejected_total", reason="max_concurrency") == 0

        (host,) = host_processes(control)
        # Stopped as an operator stops it (SIGTERM to `bentoml serve`), not by killing its process tree:
        # the host must notice on its own that its server is gone.
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(REQUEST_S)
        wait_until(
            lambda: not host.is_running() or host.status() == "zombie",
            REQUEST_S,
            "the host outlived its server",
        )
        assert not control.exists()
    finally:
        with contextlib.suppress(Exception):
            server.stop()
