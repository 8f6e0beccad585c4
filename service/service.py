"""The BentoML services: `EluClassifier` (public HTTP) over `EluModel` (ONNX Runtime, batched).

    BENTOML_DO_NOT_TRACK=True bentoml serve service.service:EluClassifier --port 3000

Two services because the public endpoints read multipart bodies themselves (see `service.forms`) while
BentoML's adaptive batcher only sits in front of `@bentoml.api` methods: `EluClassifier` decodes and
crops in its HTTP workers, then calls `EluModel.predict`, whose batcher pools the crops of all HTTP
workers into ONNX Runtime batches. `EluModel` listens on a private socket, so its array API is not
exposed, and its calls do not count against the public concurrency limit.

`/readyz` turns ready once `EluModel` has warmed up (BentoML's runner probe asks its `__is_ready__`);
`/livez` and `/metrics` are BentoML's. Settings come from `service.config` (``ELUSERVE_*``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, TypeVar

import aiohttp
import bentoml
import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import metrics
from service.coalesce import Coalescer
from service.config import load_settings
from service.errors import ServiceError
from service.frontend import Frontend
from service.inference import Classifier, available_cores, read_model_info

logger = logging.getLogger(__name__)
# BentoML's server logging shows its own logger at INFO and the root at WARNING; let ours (which say
# which model, provider and thread count a worker runs) follow BentoML's level, quiet and debug included.
logging.getLogger("service").setLevel(logging.getLogger("bentoml").getEffectiveLevel())
settings = load_settings()

# Nothing phones home, however the service is started (`bentoml serve` without the variable too): the
# `bentoml serve` process imports this module before it starts usage tracking and its workers (which
# inherit the environment), but BentoML caches its reading of the variable, so the cache is cleared.
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
with contextlib.suppress(ImportError, AttributeError):
    from bentoml._internal.utils.analytics.usage_stats import do_not_track

    do_not_track.cache_clear()
T = TypeVar("T")

#: Connection-level failures of a call to `EluModel`. Inference is a pure function, so such a call is
#: retried: the dependency client's pooled connections can be closed under it (uvicorn's keep-alive
#: timeout is shorter than aiohttp's), which fails requests that never reached the runtime.
_RETRIABLE = (aiohttp.ClientConnectionError, httpx.TransportError)
_ATTEMPTS = 3


@bentoml.service(
    workers=settings.model_workers,
    traffic={"timeout": settings.timeout_s},
    # BentoML 1.4.40's dependency client replaces its session every 100 requests or 5 minutes and closes
    # the old one with requests still in flight on it: under concurrency those fail or hang until the
    # timeout (bentoml issues #5540, #4971). One long-lived session avoids that.
    runner_connection={"max_requests": 2**31, "max_age": 7 * 24 * 3600.0},
)
class EluModel:
    """ONNX Runtime inference behind BentoML's adaptive batcher."""

    def __init__(self) -> None:
        workers = _bentoml_workers("EluModel", default=settings.model_workers)
        self.classifier = Classifier.from_path(
            settings.model_file(),
            providers=settings.provider_list(),
            intra_op_threads=settings.threads_per_model_worker(workers),
        )
        self.model_info = self.classifier.info
        metrics.init_model_metrics(self.model_info)
        self._warm = threading.Event()
        threading.Thread(target=self._warm_up, name="eluserve-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        try:
            self.classifier.warm_up(
                batch_sizes=sorted({1, settings.max_batch_size}),
                rounds=settings.warmup_rounds,
                min_seconds=settings.warmup_min_seconds,
            )
        except Exception:
            logger.exception("warm-up failed; the service stays not ready")
            return
        self._warm.set()

    def __is_ready__(self) -> bool:
        return self._warm.is_set()

    @bentoml.api(
        batchable=True, max_batch_size=settings.max_batch_size, max_latency_ms=settings.max_latency_ms
    )
    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 crops [N, H, W, 3] → float32 probabilities [N, num_classes]."""
        info = self.model_info
        metrics.BATCH_SIZE.labels(model=info.name).observe(len(images))
        with metrics.INFERENCE_DURATION.labels(model=info.name, provider=self.classifier.provider).time():
            return self.classifier.predict(images)

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        """The `GET /model` document, with the execution provider this runtime uses."""
        return self.model_info.to_dict()


async def _classify(request: Request) -> Response:
    return await _frontend().classify(request)


async def _classify_batch(request: Request) -> Response:
    return await _frontend().classify_batch(request)


async def _model(request: Request) -> Response:
    return await _frontend().model(request)


http_app = Starlette(
    routes=[
        Route("/classify", _classify, methods=["POST"]),
        Route("/classify_batch", _classify_batch, methods=["POST"]),
        Route("/model", _model, methods=["GET"]),
    ]
)


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(
    workers=settings.workers,
    traffic={"timeout": settings.timeout_s, "max_concurrency": settings.max_concurrency},
)
class EluClassifier:
    """Public endpoints; see `service.frontend` for the HTTP contract."""

    runtime = bentoml.depends(EluModel)

    @bentoml.on_deployment
    def check_model() -> None:
        """Read the model once in the `bentoml serve` process, before any worker starts.

        A missing or unreadable model then stops the start-up with a message naming the file and a
        non-zero exit, instead of workers that fail in `__init__` being restarted forever behind a port
        that never answers.
        """
        read_model_info(settings.model_file())

    def __init__(self) -> None:
        info = read_model_info(settings.model_file())
        metrics.init_http_metrics(info)
        self._coalesce = Coalescer(self._infer, settings.max_batch_size)
        self.frontend = Frontend(info, settings, infer=self._coalesce, describe=self._describe)

    async def _infer(self, batch: np.ndarray) -> np.ndarray:
        probs = await _call_runtime(lambda: self.runtime.to_async.predict(batch))
        return np.asarray(probs, dtype=np.float32)

    async def _describe(self) -> dict[str, Any]:
        return await _call_runtime(self.runtime.to_async.describe)


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


def _frontend() -> Frontend:
    service = bentoml.get_current_service()
    if service is None:
        raise RuntimeError("EluClassifier is not initialised in this worker")
    return service.frontend


async def _call_runtime(call: Callable[[], Awaitable[T]]) -> T:
    """Call `EluModel`, retrying connection failures; map what remains to the client-facing error."""
    attempts_left = _ATTEMPTS
    while True:
        try:
            return await call()
        except _RETRIABLE as exc:
            attempts_left -= 1
            if attempts_left == 0:
                raise _runtime_error(exc) from exc
            logger.debug("retrying a model runtime call after %r", exc)
        except Exception as exc:
            raise _runtime_error(exc) from exc


def _runtime_error(exc: Exception) -> ServiceError:
    """Map a failed call to `EluModel` to the status the client should see."""
    status = getattr(exc, "error_code", None)
    if status in (HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS):
        # The batcher refused work it estimated it could not finish within max_latency_ms.
        return ServiceError("overloaded", "the model runtime is at capacity; retry shortly", 429)
    if isinstance(exc, (*_RETRIABLE, OSError)):
        return ServiceError("unavailable", "the model runtime is not reachable; retry shortly", 503)
    logger.error("model runtime call failed", exc_info=exc)
    return ServiceError("internal_error", "the model runtime failed; it has been logged", 500)
