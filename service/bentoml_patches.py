"""A fix for a BentoML 1.4 bug that the service's benchmarks ran into, applied when the service loads.

BentoML's `TimeoutMiddleware` (bentoml/_internal/server/http/traffic.py, 1.4.40) arms
`loop.call_later(timeout, ...)` for every request and never cancels it. The timer keeps the request's
waiter future, and through it the request's task, closures and context, alive for `traffic.timeout`
seconds after the response went out. Under load that is every request of the last 30 s: at 800
requests/s, tens of thousands of dead requests that Python's generation-2 garbage collection then
scans about once a second, pausing the worker's event loop for longer each time (measured with
`gc.callbacks` under `eluserve bench` load: 73 ms rising to 299 ms within 15 s). Every request in flight
waits the pause out, which was the 0.5-0.9 s p99 tail of the service at c=64.

The replacement `__call__` is BentoML's, plus cancelling the timer once the response has started (or
the request ended): the same 504 after `timeout` seconds without a response, no retained requests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)


async def _timeout_middleware_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            response = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
            )
            await response(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def apply() -> bool:
    """Patch BentoML's `TimeoutMiddleware` if it has the shape this fix was written for.

    Returns:
        whether the patch is in place; a BentoML whose middleware looks different is left alone (and
        said so in the log), since its timer handling may have been fixed or changed.
    """
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:
        logger.warning("BentoML's TimeoutMiddleware moved; its timer leak fix is not applied")
        return False
    if TimeoutMiddleware.__call__ is _timeout_middleware_call:
        return True
    if not callable(getattr(TimeoutMiddleware, "_set_timer_out", None)):
        logger.warning("BentoML's TimeoutMiddleware changed shape; its timer leak fix is not applied")
        return False
    TimeoutMiddleware.__call__ = _timeout_middleware_call  # type: ignore[method-assign]
    return True
