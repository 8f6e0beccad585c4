"""Open Inference Protocol v2 against a real `bentoml serve`, spoken by the real `tritonclient[http]`.

Results must equal `/classify` on the same images: encoded images as a BYTES tensor (binary data, the
server decodes and crops), preprocessed crops as UINT8 in JSON and in binary, the probabilities and
Triton's classification strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from eluserve.core.preprocessing import Limits, load_image
from tests.conftest import build_tiny_model
from tests.deadlines import REQUEST_S
from tests.service.bento_server import BentoServer, running_server
from tests.service.image_samples import encode, gradient

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.integration

MAX_IMAGES = 8


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v2-repository")
    build_tiny_model(root / "tiny-a" / "model.onnx", name="tiny-a", version="1")
    for seed, version in enumerate(("1", "2")):
        path = root / "tiny-b" / version / "model.onnx"
        build_tiny_model(path, name="tiny-b", version=version, seed=seed + 3)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, repository: Path) -> Iterator[BentoServer]:
    with running_server(
        tmp_path_factory.mktemp("v2-server"),
        {
            "ELUSERVE_MODEL_REPOSITORY": str(repository),
            "ELUSERVE_DEFAULT_MODEL": "tiny-a",
            "ELUSERVE_WORKERS": "1",
            "ELUSERVE_MAX_IMAGES": str(MAX_IMAGES),
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BentoServer) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [encode(gradient(40 + 9 * seed, 36 + 5 * seed, seed=seed), "JPEG") for seed in range(5)]


def classify(server: BentoServer, path: str, images: list[bytes], k: int) -> list[dict]:
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    response = httpx.post(server.url + path, files=files, data={"top_k": str(k)}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def crops_of(images: list[bytes], repository: Path) -> np.ndarray:
    from eluserve.core.contract import read_model_info

    rule = read_model_info(repository / "tiny-b" / "2" / "model.onnx").preprocessing
    return np.stack([load_image(data, rule, Limits()) for data in images])


def test_server_and_model_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert {"classification", "binary_tensor_data", "model_repository", "model_configuration"} <= set(
        client.get_server_metadata()["extensions"]
    )
    metadata = client.get_model_metadata("tiny-b")
    assert metadata["versions"] == ["1", "2"] and metadata["platform"] == "onnxruntime_onnx"
    # One declared input, which tools that send every declared input can fill with generated data;
    # image_bytes is the configuration's documented alternative.
    assert metadata["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.is_model_ready("tiny-b", "1") and not client.is_model_ready("tiny-b", "3")
    assert not client.is_model_ready("nope")


def test_model_configuration(client: httpclient.InferenceServerClient) -> None:
    """What perf_analyzer reads first: the batch limit, dims without the batch dimension, the batcher."""
    for version in ("", "1"):
        config = client.get_model_config("tiny-b", version)
        assert config["name"] == "tiny-b" and config["max_batch_size"] == MAX_IMAGES
        assert config["input"] == [
            {"name": "image", "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [32, 32, 3]}
        ]
        assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]
        assert config["instance_group"] == [{"name": "tiny-b_0", "kind": "KIND_CPU", "count": 1}]
        assert "max_queue_delay_microseconds" in config["dynamic_batching"]
        assert config["parameters"]["model_version"]["string_value"] == (version or "2")
    with pytest.raises(InferenceServerException, match="not loaded"):
        client.get_model_config("nope")


def test_unknown_routes_and_methods_answer_the_error_body(server: BentoServer) -> None:
    for method, path, status in (
        ("GET", "/nope", 404),
        ("POST", "/v2/models/..%2F..%2Fetc/infer", 404),
        ("GET", "/v2/models/tiny-a/nope", 404),
        ("DELETE", "/classify", 405),
        ("GET", "/v2/models/tiny-a/infer", 405),
        ("POST", "/metrics", 405),  # one of BentoML's routes
        ("PUT", "/", 405),
    ):
        response = httpx.request(method, server.url + path, timeout=REQUEST_S)
        assert response.status_code == status, (method, path, response.text)
        error = response.json()["error"]
        assert error["code"] in ("not_found", "method_not_allowed") and error["message"], (method, path)


def test_hostile_bodies_are_400s(server: BentoServer) -> None:
    url = server.url + "/v2/models/tiny-a/infer"
    crop = {"name": "image", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0.5] * 3072}
    deep = b'{"inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    for body in (deep, json.dumps({"inputs": [crop]}).encode()):
        response = httpx.post(url, content=body, timeout=30)
        assert response.status_code == 400 and isinstance(response.json()["error"], str), response.text


def test_encoded_images_in_binary_equal_classify(
    server: BentoServer, client: httpclient.InferenceServerClient, images: list[bytes]
) -> None:
    encoded = httpclient.InferInput("image_bytes", [len(images)], "BYTES")
    encoded.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    wanted = httpclient.InferRequestedOutput("probabilities", binary_data=True)
    result = client.infer("tiny-b", [encoded], outputs=[wanted])
    assert result.get_response()["model_version"] == "2"

    expected = classify(server, "/models/tiny-b/classify_batch", images, k=3)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (len(images), 10) and probs.dtype == np.float32
    for row, want in zip(probs, expected, strict=True):
        assert row[[rank["index"] for rank in want["top_k"]]] == pytest.approx(
            [rank["probability"] for rank in want["top_k"]], abs=1e-6
        )


def test_classification_strings_and_json_crops_equal_classify(
    server: BentoServer, client: httpclient.InferenceServerClient, images: list[bytes], repository: Path
) -> None:
    crops = crops_of(images, repository)
    for binary in (False, True):
        pixels = httpclient.InferInput("image", list(crops.shape), "UINT8")
        pixels.set_data_from_numpy(crops, binary_data=binary)
        wanted = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
        result = client.infer("tiny-b", [pixels], model_version="1", outputs=[wanted])
        strings = result.as_numpy("probabilities")
        assert strings.shape == (len(images), 2)
        expected = classify(server, "/models/tiny-b/versions/1/classify_batch", images, k=2)
        for row, want in zip(strings, expected, strict=True):
            # JSON answers come back as str, binary ones as bytes.
            parsed = [(item.decode() if isinstance(item, bytes) else item).split(":") for item in row]
            ranked = [(r["index"], r["label"]) for r in want["top_k"]]
            assert [(int(i), label) for _, i, label in parsed] == ranked
            assert [float(score) for score, _, _ in parsed] == pytest.approx(
                [r["probability"] for r in want["top_k"]], abs=1e-5
            )


def test_protocol_errors_are_4xx_with_the_protocol_body(
    server: BentoServer, client: httpclient.InferenceServerClient, images: list[bytes]
) -> None:
    bad = httpclient.InferInput("image_bytes", [2], "BYTES")
    bad.set_data_from_numpy(np.array([images[0], b"not an image"], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match=r"image_bytes\[1\]"):
        client.infer("tiny-a", [bad])
    with pytest.raises(InferenceServerException, match="not loaded"):
        client.infer("nope", [bad])

    url = server.url + "/v2/models/tiny-a/infer"
    top = {"name": "probabilities", "parameters": {"classification": 0}}
    crop = {"name": "image", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}
    many = MAX_IMAGES + 1
    cases = {
        "not json": b"{",
        "no inputs": {"inputs": []},
        "wrong shape": {"inputs": [{**crop, "shape": [1, 3], "data": [1, 2, 3]}]},
        "out of range": {"inputs": [{**crop, "data": [256] * 3072}]},
        "too many": {"inputs": [{**crop, "name": "image_bytes", "datatype": "BYTES", "shape": [many]}]},
        "unknown output": {"inputs": [crop], "outputs": [{"name": "logits"}]},
        "bad k": {"inputs": [crop], "outputs": [top]},
    }
    for case, body in cases.items():
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(url, content=content, timeout=30)
        assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
        assert isinstance(response.json()["error"], str) and response.json()["error"], case
    response = httpx.post(url, content=b"{}", headers={"Inference-Header-Content-Length": "99"}, timeout=30)
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]
    assert httpx.get(server.url + "/livez", timeout=REQUEST_S).status_code == 200
