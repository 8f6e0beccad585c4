"""Overload against a real two-worker server: every refusal is the contract's 429, with Retry-After and
counted by reason in `eluserve_requests_rejected_total`; nothing is a 5xx.

A latency budget of 1 ms makes the batcher refuse any request that would queue behind another, and a
concurrency limit of 6 (3 per worker) makes BentoML's own limit refuse as well.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.bento_server import BentoServer, running_server
from tests.service.image_samples import encode, gradient
from tests.service.metrics_scrape import MetricsDelta, Scrape

pytestmark = pytest.mark.integration

CLIENTS = 16
REQUESTS_PER_CLIENT = 3
MAX_BURSTS = 4
REASONS = ("latency_budget", "max_concurrency")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    with running_server(
        tmp_path_factory.mktemp("overload-server"),
        {
            "ELUSERVE_MODEL": str(serving_model_path),
            "ELUSERVE_WORKERS": "2",
            "ELUSERVE_MAX_CONCURRENCY": "6",
            "ELUSERVE_MAX_LATENCY_MS": "1",
            "ELUSERVE_MAX_BATCH_SIZE": "16",
        },
    ) as running:
        yield running


def test_rejection_reasons_exist_at_zero_before_any_overload(server: BentoServer) -> None:
    scrape = Scrape.of(server.url)
    for reason in REASONS:
        assert scrape.value("eluserve_requests_rejected_total", reason=reason) == 0


def test_every_refusal_is_the_contracts_429_with_retry_after_and_counted(server: BentoServer) -> None:
    images = [("images", (f"{i}.png", encode(gradient(200, 200, seed=i), "PNG"))) for i in range(8)]

    def send(_: int) -> list[httpx.Response]:
        with httpx.Client(base_url=server.url, timeout=60.0) as http:
            return [http.post("/classify_batch", files=images) for _ in range(REQUESTS_PER_CLIENT)]

    # Which limit refuses a request is a race: batcher refusals are quick, so fewer requests may be in
    # flight at once than BentoML's limit allows. Bursts repeat (up to MAX_BURSTS) until both limits
    # have refused at least once; every answer of every burst is checked below.
    responses: list[httpx.Response] = []
    with MetricsDelta(server.url) as delta:
        for _ in range(MAX_BURSTS):
            with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
                responses += [response for batch in pool.map(send, range(CLIENTS)) for response in batch]
            if all(delta.so_far("eluserve_requests_rejected_total", reason=reason) > 0 for reason in REASONS):
                break

    statuses = [response.status_code for response in responses]
    assert set(statuses) == {200, 429}, statuses
    refused = [response for response in responses if response.status_code == 429]
    for response in refused:
        assert response.json()["error"]["code"] == "overloaded"
        assert response.headers["Retry-After"] == "1"
    by_reason = {reason: delta("eluserve_requests_rejected_total", reason=reason) for reason in REASONS}
    assert sum(by_reason.values()) == len(refused), by_reason
    assert all(count > 0 for count in by_reason.values()), by_reason
    assert "Traceback" not in server.log()
