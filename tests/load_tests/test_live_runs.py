"""The load-test tooling against live servers, briefly: does it run, measure and clean up? Never how fast.

`eluserve bench --quick`-sized runs against the real service and the naive baseline (and PyTriton
where an environment with it exists), and the locustfile under locust itself: each task once with
valid and with deliberately wrong requests, then the documented headless run for a few seconds.
Locust is only ever imported in a subprocess: importing it monkey-patches the standard library with
gevent, which the rest of the test session must not inherit.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from load_tests.bench import BenchConfig, run_bench
from load_tests.servers import REPO_ROOT, ServerProcess, ServerUnavailable, start_service, triton_python
from tests.deadlines import COMMAND_S, REQUEST_S, STARTUP_S

pytestmark = pytest.mark.integration

LOCUST = str(Path(sys.executable).parent / "locust")
SHARES = {
    "ELUSERVE_LOCUST_BATCH_SHARE": "0.3",
    "ELUSERVE_LOCUST_MODEL_SHARE": "0.1",
    "ELUSERVE_LOCUST_INVALID_SHARE": "0.2",
    "ELUSERVE_LOCUST_PHOTO_SHARE": "0.1",
    "ELUSERVE_LOCUST_BATCH_SIZES": "2,5",
    "ELUSERVE_LOCUST_CIFAR_IMAGES": "16",
}
#: A latency budget and request timeout no busy machine reaches: on a busy one, a batch held up by other
#: work teaches the batcher a long time per image, and it refuses what queues behind (429), which locust
#: and the bench count as failures. Shedding itself is tested in tests/service/test_overload.py.
BUDGETS = {"ELUSERVE_MAX_LATENCY_MS": str(int(REQUEST_S * 1000)), "ELUSERVE_TIMEOUT_S": str(REQUEST_S)}
# Runs in a subprocess: every task once with valid requests, then each with only invalid ones.
TASKS_ONCE = """
import collections, json, sys
from locust.env import Environment
import load_tests.locustfile as lf

counts = collections.defaultdict(lambda: [0, 0])
def count(name, exception, **_):
    counts[name][0] += 1
    counts[name][1] += exception is not None
lf.ClassifierUser.host = sys.argv[1]
env = Environment(user_classes=[lf.ClassifierUser], events=lf.events)
env.events.request.add_listener(count)
user = lf.ClassifierUser(env)
for invalid in (0.0, 1.0):
    lf.INVALID_SHARE = invalid
    for _ in range(1 + 4 * int(invalid)):
        user.classify()
        user.classify_batch()
    user.model()
print(json.dumps(counts))
"""


def _descendants(pid: int) -> set[int]:
    return {child.pid for child in psutil.Process(pid).children(recursive=True)}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[ServerProcess]:
    server = start_service(tiny_model_path, tmp_path_factory.mktemp("service-logs"), BUDGETS)
    try:
        server.wait_ready(timeout=STARTUP_S)
        yield server
    finally:
        server.stop()


def _locust_env(cifar_zip: Path) -> dict[str, str]:
    return {**os.environ, **SHARES, "ELUSERVE_LOCUST_CIFAR_ZIP": str(cifar_zip)}


def test_each_locust_task_runs_and_checks_answers(service: ServerProcess, cifar_zip: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TASKS_ONCE, service.url],
        cwd=REPO_ROOT,
        env=_locust_env(cifar_zip),
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"/classify_batch", "/model"} <= set(stats), stats
    # The payload of a valid /classify is drawn at random (CIFAR-sized or photo-sized): either counts.
    assert any(name in ("/classify [cifar32]", "/classify [photo]") for name in stats), stats
    assert any(name.startswith("/classify [invalid") or "missing" in name for name in stats), stats
    assert {name: counts[1] for name, counts in stats.items() if counts[1]} == {}, done.stderr[-3000:]


def test_locust_headless_run_writes_its_reports(
    service: ServerProcess, cifar_zip: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [LOCUST, "-f", "load_tests/locustfile.py", "--headless", "-u", "4", "-r", "4", "-t", "6s",
         "--stop-timeout", "30", "--host", service.url, "--csv", str(tmp_path / "locust"),
         "--html", str(tmp_path / "locust.html"), "--only-summary"],
        cwd=REPO_ROOT,
        env=_locust_env(cifar_zip),
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
    )  # fmt: skip
    # locust exits 1 when any request failed, wrong refusals included. --stop-timeout lets the
    # requests in flight at the end finish, so even a starved machine records some.
    failures = tmp_path / "locust_failures.csv"
    assert done.returncode == 0, (failures.read_text() if failures.is_file() else "") + done.stderr[-3000:]
    assert (tmp_path / "locust.html").stat().st_size > 0
    stats = (tmp_path / "locust_stats.csv").read_text()
    # Which payload a valid /classify carries is drawn at random: either name counts.
    assert re.search(r"/classify \[(cifar32|photo)\]", stats) and "Aggregated" in stats, done.stderr[-3000:]


def test_quick_bench_measures_service_and_naive_and_cleans_up(
    tmp_path: Path, tiny_model_path: Path, cifar_zip: Path
) -> None:
    before = _descendants(os.getpid())
    config = BenchConfig.quick(
        model=tiny_model_path,
        out=tmp_path / "bench",
        servers=("service", "naive"),
        concurrencies=(1, 2),
        seconds=1.0,
        cifar_zip=cifar_zip,
        ready_timeout_s=STARTUP_S,
        service_env=BUDGETS,
        clients=("loadgen", "wrk") if shutil.which("wrk") else ("loadgen",),
    )
    result = run_bench(config)
    assert not result.failed, result.markdown
    for key in ("service", "naive"):
        run = result.runs[key]
        assert [level.concurrency for level in run.levels] == [1, 2]
        assert all(level.ok > 0 and level.error_count == 0 for level in run.levels), result.markdown
        assert run.cold_start_s is not None and run.cold_start_s > 0
    markdown = (tmp_path / "bench" / "bench.md").read_text()
    for text in (
        "| eluserve (BentoML) | 2 |",
        "| naive Starlette + ORT | 1 |",
        "in-process (limit)",
        "## Goals",
    ):
        assert text in markdown
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert set(report["servers"]) == {"service", "naive"} and report["raw"]
    assert {(p["engine"], p["precision"]) for p in report["raw"]} >= {
        ("onnxruntime", "fp32"),
        ("openvino", "fp32"),
    }
    assert report["limit"]["images_per_second"] == max(
        p["images_per_second"] for p in report["raw"] if p["precision"] == "fp32"
    )
    if "wrk" in config.clients:
        wrk = result.runs["service"].wrk
        assert "## wrk (native client)" in markdown
        assert [
            (level.endpoint, level.result.images_per_request, level.result.connections) for level in wrk
        ] == [
            ("classify", 1, 1),
            ("classify", 1, 4),
            ("classify_batch", 16, 1),
            ("classify_batch", 16, 4),
        ]
        assert all(level.result.ok > 0 and level.result.server_errors == 0 for level in wrk), result.markdown
        # Every run is bracketed by the limit, measured again in the sweep's configuration.
        assert all(level.ratio is not None and level.ratio > 0 for level in wrk), result.markdown
        assert all(earlier.limit_after == later.limit_before for earlier, later in itertools.pairwise(wrk))
        assert "### Over 1 run(s)" in markdown
        assert report["servers"]["service"]["wrk"][0]["ratio"] == pytest.approx(wrk[0].ratio, abs=1e-4)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "bench" / "bench.png").stat().st_size > 0
    assert _descendants(os.getpid()) <= before, "the bench left server processes behind"


def test_quick_bench_against_pytriton_where_it_is_installed(
    tmp_path: Path, tiny_model_path: Path, cifar_zip: Path
) -> None:
    try:
        triton_python()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    config = BenchConfig.quick(
        model=tiny_model_path,
        out=tmp_path / "bench",
        servers=("triton",),
        concurrencies=(2,),
        seconds=1.0,
        cifar_zip=cifar_zip,
        ready_timeout_s=STARTUP_S,
    )
    result = run_bench(config)
    run = result.runs["triton"]
    assert not result.failed and run.levels[0].ok > 0 and run.levels[0].error_count == 0, result.markdown


def test_the_gpu_checks_client_processes_share_the_requests(service: ServerProcess, cifar_zip: Path) -> None:
    """The GPU check's multi-process client, against the CPU service: every request answered, images
    counted once (it raises on any non-2xx answer)."""
    from load_tests.fixtures import cifar_jpegs
    from load_tests.gpu_check import batch_shape, serve_load, split
    from tests.service.metrics_scrape import MetricsDelta

    assert split(10, 3) == [4, 3, 3] and sum(split(7, 4)) == 7
    files = [upload.data for upload in cifar_jpegs(4, cifar_zip)]
    with MetricsDelta(service.url) as delta:
        assert serve_load(service.url, files, requests=6, concurrency=3, processes=2) > 0
    assert delta("eluserve_images_total", outcome="ok") == 6 * len(files)
    # What the check prints per level: images per device batch, and no shared host on CPU by default.
    batch, merged = batch_shape(service.url)
    assert 1 <= batch <= 64 and merged == 0
