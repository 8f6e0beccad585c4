"""Proves tests/deploy/prometheus_server.py against a real Prometheus and a real /metrics endpoint.

The target is a prometheus-client HTTP server in this process exposing a few eluserve-named metrics, so
the helper is known to work before the eluserve end-to-end test (which swaps in `bentoml serve`) exists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from tests.deadlines import REQUEST_S
from tests.deploy.prometheus_server import ALERTS_FILE, PrometheusError, PrometheusServer

pytestmark = pytest.mark.integration  # every test starts a real prometheus


@pytest.fixture
def metrics_target() -> Iterator[str]:
    """host:port of a /metrics endpoint with 3 classified images from a model on the CPU provider."""
    registry = CollectorRegistry()
    images = Counter("eluserve_images", "Images classified", ["model", "outcome"], registry=registry)
    images.labels(model="tiny", outcome="ok").inc(3)
    info = Gauge("eluserve_model_info", "Served model", ["model", "version", "provider"], registry=registry)
    info.labels(model="tiny", version="1", provider="CPUExecutionProvider").set(1)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.slow  # the first scrape comes about 5 s after start
def test_scrapes_target_and_answers_queries(prometheus_binary: str, metrics_target: str) -> None:
    with PrometheusServer(metrics_target) as prom:
        (up,) = prom.wait_for('up{job="eluserve"} == 1')
        assert up["metric"]["instance"] == metrics_target
        (images,) = prom.wait_for('eluserve_images_total{job="eluserve", outcome="ok"}')
        assert float(images["value"][1]) == 3.0
        # The dashboard's model table query, on a real scrape.
        (row,) = prom.query(
            "count by (model, version, provider) (max by (instance, model, version, provider) "
            '(eluserve_model_info{job="eluserve"}))'
        )
        assert row["metric"] == {"model": "tiny", "version": "1", "provider": "CPUExecutionProvider"}


def test_loads_and_evaluates_the_alert_rules(prometheus_binary: str, metrics_target: str) -> None:
    expected = [group["name"] for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"]]
    with PrometheusServer(metrics_target) as prom:
        deadline = time.monotonic() + REQUEST_S
        while True:
            groups = prom.rule_groups()
            health = {rule["name"]: rule["health"] for group in groups for rule in group["rules"]}
            if all(state == "ok" for state in health.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [group["name"] for group in groups] == expected
        assert set(health.values()) == {"ok"}, health


def test_reports_a_bad_configuration_with_the_server_log(prometheus_binary: str) -> None:
    with (
        pytest.raises(PrometheusError, match="not a valid duration"),
        PrometheusServer("127.0.0.1:1", scrape_interval="soon"),
    ):
        pass


def test_query_errors_carry_prometheus_message(prometheus_binary: str, metrics_target: str) -> None:
    with PrometheusServer(metrics_target) as prom, pytest.raises(PrometheusError, match="bad_data"):
        prom.query("sum(")
