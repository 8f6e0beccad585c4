"""HTTP over a bare socket, for requests no client library will send: cut short, trickled, endless.

httpx always finishes (or aborts) a body by its own rules; these helpers let a test decide byte by
byte what the server sees, and still read the JSON answer it sends back.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawAnswer:
    """What came back: status None when the server closed the connection without answering."""

    status: int | None
    body: dict[str, Any] | None
    #: Request bytes the client had written when the answer (or the close) arrived.
    bytes_sent: int
    seconds: float
    #: Whether the server closed the connection after its answer.
    closed: bool = False


def connect(url: str, timeout: float) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout)


def request_head(path: str, content_type: str, content_length: int | None) -> bytes:
    """Request line and headers of a POST; no Content-Length header when `content_length` is None."""
    lines = [f"POST {path} HTTP/1.1", "Host: reliability-test", f"Content-Type: {content_type}"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _parse(received: bytes) -> tuple[int | None, dict[str, Any] | None]:
    if b"\r\n\r\n" not in received:
        return None, None
    head, body = received.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def _read_answer(sock: socket.socket, deadline: float) -> bytes:
    """Read until the server closes or a complete Content-Length body has arrived."""
    received = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
        if b"\r\n\r\n" in received:
            head, body = received.split(b"\r\n\r\n", 1)
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(body) >= int(value):
                    return received
    return received


def _closed(sock: socket.socket, wait: float = 1.0) -> bool:
    """Whether the server closes the connection within `wait` seconds (reads nothing more)."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def read_answer(sock: socket.socket, timeout: float) -> RawAnswer:
    """The answer to a request already written on `sock` (or the server closing it)."""
    started = time.monotonic()
    sock.settimeout(0.5)
    status, body = _parse(_read_answer(sock, started + timeout))
    seconds = time.monotonic() - started
    return RawAnswer(status, body, 0, seconds, closed=status is None or _closed(sock))


def send(
    url: str,
    head: bytes,
    chunks: Iterable[bytes],
    *,
    pause: float = 0.0,
    half_close: bool = False,
    timeout: float = 30.0,
) -> RawAnswer:
    """Write `head`, then each chunk (sleeping `pause` between), stopping early if an answer arrives.

    With `half_close`, the write side is shut after the last chunk, as a client that gave up mid-body.
    """
    started = time.monotonic()
    deadline = started + timeout
    sent = 0
    with connect(url, timeout) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0] or time.monotonic() > deadline:
                break  # the server answered (or closed) before the body was complete
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
            time.sleep(pause)
        if half_close:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.5)
        status, body = _parse(_read_answer(sock, deadline))
    return RawAnswer(status, body, sent, time.monotonic() - started)
