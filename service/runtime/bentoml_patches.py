"""Two changes to BentoML 1.4's traffic middleware, applied when the service loads.

Timer leak.
BentoML's `TimeoutMiddleware` (bentoml/_internal/server/http/traffic.py, 1.4.40) arms
`loop.call_later(timeout, ...)` for every request and never cancels it. The timer keeps the request's
waiter future, and through it the request's task, closures and context, alive for `traffic.timeout`
seconds after the response went out. Under load that is every request of the last 30 s: at 800
requests/s, tens of thousands of dead requests that Python's generation-2 garbage collection then
scans about once a second, pausing the worker's event loop for longer each time (measured with
`gc.callbacks` under `eluserve bench` load: 73 ms rising to 299 ms within 15 s). Every request in flight
waits the pause out, which was the 0.5-0.9 s p99 tail of the service at c=64.

The replacement `__call__` gives the same 504 after `timeout` seconds without a response, with
`asyncio.timeout` in the request's own task: the deadline is dropped once the response starts and
cancelled when the request ends, so nothing is retained, and no second task, waiter future and timer
are created per request as BentoML's does (asyncio bookkeeping was a tenth of a worker's event loop
under `/classify` load). An exception the app raises before it responds now propagates at once; BentoML's
waits for its timer, then returns having sent nothing.

Concurrency limit. BentoML's `MaxConcurrencyMiddleware` answers `{"error": "Too many requests"}` with 429
and no `Retry-After` once a worker holds its share of `traffic.max_concurrency`: outside the error
contract and invisible to our metrics (at c=128, most of the service's answers were these before this
patch). The replacement answers the contract's 429 `overloaded` with `Retry-After`, counted in
`eluserve_requests_rejected_total{reason="max_concurrency"}`; the limit itself is BentoML's semaphore.

Both are BentoML bugs, written up for upstream in docs/upstream.md ("TimeoutMiddleware keeps every
request alive for `traffic.timeout` seconds" and "MaxConcurrencyMiddleware's 429 has no Retry-After");
each patch goes the day its fix ships in the pinned release. `TARGETS` lists what the patches replace
or rely on: tests/service/runtime/test_compat.py fails when any of it changes in the installed BentoML,
while `apply` on an unknown BentoML only checks what it can and warns.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.responses import JSONResponse

from eluserve.core.errors import ServiceError
from eluserve.service import metrics
from eluserve.service.api.classify import error_response

logger = logging.getLogger(__name__)

_TRAFFIC = "bentoml._internal.server.http.traffic"
#: What the patches replace, the `__init__`s that set the attributes the replacements read (`app`,
#: `timeout`, `skip_paths`, `_semaphore`), and where BentoML builds the two middlewares.
TARGETS = (
    f"{_TRAFFIC}:TimeoutMiddleware.__init__",
    f"{_TRAFFIC}:TimeoutMiddleware.__call__",
    f"{_TRAFFIC}:TimeoutMiddleware._set_timer_out",
    f"{_TRAFFIC}:MaxConcurrencyMiddleware.__init__",
    f"{_TRAFFIC}:MaxConcurrencyMiddleware.__call__",
    "bentoml._internal.server.base_app:BaseAppFactory.middlewares",
)


async def _timeout_middleware_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    started = False

    async def _send(message: Any) -> None:
        nonlocal started
        if not started:
            started = True
            deadline.reschedule(None)  # the response has begun: no 504 can follow
        await send(message)

    try:
        async with asyncio.timeout(self.timeout) as deadline:
            await self.app(scope, receive, _send)
    except TimeoutError:
        if not deadline.expired() or started:  # the app's own TimeoutError, not the deadline's
            raise
        response = JSONResponse(
            {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
        )
        await response(scope, receive, send)


async def _max_concurrency_middleware_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket") or scope["path"] in self.skip_paths:
        return await self.app(scope, receive, send)
    if self._semaphore.locked():
        metrics.REQUESTS_REJECTED.labels(reason="max_concurrency").inc()
        error = ServiceError(
            "overloaded",
            "this worker has as many requests in flight as ELUSERVE_MAX_CONCURRENCY ÷ workers allows; "
            "retry shortly",
            429,
        )
        return await error_response(error)(scope, receive, send)
    async with self._semaphore:
        await self.app(scope, receive, send)


def apply() -> bool:
    """Patch BentoML's `TimeoutMiddleware` and `MaxConcurrencyMiddleware` if they have the shapes these
    changes were written for.

    Returns:
        whether both patches are in place; a BentoML whose middleware looks different is left alone
        (and said so in the log), since its handling may have been fixed or changed.
    """
    try:
        from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
    except ImportError:
        logger.warning("BentoML's traffic middleware moved; its patches are not applied")
        return False
    return _patch_timeout(TimeoutMiddleware) & _patch_max_concurrency(MaxConcurrencyMiddleware)


def _patch_max_concurrency(middleware: Any) -> bool:
    if middleware.__call__ is _max_concurrency_middleware_call:
        return True
    if "_semaphore" not in middleware.__init__.__code__.co_names:
        logger.warning("BentoML's MaxConcurrencyMiddleware changed shape; its 429 stays BentoML's")
        return False
    middleware.__call__ = _max_concurrency_middleware_call
    return True


def _patch_timeout(middleware: Any) -> bool:
    if middleware.__call__ is _timeout_middleware_call:
        return True
    if not callable(getattr(middleware, "_set_timer_out", None)):
        logger.warning("BentoML's TimeoutMiddleware changed shape; its timer leak fix is not applied")
        return False
    middleware.__call__ = _timeout_middleware_call
    return True
