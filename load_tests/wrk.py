"""Drive a service with `wrk` (the Debian package): a fixed multipart body, N keep-alive connections.

    .venv/bin/python -m load_tests.wrk http://127.0.0.1:3000/classify -c 1,4,16,64 -d 10
    .venv/bin/python -m load_tests.wrk http://127.0.0.1:3000/classify_batch --images 16 -c 4,16,64
    .venv/bin/python -m load_tests.wrk --cpu http://127.0.0.1:3001/classify http://127.0.0.1:3002/classify

Several URLs (two builds of the service, say) are measured interleaved, one connection count at a time,
so that both see the same machine: on a shared machine, figures from one sitting compare, figures from
two do not. `--cpu` also reads the CPU seconds of the processes that listen on each URL's port
(BentoML's arbiter and workers) and reports served images per CPU-second, which other tenants of the
machine disturb far less than images per wall-clock second.

Why wrk and not locust or an httpx loop: on a 2-core machine the client shares the cores with the
server it measures. wrk sends one pre-built request from C with about 0.1 core at several thousand
requests/s, where a Python client needs a core of its own for a few hundred. The body is built once
(`load_tests.fixtures`: one 32×32 CIFAR JPEG as field `image`, or N as repeated `images`) and written to
a file that the Lua script reads; `response()` counts answers per HTTP status and `done()` prints them
with wrk's own summary and latency percentiles as one JSON line, so a 429 or a 5xx is never mistaken
for a served image: only 2xx answers count as served images.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from load_tests.fixtures import cifar_jpegs, multipart

if TYPE_CHECKING:
    import psutil

#: The line of wrk's output that carries the Lua script's JSON summary.
MARKER = "ELUSERVE_WRK "
PERCENTILES = (50.0, 90.0, 99.0)

# Per-thread Lua states count statuses; `done()` runs in the main state and collects them through
# `thread:get`, which copies tables between states.
LUA_SCRIPT = """
local body_file = assert(io.open(%(body_path)s, "rb"))
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
wrk.headers["Content-Type"] = %(content_type)s

local threads = {}
statuses = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%%d": %%d', status, n))
  end
  local percentiles = {}
  for _, p in ipairs({%(percentiles)s}) do
    table.insert(percentiles, string.format('"%%g": %%d', p, latency:percentile(p)))
  end
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"duration_us": %%d, "requests": %%d, "bytes": %%d, "statuses": {%%s}, ' ..
    '"latency_us": {%%s}, "latency_max_us": %%d, "latency_mean_us": %%f, ' ..
    '"errors": {"connect": %%d, "read": %%d, "write": %%d, "timeout": %%d, "status": %%d}}\\n',
    summary.duration, summary.requests, summary.bytes, table.concat(parts, ", "),
    table.concat(percentiles, ", "), latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status))
end
"""


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed no summary; the message carries its output."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: what was answered, how fast, and with which statuses."""

    url: str
    connections: int
    images_per_request: int
    duration_s: float
    requests: int
    #: Completed responses per HTTP status.
    statuses: Mapping[int, int]
    #: Latency percentiles (50, 90, 99) in milliseconds, over all completed responses.
    latency_ms: Mapping[float, float]
    latency_max_ms: float
    #: Socket errors by kind (connect, read, write, timeout); a timeout is a request that took longer
    #: than wrk's `--timeout`, never answered.
    socket_errors: Mapping[str, int] = field(default_factory=dict)
    #: CPU seconds (user + system) the server's processes used during the run, where measured.
    server_cpu_s: float | None = None

    @property
    def ok(self) -> int:
        """Requests answered with a 2xx status."""
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    @property
    def images_per_s(self) -> float:
        """Served images per second: only 2xx answers count."""
        return self.ok * self.images_per_request / self.duration_s if self.duration_s else 0.0

    @property
    def images_per_cpu_s(self) -> float | None:
        """Served images per CPU-second of the server, where its CPU was measured."""
        if not self.server_cpu_s:
            return None
        return self.ok * self.images_per_request / self.server_cpu_s

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    @property
    def server_errors(self) -> int:
        """5xx answers."""
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def to_dict(self) -> dict[str, object]:
        return {
            "url": self.url,
            "connections": self.connections,
            "images_per_request": self.images_per_request,
            "duration_s": round(self.duration_s, 3),
            "requests": self.requests,
            "ok": self.ok,
            "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
            "images_per_s": round(self.images_per_s, 1),
            "latency_ms": {f"p{p:g}": round(ms, 2) for p, ms in self.latency_ms.items()},
            "latency_max_ms": round(self.latency_max_ms, 2),
            "socket_errors": dict(self.socket_errors),
            "server_cpu_s": None if self.server_cpu_s is None else round(self.server_cpu_s, 2),
            "images_per_cpu_s": None if self.images_per_cpu_s is None else round(self.images_per_cpu_s, 1),
        }


def lua_string(text: str) -> str:
    """`text` as a Lua string literal (decimal escapes for anything but plain printable ASCII)."""
    escaped = "".join(
        ch if (32 <= ord(ch) < 127 and ch not in '"\\') else f"\\{byte}"
        for ch in text
        for byte in ch.encode()
    )
    return f'"{escaped}"'


def cifar_body(images: int = 1) -> tuple[bytes, str]:
    """The benchmark body: one CIFAR JPEG as field `image`, or `images` of them as repeated `images`.

    Returns:
        (body, Content-Type with its boundary)
    """
    uploads = cifar_jpegs(images)
    return multipart("image", uploads) if images == 1 else multipart("images", uploads)


def run_wrk(
    url: str,
    body: bytes,
    content_type: str,
    *,
    connections: int,
    duration_s: float,
    images_per_request: int = 1,
    threads: int = 1,
    timeout_s: float = 10.0,
    wrk: str = "wrk",
) -> WrkResult:
    """POST `body` to `url` over `connections` keep-alive connections for `duration_s` seconds.

    Raises:
        WrkError: wrk is not installed, exited non-zero, or printed no summary.
    """
    executable = shutil.which(wrk)
    if executable is None:
        raise WrkError(f"{wrk} is not installed (Debian/Ubuntu: apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="eluserve-wrk-") as tmp:
        body_path = Path(tmp) / "body.bin"
        body_path.write_bytes(body)
        script_path = Path(tmp) / "post.lua"
        script_path.write_text(
            LUA_SCRIPT
            % {
                "body_path": lua_string(str(body_path)),
                "content_type": lua_string(content_type),
                "percentiles": ", ".join(f"{p:g}" for p in PERCENTILES),
                "marker": MARKER,
            }
        )
        command = [
            executable,
            f"-t{threads}",
            f"-c{max(connections, threads)}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            str(script_path),
            url,
        ]
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
        )
    if completed.returncode != 0:
        raise WrkError(f"{' '.join(command)} exited with {completed.returncode}:\n{completed.stderr}")
    return parse_output(completed.stdout, url, connections, images_per_request)


def parse_output(stdout: str, url: str, connections: int, images_per_request: int) -> WrkResult:
    """The `WrkResult` from wrk's output with the Lua script's summary line."""
    lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
    if not lines:
        raise WrkError(f"wrk printed no summary line (is the URL reachable?):\n{stdout}")
    data = json.loads(lines[-1][len(MARKER) :])
    errors = {kind: int(data["errors"][kind]) for kind in ("connect", "read", "write", "timeout")}
    return WrkResult(
        url=url,
        connections=connections,
        images_per_request=images_per_request,
        duration_s=data["duration_us"] / 1e6,
        requests=int(data["requests"]),
        statuses={int(status): int(n) for status, n in data["statuses"].items()},
        latency_ms={float(p): us / 1000 for p, us in data["latency_us"].items()},
        latency_max_ms=data["latency_max_us"] / 1000,
        socket_errors={kind: n for kind, n in errors.items() if n},
    )


#: The module the shared device host runs as (`python -m ...`), found among a server's processes by it.
DEVICE_HOST_MODULE = "eluserve.service.device.host"


def listening_processes(url: str) -> list[psutil.Process]:
    """Every process that holds a listening socket on `url`'s port: a `bentoml serve` arbiter and all
    its workers, which share the arbiter's socket (`psutil.net_connections` names one holder of a
    shared socket only, so each process is asked), and the shared device host they started
    (`eluserve.service.device.host`), which listens on no TCP port but does the inference. Reading other
    users' processes needs root."""
    import psutil

    port = urlsplit(url).port
    holders = []
    for process in psutil.process_iter():
        try:
            connections = process.net_connections(kind="tcp")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections):
            holders.append(process)
    hosts = []
    for holder in holders:
        with contextlib.suppress(psutil.Error):
            for child in holder.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if DEVICE_HOST_MODULE in child.cmdline():
                        hosts.append(child)
    return list({process.pid: process for process in holders + hosts}.values())


def _cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    import psutil

    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def wait_quiet(
    processes: Sequence[psutil.Process],
    cores: float = 0.15,
    window_s: float = 0.2,
    timeout_s: float = 10.0,
) -> float:
    """Wait until `processes` together use under `cores` over a `window_s` window, or `timeout_s` passes.

    When wrk stops, the server still works through the requests it has queued (at 32 connections of 16
    images, a third of a second of inference): whatever is measured next on the machine would share the
    cores with it.

    Returns:
        the seconds waited.
    """
    started = time.perf_counter()
    while True:
        before = _cpu_seconds(processes)
        time.sleep(window_s)
        waited = time.perf_counter() - started
        if _cpu_seconds(processes) - before < cores * window_s or waited >= timeout_s:
            return waited


def sweep(
    urls: Sequence[str],
    connection_counts: Sequence[int],
    *,
    images: int = 1,
    duration_s: float = 10.0,
    timeout_s: float = 10.0,
    cpu: bool = False,
) -> list[WrkResult]:
    """One wrk run per connection count and URL, same body; URLs interleaved at each count."""
    body, content_type = cifar_body(images)
    processes = {url: listening_processes(url) if cpu else [] for url in urls}
    results = []
    for connections in connection_counts:
        for url in urls:
            before = _cpu_seconds(processes[url])
            result = run_wrk(
                url,
                body,
                content_type,
                connections=connections,
                duration_s=duration_s,
                images_per_request=images,
                timeout_s=timeout_s,
            )
            if processes[url]:
                result = replace(result, server_cpu_s=_cpu_seconds(processes[url]) - before)
            results.append(result)
    return results


def markdown_table(results: Sequence[WrkResult]) -> str:
    """A table of served images/s, latency and non-2xx answers per URL and connection count."""
    lines = [
        "| url | connections | served img/s | img/CPU-s | req/s | p50 ms | p99 ms | 2xx | 429 | 5xx "
        "| socket errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        errors = ", ".join(f"{kind} {n}" for kind, n in r.socket_errors.items()) or "0"
        per_cpu = "" if r.images_per_cpu_s is None else f"{r.images_per_cpu_s:.0f}"
        lines.append(
            f"| {r.url} | {r.connections} | {r.images_per_s:.0f} | {per_cpu} | {r.requests_per_s:.0f} | "
            f"{r.latency_ms.get(50.0, 0):.1f} | {r.latency_ms.get(99.0, 0):.1f} | {r.ok} | {r.count(429)} | "
            f"{r.server_errors} | {errors} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.wrk", description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", nargs="+", metavar="URL", help="e.g. http://127.0.0.1:3000/classify")
    parser.add_argument("-c", "--connections", default="1,4,16", help="comma-separated counts")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--images", type=int, default=1, help="1 = field `image`; more = repeated `images`")
    parser.add_argument("--timeout", type=float, default=10.0, help="wrk's per-request timeout, seconds")
    parser.add_argument("--cpu", action="store_true", help="also measure the servers' CPU seconds")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.connections.split(",") if part.strip()]
    results = sweep(
        args.urls,
        counts,
        images=args.images,
        duration_s=args.duration,
        timeout_s=args.timeout,
        cpu=args.cpu,
    )
    print(markdown_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
