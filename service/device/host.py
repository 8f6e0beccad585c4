"""Shared device batching: one process per server runs the sessions, batching all workers' crops.

With per-worker batching (``ELUSERVE_DEVICE_BATCHING=worker``) each HTTP worker holds its own session
and forms batches from its own requests only, so with N workers a GPU sees N small independent
streams (2 workers served 3 590 img/s through `/classify_batch` where the raw CUDA session
ran 290 000). In `shared` mode the workers only parse, decode and crop; they send the crops to this
process, which holds one session per model version and runs the same adaptive `Batcher` over the
requests of every worker, so a device batch holds the work of all of them.

Why a separate process, started by a worker, rather than a worker electing itself the owner: a worker
that owned the sessions would take every worker's inference and its own HTTP traffic on one event
loop, and BentoML restarts a worker that dies, which would take the device (and the other workers'
requests in flight) with it. Why started by a worker rather than by `bentoml serve`: the workers must
be able to restart it anyway (a host that died is restarted by the next request), so one way of
starting it serves both. Any worker that finds no host spawns a candidate
(`python -m eluserve.service.device.host`); the candidate that takes the exclusive `flock` on
``device-host.lock`` in the server's control folder is the host, others exit at once.

Lifetime: the host belongs to the server, not to the worker that started it. It exits when the
`bentoml serve` process (the workers' parent, passed as ``--server-pid``) is gone or the control folder
was removed (the server removes it as it exits), checked every `WATCH_S`; a worker restart leaves it
running. It releases a model version (session and batcher) once no live worker uses it: workers
`open` and `close` the versions they serve (an `infer` re-registers its sender with a restarted host),
and the users of dead workers are pruned every `WATCH_S`.

The frames are `eluserve.service.device.protocol`'s, over the Unix socket ``device.sock`` in the
control folder, created with mode 0600 whatever the folder's mode, so only the server's user can
connect. Batch size and inference time are observed here, once per device batch, and
`eluserve_device_batch_workers` counts how many workers' requests each batch held; the metrics files
go to the server's multiprocess folder like the workers'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eluserve.core.errors import HttpError
from eluserve.core.session import ModelSession
from eluserve.service import metrics
from eluserve.service.batching import Batcher
from eluserve.service.config import Settings, load_settings
from eluserve.service.device.protocol import (
    LOCK_FILE,
    Frame,
    FrameError,
    error_header,
    read_frame,
    socket_path,
    write_frame,
)
from eluserve.service.processes import pid_alive
from eluserve.service.repository import open_session, warm_up

logger = logging.getLogger(__name__)

#: Seconds between the host's checks that its server still runs and that its users are alive.
WATCH_S = 0.5


@dataclass(eq=False)
class HostedModel:
    """One model version on the device: its session, the shared batcher, and who uses it.

    A user is a worker's pid and the handle of one `SharedBatcher` in it: a worker that reloads a
    version opens it again before it closes the old handle, so the version stays loaded across.
    """

    session: ModelSession
    batcher: Batcher
    users: set[tuple[int, int]] = field(default_factory=set)


class DeviceHost:
    """The host's state: the loaded versions by key, and the answers to the workers' frames."""

    def __init__(self, settings: Settings, control_dir: Path, server_pid: int, workers: int) -> None:
        self.settings = settings
        self.control_dir = control_dir
        self.server_pid = server_pid
        #: Device batches merge up to a full batch from every worker (`Settings.device_batch_size`).
        self.max_batch_size = settings.device_batch_size(workers)
        self._models: dict[str, HostedModel] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    async def run(self) -> None:
        """Serve until the server is gone; the socket is removed on the way out."""
        path = socket_path(self.control_dir)
        path.unlink(missing_ok=True)  # a dead host's; we hold the lock, so no live host owns it
        server = await asyncio.start_unix_server(self._connection, sock=_private_socket(path))
        logger.info("device host %d serves %s for server %d", os.getpid(), path, self.server_pid)
        try:
            while pid_alive(self.server_pid) and self.control_dir.is_dir():
                self._prune()
                await asyncio.sleep(WATCH_S)
        finally:
            server.close()
            path.unlink(missing_ok=True)
            for model in self._models.values():
                model.batcher.close()
        logger.info("device host %d: server %d is gone, exiting", os.getpid(), self.server_pid)

    # --- models -----------------------------------------------------------------------------------

    async def _use(self, key: str, path: str, user: tuple[int, int]) -> HostedModel:
        """The version `key` names, loaded and warmed up (once, whoever asks first), `user` a user."""
        async with self._loading.setdefault(key, asyncio.Lock()):
            model = self._models.get(key)
            if model is None:
                model = await asyncio.to_thread(self._load, Path(path))
                self._models[key] = model
            model.users.add(user)
            return model

    def _load(self, path: Path) -> HostedModel:
        # One session for the device: with workers=1 its threads are every core (or the setting).
        session = open_session(path, self.settings, workers=1, server_pid=self.server_pid)
        warm_up(session, self.settings, largest=self.max_batch_size)
        info = session.info
        metrics.init_metrics(info)
        labels = {"model": info.name, "version": info.version}
        inference = metrics.INFERENCE_DURATION.labels(**labels, provider=session.provider)
        batch_size = metrics.BATCH_SIZE.labels(**labels)
        merged = metrics.DEVICE_BATCH_WORKERS.labels(**labels)

        def observe(images: int, seconds: float) -> None:
            batch_size.observe(images)
            inference.observe(seconds)

        batcher = Batcher(
            session.predict,
            max_batch_size=self.max_batch_size,
            max_latency_s=self.settings.max_latency_ms / 1000,
            observe=observe,
            observe_sources=merged.observe,
        )
        return HostedModel(session, batcher)

    def _release(self, key: str, user: tuple[int, int]) -> None:
        model = self._models.get(key)
        if model is None:
            return
        model.users.discard(user)
        if not model.users:
            del self._models[key]
            model.batcher.close()
            logger.info("device host: released %s (no worker uses it)", model.session.info.tag)

    def _prune(self) -> None:
        for key, model in list(self._models.items()):
            for user in [user for user in model.users if not pid_alive(user[0])]:
                self._release(key, user)

    # --- frames -----------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer a worker's frames, each in a task of its own (answers go back as they are ready)."""
        drain = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                frame = await read_frame(reader)
                task = asyncio.create_task(self._answer(frame, writer, drain))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except FrameError as exc:
            logger.warning("device host: closing a connection that sent a bad frame: %s", exc)
        except ConnectionError:
            pass  # the worker went away; its requests in flight finish unanswered
        finally:
            writer.close()

    async def _answer(self, frame: Frame, writer: asyncio.StreamWriter, drain: asyncio.Lock) -> None:
        try:
            header, array = await self._handle(frame)
            reply = Frame(frame.request_id, {"ok": True, **header})
            if array is not None:
                reply.with_array(array)
        except HttpError as exc:
            reply = Frame(frame.request_id, error_header(exc.code, exc.message, exc.status))
        except FrameError as exc:
            reply = Frame(frame.request_id, error_header("protocol_error", str(exc), 400))
        except Exception as exc:
            logger.exception("device host: %s failed", frame.header.get("op"))
            reply = Frame(frame.request_id, error_header("internal_error", f"device host: {exc}", 500))
        if writer.is_closing():
            return
        write_frame(writer, reply)
        with contextlib.suppress(ConnectionError):
            async with drain:
                await writer.drain()

    async def _handle(self, frame: Frame) -> tuple[dict[str, Any], np.ndarray | None]:
        header = frame.header
        op = header.get("op")
        key, path, pid, handle = (header.get(name) for name in ("key", "path", "pid", "handle"))
        if not (
            isinstance(key, str)
            and isinstance(path, str)
            and isinstance(pid, int)
            and isinstance(handle, int)
        ):
            raise FrameError(f"frame {frame.request_id}: {op!r} needs key, path, pid and handle: {header}")
        user = (pid, handle)
        if op == "open":
            info = (await self._use(key, path, user)).session.info
            return {"engine": info.engine, "device": info.provider, "precision": info.precision}, None
        if op == "close":
            self._release(key, user)
            return {}, None
        if op == "infer":
            model = await self._use(key, path, user)
            images = frame.array_of()
            if images.dtype != np.uint8 or images.ndim != 4:
                raise FrameError(f"frame {frame.request_id}: crops must be uint8 [N, H, W, 3]")
            probs = await model.batcher(images, source=header.get("worker"))
            state = {
                "backlog": model.batcher.backlog_images,
                "seconds_per_image": model.batcher.seconds_per_image,
            }
            return state, probs
        raise FrameError(f"frame {frame.request_id}: unknown operation {op!r}")


def _private_socket(path: Path) -> socket.socket:
    """A listening-ready Unix socket at `path` that only this user can connect to (mode 0600 from the
    bind on, not chmod-ed afterwards): the host loads the model files its peers name, so the socket
    must stay private even in a control folder an operator made with broader permissions."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(previous)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The shared device host of one `bentoml serve`.")
    parser.add_argument("--control-dir", type=Path, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True, help="the server's HTTP workers")
    args = parser.parse_args(argv)
    lock = (args.control_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another candidate is the host
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s device-host: %(message)s")
    asyncio.run(DeviceHost(load_settings(), args.control_dir, args.server_pid, args.workers).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
