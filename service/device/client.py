"""The worker's side of shared device batching (`eluserve.service.device.host` has the design).

`DeviceLink` is one worker's link to its server's host: it starts the host when none answers, makes
the blocking `open`/`close` calls of model loads and unloads (from whatever thread loads), and keeps
one asyncio connection on the serving event loop that carries every concurrent inference request,
matched to its answer by request id. `SharedBatcher` gives one model version the `Batcher`'s surface
(`await batcher(crops)`, `admit`, `estimated_wait_s`, `seconds_per_image`, `close`), so `Frontend`,
`ModelsApi` and the v2 protocol run unchanged in either mode.

Failures: a host that cannot be reached or that dies fails the requests it held with the contract's
503 `device_unavailable` (JSON body, `Retry-After`), never a hang: a connection that ends fails every
request waiting on it at once, and each request waits at most the service's timeout. The next request
reconnects, starting a new host when none answers; the new host loads the version on that first
request.

Overload: the host's batcher is the one that knows the queue of every worker, so it decides, and a
refusal there comes back as the contract's 429 `overloaded`, counted by the host. The worker's own
`admit` (asked before a request is read and decoded) estimates the host's queue from the backlog and
per-image time the host sends with every answer, drained at that per-image rate since; it refuses
(and counts, in the worker) only what the host would refuse too, so each refusal is counted once,
where it is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eluserve.core.contract import ModelMetadata, read_model_info
from eluserve.core.errors import ServiceError
from eluserve.service import metrics
from eluserve.service.batching import overloaded
from eluserve.service.device.protocol import (
    Frame,
    PeerGone,
    read_frame,
    recv_frame,
    send_frame,
    socket_path,
    write_frame,
)

logger = logging.getLogger(__name__)

#: Seconds a started host may take to listen (interpreter start and imports: ~2 s on 2 busy cores).
HOST_START_TIMEOUT_S = 60.0
#: Seconds an `open` may take: the host loads, times (`auto`) and warms up a session.
OPEN_TIMEOUT_S = 600.0
#: Seconds a `close` may take (the host answers at once).
CLOSE_TIMEOUT_S = 10.0


class DeviceUnavailable(ServiceError):
    """The device host cannot be reached, or died with the request: 503, retry."""

    def __init__(self, message: str) -> None:
        super().__init__("device_unavailable", message, 503)


def _checked(frame: Frame) -> dict[str, Any]:
    """The answer's header, or its error raised in the contract's shape."""
    error = frame.header.get("error")
    if isinstance(error, dict):
        raise ServiceError(
            str(error.get("code", "internal_error")),
            str(error.get("message", "")),
            int(error.get("status", 500)),
        )
    return frame.header


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    loop: asyncio.AbstractEventLoop
    pending: dict[int, asyncio.Future[Frame]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class DeviceLink:
    """One worker's connection to its server's device host; see the module docstring."""

    def __init__(
        self, control_dir: Path, server_pid: int, worker: int, request_timeout_s: float, workers: int = 1
    ) -> None:
        self.control_dir = control_dir
        self.server_pid = server_pid
        self.worker = worker
        #: The server's worker count, which sizes the host's batches.
        self.workers = workers
        self.request_timeout_s = request_timeout_s
        self.socket = socket_path(control_dir)
        self._ids = itertools.count(1)
        self._spawn_lock = threading.Lock()
        self._connection: _Connection | None = None
        self._connect_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    # --- the host process ---------------------------------------------------------------------------

    def _reachable(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def ensure_host(self) -> None:
        """Return once a host listens, starting one if none does.

        Raises:
            DeviceUnavailable: none listened within `HOST_START_TIMEOUT_S`.
        """
        with self._spawn_lock:
            if self._reachable():
                return
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.control_dir / "prometheus")}
            command = [sys.executable, "-m", "eluserve.service.device.host"]
            command += ["--control-dir", str(self.control_dir), "--server-pid", str(self.server_pid)]
            command += ["--workers", str(self.workers)]
            logger.info("worker %d: starting the device host", os.getpid())
            # A session of its own: the host outlives this worker (it follows the server), and a signal
            # meant for this worker's group does not reach it.
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            # Reaped whenever it exits (at once, for a candidate that lost the lock to another).
            threading.Thread(target=process.wait, name="eluserve-device-host-reaper", daemon=True).start()
            deadline = time.monotonic() + HOST_START_TIMEOUT_S
            while not self._reachable():
                if time.monotonic() > deadline:
                    raise DeviceUnavailable(
                        f"the device host did not start within {HOST_START_TIMEOUT_S:.0f} s "
                        "(its reason is in the server log)"
                    )
                time.sleep(0.05)

    # --- blocking calls (loads and unloads, from any thread) ------------------------------------------

    def call(self, header: dict[str, Any], timeout_s: float, *, start_host: bool = True) -> dict[str, Any]:
        """One request on a connection of its own; the host is (re)started once if it does not answer
        (unless not `start_host`: a `close` has nothing to tell a host that is gone).

        Raises:
            DeviceUnavailable: no host, or it died before answering.
            ServiceError: the host's answer was an error.
        """
        try:
            return self._call_once(header, timeout_s)
        except OSError as exc:  # refused, missing socket, timeout, or the host died (PeerGone)
            if not start_host:
                raise DeviceUnavailable(f"the device host did not answer {header.get('op')}: {exc}") from exc
        self.ensure_host()
        try:
            return self._call_once(header, timeout_s)
        except OSError as exc:
            raise DeviceUnavailable(f"the device host did not answer {header.get('op')}: {exc}") from exc

    def _call_once(self, header: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(self.socket))
            send_frame(sock, Frame(next(self._ids), header))
            return _checked(recv_frame(sock))

    # --- inference (the serving event loop) ---------------------------------------------------------

    async def infer(self, header: dict[str, Any], images: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        """Send crops, await their probabilities (and the host's queue state).

        Raises:
            DeviceUnavailable: the host cannot be reached, died, or did not answer within the timeout.
            ServiceError: the host refused (429 `overloaded`) or failed.
        """
        connection = await self._connected()
        request_id = next(self._ids)
        answer = connection.loop.create_future()
        connection.pending[request_id] = answer
        try:
            write_frame(connection.writer, Frame(request_id, header).with_array(images))
            await connection.writer.drain()
            frame = await asyncio.wait_for(answer, self.request_timeout_s)
        except TimeoutError as exc:
            raise DeviceUnavailable(
                f"the device host did not answer within {self.request_timeout_s:.0f} s"
            ) from exc
        except ConnectionError as exc:
            raise DeviceUnavailable(f"the connection to the device host failed: {exc}") from exc
        finally:
            connection.pending.pop(request_id, None)
        return _checked(frame), frame.array_of()

    async def _connected(self) -> _Connection:
        loop = asyncio.get_running_loop()
        current = self._connection
        if current is not None and current.loop is loop and not current.writer.is_closing():
            return current
        if self._connect_lock is None or self._connect_lock[0] is not loop:
            self._connect_lock = (loop, asyncio.Lock())
        async with self._connect_lock[1]:
            current = self._connection
            if current is not None and current.loop is loop and not current.writer.is_closing():
                return current
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket))
            except OSError:
                await asyncio.to_thread(self.ensure_host)
                try:
                    reader, writer = await asyncio.open_unix_connection(str(self.socket))
                except OSError as exc:
                    raise DeviceUnavailable(f"cannot connect to the device host: {exc}") from exc
            connection = _Connection(reader, writer, loop)
            connection.task = loop.create_task(self._read_answers(connection))
            self._connection = connection
            return connection

    async def _read_answers(self, connection: _Connection) -> None:
        """Hand each answer to its request; when the connection ends, fail whatever still waits."""
        reason: Exception = PeerGone("the device host closed the connection")
        try:
            while True:
                frame = await read_frame(connection.reader)
                answer = connection.pending.get(frame.request_id)
                if answer is not None and not answer.done():
                    answer.set_result(frame)
        except ConnectionError as exc:  # PeerGone, FrameError, reset
            reason = exc
        finally:
            connection.writer.close()
            if self._connection is connection:
                self._connection = None
            if connection.pending:
                logger.warning("worker %d: device host connection lost: %s", os.getpid(), reason)
            for answer in connection.pending.values():
                if not answer.done():
                    answer.set_exception(DeviceUnavailable(f"the device host went away: {reason}"))


#: Tells a worker's `SharedBatcher`s apart on the host (a reload holds the old and the new at once).
_handles = itertools.count(1)


def model_key(model_file: Path) -> str:
    """A version's identity on the host: the file, as it is now (a file replaced in place is new)."""
    stat = model_file.stat()
    return f"{model_file.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"


class SharedBatcher:
    """`Batcher`'s surface for one model version whose batches run in the device host."""

    def __init__(self, link: DeviceLink, model_file: Path, *, max_latency_s: float) -> None:
        self.link = link
        self.max_latency_s = max_latency_s
        self._request = {
            "key": model_key(model_file),
            "path": str(model_file.resolve()),
            "pid": os.getpid(),
            "handle": next(_handles),
        }
        opened = link.call({"op": "open", **self._request}, OPEN_TIMEOUT_S)
        #: The contract metadata, with the engine, device and precision the host's session runs on.
        self.info: ModelMetadata = read_model_info(model_file).with_engine(
            opened["engine"], opened["device"], opened["precision"]
        )
        self._worker_images = metrics.WORKER_IMAGES.labels(worker=str(link.worker))
        self._backlog = 0
        self._backlog_at = time.monotonic()
        self._seconds_per_image: float | None = None

    @property
    def seconds_per_image(self) -> float | None:
        """The host's smoothed time per image, as of its last answer; None before the first."""
        return self._seconds_per_image

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        self.admit(len(images))
        header = {"op": "infer", **self._request, "worker": self.link.worker}
        state, probs = await self.link.infer(header, images)
        self._backlog = int(state.get("backlog") or 0)
        self._backlog_at = time.monotonic()
        seconds = state.get("seconds_per_image")
        self._seconds_per_image = float(seconds) if seconds is not None else self._seconds_per_image
        self._worker_images.inc(len(images))
        return probs

    def _backlog_now(self) -> float:
        """The host's queue as last reported, less what it has worked off since at its rate."""
        if not self._seconds_per_image:
            return 0.0
        done = (time.monotonic() - self._backlog_at) / self._seconds_per_image
        return max(0.0, self._backlog - done)

    def estimated_wait_s(self, images: int) -> float:
        if self._seconds_per_image is None:
            return 0.0
        return (self._backlog_now() + images) * self._seconds_per_image

    def admit(self, images: int) -> None:
        """Refuse what the host's batcher would refuse (see the module docstring).

        Raises:
            ServiceError: 429 `overloaded`.
        """
        wait = self.estimated_wait_s(images)
        if wait > self.max_latency_s and self._backlog_now() > 0:
            raise overloaded("the device", wait, self.max_latency_s)

    def close(self) -> None:
        """Tell the host this worker no longer serves the version (it releases it with its last user)."""
        with contextlib.suppress(ServiceError):
            self.link.call({"op": "close", **self._request}, CLOSE_TIMEOUT_S, start_host=False)
