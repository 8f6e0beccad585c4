"""A closed-loop HTTP load generator: `concurrency` clients, each sending its next request as soon as
the previous one is answered, for a fixed time.

Closed loop because that is what the benchmark compares: how many images a server turns around with
a given number of requests in flight, and at what latency. Latency is measured by the client, from
just before the request is written to the last byte of the answer, so it includes queueing in the
server's socket backlog that server-side metrics never see. Bodies are prepared bytes and answers are
not parsed, to keep the client's share of the (shared) CPU small; it is reported anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import psutil


@dataclass(frozen=True)
class Request:
    """One prepared request: body bytes and headers for a POST."""

    body: bytes
    headers: Mapping[str, str]
    images: int = 1


@dataclass(frozen=True)
class Workload:
    """What every client of a level sends: `requests` in turn, each client starting at its own offset."""

    url: str
    requests: Sequence[Request]


@dataclass
class LevelResult:
    """One concurrency level against one server."""

    concurrency: int
    #: Length of the measured window (after warm-up).
    seconds: float
    #: Answered 200 within the window.
    ok: int = 0
    images: int = 0
    #: Everything else: status codes or exception names, with counts.
    errors: Counter[str] = field(default_factory=Counter)
    #: Client-side latency of each 200 started within the window, in milliseconds.
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: CPU the load generator itself used over the level (warm-up included), in cores: 1.0 = one
    #: core busy throughout.
    client_cores: float = 0.0
    #: CPU each server process used over the level, in cores, by process label.
    server_cores: dict[str, float] = field(default_factory=dict)
    #: CPU the whole machine used over the level, in cores: what exceeds client + server is other
    #: work on the machine, which the figures of this level had to share the cores with.
    machine_cores: float = 0.0

    @property
    def other_cores(self) -> float:
        return max(0.0, self.machine_cores - self.client_cores - sum(self.server_cores.values()))

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile of latency (NaN when nothing succeeded)."""
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {
            "concurrency": self.concurrency,
            "seconds": self.seconds,
            "requests_ok": self.ok,
            "images": self.images,
            "images_per_second": self.images_per_second,
            "p50_ms": self.percentile_ms(50),
            "p95_ms": self.percentile_ms(95),
            "p99_ms": self.percentile_ms(99),
            "mean_ms": float(self.latencies_ms.mean()) if len(self.latencies_ms) else float("nan"),
            "errors": dict(self.errors),
            "client_cores": self.client_cores,
            "server_cores": self.server_cores,
            "other_cores": round(self.other_cores, 3),
        }


def process_label(proc: psutil.Process) -> str:
    """A short, stable name for a server process: BentoML service name, program name, or module."""
    try:
        cmdline = proc.cmdline()
        name = proc.name()
    except psutil.Error:
        return f"pid {proc.pid}"
    for flag in ("--service-name", "-m"):
        if flag in cmdline[:-1]:
            return cmdline[cmdline.index(flag) + 1].rsplit(".", 1)[-1]
    if "bentoml" in " ".join(cmdline[:3]):
        return "bentoml-arbiter"
    return name


def _cpu_seconds(processes: Sequence[psutil.Process]) -> dict[int, tuple[str, float]]:
    usage = {}
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            usage[proc.pid] = (process_label(proc), times.user + times.system)
    return usage


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle, all cores together."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _cores_by_label(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], seconds: float
) -> dict[str, float]:
    cores: Counter[str] = Counter()
    for pid, (label, spent) in after.items():
        if pid in before:
            cores[label] += (spent - before[pid][1]) / seconds
    return {label: round(value, 3) for label, value in sorted(cores.items())}


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    requests: Iterator[Request],
    stop_at: float,
    records: list[tuple[float, float, int, str]],
) -> None:
    """Send requests back to back until `stop_at`; record (start, end, images, outcome) of each."""
    while (start := time.perf_counter()) < stop_at:
        request = next(requests)
        try:
            async with session.post(url, data=request.body, headers=request.headers) as response:
                await response.read()
                outcome = "ok" if response.status == 200 else str(response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = type(exc).__name__
        records.append((start, time.perf_counter(), request.images, outcome))


async def _run(
    workload: Workload, concurrency: int, warmup: float, seconds: float, timeout: float
) -> tuple[list[tuple[float, float, int, str]], float, float]:
    records: list[tuple[float, float, int, str]] = []
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        window_start = time.perf_counter() + warmup
        stop_at = window_start + seconds
        size = len(workload.requests)
        clients = [
            _client(
                session,
                workload.url,
                itertools.islice(itertools.cycle(workload.requests), (i * size) // concurrency, None),
                stop_at,
                records,
            )
            for i in range(concurrency)
        ]
        await asyncio.gather(*clients)
    return records, window_start, stop_at


def run_level(
    workload: Workload,
    concurrency: int,
    seconds: float,
    warmup: float,
    server_processes: Sequence[psutil.Process] = (),
    timeout: float = 60.0,
) -> LevelResult:
    """Drive `workload` with `concurrency` closed-loop clients: `warmup` s unmeasured, then `seconds`.

    Throughput counts the answers that arrive within the window; latency percentiles cover the
    requests started within it (those still in flight at its end are awaited, so the slowest are not
    dropped). Requests stop being started when the window ends, so a level never runs much past it.
    """
    cpu_start = time.process_time()
    machine_before = busy_seconds()
    server_before = _cpu_seconds(server_processes)
    records, window_start, window_end = asyncio.run(_run(workload, concurrency, warmup, seconds, timeout))
    server_after = _cpu_seconds(server_processes)
    machine_busy = busy_seconds() - machine_before
    wall = warmup + seconds + max(0.0, (max((r[1] for r in records), default=window_end) - window_end))
    result = LevelResult(concurrency=concurrency, seconds=seconds)
    latencies = []
    for start, end, images, outcome in records:
        if outcome == "ok":
            if window_start <= end <= window_end:
                result.ok += 1
                result.images += images
            if start >= window_start:
                latencies.append((end - start) * 1000.0)
        elif start >= window_start:
            result.errors[outcome] += 1
    result.latencies_ms = np.asarray(latencies)
    result.client_cores = round((time.process_time() - cpu_start) / wall, 3)
    result.server_cores = _cores_by_label(server_before, server_after, wall)
    result.machine_cores = round(machine_busy / wall, 3)
    return result
