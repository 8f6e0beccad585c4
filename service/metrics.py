"""Prometheus metrics of the service, exported by BentoML's `/metrics` next to its own.

BentoML starts every worker with ``PROMETHEUS_MULTIPROC_DIR`` set and answers `/metrics` from all files
in that folder, so plain `prometheus_client` metrics created at import time are multiprocess metrics in
the workers: each process writes its own file and the scrape sums counters and histograms over every
worker. The one gauge uses ``livemax`` so that N workers report one series, not N, and a stopped
worker's value disappears. With shared device batching the device host (`eluserve.service.device.host`)
is one more such process: batch size, inference time, `device_batch_workers` and the refusals of its
batcher are written there, once per device batch; the workers count their images, results and errors.

Every series carries `model` and `version` (the service serves a repository of models, see
`eluserve.service.repository`); a client error that no model can be blamed for (an unknown model, a
body that never named one) has both empty. Label values are bounded (names and versions of models on
disk, provider, class label, error code, outcome) and pre-initialised by `init_metrics` when a version
loads, so every series exists at zero before the first request. Loads, failed loads and unloads are
counted per worker: with N workers one load is N loads.
Buckets come from measurements on the 2-core development machine (tiny and CIFAR models, 32×32 JPEGs
to 12-megapixel photos): a 32×32 decode + crop takes about 0.1 ms, a photo 5-30 ms; one inference
takes 0.05-2 ms for batch 1 and up to a few tens of ms for batch 64; a loaded machine adds a tail.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from eluserve.core.contract import ModelMetadata
from eluserve.core.errors import CLIENT_ERROR_CODES

NAMESPACE = "eluserve"

#: Seconds, from 50 µs to 2.5 s.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
OUTCOMES = ("ok", "error")
#: Why a request was refused with 429 `overloaded`: the batcher's queue would outlast
#: ELUSERVE_MAX_LATENCY_MS, or the worker's share of ELUSERVE_MAX_CONCURRENCY is in flight (BentoML).
REJECTION_REASONS = ("latency_budget", "max_concurrency")

INFERENCE_DURATION = Histogram(
    "inference_duration_seconds",
    "ONNX Runtime time for one batch.",
    ["model", "version", "provider"],
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)
PREPROCESS_DURATION = Histogram(
    "preprocess_duration_seconds",
    "Decode and single crop of one image, failures included.",
    ["model", "version"],
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "batch_size",
    "Images per batch that reached ONNX Runtime after adaptive batching.",
    ["model", "version"],
    namespace=NAMESPACE,
    buckets=BATCH_SIZE_BUCKETS,
)
#: HTTP workers whose requests one device batch holds: from 1 to a GPU host's cores.
WORKERS_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
DEVICE_BATCH_WORKERS = Histogram(
    "device_batch_workers",
    "HTTP workers whose requests one batch held, with shared device batching (ELUSERVE_DEVICE_BATCHING): "
    "above 1, batches merge the requests of several workers.",
    ["model", "version"],
    namespace=NAMESPACE,
    buckets=WORKERS_BUCKETS,
)
IMAGES = Counter(
    "images",
    "Images received, by outcome: ok = classified, error = refused with a client error.",
    ["model", "version", "outcome"],
    namespace=NAMESPACE,
)
CLIENT_ERRORS = Counter(
    "client_errors",
    "Client errors by code, per request error and per image error in batches.",
    ["model", "version", "code"],
    namespace=NAMESPACE,
)
PREDICTIONS = Counter(
    "predictions",
    "Top-1 predictions by class label.",
    ["model", "version", "label"],
    namespace=NAMESPACE,
)
TOP1_PROBABILITY = Histogram(
    "top1_probability",
    "Probability of the top-1 class; a shift in this distribution is a cheap drift signal.",
    ["model", "version"],
    namespace=NAMESPACE,
    buckets=PROBABILITY_BUCKETS,
)
REQUESTS_REJECTED = Counter(
    "requests_rejected",
    "Requests refused with 429 overloaded, by reason: latency_budget (the queue would outlast "
    "ELUSERVE_MAX_LATENCY_MS) or max_concurrency (the worker's share of ELUSERVE_MAX_CONCURRENCY).",
    ["reason"],
    namespace=NAMESPACE,
)
WORKER_IMAGES = Counter(
    "worker_images",
    "Images classified by each HTTP worker (BentoML's worker index): how evenly the load spreads.",
    ["worker"],
    namespace=NAMESPACE,
)
MODEL_INFO = Gauge(
    "model_info",
    "1 while a model version is loaded, 0 once unloaded; the labels say which engine, execution provider "
    "and precision run it.",
    ["model", "version", "engine", "provider", "precision"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)

MODEL_LOADS = Counter(
    "model_loads",
    "Model version loads per worker, by outcome: ok = serving, error = the file could not be served.",
    ["model", "version", "outcome"],
    namespace=NAMESPACE,
)
MODEL_UNLOADS = Counter(
    "model_unloads",
    "Model versions unloaded per worker.",
    ["model", "version"],
    namespace=NAMESPACE,
)

#: Client error codes of the model repository and the inference protocol, beside the core's.
SERVICE_ERROR_CODES = (
    "model_not_found",
    "default_model",
    "model_control_disabled",
    "model_load_failed",
    "protocol_error",
)
ERROR_CODES = (*CLIENT_ERROR_CODES, *SERVICE_ERROR_CODES)

for _code in ERROR_CODES:
    CLIENT_ERRORS.labels(model="", version="", code=_code)
for _reason in REJECTION_REASONS:
    REQUESTS_REJECTED.labels(reason=_reason)


def init_metrics(info: ModelMetadata) -> None:
    """Create a version's series at zero (`set_model_info` publishes it once it serves)."""
    model = {"model": info.name, "version": info.version}
    provider = info.provider or "unknown"
    PREPROCESS_DURATION.labels(**model)
    TOP1_PROBABILITY.labels(**model)
    for outcome in OUTCOMES:
        IMAGES.labels(**model, outcome=outcome)
        MODEL_LOADS.labels(**model, outcome=outcome)
    MODEL_UNLOADS.labels(**model)
    for label in info.labels:
        PREDICTIONS.labels(**model, label=label)
    for code in ERROR_CODES:
        CLIENT_ERRORS.labels(**model, code=code)
    INFERENCE_DURATION.labels(**model, provider=provider)
    BATCH_SIZE.labels(**model)
    DEVICE_BATCH_WORKERS.labels(**model)


@dataclass(frozen=True)
class ModelSeries:
    """One model version's per-image series, resolved once.

    `labels(...)` looks the child up under a lock on every call; per image and per request that was
    1.7 % of a worker's event loop under `/classify` load (py-spy), for a lookup whose answer never
    changes while the version is loaded.
    """

    images_ok: Counter
    images_error: Counter
    preprocess: Histogram
    top1_probability: Histogram
    predictions: dict[str, Counter]

    @classmethod
    def of(cls, info: ModelMetadata) -> ModelSeries:
        model = {"model": info.name, "version": info.version}
        return cls(
            images_ok=IMAGES.labels(**model, outcome="ok"),
            images_error=IMAGES.labels(**model, outcome="error"),
            preprocess=PREPROCESS_DURATION.labels(**model),
            top1_probability=TOP1_PROBABILITY.labels(**model),
            predictions={label: PREDICTIONS.labels(**model, label=label) for label in info.labels},
        )


def set_model_info(info: ModelMetadata, provider: str, *, loaded: bool) -> None:
    """`eluserve_model_info`: 1 while the version serves in this worker, 0 after it is unloaded."""
    MODEL_INFO.labels(
        model=info.name,
        version=info.version,
        engine=info.engine or "unknown",
        provider=provider,
        precision=info.precision or "unknown",
    ).set(1 if loaded else 0)
