"""The body readers in-process, over a scripted ASGI `receive`: limits, deadline and the one buffer.

What a real server adds (uvicorn's framing, the endpoints' answers) is tested against `bentoml serve`
in tests/service/test_http.py and tests/reliability/test_hostile_inputs.py.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Iterable
from typing import Any

import pytest
from starlette.requests import Request

from eluserve.core.errors import ClientError, ImageTooLarge, RequestTimeout
from eluserve.service.api.forms import RESERVE_BYTES, BodyLimits, is_raw_image, read_body

LIMITS = BodyLimits(
    max_body_bytes=1000,
    body_too_large=lambda size, limit: ImageTooLarge(f"{size} > {limit}"),
    read_timeout_s=5.0,
)


class Body:
    """An ASGI `receive` that hands out `chunks` (sleeping `pause` before each) and counts its calls."""

    def __init__(self, chunks: Iterable[bytes], pause: float = 0.0) -> None:
        self.chunks = list(chunks)
        self.pause = pause
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self.pause)
        if not self.chunks:
            return {"type": "http.disconnect"}
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}


def request(body: Body, content_length: int | None, content_type: str = "image/jpeg") -> Request:
    headers = [(b"content-type", content_type.encode())]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/classify", "headers": headers, "query_string": b""}
    return Request(scope, body)


def read(body: Body, content_length: int | None, limits: BodyLimits = LIMITS) -> bytearray:
    return asyncio.run(read_body(request(body, content_length), limits))


@pytest.mark.parametrize(
    "chunks",
    [[b"abc" * 100], [b"a", b"bc" * 50, b"", b"d" * 399], [b"x"] * 1000],
    ids=["one-chunk", "uneven-chunks", "a-thousand-bytes-one-by-one"],
)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_the_body_arrives_whole_in_one_bytearray(chunks: list[bytes], declared: bool) -> None:
    expected = b"".join(chunks)
    data = read(Body(chunks), len(expected) if declared else None)
    assert type(data) is bytearray and data == expected


def test_a_body_past_the_reserve_grows_to_its_declared_length() -> None:
    data = bytes(range(256)) * (3 * RESERVE_BYTES // 256 + 7)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    limits = BodyLimits(max_body_bytes=len(data))
    for declared in (len(data), None):
        assert read(Body(chunks), declared, limits) == data


def test_a_declared_length_is_not_allocated_before_the_bytes_arrive() -> None:
    """A client that declares the limit and sends a few bytes holds the reserve, not the limit."""
    limits = BodyLimits(max_body_bytes=64 * RESERVE_BYTES, read_timeout_s=0.2)
    tracemalloc.start()
    try:
        with pytest.raises(RequestTimeout):
            read(Body([b"x" * 10] + [b"x"] * 100, pause=0.05), limits.max_body_bytes, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * RESERVE_BYTES, peak


def test_an_empty_body_is_an_empty_buffer() -> None:
    """The decoder answers it (`empty_file`), as it does an empty multipart file."""
    assert read(Body([b""]), 0) == bytearray()
    assert read(Body([b""]), None) == bytearray()


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read() -> None:
    body = Body([b"x" * 1001])
    with pytest.raises(ImageTooLarge, match="1001 > 1000"):
        read(body, 1001)
    assert body.calls == 0


def test_a_chunked_body_is_cut_off_at_the_limit() -> None:
    body = Body([b"x" * 400] * 10)
    with pytest.raises(ImageTooLarge, match="1200 > 1000"):
        read(body, None)
    assert body.calls == 3  # nothing is read after the chunk that crossed the limit


def test_a_body_longer_than_it_declared_is_still_counted() -> None:
    """uvicorn frames bodies by Content-Length; the count does not rely on it."""
    with pytest.raises(ImageTooLarge):
        read(Body([b"x" * 600, b"x" * 600]), 10)


def test_a_body_ended_short_of_its_declared_length_is_what_arrived() -> None:
    assert read(Body([b"abc"]), 10) == b"abc"


def test_a_slow_body_times_out() -> None:
    limits = BodyLimits(max_body_bytes=1000, read_timeout_s=0.2)
    body = Body([b"x"] * 100, pause=0.05)
    with pytest.raises(RequestTimeout, match=r"within 0.2 s \(\d+ bytes received\)") as caught:
        read(body, 100, limits)
    assert caught.value.status == 408 and caught.value.code == "request_timeout"


def test_a_client_that_goes_away_is_a_disconnect() -> None:
    from starlette.requests import ClientDisconnect

    body = Body([b"x" * 10])
    body.chunks = []  # the first message is the disconnect
    with pytest.raises(ClientDisconnect):
        read(body, 10)


def test_the_default_error_for_a_body_over_the_limit_is_a_client_error() -> None:
    with pytest.raises(ClientError) as caught:
        read(Body([b"x" * 11]), None, BodyLimits(max_body_bytes=10))
    assert caught.value.code == "invalid_request"


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("image/jpeg", True),
        ("image/png", True),
        ("IMAGE/WebP", True),
        ("image/svg+xml", True),  # the decoder refuses it: unsupported_format, as in a form
        ("application/octet-stream", True),
        ("application/octet-stream; charset=binary", True),
        ("multipart/form-data; boundary=b", False),
        ("application/json", False),
        ("text/plain", False),
        ("imagex/jpeg", False),
        ("", False),
        (None, False),
    ],
)
def test_which_content_types_send_the_image_as_the_body(content_type: str | None, raw: bool) -> None:
    assert is_raw_image(content_type) is raw
