"""The metric names that eluserve's /metrics exposes, for checking alerts.yml and the dashboard.

A misspelt metric name in PromQL is no error: the query just returns nothing, and an alert on it never
fires. So every name that deploy/ queries is checked against this list.

BentoML's names were read from the installed bentoml 1.4 source: the new-style service app
(_bentoml_impl/server/app.py) wraps requests in RunnerTrafficMetricsMiddleware
(bentoml/_internal/server/http/instruments.py) with the namespace `api_server.metrics.namespace`, default
`bentoml_service` (its adaptive-batching histogram exists only for `batchable` APIs, which eluserve does
not use: it batches in its own workers, see service/batching.py). eluserve's own
names are the metrics contract (deploy/README.md), implemented in service/.
"""

from __future__ import annotations

import re

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

BENTOML_COUNTERS_GAUGES = (
    "bentoml_service_request_total",  # labels: endpoint, http_response_code, service_name, ...
    "bentoml_service_request_in_progress",
    "bentoml_service_last_request_timestamp_seconds",
)
BENTOML_HISTOGRAMS = ("bentoml_service_request_duration_seconds",)
# Every eluserve series carries `model` and `version` (empty for client errors no model is blamed for).
ELUSERVE_COUNTERS_GAUGES = (
    "eluserve_images_total",  # labels: model, version, outcome=ok|error
    "eluserve_client_errors_total",  # labels: model, version, code
    "eluserve_predictions_total",  # labels: model, version, label
    "eluserve_model_info",  # gauge 1 loaded, 0 unloaded; labels: model, version, engine, provider, precision
    "eluserve_model_loads_total",  # per worker; labels: model, version, outcome=ok|error
    "eluserve_model_unloads_total",  # per worker; labels: model, version
    "eluserve_requests_rejected_total",  # 429 overloaded; labels: reason=latency_budget|max_concurrency
    "eluserve_worker_images_total",  # labels: worker (BentoML's worker index)
)
ELUSERVE_HISTOGRAMS = (
    "eluserve_inference_duration_seconds",  # per batch; labels: model, version, provider
    "eluserve_preprocess_duration_seconds",  # per image; labels: model, version
    "eluserve_batch_size",  # labels: model, version
    "eluserve_device_batch_workers",  # workers per device batch (shared device batching); model, version
    "eluserve_top1_probability",  # labels: model, version
)
# Series that Prometheus itself writes for every scrape target.
PROMETHEUS_SERIES = ("up",)

KNOWN_METRICS = frozenset(
    (
        *BENTOML_COUNTERS_GAUGES,
        *ELUSERVE_COUNTERS_GAUGES,
        *PROMETHEUS_SERIES,
        *(
            name + suffix
            for name in BENTOML_HISTOGRAMS + ELUSERVE_HISTOGRAMS
            for suffix in HISTOGRAM_SUFFIXES
        ),
    )
)

# A metric selector as written throughout deploy/: a name directly followed by its label matchers.
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def selected_metrics(promql: str) -> set[str]:
    """Metric names in `promql`'s selectors (`name{...}`); deploy/ writes every selector with matchers."""
    return set(_SELECTOR.findall(promql))
