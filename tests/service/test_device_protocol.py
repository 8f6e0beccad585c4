"""The device host's frames and the worker's client over real Unix sockets (no process is started).

The peer in the client tests is a real asyncio Unix server speaking the frame protocol: it answers
requests in reverse order, with errors, or dies with requests pending, as a host would.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from eluserve.core.errors import ServiceError
from eluserve.service.device.client import DeviceLink, DeviceUnavailable
from eluserve.service.device.protocol import (
    MAX_HEADER_BYTES,
    PREFIX,
    Frame,
    FrameError,
    PeerGone,
    error_header,
    read_frame,
    recv_frame,
    send_frame,
    socket_path,
    write_frame,
)
from tests.deadlines import REQUEST_S


def test_a_frame_with_an_array_survives_a_socket_both_ways() -> None:
    crops = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    left, right = socket.socketpair()
    with left, right:
        send_frame(left, Frame(7, {"op": "infer", "key": "k"}).with_array(crops))
        frame = recv_frame(right)
    assert frame.request_id == 7 and frame.header["op"] == "infer" and frame.header["key"] == "k"
    assert frame.header["shape"] == [2, 4, 4, 3] and frame.header["dtype"] == "uint8"
    np.testing.assert_array_equal(frame.array_of(), crops)

    async def over_asyncio() -> Frame:
        reader = asyncio.StreamReader()
        probs = np.linspace(0, 1, 20, dtype=np.float32).reshape(2, 10)
        reader.feed_data(b"".join(bytes(part) for part in Frame(9, {"ok": True}).with_array(probs).encode()))
        return await read_frame(reader)

    frame = asyncio.run(over_asyncio())
    assert frame.request_id == 9
    np.testing.assert_array_equal(frame.array_of(), np.linspace(0, 1, 20, dtype=np.float32).reshape(2, 10))


def test_empty_and_strided_arrays_travel_as_their_values() -> None:
    empty = Frame(1, {}).with_array(np.zeros((0, 32, 32, 3), dtype=np.uint8))
    assert Frame(1, empty.header, bytes(empty.encode()[2])).array_of().shape == (0, 32, 32, 3)
    strided = np.arange(20, dtype=np.float32).reshape(2, 10)[:, ::2]
    frame = Frame(2, {}).with_array(strided)
    np.testing.assert_array_equal(Frame(2, frame.header, bytes(frame.encode()[2])).array_of(), strided)


def test_a_peer_that_closes_inside_a_frame_is_gone_not_a_short_frame() -> None:
    whole = b"".join(bytes(part) for part in Frame(1, {"op": "x"}, b"0123456789").encode())
    for cut in (0, 5, PREFIX.size + 3, len(whole) - 1):
        left, right = socket.socketpair()
        with left, right:
            left.sendall(whole[:cut])
            left.close()
            with pytest.raises(PeerGone):
                recv_frame(right)

        async def cut_short(data: bytes = whole[:cut]) -> None:
            reader = asyncio.StreamReader()
            reader.feed_data(data)
            reader.feed_eof()
            await read_frame(reader)

        with pytest.raises(PeerGone):
            asyncio.run(cut_short())


@pytest.mark.parametrize(
    "data",
    [
        PREFIX.pack(1, MAX_HEADER_BYTES + 1, 0),  # a header over the limit: not a frame
        PREFIX.pack(1, 4, 0) + b"\xff\xfe{]",  # not JSON
        PREFIX.pack(1, 2, 0) + b"[]",  # JSON, not an object
    ],
)
def test_what_is_not_a_frame_is_refused(data: bytes) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(data)
        with pytest.raises(FrameError):
            recv_frame(right)


@pytest.mark.parametrize(
    "header",
    [
        {"shape": [2, 2], "dtype": "uint8"},  # 4 bytes declared, 5 sent
        {"shape": [5], "dtype": "float64"},  # a dtype that does not travel
        {"shape": [-5], "dtype": "uint8"},
        {"dtype": "uint8"},
    ],
)
def test_a_body_that_does_not_match_its_array_header_is_refused(header: dict[str, object]) -> None:
    with pytest.raises(FrameError):
        Frame(1, header, b"12345").array_of()


def test_the_socket_path_must_fit_a_unix_address(tmp_path: Path) -> None:
    assert socket_path(tmp_path).name == "device.sock"
    with pytest.raises(ValueError, match="too deep"):
        socket_path(tmp_path / ("x" * 120))


Handler = Callable[[list[Frame], asyncio.StreamWriter], Awaitable[None]]


class Peer:
    """A real Unix-socket server in a thread that answers frames with `handler`, `gather` at a time
    (on later connections, one at a time)."""

    def __init__(self, path: Path, handler: Handler, gather: int = 1) -> None:
        self.path = path
        self.handler = handler
        self.gather = gather
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Peer:
        self._thread.start()
        assert self._ready.wait(REQUEST_S)
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_unix_server(self._serve, path=str(self.path)))
        self._ready.set()
        self.loop.run_forever()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        gather = self.gather if self.connections == 1 else 1
        try:
            while True:
                frames = [await read_frame(reader) for _ in range(gather)]
                await self.handler(frames, writer)
        except ConnectionError:
            writer.close()


async def echo_reversed(frames: list[Frame], writer: asyncio.StreamWriter) -> None:
    """Answer each request with its crops' mean per image, the last request first."""
    for frame in reversed(frames):
        means = frame.array_of().reshape(len(frame.array_of()), -1).mean(axis=1, dtype=np.float32)
        write_frame(writer, Frame(frame.request_id, {"ok": True, "backlog": 0}).with_array(means[:, None]))
    await writer.drain()


@pytest.fixture
def link(tmp_path: Path) -> Iterator[DeviceLink]:
    yield DeviceLink(tmp_path, server_pid=0, worker=1, request_timeout_s=REQUEST_S)


def crops(value: int, count: int = 2) -> np.ndarray:
    return np.full((count, 4, 4, 3), value, dtype=np.uint8)


def test_concurrent_requests_on_one_connection_get_their_own_answers(link: DeviceLink) -> None:
    async def scenario() -> list[np.ndarray]:
        return await asyncio.gather(
            *(link.infer({"op": "infer"}, crops(value)) for value in (10, 20, 30, 40))
        )

    with Peer(link.socket, echo_reversed, gather=4) as peer:
        answers = asyncio.run(scenario())
    assert [float(probs[0, 0]) for _, probs in answers] == [10.0, 20.0, 30.0, 40.0]
    assert peer.connections == 1


def test_an_error_answer_is_raised_in_the_contracts_shape(link: DeviceLink) -> None:
    async def refuse(frames: list[Frame], writer: asyncio.StreamWriter) -> None:
        write_frame(writer, Frame(frames[0].request_id, error_header("overloaded", "queue too long", 429)))
        await writer.drain()

    with Peer(link.socket, refuse), pytest.raises(ServiceError) as raised:
        asyncio.run(link.infer({"op": "infer"}, crops(1)))
    assert (raised.value.code, raised.value.status) == ("overloaded", 429)

    with Peer(link.socket, refuse), pytest.raises(ServiceError) as raised:
        link.call({"op": "open"}, timeout_s=REQUEST_S)
    assert raised.value.status == 429


def test_a_peer_that_dies_with_requests_pending_fails_them_all_with_503_then_reconnects(
    link: DeviceLink,
) -> None:
    answered = 0

    async def die_on_the_first(frames: list[Frame], writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        if answered == 0:
            answered += 1
            writer.transport.abort()  # what a killed host looks like from here: the connection ends
            raise ConnectionResetError
        await echo_reversed(frames, writer)

    async def scenario() -> tuple[list[object], np.ndarray]:
        first = await asyncio.gather(
            *(link.infer({"op": "infer"}, crops(value)) for value in (1, 2, 3)), return_exceptions=True
        )
        _, again = await link.infer({"op": "infer"}, crops(9))
        return first, again

    with Peer(link.socket, die_on_the_first, gather=3) as peer:
        first, again = asyncio.run(scenario())
    assert all(isinstance(error, DeviceUnavailable) and error.status == 503 for error in first), first
    # At once, when the connection ended: not at the request timeout (whose message says "within").
    assert not any("within" in str(error) for error in first), first
    assert float(again[0, 0]) == 9.0
    assert peer.connections == 2


def test_a_silent_peer_is_a_503_after_the_timeout_not_a_hang(tmp_path: Path) -> None:
    link = DeviceLink(tmp_path, server_pid=0, worker=1, request_timeout_s=0.5)

    async def ignore(frames: list[Frame], writer: asyncio.StreamWriter) -> None:
        return None

    with Peer(link.socket, ignore), pytest.raises(DeviceUnavailable, match="within"):
        asyncio.run(link.infer({"op": "infer"}, crops(1)))


def test_a_blocking_call_to_a_peer_that_closes_before_answering_is_a_503(link: DeviceLink) -> None:
    async def hang_up(frames: list[Frame], writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()
        raise ConnectionResetError

    # The link restarts a host that does not answer; a listening socket whose owner hangs up is one that
    # answers, so the second attempt meets the same peer and the call fails with 503.
    with Peer(link.socket, hang_up), pytest.raises(DeviceUnavailable):
        link.call({"op": "open"}, timeout_s=REQUEST_S)


def test_a_close_for_a_host_that_is_gone_starts_none(link: DeviceLink) -> None:
    """No socket at all: a `close` fails with 503 at once (starting a host would be a process start,
    which tests/process_guard.py refuses in this unmarked test)."""
    with pytest.raises(DeviceUnavailable):
        link.call({"op": "close"}, timeout_s=REQUEST_S, start_host=False)
