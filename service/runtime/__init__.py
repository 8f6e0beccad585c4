"""The framework glue: every change the service makes to BentoML's, uvicorn's and asyncio's internals.

Each module replaces or extends something private, for a measured reason its docstring gives, and
names what it relies on in `TARGETS`:

- `bentoml_settings`: BentoML's cached usage-tracking switch (off) and its Prometheus multiprocess
  folder (one per server, not one per ``BENTOML_HOME`` that every server start empties).
- `bentoml_patches`: BentoML's `TimeoutMiddleware.__call__` (a timer per request that kept every
  request of the last `traffic.timeout` seconds alive) and `MaxConcurrencyMiddleware.__call__` (a 429
  outside the error contract, without `Retry-After`).
- `http_protocol`: uvicorn's `HTTP_PROTOCOLS` (a deadline for a request's line and headers, and the
  parser ``ELUSERVE_HTTP_PARSER`` names).
- `accept_balance`: uvicorn's `LOOP_FACTORIES`, and asyncio's selector loop `_start_serving`,
  `_accept_connection` and `_stop_serving` (least-connections accepting over the workers).
- `fast_path`: BentoML's `ServiceAppFactory.middlewares` (our routes leave BentoML's middleware early;
  its traffic metrics label requests by route, not by raw path; paths and methods no route serves
  get the contract's error body, not BentoML's plain text).

The upstream bugs among these are written up, ready to file, in docs/upstream.md, with the patch each
fix lets us delete. `install` applies them all, in that order, as `eluserve.service.app` is imported
(in the `bentoml serve` process and in each worker, before BentoML starts tracking, reads the metrics
folder or builds a worker's uvicorn config and app). Each checks the shape of what it changes first: on
a release other than the tested ones (the lock's, requirements/), a patch whose target changed is left
out with a warning and the service carries on as BentoML, uvicorn and asyncio behave unpatched;
tests/service/runtime/test_compat.py fails instead, for the releases CI installs.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette

from eluserve.service.config import Settings
from eluserve.service.runtime import (
    accept_balance,
    bentoml_patches,
    bentoml_settings,
    fast_path,
    http_protocol,
)

#: The glue's modules, in the order `install` applies them.
MODULES = (bentoml_settings, bentoml_patches, http_protocol, accept_balance, fast_path)


def install(app: Starlette, settings: Settings, metrics_dir: Path) -> dict[str, bool]:
    """Apply every change, for the service whose Starlette app `app` BentoML mounts at "/" and whose
    workers write their metrics files to `metrics_dir`.

    Returns:
        each change by name, and whether it is in place (False: its target changed shape, and the log
        said so; the service runs without it).
    """
    return {
        "no_tracking": bentoml_settings.no_tracking(),
        "bentoml_patches": bentoml_patches.apply(),
        "http_protocol": http_protocol.install(settings.header_timeout_s, settings.http_parser),
        "accept_balance": accept_balance.install(),
        "metrics_folder": bentoml_settings.metrics_folder(metrics_dir),
        "fast_path": fast_path.install(app, tracing=settings.tracing),
    }
