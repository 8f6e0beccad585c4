"""The v2 handlers in-process (Starlette's test client, a stand-in batcher): no body gives a 5xx.

Property-based over the v2 request grammar: valid requests (UINT8 crops in JSON and binary, output
options) must answer 200; near-valid ones (one field changed to another type, value, shape or
datatype; binary-extension headers and sizes that do not add up) and garbage (any bytes, any JSON,
deep nesting) must answer 4xx with the protocol's error body. The real server's routes, unknown
paths included, are tests/service/test_v2.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from eluserve.core.contract import read_model_info
from eluserve.service.api.v2 import InferenceProtocol, model_config
from eluserve.service.config import Settings
from eluserve.service.repository import ModelNotFound
from tests.conftest import build_tiny_model

URL = "/v2/models/tiny/infer"
SHAPE = [32, 32, 3]
PIXELS = 32 * 32 * 3
MAX_IMAGES = 4
#: Header values as a client may send them: any latin-1 bytes.
Headers = dict[str, str | bytes]
EXAMPLES = {"valid": 60, "near": 300, "garbage": 300}


class FakeServed:
    """A loaded version whose batcher answers uniform probabilities."""

    def __init__(self, info: Any) -> None:
        self.info = info
        self.provider = "CPUExecutionProvider"
        self.frontend = self

    async def batcher(self, crops: np.ndarray) -> np.ndarray:
        assert crops.dtype == np.uint8 and crops.shape[1:] == (32, 32, 3)
        return np.full((len(crops), len(self.info.labels)), 1 / len(self.info.labels), np.float32)

    def count_results(self, _: Any) -> None:
        pass


class FakeRegistry:
    def __init__(self, served: FakeServed) -> None:
        self.served = served

    @contextlib.contextmanager
    def lease(self, name: str | None = None, version: str | None = None) -> Iterator[FakeServed]:
        if name != "tiny" or version not in (None, "1"):
            raise ModelNotFound(f"model {name!r} version {version!r} is not loaded")
        yield self.served

    def loaded(self) -> dict[str, dict[str, FakeServed]]:
        return {"tiny": {"1": self.served}}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path = build_tiny_model(tmp_path_factory.mktemp("v2-parser") / "model.onnx", name="tiny")
    served = FakeServed(read_model_info(path))
    protocol = InferenceProtocol(
        FakeRegistry(served),  # type: ignore[arg-type]
        Settings(max_images=MAX_IMAGES, max_request_bytes=1 << 20),
        ready=lambda: True,
        workers=2,
    )
    routes = [
        Route("/v2/models/{name}", protocol.model, methods=["GET"]),
        Route("/v2/models/{name}/config", protocol.config, methods=["GET"]),
        Route(URL.replace("tiny", "{name}"), protocol.infer, methods=["POST"]),
    ]
    with TestClient(Starlette(routes=routes), raise_server_exceptions=True) as test_client:
        yield test_client


def crop_input(count: int = 1, value: int = 7) -> dict[str, Any]:
    return {
        "name": "image",
        "datatype": "UINT8",
        "shape": [count, *SHAPE],
        "data": [value] * (count * PIXELS),
    }


def post(client: TestClient, body: bytes, headers: Headers | None = None) -> Any:
    response = client.post(URL, content=body, headers=headers or {})
    assert response.status_code < 500, (response.status_code, response.text[:300])
    return response


def refused(client: TestClient, body: bytes, headers: Headers | None = None) -> str:
    response = post(client, body, headers)
    assert 400 <= response.status_code < 500, (response.status_code, body[:200])
    error = response.json()["error"]
    assert isinstance(error, str) and error
    return error


def test_metadata_and_config_declare_one_input(client: TestClient) -> None:
    metadata = client.get("/v2/models/tiny").json()
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["image"]
    config = client.get("/v2/models/tiny/config").json()
    assert config["max_batch_size"] == MAX_IMAGES and config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [
        {"name": "image", "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": SHAPE}
    ]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert config["dynamic_batching"]["default_queue_policy"]["default_timeout_microseconds"] == 2_000_000
    assert config["instance_group"] == [{"name": "tiny_0", "kind": "KIND_CPU", "count": 2}]
    assert "image_bytes" in config["parameters"]
    assert client.get("/v2/models/nope/config").status_code == 404


def test_model_config_names_the_gpu_and_the_engine(tmp_path: Path) -> None:
    info = read_model_info(build_tiny_model(tmp_path / "model.onnx"))
    config = model_config(info, max_batch_size=8, max_latency_ms=5, workers=3, gpu=True)
    assert config["instance_group"][0]["kind"] == "KIND_GPU" and config["backend"] == "onnxruntime"
    openvino = model_config(
        dataclasses.replace(info, engine="openvino"), max_batch_size=8, max_latency_ms=5, workers=1, gpu=False
    )
    assert openvino["backend"] == "openvino" and openvino["platform"] == ""


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("a float", [0.5] + [1] * (PIXELS - 1)),
        ("an integral float", [1.0] * PIXELS),
        ("a boolean", [True] + [1] * (PIXELS - 1)),
        ("all booleans", [False] * PIXELS),
        ("a string", ["1"] * PIXELS),
        ("a null", [None] * PIXELS),
        ("a negative", [-1] * PIXELS),
        ("above 255", [256] * PIXELS),
        ("beyond int64", [2**64] * PIXELS),
        ("ragged", [[1, 2], [3]]),
        ("an object", {"0": 1}),
        ("a number", 5),
    ],
)
def test_uint8_data_must_be_integers_in_range(client: TestClient, case: str, data: Any) -> None:
    body = json.dumps({"inputs": [{**crop_input(), "data": data}]}).encode()
    assert "UINT8" in refused(client, body), case


def test_nested_data_and_every_byte_value_are_accepted(client: TestClient) -> None:
    pixels = np.arange(PIXELS * 2).reshape(2, *SHAPE) % 256
    body = {"inputs": [{**crop_input(2), "data": pixels.tolist()}], "id": "x"}
    response = post(client, json.dumps(body).encode())
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "x" and len(response.json()["outputs"][0]["data"]) == 20


@pytest.mark.parametrize("depth", [1_100, 200_000])
def test_deep_nesting_is_a_400(client: TestClient, depth: int) -> None:
    body = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    assert "nested deeper" in refused(client, body)


@pytest.mark.parametrize("value", ["²", "1e3", "-1", "0x10", " 5", "9" * 30])
def test_header_lengths_that_are_no_byte_count_are_a_400(client: TestClient, value: str) -> None:
    refused(client, b"{}", {"Inference-Header-Content-Length": value.encode("latin-1")})


def test_wrongly_typed_fields_are_a_400(client: TestClient) -> None:
    crop = crop_input()
    cases: dict[str, dict[str, Any]] = {
        "bool in shape": {"inputs": [{**crop, "shape": [True, *SHAPE]}]},
        "float in shape": {"inputs": [{**crop, "shape": [1.0, *SHAPE]}]},
        "bool size": {"inputs": [{**crop, "parameters": {"binary_data_size": True}}]},
        "parameters a list": {"inputs": [{**crop, "parameters": [1]}]},
        "request parameters a string": {"inputs": [crop], "parameters": "x"},
        "binary_data a string": {
            "inputs": [crop],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": "yes"}}],
        },
        "binary_data_output a number": {"inputs": [crop], "parameters": {"binary_data_output": 1}},
        "classification a bool": {
            "inputs": [crop],
            "outputs": [{"name": "probabilities", "parameters": {"classification": True}}],
        },
        "id a number": {"inputs": [crop], "id": 5},
        "id nested": {"inputs": [crop], "id": [[[["x"]]]]},
    }
    for case, body in cases.items():
        assert refused(client, json.dumps(body).encode()), case


# --- property-based --------------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
DATATYPES = st.sampled_from(["UINT8", "BYTES", "FP32", "INT64", "UINT16", "BOOL", "uint8", ""]) | st.text(
    max_size=5
)
NAMES = st.sampled_from(["image", "image_bytes", "IMAGE", "", "probabilities"]) | JSON_VALUES


@st.composite
def valid_request(draw: st.DrawFn) -> tuple[bytes, Headers]:
    count = draw(st.integers(1, MAX_IMAGES))
    pixels = draw(st.binary(min_size=count * PIXELS, max_size=count * PIXELS))
    binary_in = draw(st.booleans())
    tensor: dict[str, Any] = {"name": "image", "datatype": "UINT8", "shape": [count, *SHAPE]}
    output: dict[str, Any] = {"name": "probabilities"}
    parameters: dict[str, Any] = {}
    if draw(st.booleans()):
        parameters["classification"] = draw(st.integers(1, 10))
    if draw(st.booleans()):
        parameters["binary_data"] = draw(st.booleans())
    if parameters:
        output["parameters"] = parameters
    header: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        header["outputs"] = [output]
    if draw(st.booleans()):
        header["id"] = draw(st.text(max_size=10))
    if not binary_in:
        tensor["data"] = list(pixels)
        return json.dumps(header).encode(), {}
    tensor["parameters"] = {"binary_data_size": len(pixels)}
    text = json.dumps(header).encode()
    return text + pixels, {"Inference-Header-Content-Length": str(len(text))}


@given(valid_request())
@settings(
    max_examples=EXAMPLES["valid"],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
def test_valid_requests_answer_200(client: TestClient, request_: tuple[bytes, Headers]) -> None:
    body, headers = request_
    response = post(client, body, headers)
    assert response.status_code == 200, response.text[:300]


def _mutate(draw: st.DrawFn, header: dict[str, Any]) -> dict[str, Any]:
    """One field of a valid header changed: its value to any JSON value, or a known near miss."""
    tensor = header["inputs"][0]
    where = draw(
        st.sampled_from(
            ["name", "datatype", "shape", "data", "parameters", "outputs", "request", "inputs", "drop"]
        )
    )
    if where == "name":
        tensor["name"] = draw(NAMES)
    elif where == "datatype":
        tensor["datatype"] = draw(DATATYPES)
    elif where == "shape":
        tensor["shape"] = draw(st.lists(st.integers(-2, 40) | JSON_SCALARS, max_size=6) | JSON_VALUES)
    elif where == "data":
        size = len(tensor["data"])
        element = (
            st.integers(-300, 300) | st.floats(-1, 300) | st.booleans() | st.text(max_size=2) | st.none()
        )
        tensor["data"] = draw(
            st.lists(element, min_size=size, max_size=size)
            | st.lists(st.integers(0, 255), max_size=size + 3)
            | st.just([2**63] * size)
            | JSON_VALUES
        )
    elif where == "parameters":
        tensor["parameters"] = draw(
            st.fixed_dictionaries({"binary_data_size": JSON_SCALARS | st.integers(-5, 5000)}) | JSON_VALUES
        )
    elif where == "outputs":
        options = st.dictionaries(
            st.sampled_from(["classification", "binary_data", "x"]), JSON_SCALARS, max_size=3
        )
        header["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": NAMES, "parameters": options | JSON_VALUES}), max_size=3)
            | JSON_VALUES
        )
    elif where == "request":
        header["parameters"] = draw(
            st.dictionaries(st.sampled_from(["binary_data_output", "x"]), JSON_SCALARS, max_size=2)
            | JSON_VALUES
        )
        header["id"] = draw(JSON_VALUES)
    elif where == "inputs":
        header["inputs"] = draw(st.sampled_from([[], [tensor, tensor], tensor, None]) | JSON_VALUES)
    else:
        del tensor[draw(st.sampled_from(sorted(tensor)))]
    return header


@st.composite
def near_valid_request(draw: st.DrawFn) -> tuple[bytes, Headers]:
    header = _mutate(draw, {"inputs": [crop_input(draw(st.integers(1, 2)), draw(st.integers(0, 255)))]})
    text = json.dumps(header, allow_nan=True).encode()
    headers: Headers = {}
    if draw(st.booleans()):
        extra = draw(st.binary(max_size=64))
        # Any value an HTTP client lets through: latin-1, no control characters, no spaces.
        visible = st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_categories=("Cc",))
        length = draw(
            st.sampled_from([str(len(text)), str(len(text) + 1), "0"]) | st.text(visible, max_size=4)
        )
        headers["Inference-Header-Content-Length"] = length.encode("latin-1")
        text += extra
    return text, headers


@given(near_valid_request())
@settings(
    max_examples=EXAMPLES["near"],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_near_valid_requests_never_answer_5xx(client: TestClient, request_: tuple[bytes, Headers]) -> None:
    body, headers = request_
    response = post(client, body, headers)
    if response.status_code != 200:
        assert isinstance(response.json()["error"], str)


#: Bodies that are no v2 request at all: any bytes, any JSON, deep nesting, broken inputs.
GARBAGE = (
    st.binary(max_size=200)
    | JSON_VALUES.map(lambda value: json.dumps(value).encode())
    | st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth)
    | st.integers(1, 3000).map(lambda depth: b'{"inputs":' * depth + b"}" * depth)
    | st.binary(max_size=40).map(lambda raw: b'{"inputs": [' + raw + b"]}")
)


@given(GARBAGE)
@settings(max_examples=EXAMPLES["garbage"], suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_garbage_never_answers_5xx(client: TestClient, body: bytes) -> None:
    refused(client, body)


def test_bytes_input_garbage_is_a_400(client: TestClient) -> None:
    """`image_bytes` element framing cut short, or lengths that claim more than is there."""
    for raw in (b"\x01", struct.pack("<I", 99) + b"abc", struct.pack("<I", 2**32 - 1)):
        tensor = {
            "name": "image_bytes",
            "datatype": "BYTES",
            "shape": [1],
            "parameters": {"binary_data_size": len(raw)},
        }
        text = json.dumps({"inputs": [tensor]}).encode()
        refused(client, text + raw, {"Inference-Header-Content-Length": str(len(text))})


def test_booleans_are_found_wherever_the_text_has_them(client: TestClient) -> None:
    """Flags outside the data do not hide a boolean in it, nor does the word in a string."""
    flags = {"outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}], "id": "true"}
    data = [True] + [1] * (PIXELS - 1)
    assert "booleans" in refused(
        client, json.dumps({**flags, "inputs": [{**crop_input(), "data": data}]}).encode()
    )
    ok = post(client, json.dumps({**flags, "inputs": [crop_input()]}).encode())
    assert ok.status_code == 200, ok.text
