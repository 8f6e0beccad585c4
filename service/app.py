"""The BentoML service: `EluClassifier`, public HTTP endpoints over ONNX Runtime with adaptive batching.

    BENTOML_DO_NOT_TRACK=True bentoml serve eluserve.service.app:EluClassifier --port 3000

Connections spread evenly over the HTTP worker processes (`eluserve.service.runtime.accept_balance`: each
worker accepts only while it holds the fewest open connections). Each worker reads request bodies
itself (see `eluserve.service.api.forms`), decodes and crops in `eluserve.service.api.classify`, and pools the
crops of concurrent requests into ONNX Runtime batches with `eluserve.service.batching.Batcher`, one
session and batcher per model version it serves (threads = cores ÷ workers, so workers do not
oversubscribe the machine); with shared device batching (`ELUSERVE_DEVICE_BATCHING`, the default on
CUDA) the workers send their crops to one device host per server instead, whose batches mix every
worker's requests (`eluserve.service.device.host`). The models come from a repository folder
(`eluserve.service.repository`); loads and unloads reach every worker through
`eluserve.service.control`. Overload is answered with the contract's 429 `overloaded` and
`Retry-After`, whether the batcher's latency budget or BentoML's concurrency limit refuses
(`eluserve.service.runtime.bentoml_patches`). `/readyz` turns ready once the worker has loaded and warmed its
models up (BentoML asks `__is_ready__`); `/livez` and `/metrics` are BentoML's; requests for our own
routes skip the parts of BentoML's middleware that do nothing for them (`eluserve.service.runtime.fast_path`).
Settings come from `eluserve.service.config` (``ELUSERVE_*``).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from eluserve.core.session import available_cores
from eluserve.service import runtime
from eluserve.service.api import errors, openapi, page
from eluserve.service.api.models import ModelsApi
from eluserve.service.api.v2 import InferenceProtocol
from eluserve.service.config import SHARED, load_settings
from eluserve.service.control import LOADED, ControlState, Follower, ensure_control_dir
from eluserve.service.device.client import DeviceLink
from eluserve.service.repository import ModelRegistry, check_repository
from eluserve.service.runtime import accept_balance

logger = logging.getLogger(__name__)
#: Resolved once: `bentoml.get_current_service` goes through the package's module `__getattr__`, an
#: `import_module` on every request (2 % of a worker's event loop under `/classify` load, py-spy).
_current_service = bentoml.get_current_service
# BentoML's server logging shows its own logger at INFO and the root at WARNING; let ours (which say
# which model, provider and thread count a worker runs) follow BentoML's level, quiet and debug included.
logging.getLogger("eluserve").setLevel(logging.getLogger("bentoml").getEffectiveLevel())
settings = load_settings()
# Created by the `bentoml serve` process, inherited by its workers: see `eluserve.service.control`.
control_dir = ensure_control_dir()


async def _classify(request: Request) -> Response:
    return await _service().models_api.on_default(request, "classify")


async def _classify_batch(request: Request) -> Response:
    return await _service().models_api.on_default(request, "classify_batch")


async def _model(request: Request) -> Response:
    return await _service().models_api.on_default(request, "model")


def _models_api(method: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await getattr(_service().models_api, method)(request)

    endpoint.__name__ = method
    return endpoint


def _v2(method: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await getattr(_service().v2, method)(request)

    endpoint.__name__ = f"v2_{method}"
    return endpoint


async def _docs_json(_: Request) -> Response:
    service = _service()
    with service.registry.lease() as served:
        default = served.info
    loaded = {name: sorted(versions) for name, versions in service.registry.loaded().items()}
    return JSONResponse(openapi.document(_bentoml_document(), settings, default, loaded))


async def _docs(_: Request) -> Response:
    return openapi.swagger_page()


@functools.cache
def _bentoml_document() -> dict[str, Any]:
    """BentoML's own document (its infrastructure routes), the base of ours."""
    return EluClassifier.openapi_spec.asdict()


_VERSION = "/models/{name}/versions/{version}"
http_app = Starlette(
    routes=[
        Route("/classify", _classify, methods=["POST"]),
        Route("/classify_batch", _classify_batch, methods=["POST"]),
        Route("/model", _model, methods=["GET"]),
        Route("/models", _models_api("list_models"), methods=["GET"]),
        Route("/models/{name}", _models_api("get_model"), methods=["GET"]),
        Route("/models/{name}/classify", _models_api("classify"), methods=["POST"]),
        Route("/models/{name}/classify_batch", _models_api("classify_batch"), methods=["POST"]),
        Route(_VERSION, _models_api("get_model"), methods=["GET"]),
        Route(f"{_VERSION}/classify", _models_api("classify"), methods=["POST"]),
        Route(f"{_VERSION}/classify_batch", _models_api("classify_batch"), methods=["POST"]),
        Route("/v2/repository/index", _models_api("index"), methods=["POST"]),
        Route("/v2/repository/models/{name}/load", _models_api("load"), methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", _models_api("unload"), methods=["POST"]),
        Route("/", page.index, methods=["GET"]),
        Route("/docs.json", _docs_json, methods=["GET"]),
        Route("/docs", _docs, methods=["GET"]),
        Route("/v2", _v2("server"), methods=["GET"]),
        Route("/v2/health/live", _v2("live"), methods=["GET"]),
        Route("/v2/health/ready", _v2("ready"), methods=["GET"]),
        *(
            route
            for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
            for route in (
                Route(prefix, _v2("model"), methods=["GET"]),
                Route(f"{prefix}/ready", _v2("model_ready"), methods=["GET"]),
                Route(f"{prefix}/config", _v2("config"), methods=["GET"]),
                Route(f"{prefix}/infer", _v2("infer"), methods=["POST"]),
            )
        ),
    ],
    # Paths and methods no route serves: the error body every other client error has, not
    # Starlette's plain-text "Not Found" (`eluserve.service.runtime.fast_path` sends such paths here,
    # and uses this handler for a wrong method on BentoML's own paths).
    exception_handlers={HTTPException: errors.http_exception},
)
#: Every path the service answers, as OpenTelemetry's URL patterns (`{name}` matches one segment);
#: BentoML's OpenTelemetry middleware skips them unless `tracing` is on.
UNTRACED_PATHS = (
    *(re.sub(r"\{[^}]+\}", "[^/]+", route.path) for route in http_app.routes),
    "/livez",
    "/readyz",
    "/metrics",
)
# The framework glue (`eluserve.service.runtime`: no usage tracking, this server's own metrics folder,
# the patches), in the `bentoml serve` process and in each worker as they import this module: BentoML
# starts tracking, reads the metrics folder and builds the workers' uvicorn config and app after that.
runtime.install(http_app, settings, metrics_dir=control_dir / "prometheus")


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(
    workers=settings.worker_count(),
    traffic={"timeout": settings.timeout_s, "max_concurrency": settings.max_concurrency},
    tracing={} if settings.tracing else {"excluded_urls": list(UNTRACED_PATHS)},
    logging={"access": {"enabled": settings.access_log}},
)
class EluClassifier:
    """Public endpoints (`eluserve.service.api.classify` has the HTTP contract) over the repository's
    models."""

    @bentoml.on_deployment
    def check_model() -> None:
        """Read the models once in the `bentoml serve` process, before any worker starts.

        A missing or unreadable default model then stops the start-up with a message naming the file
        and a non-zero exit, instead of workers that fail in `__init__` being restarted forever behind
        a port that never answers.
        """
        check_repository(settings)

    def __init__(self) -> None:
        workers = _bentoml_workers("EluClassifier", default=settings.worker_count())
        self.registry = ModelRegistry(settings, workers, _device_link(workers))
        self.follower = Follower(ControlState(control_dir), self._apply, settings.control_poll_s)
        # A worker restarted after loads and unloads starts in the state the others serve
        # (`eluserve.service.control`); it turns ready once every version is warmed up.
        self.registry.load_all(self.follower.to_serve)
        self.models_api = ModelsApi(self.registry, self.follower, settings, workers)
        self.v2 = InferenceProtocol(self.registry, settings, ready=self.__is_ready__, workers=workers)
        self.follower.start()
        # Everything loaded so far (BentoML, Starlette, pydantic, onnx, the sessions) lives as long as
        # the worker: moved out of the garbage collector's generations, it is no longer rescanned by
        # every generation-2 collection, which otherwise pauses the event loop for tens of ms.
        gc.collect()
        gc.freeze()
        self._warm = threading.Event()
        threading.Thread(target=self._warm_up, name="eluserve-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        try:
            self.registry.warm_up_all()
        except Exception:
            logger.exception("warm-up failed; the service stays not ready")
            return
        self._warm.set()

    def _apply(self, name: str, state: str) -> None:
        if state == LOADED:
            self.registry.load(name)
        elif self.registry.is_loaded(name):
            self.registry.unload(name)

    def __is_ready__(self) -> bool:
        return self._warm.is_set() and self.registry.is_loaded(self.registry.default_name)

    @bentoml.on_shutdown
    def close(self) -> None:
        """Release the inference threads once the worker has answered what it held."""
        self.follower.stop()
        self.registry.close()


def _device_link(workers: int) -> DeviceLink | None:
    """The device host link when batches are shared by the server's workers; None when per worker."""
    mode = settings.device_batching_mode(workers)
    logger.info(
        "device batching: %s (ELUSERVE_DEVICE_BATCHING=%s, %d workers, CUDA %s)",
        mode,
        settings.device_batching,
        workers,
        "would serve" if settings.runs_on_cuda() else "would not serve",
    )
    if mode != SHARED:
        return None
    # The `bentoml serve` process is the workers' parent: the host lives as long as it does.
    worker = accept_balance.worker_index() or 0
    return DeviceLink(
        control_dir, os.getppid(), worker, request_timeout_s=settings.timeout_s, workers=workers
    )


def _bentoml_workers(service_name: str, default: int) -> int:
    """The worker count BentoML resolved for a service: our decorator merged with BentoML's config file.

    Read from BentoML's configuration container, which the server fills before workers start; outside
    a server (or if BentoML changes that internal API) the decorator's value is the answer.
    """
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        workers = BentoMLContainer.config.services.get()[service_name].get("workers")
    except (ImportError, KeyError, AttributeError):
        return default
    if workers == "cpu_count":
        return available_cores()
    return workers if isinstance(workers, int) and workers > 0 else default


def _service() -> EluClassifier:
    service = _current_service()
    if service is None:
        raise RuntimeError("EluClassifier is not initialised in this worker")
    return service
