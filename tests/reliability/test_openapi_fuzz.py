"""Schemathesis against a live server, from the OpenAPI document the service publishes at /docs.json.

The service publishes every route it answers (`eluserve.service.api.openapi`): BentoML's infrastructure
routes, the contract's multipart endpoints, the model repository's routes and the Open Inference
Protocol. The server here serves a repository of two models (the serving model and a tiny one with two
versions), so `{name}` and `{version}` enumerate real models and generated requests reach them.
Every operation of the published document is fuzzed; each answer must be documented (status, content
type, body schema), and none may be a 5xx.

Two schemathesis checks are left out, each for a reason the schema cannot express: `format: binary`
admits any bytes, most of which are no image, and a schema-valid tensor may still not fit the model,
so a 4xx for schema-valid data is right (positive_data_acceptance); and multipart cannot tell an empty
list of `top_k` values from an absent optional field, so "invalid" data may be valid
(negative_data_rejection).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from eluserve.core.contract import read_model_info
from tests.conftest import build_tiny_model
from tests.deadlines import REQUEST_S
from tests.service.bento_server import BentoServer, running_server

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import negative_data_rejection, positive_data_acceptance  # noqa: E402

pytestmark = pytest.mark.integration

MAX_IMAGES = 8
#: Generated requests per operation and mode: at this count the 42 operations and modes make ~300
#: requests, ~45 s with the server's start on the shared 2-core machine, within CI's minute.
EXAMPLES = 10
#: Operations whose positive requests must include a 200: the others need data that generation
#: does not produce (an image, a tensor of the model's shape) or are refused by design (model control).
MUST_SUCCEED = {
    "GET /model",
    "GET /models",
    "GET /models/{name}",
    "GET /models/{name}/versions/{version}",
    "GET /v2",
    "GET /v2/health/live",
    "GET /v2/models/{name}",
    "POST /v2/repository/index",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    root = tmp_path_factory.mktemp("openapi-repository")
    default = read_model_info(serving_model_path).name
    (root / default).mkdir()
    shutil.copy(serving_model_path, root / default / "model.onnx")
    for version in ("1", "2"):
        build_tiny_model(root / "tiny" / version / "model.onnx", name="tiny", version=version)
    with running_server(
        tmp_path_factory.mktemp("openapi-server"),
        {
            "ELUSERVE_MODEL_REPOSITORY": str(root),
            "ELUSERVE_DEFAULT_MODEL": default,
            "ELUSERVE_MAX_IMAGES": str(MAX_IMAGES),
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
def published(server: BentoServer) -> dict[str, Any]:
    response = httpx.get(server.url + "/docs.json", timeout=30)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def schema(published: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_dict(published)


def test_the_published_schema_has_every_route(published: dict[str, Any], server: BentoServer) -> None:
    from eluserve.service.app import http_app

    assert published["openapi"].startswith("3.")
    assert {"/livez", "/readyz", "/metrics"} <= set(published["paths"])
    ours = {route.path for route in http_app.routes} - {"/docs", "/docs.json"}
    assert ours <= set(published["paths"]), ours - set(published["paths"])
    # Swagger UI's header and groups: our version, no BentoML contact, our routes under our tags.
    from importlib.metadata import version

    assert published["info"]["version"] == version("eluserve") and "contact" not in published["info"]
    tags = [tag["name"] for tag in published["tags"]]
    assert tags[:5] == ["repository", "v2", "models", "classify", "page"] and "Service APIs" not in tags
    for path in ours:
        for operation in published["paths"][path].values():
            assert len(operation["tags"]) == 1 and operation["tags"][0] in tags[:5], path
    assert published["paths"]["/"]["get"]["tags"] == ["page"]
    page = httpx.get(server.url + "/docs", timeout=30)
    assert page.status_code == 200 and "swagger-ui" in page.text and "/docs.json" in page.text
    assert httpx.get(server.url + "/static_content/swagger-ui-bundle.js", timeout=30).status_code == 200


def fuzz(server: BentoServer, operation: Any, mode: GenerationMode) -> list[int]:
    """Send `EXAMPLES` generated requests; every answer must match the document. Returns the statuses."""
    statuses: list[int] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=server.url, timeout=30)
        statuses.append(response.status_code)
        case.validate_response(response, excluded_checks=[positive_data_acceptance, negative_data_rejection])

    check()
    return statuses


def test_generated_requests_get_documented_answers(
    server: BentoServer, schema: Any, published: dict[str, Any]
) -> None:
    failures: list[str] = []
    fuzzed = 0
    answered: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        documented = published["paths"][operation.path][operation.method.lower()]
        modes = [GenerationMode.POSITIVE]
        if "requestBody" in documented or "parameters" in documented:  # something to make invalid
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            try:
                statuses = fuzz(server, operation, mode)
            except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, not only the first
                failures.append(f"{label} {mode.value}: {exc}"[:2000])
                continue
            fuzzed += 1
            answered.update(statuses)
            if mode is GenerationMode.POSITIVE and label in MUST_SUCCEED and 200 not in statuses:
                failures.append(f"{label}: no 200 among {statuses}")
            if mode is GenerationMode.NEGATIVE and not any(400 <= status < 500 for status in statuses):
                failures.append(f"{label} negative: no 4xx among {statuses}")
    print(
        f"fuzzed {fuzzed} operations and modes, {answered.total()} requests: {dict(sorted(answered.items()))}"
    )
    assert not failures, "\n\n".join(failures)
    assert fuzzed >= 40, fuzzed


def test_the_server_survived_the_generated_traffic(server: BentoServer) -> None:
    assert httpx.get(server.url + "/livez", timeout=REQUEST_S).status_code == 200
    assert "Traceback" not in server.log(), server.log()[-3000:]
