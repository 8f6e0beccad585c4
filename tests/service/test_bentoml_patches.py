"""BentoML's traffic middleware, as patched: no timer outlives its request, the 504 still comes, and its
concurrency limit answers the error contract's 429."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware

from eluserve.service import metrics
from eluserve.service.runtime import bentoml_patches

Message = dict[str, Any]


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _hang(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(10)


async def _request(middleware: Any, path: str = "/") -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware({"type": "http", "method": "GET", "path": path}, receive, send)
    return sent


def _armed_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timers of `loop` still armed: after every request has ended, any is a leaked request."""
    return sum(
        1
        for obj in gc.get_objects()
        if type(obj) is asyncio.TimerHandle  # not isinstance: some objects warn when asked their class
        and not obj.cancelled()
        and obj._loop is loop
    )


def test_the_patch_applies_to_the_installed_bentoml() -> None:
    assert bentoml_patches.apply() is True
    assert bentoml_patches.apply() is True  # idempotent: every worker imports the service


def test_no_timer_outlives_the_requests_it_guarded() -> None:
    bentoml_patches.apply()
    middleware = TimeoutMiddleware(_answer, timeout=30.0)

    async def scenario() -> tuple[list[list[Message]], int]:
        answers = [await _request(middleware) for _ in range(50)]
        return answers, _armed_timers(asyncio.get_running_loop())

    answers, armed = asyncio.run(scenario())
    assert all(answer[0]["status"] == 200 for answer in answers)
    assert armed == 0  # unpatched BentoML 1.4.40: 50, each holding its request for 30 s


def test_a_request_without_a_response_in_time_still_gets_504() -> None:
    bentoml_patches.apply()
    sent = asyncio.run(_request(TimeoutMiddleware(_hang, timeout=0.05)))
    assert sent[0]["status"] == 504
    assert b"Not able to process the request" in sent[1]["body"]


def test_a_response_that_began_in_time_is_not_cut_off_by_the_deadline() -> None:
    bentoml_patches.apply()

    async def _slow_body(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.15)  # three times the deadline, after the response began
        await send({"type": "http.response.body", "body": b"late but whole"})

    sent = asyncio.run(_request(TimeoutMiddleware(_slow_body, timeout=0.05)))
    assert [message.get("status") for message in sent] == [200, None]
    assert sent[1]["body"] == b"late but whole"


def test_the_apps_own_timeout_error_is_not_taken_for_the_deadline() -> None:
    bentoml_patches.apply()

    async def _raises(scope: Any, receive: Any, send: Any) -> None:
        raise TimeoutError("a dependency timed out")

    with pytest.raises(TimeoutError, match="a dependency timed out"):
        asyncio.run(_request(TimeoutMiddleware(_raises, timeout=30.0)))


def test_an_error_before_the_response_is_raised_at_once() -> None:
    """BentoML 1.4.40's middleware waits its whole timeout, then returns, sending and raising nothing."""
    bentoml_patches.apply()

    async def _fails(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("the app failed")

    with pytest.raises(RuntimeError, match="the app failed"):
        asyncio.run(_request(TimeoutMiddleware(_fails, timeout=30.0)))


def test_bentomls_concurrency_limit_answers_the_contracts_429_counted_in_our_metric() -> None:
    bentoml_patches.apply()
    release = asyncio.Event()

    async def _held(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await _answer(scope, receive, send)

    rejected = metrics.REQUESTS_REJECTED.labels(reason="max_concurrency")
    before = rejected._value.get()

    async def scenario() -> tuple[list[Message], list[Message], list[Message]]:
        middleware = MaxConcurrencyMiddleware(_held, max_concurrency=1)
        first = asyncio.create_task(_request(middleware))
        await asyncio.sleep(0.01)  # the first request holds the only slot
        refused = await _request(middleware)
        release.set()
        # Health and metrics paths are never refused.
        probe = await _request(middleware, path="/livez")
        return await first, refused, probe

    first, refused, probe = asyncio.run(scenario())
    assert first[0]["status"] == 200 and probe[0]["status"] == 200
    assert refused[0]["status"] == 429
    assert (b"retry-after", b"1") in refused[0]["headers"]
    body = json.loads(refused[1]["body"])
    assert body["error"]["code"] == "overloaded"
    assert "ELUSERVE_MAX_CONCURRENCY" in body["error"]["message"]
    assert rejected._value.get() == before + 1
