"""The framework glue: every change the service makes to BentoML's, uvicorn's and asyncio's internals.

Each module replaces or extends something private, for a measured reason its docstring gives:

- `bentoml_patches`: BentoML's `TimeoutMiddleware.__call__` (a timer per request that kept every
  request of the last `traffic.timeout` seconds alive) and `MaxConcurrencyMiddleware.__call__` (its 429
  outside the error contract). Both are upstream bugs, written up in docs/upstream.md.
- `http_protocol`: uvicorn's `HTTP_PROTOCOLS` (a deadline for a request's line and headers, and the
  parser ``ELUSERVE_HTTP_PARSER`` names).
- `accept_balance`: uvicorn's `LOOP_FACTORIES`, and asyncio's selector loop `_start_serving`,
  `_accept_connection` and `_stop_serving` (least-connections accepting over the workers).
- `fast_path`: BentoML's `ServiceAppFactory.middlewares` (our routes leave BentoML's middleware early;
  its traffic metrics label requests by route).

`install` applies them all, once, in that order, when `eluserve.service.app` is imported (BentoML's
worker builds its uvicorn config and its app after that). Each patch checks the shape of what it
replaces first: on a release other than the tested ones (the lock file's), a patch whose target changed
is left out with a warning and the service carries on as BentoML, uvicorn and asyncio behave
unpatched. tests/service/runtime/test_compat.py fails instead, for the releases CI installs.
"""

from __future__ import annotations

from starlette.applications import Starlette

from eluserve.service.config import Settings
from eluserve.service.runtime import accept_balance, bentoml_patches, fast_path, http_protocol


def install(app: Starlette, settings: Settings) -> dict[str, bool]:
    """Apply every patch for the service whose Starlette app `app` BentoML mounts at "/".

    Returns:
        each patch by module name, and whether it is in place (False: its target changed shape, and
        the log said so).
    """
    return {
        "bentoml_patches": bentoml_patches.apply(),
        "http_protocol": http_protocol.install(settings.header_timeout_s, settings.http_parser),
        "accept_balance": accept_balance.install(),
        "fast_path": fast_path.install(app, tracing=settings.tracing),
    }
