"""A real `bentoml serve` on each engine: `GET /model` and `eluserve_model_info` say which engine,
execution provider and precision serve, and a lower precision without a model-card record stops the
start-up with a message instead of workers restarting forever."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.deadlines import STARTUP_S
from tests.service.bento_server import running_server, start_server
from tests.service.image_samples import encode, gradient

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine", ["openvino", "auto"])
def test_the_served_engine_is_reported_and_classifies(
    tmp_path: Path, serving_model_path: Path, engine: str
) -> None:
    workers = "2" if engine == "auto" else "1"
    env = {"ELUSERVE_MODEL": str(serving_model_path), "ELUSERVE_WORKERS": workers, "ELUSERVE_ENGINE": engine}
    with running_server(tmp_path, env) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        document = client.get("/model").json()
        assert document["engine"] in ("onnxruntime", "openvino") and document["precision"] == "fp32"
        if engine == "openvino":
            assert (document["engine"], document["execution_provider"]) == ("openvino", "CPU")
        else:  # one worker measured, the other took its choice: one engine serves
            # /readyz answered from one worker; the other may still be starting, so wait for its line.
            deadline = time.monotonic() + STARTUP_S
            while server.log().count("engine auto:") < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            log = server.log()
            assert log.count("engine auto:") == 2, log
            assert log.count("as another process of the same group measured") == 1, log
        data = encode(gradient(40, 36, seed=1), "JPEG")
        response = client.post("/classify", files={"image": ("x.jpg", data, "image/jpeg")})
        assert response.status_code == 200 and response.json()["label"] in document["labels"]
        metrics = client.get("/metrics").text
        series = re.search(r"^eluserve_model_info\{([^}]*)\} 1\.0$", metrics, re.MULTILINE)
        assert series is not None, metrics
        labels = dict(re.findall(r'(\w+)="([^"]*)"', series.group(1)))
        assert (labels["engine"], labels["provider"], labels["precision"]) == (
            document["engine"],
            document["execution_provider"],
            "fp32",
        )


def test_bf16_without_a_validation_record_stops_the_start_up(tmp_path: Path, tiny_model_path: Path) -> None:
    env = {"ELUSERVE_MODEL": str(tiny_model_path), "ELUSERVE_PRECISION": "bf16", "ELUSERVE_WORKERS": "1"}
    server = start_server(tmp_path, env)
    try:
        deadline = time.monotonic() + STARTUP_S
        while server.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.process.returncode not in (None, 0), server.log()[-2000:]
        assert "no bf16 validation record" in server.log() and "validate-precision" in server.log()
    finally:
        server.stop()
