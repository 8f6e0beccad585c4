"""Our routes' path through BentoML's stack (`eluserve.service.runtime.fast_path`): the rearranged middleware
list, the routing between our app and BentoML's, and a real server on which our routes still get
BentoML's metrics, access log (when on) and 504, and BentoML's own routes still answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _bentoml_impl.server.app import ContextMiddleware, ServiceAppFactory
from bentoml._internal.server.http.access import AccessLogMiddleware
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from eluserve.service.app import http_app
from eluserve.service.runtime import fast_path
from tests.deadlines import REQUEST_S
from tests.service.bento_server import BentoServer, running_server
from tests.service.image_samples import cifar_samples, encode, solid
from tests.service.metrics_scrape import MetricsDelta

BENTOML_ORDER = (
    RunnerTrafficMetricsMiddleware,
    OpenTelemetryMiddleware,
    AccessLogMiddleware,
    TimeoutMiddleware,
    MaxConcurrencyMiddleware,
    ContextMiddleware,
)


def _classes(entries: list[Middleware]) -> list[type]:
    return [entry.cls for entry in entries]  # type: ignore[misc]


def test_own_routes_leave_after_bentomls_traffic_handling_and_before_its_context() -> None:
    rearranged = fast_path.rearrange([Middleware(cls) for cls in BENTOML_ORDER], http_app, tracing=False)
    assert _classes(rearranged) == [
        fast_path.EndpointLabel,
        RunnerTrafficMetricsMiddleware,
        fast_path.RealPath,
        AccessLogMiddleware,
        TimeoutMiddleware,
        MaxConcurrencyMiddleware,
        fast_path.OwnRoutes,
        ContextMiddleware,
    ]
    assert rearranged[6].kwargs == {"ours": http_app}


def test_tracing_keeps_opentelemetry() -> None:
    rearranged = fast_path.rearrange([Middleware(cls) for cls in BENTOML_ORDER], http_app, tracing=True)
    assert OpenTelemetryMiddleware in _classes(rearranged)


def test_a_list_without_bentomls_context_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="ContextMiddleware"):
        fast_path.rearrange([Middleware(cls) for cls in BENTOML_ORDER[:-1]], http_app, tracing=False)


def test_the_factory_builds_the_rearranged_list_for_our_service() -> None:
    """Importing the service installs the change; BentoML's factory builds the list it serves with."""
    from eluserve.service.app import EluClassifier

    EluClassifier.inject_config()
    classes = _classes(ServiceAppFactory(EluClassifier).middlewares)
    assert fast_path.OwnRoutes in classes
    assert classes.index(fast_path.OwnRoutes) == classes.index(ContextMiddleware) - 1
    assert OpenTelemetryMiddleware not in classes  # ELUSERVE_TRACING is off by default


def test_metrics_label_a_request_by_its_route() -> None:
    label = fast_path.EndpointLabel(_echo("unused"), http_app).label
    assert label("/classify") == "/classify"
    assert label("/models/elufast-cifar10/classify") == "/models/{name}/classify"
    assert label("/v2/models/x/versions/3/infer") == "/v2/models/{name}/versions/{version}/infer"
    assert label("/livez") == "/livez" and label("/metrics") == "/metrics"
    assert label("/static_content/app.js") == "/static_content"
    assert label("/wp-login.php") == label("/classify/extra") == fast_path.UNMATCHED


def _echo(text: str) -> Any:
    async def endpoint(_: Request) -> Response:
        return PlainTextResponse(text)

    return endpoint


async def _ours_refusal(_: Request, exc: Exception) -> PlainTextResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return PlainTextResponse("ours: no route", status_code=404)
    return PlainTextResponse(f"ours: {exc.status_code} {(exc.headers or {}).get('Allow')}", exc.status_code)


@pytest.fixture
def routed() -> TestClient:
    ours = Starlette(
        routes=[
            Route("/classify", _echo("ours"), methods=["POST"]),
            Route("/models/{name}/classify", _echo("ours, templated"), methods=["POST"]),
        ],
        exception_handlers={HTTPException: _ours_refusal},
    )
    theirs = Starlette(
        routes=[Route("/metrics", _echo("bentoml")), Route("/static_content/classify", _echo("bentoml"))]
    )
    return TestClient(fast_path.OwnRoutes(theirs, ours=ours))


def test_own_paths_go_to_our_app_and_the_rest_to_bentomls(routed: TestClient) -> None:
    assert routed.post("/classify").text == "ours"
    assert routed.post("/models/elufast/classify").text == "ours, templated"
    assert routed.get("/metrics").text == "bentoml"
    assert routed.get("/static_content/classify").text == "bentoml"
    # Paths that neither serves (a prefix of ours is not ours, a segment matches one segment): our
    # app's 404, which the service answers with the contract's error body.
    for path in ("/classify/extra", "/models/a/b/classify", "/nope"):
        assert routed.get(path).status_code == 404 and routed.get(path).text == "ours: no route"


def test_a_wrong_method_on_our_path_is_our_apps_405(routed: TestClient) -> None:
    assert routed.get("/classify").status_code == 405


def test_a_wrong_method_on_bentomls_path_is_our_handlers_405(routed: TestClient) -> None:
    response = routed.post("/metrics")
    assert response.status_code == 405 and response.text == "ours: 405 GET, HEAD"
    assert routed.head("/metrics").status_code == 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    with running_server(
        tmp_path_factory.mktemp("fast-path-server"),
        {
            "ELUSERVE_MODEL": str(serving_model_path),
            "ELUSERVE_WORKERS": "1",
            "ELUSERVE_ACCESS_LOG": "true",
            # Ample for a CIFAR image, too short for decoding 16 PNGs of 16 megapixels (PNG has no
            # reduced-size decoding: each inflates 48 MB, tens of ms on any CPU).
            "ELUSERVE_TIMEOUT_S": "0.2",
        },
    ) as running:
        yield running


@pytest.mark.integration
def test_our_routes_keep_bentomls_metrics_and_access_log(server: BentoServer, cifar_zip: Path) -> None:
    name, data = cifar_samples(cifar_zip, per_class=1)[0]
    with MetricsDelta(server.url) as delta:
        response = httpx.post(f"{server.url}/classify", files={"image": (name, data)}, timeout=30.0)
    assert response.status_code == 200, response.text
    assert delta("bentoml_service_request_total", endpoint="/classify", http_response_code="200") == 1
    assert delta("bentoml_service_request_duration_seconds_count", endpoint="/classify") == 1
    assert "path=/classify," in server.log()


@pytest.mark.integration
def test_our_routes_keep_the_request_deadline(server: BentoServer) -> None:
    photo = encode(solid((90, 140, 200), (4000, 4000)), "PNG")  # small to send, slow to decode
    photos = [("images", (f"{i}.png", photo)) for i in range(16)]
    response = httpx.post(f"{server.url}/classify_batch", files=photos, timeout=60.0)
    assert response.status_code == 504, response.text
    assert "error" in response.json()


@pytest.mark.integration
def test_paths_no_route_serves_share_one_metrics_label(server: BentoServer, cifar_zip: Path) -> None:
    """A scanner's paths and made-up model names add no series to /metrics."""
    name, data = cifar_samples(cifar_zip, per_class=1)[0]
    with MetricsDelta(server.url) as delta:
        for i in range(3):
            assert httpx.get(f"{server.url}/scan-{i}.php", timeout=REQUEST_S).status_code == 404
            response = httpx.post(f"{server.url}/models/made-up-{i}/classify", files={"image": (name, data)})
            assert response.status_code == 404
    total = "bentoml_service_request_total"
    assert delta(total, endpoint=fast_path.UNMATCHED, http_response_code="404") == 3
    assert delta(total, endpoint="/models/{name}/classify", http_response_code="404") == 3
    scrape = httpx.get(f"{server.url}/metrics", timeout=REQUEST_S).text
    assert "scan-" not in scrape and "made-up-" not in scrape
    # The request itself saw its real path: the access log says which route it asked for.
    assert "path=/scan-0.php," in server.log() and "path=/models/made-up-0/classify," in server.log()


@pytest.mark.integration
def test_bentomls_own_routes_still_answer(server: BentoServer) -> None:
    assert httpx.get(f"{server.url}/livez").status_code == 200
    assert "bentoml_service_request_total" in httpx.get(f"{server.url}/metrics").text
    assert httpx.get(f"{server.url}/no-such-route").status_code == 404
