"""End to end: a real Prometheus scrapes a real eluserve (2 HTTP + 2 inference workers) on 127.0.0.1.

Traffic with known outcomes is sent, then Prometheus' HTTP API must return our metrics with the
right values and labels: counts summed over every worker process, the model-info series exactly
once, client errors by code, predictions by class, and BentoML's own request counter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.session import ModelSession
from tests.deadlines import REQUEST_S
from tests.deploy.prometheus_server import PrometheusServer
from tests.service.bento_server import BentoServer, running_server
from tests.service.image_samples import encode, gradient

pytestmark = pytest.mark.integration

GOOD_IMAGES = 6
BATCH_IMAGES = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    with running_server(
        tmp_path_factory.mktemp("prom-e2e"),
        {
            "ELUSERVE_MODEL": str(serving_model_path),
            "ELUSERVE_WORKERS": "2",
            "ELUSERVE_ENGINE": "onnxruntime",
        },
    ) as started:
        yield started


def _value(result: list[dict]) -> float:
    return sum(float(sample["value"][1]) for sample in result)


def test_prometheus_sees_eluserve_metrics_with_the_right_values(
    server: BentoServer, serving_model_path: Path
) -> None:
    classifier = ModelSession.from_path(serving_model_path, providers=["CPUExecutionProvider"])
    info = classifier.info
    images = [encode(gradient(40 + seed, 36, seed=seed), "JPEG") for seed in range(GOOD_IMAGES)]
    expected = [
        classifier.classify([load_image(data, info.preprocessing, Limits())], top_k=1)[0]["label"]
        for data in images
    ]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for data in images:
            response = client.post("/classify", files={"image": ("x.jpg", data, "image/jpeg")})
            assert response.status_code == 200
        batch = [("images", (f"{i}.jpg", images[i], "image/jpeg")) for i in range(BATCH_IMAGES - 1)]
        batch.append(("images", ("bad.jpg", b"not an image at all", "image/jpeg")))
        response = client.post("/classify_batch", files=batch)
        assert response.status_code == 200 and "error" in response.json()["results"][-1]
        assert client.post("/classify", files={"image": ("e.jpg", b"", "image/jpeg")}).status_code == 400
        response = client.post(
            "/classify", files={"image": ("x.jpg", images[0], "image/jpeg")}, data={"top_k": "0"}
        )
        assert response.status_code == 400

    host = server.url.removeprefix("http://")
    with PrometheusServer(host) as prometheus:
        model = f'model="{info.name}"'
        ok_total = GOOD_IMAGES + BATCH_IMAGES - 1
        prometheus.wait_for(f'eluserve_images_total{{{model},outcome="ok"}} >= {ok_total}', timeout=REQUEST_S)

        assert _value(prometheus.query(f'eluserve_images_total{{{model},outcome="ok"}}')) == ok_total
        errors = prometheus.query("eluserve_client_errors_total > 0")
        by_code = {s["metric"]["code"]: float(s["value"][1]) for s in errors}
        assert by_code == {"invalid_image": 1, "empty_file": 1, "invalid_top_k": 1}

        predictions = prometheus.query(f"eluserve_predictions_total{{{model}}} > 0")
        counted = {s["metric"]["label"]: float(s["value"][1]) for s in predictions}
        for label in set(expected):
            assert counted.get(label, 0) >= expected.count(label)
        assert sum(counted.values()) == ok_total
        assert set(counted) <= set(info.labels)

        model_info = prometheus.query("eluserve_model_info")
        assert len(model_info) == 1, json.dumps(model_info)
        labels = model_info[0]["metric"]
        assert labels["model"] == info.name and labels["provider"] == "CPUExecutionProvider"
        assert (labels["engine"], labels["precision"]) == ("onnxruntime", "fp32")
        assert labels["job"] == "eluserve"

        observed = _value(prometheus.query(f"eluserve_top1_probability_count{{{model}}}"))
        assert observed == ok_total
        inferred = _value(prometheus.query(f"eluserve_batch_size_sum{{{model}}}"))
        assert inferred >= ok_total
        assert prometheus.query(f"eluserve_inference_duration_seconds_count{{{model}}} > 0")
        assert prometheus.query(f"eluserve_preprocess_duration_seconds_count{{{model}}} > 0")

        requests = prometheus.query('bentoml_service_request_total{endpoint="/classify"}')
        codes = {s["metric"]["http_response_code"]: float(s["value"][1]) for s in requests}
        assert codes.get("200") == GOOD_IMAGES and codes.get("400") == 2
