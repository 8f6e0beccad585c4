"""Soak test: a long run at ~80 % of measured capacity; errors, worker memory and file descriptors
must not grow.

    .venv/bin/python -m load_tests.soak                          # starts the service, 10 minutes
    .venv/bin/python -m load_tests.soak --seconds 60             # a short run
    .venv/bin/python -m load_tests.soak --rate 120 --seconds 3600
    .venv/bin/python -m load_tests.soak --url http://127.0.0.1:3000 --pid <pid of bentoml serve>

Without `--url` it starts `bentoml serve .` on a free port (model: `--model`, default the embedded
one; `ELUSERVE_*` variables apply) and stops it afterwards. Without `--rate` it first measures
capacity (closed loop, `--capacity-seconds`, which also warms the server up) and sends `--load-share`
of it. Traffic is open loop, the same mix as the capacity run: seven `POST /classify` of one CIFAR-10
JPEG for every `POST /classify_batch` of eight, so the single and batch paths and the adaptive
batcher all run.

After `--warmup` seconds at the soak rate (allocator pools, ONNX Runtime arenas and connection pools
fill up), every bentoml worker process (the children of `bentoml serve`) is sampled idle, every
`--sample-every` seconds during the soak, and idle again after it: VmRSS from /proc/<pid>/status and
the number of entries in /proc/<pid>/fd. "Idle" is ten seconds without load, so that keep-alive
connections are closed and both samples see the same quiet server. Exit status 1 if any request failed,
any worker's RSS grew by `--max-rss-growth` % (default 5) or more, any worker has more open file
descriptors than at the start, or a worker was replaced during the run; 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from eluserve.core.paths import default_model_file

#: One HTTP request, prepared once: path, body and headers.
Shot = tuple[str, bytes, dict[str, str]]

WORKER_MODULE = "_bentoml_impl.worker.service"
#: Idle seconds before each sample: longer than uvicorn's 5 s keep-alive timeout, so that pooled
#: connections left idle by the load are closed and the samples compare idle server to idle server.
SETTLE_S = 10.0
#: The outcome of a request the open loop did not send because too many were already waiting.
SHED = "shed by client"


@dataclass(frozen=True)
class Record:
    """One request: client-side start and end (time.monotonic) and "ok", a status code or an error."""

    start: float
    end: float
    outcome: str


def mixed_shots(count: int = 64, batch_every: int = 8, batch_size: int = 8) -> list[Shot]:
    """`count` requests of CIFAR-10 JPEGs from the shared zip: every `batch_every`-th a batch."""
    from load_tests.fixtures import cifar_jpegs, multipart

    uploads = cifar_jpegs(count)
    shots: list[Shot] = []
    for index, upload in enumerate(uploads):
        if index % batch_every == batch_every - 1:
            group = [uploads[(index + offset) % count] for offset in range(batch_size)]
            body, content_type = multipart("images", group)
            shots.append(("/classify_batch", body, {"Content-Type": content_type}))
        else:
            body, content_type = multipart("image", [upload])
            shots.append(("/classify", body, {"Content-Type": content_type}))
    return shots


async def _send(session: aiohttp.ClientSession, url: str, shot: Shot, records: list[Record]) -> None:
    path, body, headers = shot
    start = time.monotonic()
    try:
        async with session.post(url + path, data=body, headers=headers) as response:
            await response.read()
            outcome = "ok" if response.status == 200 else str(response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome = type(exc).__name__
    records.append(Record(start, time.monotonic(), outcome))


async def _drive(
    url: str,
    shots: Sequence[Shot],
    seconds: float,
    rate: float | None,
    concurrency: int,
    records: list[Record],
    timeout: float,
    stop: threading.Event,
) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as session:
        stop_at = time.monotonic() + seconds
        cycle = itertools.cycle(shots)
        if rate is None:

            async def closed_loop() -> None:
                while time.monotonic() < stop_at and not stop.is_set():
                    await _send(session, url, next(cycle), records)

            await asyncio.gather(*(closed_loop() for _ in range(concurrency)))
            return
        in_flight: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        for index in itertools.count():
            due = started + index / rate
            if due >= stop_at or stop.is_set():
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if len(in_flight) >= concurrency:
                # The server is this far behind: the request is not sent, and counted as shed.
                now = time.monotonic()
                records.append(Record(now, now, SHED))
                continue
            task = asyncio.create_task(_send(session, url, next(cycle), records))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)


def drive(
    url: str,
    shots: Sequence[Shot],
    seconds: float,
    *,
    rate: float | None = None,
    concurrency: int = 64,
    records: list[Record] | None = None,
    timeout: float = 60.0,
    stop: threading.Event | None = None,
) -> list[Record]:
    """Send `shots` in turn for `seconds`: open loop at `rate` requests/s (at most `concurrency` in
    flight; beyond that a request is shed and recorded as such), or closed loop with `concurrency`
    clients when `rate` is None. Records land in `records` as they complete (another thread may read
    it meanwhile) and the list is returned. Setting `stop` ends the run early."""
    records = [] if records is None else records
    asyncio.run(_drive(url, shots, seconds, rate, concurrency, records, timeout, stop or threading.Event()))
    return records


def worker_processes(arbiter_pid: int) -> list[psutil.Process]:
    """The bentoml worker processes under `bentoml serve` (arbiter) `arbiter_pid`."""
    workers = []
    for child in psutil.Process(arbiter_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if WORKER_MODULE in child.cmdline():
                workers.append(child)
    return workers


def service_name(proc: psutil.Process) -> str:
    """The BentoML service a worker runs (`--service-name`), with its worker id."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return f"pid {proc.pid}"
    name = cmdline[cmdline.index("--service-name") + 1] if "--service-name" in cmdline else "?"
    worker = cmdline[cmdline.index("--worker-id") + 1] if "--worker-id" in cmdline else "?"
    return f"{name}:{worker}"


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    name: str
    rss_kib: int
    fds: int


def sample(processes: Sequence[psutil.Process]) -> dict[int, ProcessSample]:
    """VmRSS and open file descriptors of each live process, read from /proc."""
    samples = {}
    for proc in processes:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        except (OSError, StopIteration):
            continue
        samples[proc.pid] = ProcessSample(proc.pid, service_name(proc), rss, fds)
    return samples


@dataclass
class SoakReport:
    rate: float
    seconds: float
    capacity: float | None
    records: list[Record]
    start: dict[int, ProcessSample]
    end: dict[int, ProcessSample]
    peaks: dict[int, int] = field(default_factory=dict)
    max_rss_growth: float = 5.0

    @property
    def errors(self) -> Counter[str]:
        return Counter(record.outcome for record in self.records if record.outcome != "ok")

    def rss_growth(self, pid: int) -> float:
        """Percent growth of one worker's RSS from the start sample to the end sample."""
        return 100.0 * (self.end[pid].rss_kib - self.start[pid].rss_kib) / self.start[pid].rss_kib

    def failures(self) -> list[str]:
        """Why the soak failed; empty when it passed."""
        reasons = []
        if errors := self.errors:
            reasons.append(f"{sum(errors.values())} requests failed: {dict(errors)}")
        for pid, before in self.start.items():
            if pid not in self.end:
                reasons.append(f"worker {before.name} (pid {pid}) did not survive the soak")
                continue
            if (growth := self.rss_growth(pid)) >= self.max_rss_growth:
                reasons.append(
                    f"worker {before.name} RSS grew {growth:.1f} % (limit {self.max_rss_growth} %)"
                )
            if self.end[pid].fds > before.fds:
                reasons.append(f"worker {before.name} fds grew from {before.fds} to {self.end[pid].fds}")
        if set(self.end) - set(self.start):
            reasons.append("new worker processes appeared: a worker was restarted")
        return reasons

    def summary(self) -> str:
        ok = [record for record in self.records if record.outcome == "ok"]
        latencies = np.array([record.end - record.start for record in ok]) * 1000.0
        p50, p99 = np.percentile(latencies, [50, 99]) if len(latencies) else (float("nan"),) * 2
        capacity = f"{self.capacity:.1f} req/s measured, " if self.capacity is not None else ""
        lines = [
            f"soak: {self.seconds:.0f} s at {self.rate:.1f} req/s ({capacity}{len(self.records)} sent)",
            f"  ok {len(ok)}, errors {sum(self.errors.values())} {dict(self.errors) or ''}".rstrip(),
            f"  latency p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            "  worker           pid      RSS start → end (peak)        growth   fds start → end",
        ]
        for pid, before in sorted(self.start.items(), key=lambda item: item[1].name):
            after = self.end.get(pid)
            if after is None:
                lines.append(f"  {before.name:<16} {pid:<8} {before.rss_kib / 1024:7.1f} MiB → gone")
                continue
            start_mib, end_mib = before.rss_kib / 1024, after.rss_kib / 1024
            peak_mib = self.peaks.get(pid, after.rss_kib) / 1024
            lines.append(
                f"  {before.name:<16} {pid:<8} {start_mib:7.1f} → {end_mib:7.1f} MiB ({peak_mib:7.1f}) "
                f"{self.rss_growth(pid):+7.2f} %   {before.fds:4d} → {after.fds:4d}"
            )
        failures = self.failures()
        lines.append("  PASS" if not failures else "  FAIL: " + "; ".join(failures))
        return "\n".join(lines)


def soak(
    url: str,
    arbiter_pid: int,
    shots: Sequence[Shot],
    seconds: float,
    rate: float,
    *,
    warmup: float = 30.0,
    capacity: float | None = None,
    sample_every: float = 30.0,
    max_rss_growth: float = 5.0,
) -> SoakReport:
    """Drive `rate` requests/s for `warmup` then `seconds`, sampling the workers before (after the
    warm-up, idle), during and after (idle again). Warm-up requests count towards the errors."""
    records = drive(url, shots, warmup, rate=rate)
    time.sleep(SETTLE_S)
    workers = worker_processes(arbiter_pid)
    start = sample(workers)
    peaks = {pid: s.rss_kib for pid, s in start.items()}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        load = pool.submit(drive, url, shots, seconds, rate=rate, records=records)
        while not load.done():
            with contextlib.suppress(concurrent.futures.TimeoutError):
                load.result(timeout=sample_every)
            for pid, now in sample(workers).items():
                peaks[pid] = max(peaks.get(pid, 0), now.rss_kib)
        load.result()
    time.sleep(SETTLE_S)
    end = sample(worker_processes(arbiter_pid))
    return SoakReport(rate, seconds, capacity, records, start, end, peaks, max_rss_growth)


def measure_capacity(url: str, shots: Sequence[Shot], seconds: float, concurrency: int) -> float:
    """Requests per second answered 200 with `concurrency` closed-loop clients (also a warm-up)."""
    records = drive(url, shots, seconds, concurrency=concurrency)
    return sum(record.outcome == "ok" for record in records) / seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the soak (default 600)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds at the rate before sampling (30)")
    parser.add_argument("--rate", type=float, help="requests/s; default: --load-share of measured capacity")
    parser.add_argument("--load-share", type=float, default=0.8, help="share of capacity (default 0.8)")
    parser.add_argument("--capacity-seconds", type=float, default=15.0, help="capacity measurement (15)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients for the capacity run (16)")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--max-rss-growth", type=float, default=5.0, help="percent; fail at or above")
    parser.add_argument(
        "--model", type=Path, default=default_model_file(), help="model to serve (without --url)"
    )
    parser.add_argument("--url", help="a running service instead of starting one (needs --pid)")
    parser.add_argument("--pid", type=int, help="pid of that service's `bentoml serve` process")
    parser.add_argument("--log-dir", type=Path, default=Path(".cache/soak"), help="server log folder")
    args = parser.parse_args(argv)
    if bool(args.url) != bool(args.pid):
        parser.error("--url and --pid go together")

    shots = mixed_shots()
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = args.url.rstrip("/"), args.pid
        else:
            from load_tests.servers import start_service

            server = start_service(args.model, args.log_dir)
            stack.callback(server.stop)
            print(f"starting the service ({args.model}); log: {server.log_path}", flush=True)
            server.wait_ready(timeout=180)
            url, pid = server.url, server.process.pid
        capacity = None
        rate = args.rate
        if rate is None:
            capacity = measure_capacity(url, shots, args.capacity_seconds, args.concurrency)
            rate = args.load_share * capacity
            print(
                f"capacity {capacity:.1f} req/s; soaking at {rate:.1f} req/s for {args.seconds:.0f} s",
                flush=True,
            )
        report = soak(
            url,
            pid,
            shots,
            args.seconds,
            rate,
            warmup=args.warmup,
            capacity=capacity,
            sample_every=args.sample_every,
            max_rss_growth=args.max_rss_growth,
        )
    print(report.summary())
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
