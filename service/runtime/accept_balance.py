"""Even load over the HTTP workers: each worker accepts a connection only while it holds the fewest.

`bentoml serve` binds one listening socket in its circus arbiter and passes its file descriptor to every
worker, where uvicorn serves it with asyncio's `create_server`. asyncio's accept callback then takes up
to `backlog` (2 048) pending connections per wake-up, so whichever worker wakes first takes a whole burst
of new connections, and keep-alive clients stay pinned to it: with wrk -c4 and -c16 every connection
landed on one worker and `/classify_batch` ran at exactly one worker's speed.

Alternatives, measured (docs/log/serving-rounds.md):

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
only while no candidate worker holds fewer. Equal counts race for the socket as before (the loser's
accept finds nothing). A worker that holds more leaves the socket to the others for `RETRY_S` and looks
again. A candidate is a worker that serves (its slot is cleared when it stops listening, so a worker
draining its connections for a graceful shutdown takes no new ones and blocks nobody), runs (its pid
exists) and whose event loop beat within `STALE_S` (a heartbeat every `HEARTBEAT_S`): a worker that is
stuck, or too busy to run its loop, stops being deferred to within `STALE_S`, so new connections never
wait for it longer than that. Short-lived connections (one per request) balance the same way, by the
connections open at each accept.

`install` makes uvicorn's `auto` and `asyncio` loop choices build this loop; BentoML's worker builds its
uvicorn config after importing the service, so installing at import is in time. The loop is asyncio's
selector loop (uvloop is not installed with BentoML 1.4 and would bypass it).

The uneven spread is BentoML's, written up for upstream in docs/upstream.md ("Workers sharing one
listening socket take connections in bursts"); this module goes when BentoML's workers balance
connections themselves. `TARGETS` lists what it extends: tests/service/runtime/test_compat.py fails
when any of it changes in the installed Python, uvicorn or BentoML, while `install` on an unknown
Python only checks the overridden methods' parameters, and warns.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import mmap
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn.config

from eluserve.service.processes import pid_alive

logger = logging.getLogger(__name__)

#: Worker slots in a table; BentoML numbers workers from 1, slot 0 is unused.
SLOTS = 64
#: int64 each: pid (0: not serving), open connections, last heartbeat (CLOCK_MONOTONIC ns, system-wide).
_FIELDS = 3
_PID, _OPEN, _BEAT = range(_FIELDS)
#: How long a worker holding more connections than another leaves the socket alone before looking again.
RETRY_S = 0.002
#: How often a serving worker's event loop writes its heartbeat (40 wake-ups a second: no measurable CPU).
HEARTBEAT_S = 0.025
#: A worker whose loop has not beaten for this long is not deferred to: at most this wait for a
#: connection that a stuck or overwhelmed worker would have been given.
STALE_S = 0.1
#: Where uvicorn looks the loop factory up (`import_from_string`).
LOOP_FACTORY_PATH = f"{__name__}:balanced_loop_factory"
TABLE_PREFIX = "eluserve-connections-"
#: asyncio's selector loop methods `BalancedEventLoop` overrides or calls, with their parameters
#: (CPython 3.11 and 3.12), as `install` checks them.
_OVERRIDDEN = {
    "_start_serving": ("self", "protocol_factory", "sock", "sslcontext", "server", "backlog"),
    "_accept_connection": ("self", "protocol_factory", "sock", "sslcontext", "server", "backlog"),
    "_stop_serving": ("self", "sock"),
    "_add_reader": ("self", "fd", "callback", "args"),
    "_remove_reader": ("self", "fd"),
}
#: Those methods, where uvicorn looks loop factories up and calls them, how BentoML's worker serves
#: the shared socket with uvicorn, and BentoML's worker index.
TARGETS = (
    *(f"asyncio.selector_events:BaseSelectorEventLoop.{name}" for name in _OVERRIDDEN),
    "uvicorn.config:LOOP_FACTORIES",
    "uvicorn.config:Config.get_loop_factory",
    "_bentoml_impl.worker.service:main",
    "bentoml._internal.context:_ComponentContext",
)


class ConnectionTable:
    """Open connections per worker of one listening socket, shared through an mmap-ed file.

    Each worker writes only its own slot (pid, open connections, heartbeat); aligned 8-byte stores are
    not torn, so readers need no lock. A restarted worker takes its slot over.
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
        self._mine = worker * _FIELDS
        self._slots[self._mine + _OPEN] = 0
        self.beat()
        self._slots[self._mine + _PID] = os.getpid()

    @classmethod
    def for_socket(cls, sock: socket.socket, worker: int, folder: Path | None = None) -> ConnectionTable:
        """The table of every worker that shares `sock` (named by the socket's inode and the arbiter).

        Files of arbiters that no longer run are removed on the way, so stopped servers leave nothing.
        """
        folder = folder or Path(tempfile.gettempdir())
        arbiter = os.getppid()
        for stale in folder.glob(f"{TABLE_PREFIX}*"):
            owner = stale.name[len(TABLE_PREFIX) :].split("-")[0]
            if owner.isdigit() and not pid_alive(int(owner)):
                with contextlib.suppress(OSError):
                    stale.unlink()
        return cls(folder / f"{TABLE_PREFIX}{arbiter}-{os.fstat(sock.fileno()).st_ino}", worker)

    @property
    def open_connections(self) -> int:
        return self._slots[self._mine + _OPEN]

    def opened(self) -> None:
        self._slots[self._mine + _OPEN] += 1

    def closed(self) -> None:
        self._slots[self._mine + _OPEN] -= 1

    def beat(self) -> None:
        self._slots[self._mine + _BEAT] = time.monotonic_ns()

    def retire(self) -> None:
        """Stop being a candidate (the worker stopped listening); connections are still counted."""
        self._slots[self._mine + _PID] = 0

    def counts(self) -> dict[int, int]:
        """Open connections by worker index, candidates only (this worker always)."""
        slots = self._slots.tolist()
        now = time.monotonic_ns()
        return {
            index: slots[index * _FIELDS + _OPEN]
            for index in range(1, SLOTS)
            if index == self.worker or _candidate(slots, index, now)
        }

    def least_loaded(self) -> bool:
        """Whether no candidate worker holds fewer open connections than this one."""
        slots = self._slots.tolist()
        opens = slots[_OPEN::_FIELDS]
        mine = opens[self.worker]
        if mine == 0:
            return True
        now = time.monotonic_ns()
        for index, count in enumerate(opens):
            if count < mine and index and index != self.worker and _candidate(slots, index, now):
                return False
        return True


def _candidate(slots: list[int], index: int, now_ns: int) -> bool:
    """A worker that serves, beat within `STALE_S` and runs (checked last: a system call)."""
    pid = slots[index * _FIELDS + _PID]
    return bool(pid) and now_ns - slots[index * _FIELDS + _BEAT] < STALE_S * 1e9 and pid_alive(pid)


#: The table of this worker, once its loop listens on a TCP socket. A connection counts from its accept
#: (`_CountingSocket`) until the HTTP protocol reports it closed (`connection_closed`).
_table: ConnectionTable | None = None


def connection_closed() -> None:
    if _table is not None:
        _table.closed()


def worker_index() -> int | None:
    """BentoML's index of this worker (1..N), set before the service is imported; None outside a server."""
    try:
        from bentoml._internal.context import server_context
    except ImportError:
        return None
    index = server_context.worker_index
    return index if isinstance(index, int) and 1 <= index < SLOTS else None


class _CountingSocket:
    """The listening socket as asyncio's accept callback sees it: a connection counts from its accept.

    Counting in the protocol's `connection_made` instead would lag two loop iterations behind the
    accept (asyncio makes the transport in a task), long enough for the same worker to accept the
    next connection of a burst too: 12 connections then split 5/7 instead of 6/6.
    """

    def __init__(self, sock: socket.socket, table: ConnectionTable) -> None:
        self.raw = sock
        self._table = table

    def accept(self) -> tuple[socket.socket, Any]:
        accepted = self.raw.accept()
        self._table.opened()
        return accepted

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class BalancedEventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop that accepts one connection per wake-up, and only as the least loaded.

    Overrides three methods of asyncio's selector loop (CPython 3.11-3.13 share their signatures):
    `_start_serving` joins the table when a server starts listening, `_accept_connection` (the
    listening socket's read callback) accepts one connection or leaves it to a less loaded worker, and
    `_stop_serving` retires from the table. The accepting itself stays asyncio's.
    """

    _heartbeat: asyncio.TimerHandle | None = None

    def _start_serving(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], sock: socket.socket, *args: Any
    ) -> None:
        if isinstance(sock, _CountingSocket):  # asyncio restarts serving after EMFILE with what it had
            sock = sock.raw
        if self._join(sock) is not None and self._heartbeat is None:
            self._beat()
        super()._start_serving(protocol_factory, sock, *args)  # type: ignore[misc]

    def _accept_connection(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        *timeouts: Any,
    ) -> None:
        if _table is None:
            super()._accept_connection(protocol_factory, sock, sslcontext, server, 1, *timeouts)  # type: ignore[misc]
            return
        if not _table.least_loaded():
            self._remove_reader(sock.fileno())
            self.call_later(RETRY_S, self._look_again, protocol_factory, sock, sslcontext, server, *timeouts)
            return
        counting = _CountingSocket(sock, _table)
        super()._accept_connection(protocol_factory, counting, sslcontext, server, 1, *timeouts)  # type: ignore[misc]

    def _stop_serving(self, sock: socket.socket) -> None:  # type: ignore[override]
        if _table is not None:
            _table.retire()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        super()._stop_serving(sock)  # type: ignore[misc]

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
        self._add_reader(  # type: ignore[attr-defined]
            sock.fileno(), self._accept_connection, protocol_factory, sock, sslcontext, server, 1, *timeouts
        )

    def _beat(self) -> None:
        if _table is not None:
            _table.beat()
            self._heartbeat = self.call_later(HEARTBEAT_S, self._beat)

    def _join(self, sock: socket.socket) -> ConnectionTable | None:
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


def balanced_loop_factory(use_subprocess: bool = False) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvicorn's loop factory hook (`uvicorn.config.LOOP_FACTORIES`)."""
    return BalancedEventLoop


def install() -> bool:
    """Make uvicorn's `auto` and `asyncio` loop choices `BalancedEventLoop`.

    Returns:
        whether it is in place; where asyncio's selector loop methods it overrides take other
        parameters, or uvicorn has no loop table, uvicorn's loop stays (and the log says so): every
        worker accepts as asyncio does.
    """
    changed = _changed_methods()
    if changed or not isinstance(getattr(uvicorn.config, "LOOP_FACTORIES", None), dict):
        logger.warning(
            "asyncio's or uvicorn's event loop changed shape (%s); connections are accepted unbalanced",
            ", ".join(changed) or "no LOOP_FACTORIES table",
        )
        return False
    for name in ("auto", "asyncio"):
        uvicorn.config.LOOP_FACTORIES[name] = LOOP_FACTORY_PATH
    return True


def _changed_methods() -> list[str]:
    """asyncio's selector loop methods that are gone or lead with other parameters than `_OVERRIDDEN`."""
    changed = []
    for name, expected in _OVERRIDDEN.items():
        method = getattr(asyncio.SelectorEventLoop, name, None)
        if method is None or tuple(inspect.signature(method).parameters)[: len(expected)] != expected:
            changed.append(name)
    return changed
