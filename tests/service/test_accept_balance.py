"""The shared connection table and the balanced accept loop, with real processes and real sockets."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from eluserve.service.runtime import accept_balance
from eluserve.service.runtime.accept_balance import BalancedEventLoop, ConnectionTable
from tests.deadlines import REQUEST_S


class FakeClock:
    """The table's clock (`time.monotonic_ns`): heartbeats age only when the test says."""

    def __init__(self) -> None:
        self.now_ns = 1_000_000_000

    def monotonic_ns(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1e9)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(accept_balance, "time", SimpleNamespace(monotonic_ns=fake.monotonic_ns))
    return fake


def test_a_worker_accepts_only_while_no_live_worker_holds_fewer(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "table"
    first, second = ConnectionTable(path, 1), ConnectionTable(path, 2)
    assert first.least_loaded() and second.least_loaded()  # equal counts: both may accept
    first.opened()
    assert not first.least_loaded() and second.least_loaded()
    second.opened()
    second.opened()
    assert first.least_loaded() and not second.least_loaded()
    assert first.counts() == {1: 1, 2: 2}
    second.closed()
    second.closed()
    assert second.least_loaded() and second.open_connections == 0


@pytest.mark.integration
def test_a_dead_workers_slot_blocks_nobody(tmp_path: Path) -> None:
    path = tmp_path / "table"
    mine = ConnectionTable(path, 1)
    mine.opened()
    # Worker 2 registers with no connections and dies without cleaning up (a crash).
    code = "from eluserve.service.runtime.accept_balance import ConnectionTable; "
    code += f"ConnectionTable({str(path)!r}, 2)"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert mine.counts() == {1: 1}
    assert mine.least_loaded()


def test_a_worker_that_stopped_listening_or_stopped_beating_blocks_nobody(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "table"
    mine, other = ConnectionTable(path, 1), ConnectionTable(path, 2)
    mine.opened()
    assert not mine.least_loaded()  # the other worker is idle, serving and beating
    clock.advance(accept_balance.STALE_S * 1.5)
    assert mine.least_loaded()  # its loop has not beaten since: stuck or swamped
    other.beat()
    assert not mine.least_loaded()
    other.retire()  # it closed its listener for a graceful shutdown and drains its connections
    assert mine.least_loaded()
    assert mine.counts() == {1: 1}


def test_a_restarted_worker_takes_its_slot_over_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "table"
    old = ConnectionTable(path, 2)
    old.opened()
    new = ConnectionTable(path, 2)
    assert new.open_connections == 0


def test_worker_indexes_outside_the_table_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="worker index"):
        ConnectionTable(tmp_path / "table", accept_balance.SLOTS)


def _serve(sock: socket.socket, worker: int, ready: multiprocessing.synchronize.Event) -> None:
    """A worker like BentoML's: the shared listening socket, its index, a protocol that reports."""
    from bentoml._internal.context import server_context

    server_context.worker_index = worker

    class Reply(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.write(f"{worker}\n".encode())

        def connection_lost(self, exc: Exception | None) -> None:
            accept_balance.connection_closed()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Reply, sock=sock)
        ready.set()
        await server.serve_forever()

    runner = asyncio.Runner(loop_factory=BalancedEventLoop)
    runner.run(main())


@pytest.mark.integration
def test_two_processes_split_a_burst_of_connections_evenly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes serve one listening socket with the balanced loop; 12 connections opened at
    once end up 6/6 (asyncio's own loop lets the first process to wake take most of a burst)."""
    # A worker whose loop did not beat within STALE_S is passed over (tested above with a fake clock);
    # on a busy machine either may miss a beat. The forked workers inherit a staleness none reaches.
    monkeypatch.setattr(accept_balance, "STALE_S", REQUEST_S)
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    context = multiprocessing.get_context("fork")
    readies = [context.Event(), context.Event()]
    workers = [
        context.Process(target=_serve, args=(listener, index + 1, readies[index]), daemon=True)
        for index in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        assert all(ready.wait(REQUEST_S) for ready in readies)
        address = listener.getsockname()
        clients = [socket.create_connection(address, timeout=REQUEST_S) for _ in range(12)]
        answers = [client.makefile().readline().strip() for client in clients]
        for client in clients:
            client.close()
    finally:
        for worker in workers:
            worker.terminate()
            worker.join(10)
        listener.close()
    assert sorted(answers.count(worker) for worker in ("1", "2")) == [6, 6], answers
