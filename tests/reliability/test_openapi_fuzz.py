"""Schemathesis against a live server: generated requests, every answer checked against the schema.

BentoML serves an OpenAPI document at `/docs.json`, but it describes only its own infrastructure
endpoints: it adds the routes of mounted apps for FastAPI apps only, and ours is a plain Starlette
app (the multipart endpoints read their bodies themselves, see `eluserve.service.forms`). Publishing them from
the service would mean moving to FastAPI or rewriting BentoML's document, which is not a small change;
so this module tests the served document as it is, and adds `CONTRACT_PATHS` — the README's HTTP API
written as OpenAPI — for the generated multipart requests. `test_the_served_schema_lacks_our_endpoints`
fails the day the service publishes them itself, so the copy here can then go.

Two schemathesis checks are left out, each for a reason the schema cannot express: `format: binary`
admits any bytes, most of which are no image, so a 400 for schema-valid data is right
(positive_data_acceptance); and multipart cannot tell an empty list of `top_k` values from an absent
optional field, so "invalid" data may be valid (negative_data_rejection). Every other check stays:
no 5xx, only documented statuses and content types, bodies matching the documented schemas.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from eluserve.core.contract import ModelMetadata, read_model_info
from tests.service.bento_server import BentoServer, running_server

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import negative_data_rejection, positive_data_acceptance  # noqa: E402

pytestmark = pytest.mark.integration

MAX_IMAGES = 8
EXAMPLES = 25

ERROR_BODY = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string", "minLength": 1}},
        }
    },
}


def json_answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def contract_paths(info: ModelMetadata) -> dict[str, Any]:
    """/classify, /classify_batch and /model as README's HTTP API table describes them."""
    ranked = {
        "type": "object",
        "required": ["label", "index", "probability"],
        "properties": {
            "label": {"type": "string", "enum": list(info.labels)},
            "index": {"type": "integer", "minimum": 0, "maximum": info.num_classes - 1},
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }
    result = {
        "type": "object",
        "required": ["label", "probability", "top_k"],
        "properties": {
            "label": {"type": "string", "enum": list(info.labels)},
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "top_k": {"type": "array", "items": ranked, "minItems": 1, "maxItems": info.num_classes},
        },
    }
    top_k = {"type": "integer", "minimum": 1, "maximum": info.num_classes}
    errors = {str(status): json_answer("client error", ERROR_BODY) for status in (400, 408, 413, 415, 429)}

    def form(field: str, file: dict[str, Any]) -> dict[str, Any]:
        schema = {"type": "object", "required": [field], "properties": {field: file, "top_k": top_k}}
        return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}

    single = {"type": "string", "format": "binary"}
    many = {"type": "array", "items": single, "minItems": 1, "maxItems": MAX_IMAGES}
    classified = {**result, "required": ["model", *result["required"]]}
    batch = {
        "type": "object",
        "required": ["model", "results"],
        "properties": {
            "model": {"type": "string", "enum": [info.tag]},
            "results": {"type": "array", "items": {"oneOf": [result, ERROR_BODY]}},
        },
    }
    model = {
        "type": "object",
        "required": ["model", "name", "version", "labels", "input_size", "preprocessing"],
        "properties": {"model": {"type": "string", "enum": [info.tag]}},
    }
    return {
        "/classify": {
            "post": {"requestBody": form("image", single), "responses": {
                "200": json_answer("prediction", classified), **errors}}
        },
        "/classify_batch": {
            "post": {"requestBody": form("images", many), "responses": {
                "200": json_answer("per-image results", batch), **errors}}
        },
        "/model": {"get": {"responses": {"200": json_answer("model metadata", model)}}},
    }  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    with running_server(
        tmp_path_factory.mktemp("openapi-server"),
        {"ELUSERVE_MODEL": str(serving_model_path), "ELUSERVE_MAX_IMAGES": str(MAX_IMAGES)},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def served(server: BentoServer) -> dict[str, Any]:
    response = httpx.get(server.url + "/docs.json", timeout=30)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def schema(served: dict[str, Any], serving_model_path: Path) -> Any:
    """The served document with the contract's paths added, loaded by schemathesis."""
    document = {**served, "paths": {**served["paths"], **contract_paths(read_model_info(serving_model_path))}}
    return schemathesis.openapi.from_dict(document)


def test_the_served_schema_lacks_our_endpoints(served: dict[str, Any]) -> None:
    assert served["openapi"].startswith("3.")
    assert {"/livez", "/readyz", "/metrics"} <= set(served["paths"])
    published = set(served["paths"]) & {"/classify", "/classify_batch", "/model"}
    assert not published, f"the service now publishes {published}: fuzz them from /docs.json instead"


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        ("GET", "/healthz", GenerationMode.POSITIVE),
        ("GET", "/livez", GenerationMode.POSITIVE),
        ("GET", "/readyz", GenerationMode.POSITIVE),
        ("GET", "/metrics", GenerationMode.POSITIVE),
        ("GET", "/model", GenerationMode.POSITIVE),
        ("POST", "/classify", GenerationMode.POSITIVE),
        ("POST", "/classify", GenerationMode.NEGATIVE),
        ("POST", "/classify_batch", GenerationMode.POSITIVE),
        ("POST", "/classify_batch", GenerationMode.NEGATIVE),
    ],
    ids=lambda value: value.value if isinstance(value, GenerationMode) else str(value),
)
def test_generated_requests_get_documented_answers(
    server: BentoServer, schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = schema[path][method]
    statuses: set[int] = set()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=server.url, timeout=30)
        statuses.add(response.status_code)
        case.validate_response(response, excluded_checks=[positive_data_acceptance, negative_data_rejection])

    check()
    # Generated data reached past the parser: valid requests were answered, invalid ones refused.
    if mode is GenerationMode.POSITIVE:
        assert 200 in statuses, statuses
    else:
        assert any(400 <= status < 500 for status in statuses), statuses


def test_the_server_survived_the_generated_traffic(server: BentoServer) -> None:
    assert httpx.get(server.url + "/livez", timeout=10).status_code == 200
    assert "Traceback" not in server.log(), server.log()[-3000:]
