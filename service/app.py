"""The BentoML service: `EluClassifier`, public HTTP endpoints over ONNX Runtime with adaptive batching.

    BENTOML_DO_NOT_TRACK=True bentoml serve eluserve.service.app:EluClassifier --port 3000

Connections spread evenly over the HTTP worker processes (`eluserve.service.accept_balance`: each
worker accepts only while it holds the fewest open connections). Each worker reads multipart bodies
itself (see `eluserve.service.forms`), decodes and crops in `eluserve.service.http_api`, and pools the
crops of concurrent requests into ONNX Runtime batches with `eluserve.service.batching.Batcher` on its
own session (threads = cores ÷ workers, so workers do not oversubscribe the machine). Overload is
answered with the contract's 429 `overloaded` and `Retry-After`, whether the batcher's latency budget or
BentoML's concurrency limit refuses (`eluserve.service.bentoml_patches`). `/readyz` turns ready once the
worker has warmed its session up (BentoML asks `__is_ready__`); `/livez` and `/metrics` are BentoML's.
Settings come from `eluserve.service.config` (``ELUSERVE_*``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eluserve.core.contract import read_model_info
from eluserve.core.errors import ServiceError
from eluserve.core.session import ModelSession, available_cores
from eluserve.service import accept_balance, bentoml_patches, http_protocol, metrics
from eluserve.service.batching import Batcher
from eluserve.service.config import load_settings
from eluserve.service.http_api import Frontend, error_response

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
bentoml_patches.apply()
http_protocol.install(settings.header_timeout_s)
accept_balance.install()


async def _classify(request: Request) -> Response:
    return _refused_early() or await _frontend().classify(request)


async def _classify_batch(request: Request) -> Response:
    return _refused_early() or await _frontend().classify_batch(request)


async def _model(request: Request) -> Response:
    return await _frontend().model(request)


http_app = Starlette(
    routes=[
        Route("/classify", _classify, methods=["POST"]),
        Route("/classify_batch", _classify_batch, methods=["POST"]),
        Route("/model", _model, methods=["GET"]),
    ]
)
#: Every path the service answers; BentoML's OpenTelemetry middleware skips them unless `tracing` is on.
UNTRACED_PATHS = (*(route.path for route in http_app.routes), "/livez", "/readyz", "/metrics")


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(
    workers=settings.workers,
    traffic={"timeout": settings.timeout_s, "max_concurrency": settings.max_concurrency},
    tracing={} if settings.tracing else {"excluded_urls": list(UNTRACED_PATHS)},
)
class EluClassifier:
    """Public endpoints (`eluserve.service.http_api` has the HTTP contract) over one session per worker."""

    @bentoml.on_deployment
    def check_model() -> None:
        """Read the model once in the `bentoml serve` process, before any worker starts.

        A missing or unreadable model then stops the start-up with a message naming the file and a
        non-zero exit, instead of workers that fail in `__init__` being restarted forever behind a port
        that never answers.
        """
        read_model_info(settings.model_file())

    def __init__(self) -> None:
        workers = _bentoml_workers("EluClassifier", default=settings.workers)
        self.classifier = ModelSession.from_path(
            settings.model_file(),
            providers=settings.provider_list(),
            intra_op_threads=settings.threads_per_worker(workers),
        )
        info = self.classifier.info
        metrics.init_metrics(info)
        inference = metrics.INFERENCE_DURATION.labels(model=info.name, provider=self.classifier.provider)
        batch_size = metrics.BATCH_SIZE.labels(model=info.name)
        worker_images = metrics.WORKER_IMAGES.labels(worker=str(accept_balance.worker_index() or 0))

        def observe(images: int, seconds: float) -> None:
            batch_size.observe(images)
            inference.observe(seconds)
            worker_images.inc(images)

        self.batcher = Batcher(
            self.classifier.predict,
            max_batch_size=settings.max_batch_size,
            max_latency_s=settings.max_latency_ms / 1000,
            observe=observe,
        )
        self.frontend = Frontend(info, settings, infer=self.batcher)
        # Everything loaded so far (BentoML, Starlette, pydantic, onnx, the session) lives as long as
        # the worker: moved out of the garbage collector's generations, it is no longer rescanned by
        # every generation-2 collection, which otherwise pauses the event loop for tens of ms.
        gc.collect()
        gc.freeze()
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

    @bentoml.on_shutdown
    def close(self) -> None:
        """Release the inference thread once the worker has answered what it held."""
        self.batcher.close()


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


def _refused_early() -> Response | None:
    """The 429 for a request that even one image could not join the queue with, before its body is read.

    Under overload a refusal then costs the headers and a small JSON answer, not the multipart parsing
    and decoding of an upload that the batcher would refuse anyway, so the cores stay with the
    requests that are served. A request that passes is checked again with its real image count.
    """
    service = bentoml.get_current_service()
    if service is None:
        return None
    try:
        service.batcher.admit(1)
    except ServiceError as exc:
        return error_response(exc)
    return None


def _frontend() -> Frontend:
    service = bentoml.get_current_service()
    if service is None:
        raise RuntimeError("EluClassifier is not initialised in this worker")
    return service.frontend
