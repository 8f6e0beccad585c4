"""The v2 request grammar against a real `bentoml serve`: no body, header or path gives a 5xx.

The same strategies as the in-process tests (tests/service/test_v2_parser.py), fewer examples, through
everything in front of the handlers: uvicorn, BentoML's middleware (`eluserve.service.runtime`), the
router. Valid requests answer 200, the rest 4xx with the protocol's error body; paths and methods no
route serves answer the service's `{"error": {"code", "message"}}`. The server is healthy after.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import build_tiny_model
from tests.deadlines import REQUEST_S
from tests.service.bento_server import BentoServer, running_server
from tests.service.test_v2_parser import GARBAGE, MAX_IMAGES, Headers, near_valid_request, valid_request

pytestmark = pytest.mark.integration

#: Examples per property: each is one HTTP request to the server.
EXAMPLES = {"valid": 30, "near": 150, "garbage": 150, "paths": 100}
FUZZ = settings(
    max_examples=EXAMPLES["near"], deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    repository = tmp_path_factory.mktemp("v2-fuzz-repository")
    build_tiny_model(repository / "tiny" / "model.onnx", name="tiny")
    with running_server(
        tmp_path_factory.mktemp("v2-fuzz-server"),
        {
            "ELUSERVE_MODEL_REPOSITORY": str(repository),
            "ELUSERVE_DEFAULT_MODEL": "tiny",
            "ELUSERVE_WORKERS": "1",
            "ELUSERVE_MAX_IMAGES": str(MAX_IMAGES),
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: BentoServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def infer(http: httpx.Client, body: bytes, headers: Headers) -> httpx.Response:
    response = http.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, response.text[:300])
    return response


@given(valid_request())
@settings(FUZZ, max_examples=EXAMPLES["valid"])
def test_valid_requests_answer_200(http: httpx.Client, request_: tuple[bytes, Headers]) -> None:
    assert infer(http, *request_).status_code == 200


@given(near_valid_request())
@settings(FUZZ, max_examples=EXAMPLES["near"])
def test_near_valid_requests_never_answer_5xx(http: httpx.Client, request_: tuple[bytes, Headers]) -> None:
    response = infer(http, *request_)
    if response.status_code != 200:
        assert response.headers.get("content-type") == "application/json", (
            response.status_code,
            response.text[:200],
            request_[1],
            request_[0][:200],
        )
        assert isinstance(response.json()["error"], str)


@given(GARBAGE)
@settings(FUZZ, max_examples=EXAMPLES["garbage"])
def test_garbage_never_answers_5xx(http: httpx.Client, body: bytes) -> None:
    response = infer(http, body, {})
    assert 400 <= response.status_code < 500 and isinstance(response.json()["error"], str)


SEGMENTS = st.sampled_from(
    ["tiny", "versions", "1", "infer", "ready", "config", "..", "%2F", "nope", ""]
) | st.text(max_size=6).map(lambda text: quote(text, safe=""))


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    segments=st.lists(SEGMENTS, max_size=5),
)
@settings(FUZZ, max_examples=EXAMPLES["paths"])
def test_paths_under_v2_never_answer_5xx(http: httpx.Client, method: str, segments: list[str]) -> None:
    path = "/v2/models/" + "/".join(segments)
    response = http.request(method, path, content=b"{}")
    assert response.status_code < 500, (method, path, response.status_code, response.text[:200])
    if response.status_code in (404, 405) and response.content:
        assert response.headers.get("content-type") == "application/json", (method, path, response.text)
        error = response.json()["error"]
        assert error if isinstance(error, str) else error["code"] in ("not_found", "method_not_allowed")


def test_the_server_survived(server: BentoServer) -> None:
    assert httpx.get(server.url + "/livez", timeout=REQUEST_S).status_code == 200
    crop = {"name": "image", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [9] * 3072}
    body = json.dumps({"inputs": [crop]}).encode()
    assert (
        httpx.post(server.url + "/v2/models/tiny/infer", content=body, timeout=REQUEST_S).status_code == 200
    )
