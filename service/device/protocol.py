"""The frames between HTTP workers and the shared device host (`eluserve.service.device.host`).

One frame, both directions, over a Unix stream socket::

    !IIQ  request id, header length, body length     (16 bytes)
    header                                          (JSON object, UTF-8)
    body                                            (raw array bytes, C order; may be empty)

The header names the operation (`open`, `close`, `infer`) and its arguments, or answers with ``ok`` or
an ``error`` in the HTTP contract's shape (code, message, status). An array travels as its ``shape``
and ``dtype`` in the header and its bytes as the body: uint8 crops to the host, float32 probabilities
back. Why JSON and raw bytes rather than pickle: both peers are local, but a frame decoder that can
only build numbers, strings and arrays of two dtypes cannot be made to run code by whatever connects
to the socket; why request ids: one connection per worker carries all its concurrent requests, and
answers come back in the order batches finish, not the order requests were sent.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: In the server's control folder: the host's exclusive lock (one host per server) and its socket.
LOCK_FILE = "device-host.lock"
SOCKET_FILE = "device.sock"
#: The most a Unix socket path may hold (sun_path, less its terminating NUL).
MAX_SOCKET_PATH = 107
PREFIX = struct.Struct("!IIQ")
#: A header is a few names and numbers; more is a broken or foreign peer.
MAX_HEADER_BYTES = 64 * 1024
#: A body is one request's crops or probabilities (64 images of 512×512 are 50 MB).
MAX_BODY_BYTES = 1 << 31
DTYPES = {"uint8": np.dtype(np.uint8), "float32": np.dtype(np.float32)}


def socket_path(control_dir: Path) -> Path:
    """The host's socket in a server's control folder.

    Raises:
        ValueError: the path is longer than a Unix socket address holds.
    """
    path = control_dir / SOCKET_FILE
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(
            f"the control folder {control_dir} is too deep for a Unix socket path; use a shorter one"
        )
    return path


class FrameError(ConnectionError):
    """The peer sent something that is not a frame; the connection cannot be trusted any further."""


class PeerGone(ConnectionError):
    """The peer closed the connection (or died) before a whole frame arrived."""


@dataclass
class Frame:
    request_id: int
    header: dict[str, Any]
    body: bytes = b""
    #: Set by `with_array`; kept as the array so a writer sends its buffer without a copy.
    array: np.ndarray | None = field(default=None, repr=False)

    def with_array(self, array: np.ndarray) -> Frame:
        """This frame carrying `array` as its body, its shape and dtype in the header."""
        array = np.ascontiguousarray(array)
        if array.dtype.name not in DTYPES:
            raise ValueError(f"arrays of {array.dtype} do not travel; use one of {sorted(DTYPES)}")
        self.header = {**self.header, "shape": list(array.shape), "dtype": array.dtype.name}
        self.array = array
        self.body = b""
        return self

    def encode(self) -> list[bytes | memoryview]:
        """The frame as buffers to write one after another (the body is not copied)."""
        header = json.dumps(self.header, separators=(",", ":")).encode()
        body: bytes | memoryview = self.body
        if self.array is not None:  # as flat bytes (an empty array too), without a copy
            body = memoryview(self.array.reshape(-1).view(np.uint8))
        return [PREFIX.pack(self.request_id, len(header), len(body)), header, body]

    def array_of(self) -> np.ndarray:
        """The body as the array its header describes.

        Raises:
            FrameError: no or a foreign dtype, a bad shape, or a body of the wrong size.
        """
        dtype = DTYPES.get(self.header.get("dtype", ""))
        shape = self.header.get("shape")
        if (
            dtype is None
            or not isinstance(shape, list)
            or not all(isinstance(dim, int) and dim >= 0 for dim in shape)
        ):
            raise FrameError(f"frame {self.request_id}: no array of a known dtype and shape in {self.header}")
        if math.prod(shape) * dtype.itemsize != len(self.body):
            raise FrameError(
                f"frame {self.request_id}: {len(self.body)} body bytes for a {dtype.name} array {shape}"
            )
        return np.frombuffer(self.body, dtype=dtype).reshape(shape)


def _parse_prefix(prefix: bytes) -> tuple[int, int, int]:
    request_id, header_length, body_length = PREFIX.unpack(prefix)
    if header_length > MAX_HEADER_BYTES or body_length > MAX_BODY_BYTES:
        raise FrameError(f"frame of {header_length} header and {body_length} body bytes is over the limits")
    return request_id, header_length, body_length


def _parse_header(request_id: int, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError(f"frame {request_id}: the header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise FrameError(f"frame {request_id}: the header is not a JSON object")
    return header


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame.

    Raises:
        PeerGone: the stream ended, before or inside a frame.
        FrameError: what arrived is not a frame.
    """
    try:
        request_id, header_length, body_length = _parse_prefix(await reader.readexactly(PREFIX.size))
        raw = await reader.readexactly(header_length)
        body = await reader.readexactly(body_length)
    except asyncio.IncompleteReadError as exc:
        raise PeerGone(f"the peer closed the connection after {len(exc.partial)} bytes of a frame") from exc
    return Frame(request_id, _parse_header(request_id, raw), body)


def write_frame(writer: asyncio.StreamWriter, frame: Frame) -> None:
    """Queue one frame on `writer` (then `await writer.drain()`); never interleaves with another."""
    writer.writelines(frame.encode())


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            raise PeerGone(f"the peer closed the connection after {received} of {size} bytes")
        received += count
    return bytes(buffer)


def recv_frame(sock: socket.socket) -> Frame:
    """The next frame from a blocking socket (same errors as `read_frame`; `socket.timeout` too)."""
    request_id, header_length, body_length = _parse_prefix(_recv_exactly(sock, PREFIX.size))
    header = _parse_header(request_id, _recv_exactly(sock, header_length))
    return Frame(request_id, header, _recv_exactly(sock, body_length))


def send_frame(sock: socket.socket, frame: Frame) -> None:
    """Send one frame on a blocking socket."""
    for part in frame.encode():
        sock.sendall(part)


def error_header(code: str, message: str, status: int) -> dict[str, Any]:
    """The answer to a request that failed, in the HTTP contract's error shape."""
    return {"error": {"code": code, "message": message, "status": status}}
