"""Even load over the HTTP workers: each worker accepts a connection only while it holds the fewest.

`bentoml serve` binds one listening socket in its circus arbiter and passes its file descriptor to every
worker, where uvicorn serves it with asyncio's `create_server`. asyncio's accept callback then takes up
to `backlog` (2 048) pending connections per wake-up, so whichever worker wakes first takes a whole burst
of new connections, and keep-alive clients stay pinned to it: with wrk -c4 and -c16 every connection
landed on one worker and `/classify_batch` ran at exactly one worker's speed (SERVING-NOTES.md).

Alternatives, measured (docs/bench/serving-engine-v2.md):

- Per-worker `SO_REUSEPORT` listeners (BentoML PR #5557) let the kernel hash each connection's 4-tuple
  to a listener. Hashing is random, not even: over 500 trials of 4 connections on 2 listeners, 35 %
  split 2/2, 49 % split 3/1 and 16 % put all 4 on one listener; only from ~64 connections is the
  split close to even. A client with a small keep-alive pool, the common case, stays unbalanced.
- One batch for all workers' crops (shared memory) or one inference process fed by I/O workers only
  move inference; the HTTP, multipart, decoding and JSON work of a pinned connection (about 0.9 ms per
  request, more than a single image's inference) still runs on the one worker that accepted it.

Least-connections accepting balances the unit the workers own, the connection, whatever the clients'
pattern: each worker publishes its count of open connections in a small shared table (`ConnectionTable`,
one mmap-ed file per listening socket) and `BalancedEventLoop` accepts one connection per wake-up, and
only while no live worker holds fewer. Equal counts race for the socket as before (the loser's accept
finds nothing). A worker that holds more leaves the socket to the others for `RETRY_S` and looks again;
a connection that waited `MAX_DEFER_S` (the others are stuck or gone) is accepted anyway, so a hung or
dead worker never blocks new connections. Short-lived connections (one per request) balance the same
way, by the connections open at each accept.

`install` makes uvicorn's `auto` and `asyncio` loop choices build this loop; BentoML's worker builds its
uvicorn config after importing the service, so installing at import is in time. The loop is asyncio's
selector loop (uvloop is not installed with BentoML 1.4 and would bypass it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import select
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn.config

logger = logging.getLogger(__name__)

#: Worker slots in a table; BentoML numbers workers from 1, slot 0 is unused.
SLOTS = 64
#: int64 pid, int64 open connections.
_FIELDS = 2
#: How long a worker holding more connections than another leaves the socket alone before looking again.
RETRY_S = 0.002
#: How long a pending connection may wait for a less loaded worker before any worker accepts it.
MAX_DEFER_S = 0.05
#: Where uvicorn looks the loop factory up (`import_from_string`).
LOOP_FACTORY_PATH = f"{__name__}:balanced_loop_factory"
TABLE_PREFIX = "eluserve-connections-"


class ConnectionTable:
    """Open connections per worker of one listening socket, shared through an mmap-ed file.

    Each worker writes only its own slot (pid, count); aligned 8-byte stores are not torn, so readers
    need no lock. A slot whose pid no longer runs is ignored, and a restarted worker takes its slot over.
    """

    def __init__(self, path: Path, worker: int) -> None:
        if not 1 <= worker < SLOTS:
            raise ValueError(f"worker index {worker} is outside 1..{SLOTS - 1}")
        self.path = path
        self.worker = worker
        size = SLOTS * _FIELDS * 8
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._mmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._slots = memoryview(self._mmap).cast("q")
        self._slots[worker * _FIELDS + 1] = 0
        self._slots[worker * _FIELDS] = os.getpid()

    @classmethod
    def for_socket(cls, sock: socket.socket, worker: int, folder: Path | None = None) -> ConnectionTable:
        """The table of every worker that shares `sock` (named by the socket's inode and the arbiter).

        Files of arbiters that no longer run are removed on the way, so stopped servers leave nothing.
        """
        folder = folder or Path(tempfile.gettempdir())
        arbiter = os.getppid()
        for stale in folder.glob(f"{TABLE_PREFIX}*"):
            owner = stale.name[len(TABLE_PREFIX) :].split("-")[0]
            if owner.isdigit() and not _alive(int(owner)):
                with contextlib.suppress(OSError):
                    stale.unlink()
        return cls(folder / f"{TABLE_PREFIX}{arbiter}-{os.fstat(sock.fileno()).st_ino}", worker)

    @property
    def open_connections(self) -> int:
        return self._slots[self.worker * _FIELDS + 1]

    def opened(self) -> None:
        self._slots[self.worker * _FIELDS + 1] += 1

    def closed(self) -> None:
        self._slots[self.worker * _FIELDS + 1] -= 1

    def counts(self) -> dict[int, int]:
        """Open connections by worker index, live workers only."""
        slots = self._slots.tolist()
        return {
            index: slots[index * _FIELDS + 1]
            for index in range(1, SLOTS)
            if slots[index * _FIELDS] and (index == self.worker or _alive(slots[index * _FIELDS]))
        }

    def least_loaded(self) -> bool:
        """Whether no live worker holds fewer open connections than this one."""
        slots = self._slots.tolist()
        mine = slots[self.worker * _FIELDS + 1]
        for index in range(1, SLOTS):
            pid = slots[index * _FIELDS]
            if pid and index != self.worker and slots[index * _FIELDS + 1] < mine and _alive(pid):
                return False
        return True

    def close(self) -> None:
        self._slots[self.worker * _FIELDS] = 0
        self._slots.release()
        self._mmap.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: The table of this worker, once its loop accepted on a listening socket; the HTTP protocol reports
#: connections opened and closed to it (`connection_opened`, `connection_closed`).
_table: ConnectionTable | None = None


def connection_opened() -> None:
    if _table is not None:
        _table.opened()


def connection_closed() -> None:
    if _table is not None:
        _table.closed()


def current_table() -> ConnectionTable | None:
    return _table


def worker_index() -> int | None:
    """BentoML's index of this worker (1..N), set before the service is imported; None outside a server."""
    try:
        from bentoml._internal.context import server_context
    except ImportError:
        return None
    index = server_context.worker_index
    return index if isinstance(index, int) and 1 <= index < SLOTS else None


class BalancedEventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop that accepts one connection per wake-up, and only as the least loaded.

    Overrides `_accept_connection`, the callback that asyncio's `create_server` registers for a
    listening socket (CPython 3.11-3.13 share its signature); the accepting itself stays asyncio's.
    """

    _deferred_since: float | None = None

    def _accept_connection(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        *timeouts: Any,
    ) -> None:
        table = self._table_for(sock)
        if table is not None and not table.least_loaded():
            waited = 0.0 if self._deferred_since is None else self.time() - self._deferred_since
            if waited < MAX_DEFER_S:
                if self._deferred_since is None:
                    self._deferred_since = self.time()
                self._remove_reader(sock.fileno())
                self.call_later(
                    RETRY_S, self._look_again, protocol_factory, sock, sslcontext, server, *timeouts
                )
                return
        self._deferred_since = None
        super()._accept_connection(protocol_factory, sock, sslcontext, server, 1, *timeouts)  # type: ignore[misc]

    def _look_again(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        sslcontext: Any,
        server: Any,
        *timeouts: Any,
    ) -> None:
        if sock.fileno() == -1 or (server is not None and not server.is_serving()):
            return  # the server stopped meanwhile
        if not _readable(sock):
            self._deferred_since = None  # another worker took what was pending
        self._add_reader(  # type: ignore[attr-defined]
            sock.fileno(), self._accept_connection, protocol_factory, sock, sslcontext, server, 1, *timeouts
        )

    def _table_for(self, sock: socket.socket) -> ConnectionTable | None:
        global _table
        if _table is None and sock.family in (socket.AF_INET, socket.AF_INET6):
            worker = worker_index()
            if worker is None:
                return None
            try:
                _table = ConnectionTable.for_socket(sock, worker)
            except OSError as exc:
                logger.warning("no shared connection table (%s): accepting without balancing", exc)
                return None
            logger.debug("worker %d balances connections through %s", worker, _table.path)
        return _table


def _readable(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def balanced_loop_factory(use_subprocess: bool = False) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvicorn's loop factory hook (`uvicorn.config.LOOP_FACTORIES`)."""
    return BalancedEventLoop


def install() -> None:
    """Make uvicorn's `auto` and `asyncio` loop choices `BalancedEventLoop`."""
    for name in ("auto", "asyncio"):
        uvicorn.config.LOOP_FACTORIES[name] = LOOP_FACTORY_PATH
