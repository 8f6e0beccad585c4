"""Fault injection: kill workers under load, stop the server with requests in flight, start it with a
model that is missing or corrupt. Reports how the service copes, in numbers.

    .venv/bin/python -m load_tests.faults                     # every scenario, the embedded model
    .venv/bin/python -m load_tests.faults --model models/elufast-cifar10 --rate 50

Scenarios, in order, against `bentoml serve .` started on a free port (`ELUSERVE_*` variables apply):
- kill a worker: under open-loop load (`--rate` requests/s, `POST /classify` of CIFAR-10 JPEGs),
  SIGKILL the service's (first) worker process (found in the process tree of `bentoml
  serve`). BentoML's arbiter starts a replacement; reported: time from the kill to the first success
  of a request sent after it (recovery), the requests that failed, the replacement's pid. At most 64
  requests are in flight (what one BentoML worker admits by default); while the service does not
  answer, the requests beyond are not sent and are reported apart, as "not sent".
- graceful shutdown: a few slow batch requests (16 full-HD PNGs each) in flight, then SIGTERM to
  `bentoml serve`; every one of them must still be answered 200, and the server must exit.
- missing model, corrupt model: `ELUSERVE_MODEL` names a file that does not exist / holds noise;
  `bentoml serve` must exit non-zero within `--startup-timeout` seconds, its log naming the file,
  rather than stay up half alive.

Exit status 1 if any scenario misses its expectation. Inside a container built by `bentoml
containerize` (BENTOML_CONTAINERIZED set) BentoML does not restart workers at all: a dead worker makes
`bentoml serve` exit and the orchestrator restarts the container; the kill scenarios measure the
respawn of a plain `bentoml serve`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from eluserve.core.paths import default_model_file
from load_tests.soak import (
    SHED,
    Record,
    Shot,
    drive,
    mixed_shots,
    service_name,
    worker_processes,
)


@dataclass
class KillReport:
    """One worker killed under load."""

    service: str
    killed_pid: int
    #: The worker that took its place; None if none appeared in time.
    replacement_pid: int | None
    #: Seconds from the kill to the first 200 of a request sent after it; None if none came.
    recovery_s: float | None
    records: list[Record]
    killed_at: float

    @property
    def failed(self) -> Counter[str]:
        """Requests sent and not answered 200, by outcome."""
        return Counter(record.outcome for record in self.records if record.outcome not in ("ok", SHED))

    @property
    def shed(self) -> int:
        """Requests the load generator held back because its in-flight cap was reached meanwhile."""
        return sum(record.outcome == SHED for record in self.records)

    @property
    def failed_after_recovery(self) -> int:
        """Failures of requests sent once the service answered again: there must be none."""
        if self.recovery_s is None:
            return 0
        recovered = self.killed_at + self.recovery_s
        return sum(r.outcome not in ("ok", SHED) and r.start >= recovered for r in self.records)

    def failures(self, max_recovery_s: float) -> list[str]:
        reasons = []
        if self.replacement_pid is None:
            reasons.append(f"no replacement {self.service} worker appeared")
        if self.recovery_s is None or self.recovery_s > max_recovery_s:
            reasons.append(f"{self.service}: not answering again within {max_recovery_s:.0f} s")
        if self.failed_after_recovery:
            reasons.append(f"{self.service}: {self.failed_after_recovery} requests failed after recovery")
        return reasons

    def summary(self) -> str:
        recovery = f"{self.recovery_s:.2f} s" if self.recovery_s is not None else "never"
        ok = sum(record.outcome == "ok" for record in self.records)
        shed = f", {self.shed} not sent (in-flight cap reached)" if self.shed else ""
        return (
            f"kill {self.service} (pid {self.killed_pid} → {self.replacement_pid}): recovered in {recovery}; "
            f"{len(self.records) - self.shed} requests sent, {ok} ok, {sum(self.failed.values())} failed "
            f"{dict(self.failed)}{shed}"
        )


def kill_worker_under_load(
    url: str,
    arbiter_pid: int,
    service: str,
    shots: Sequence[Shot],
    *,
    rate: float = 20.0,
    before_s: float = 2.0,
    max_after_s: float = 30.0,
    steady_s: float = 2.0,
) -> KillReport:
    """SIGKILL the (first) worker of `service` after `before_s` of load at `rate` requests/s.

    The load goes on until the service has answered a request sent after the kill and then served
    `steady_s` more seconds, or for `max_after_s` at most.
    """
    victim = next(
        proc for proc in worker_processes(arbiter_pid) if service_name(proc).startswith(f"{service}:")
    )
    records: list[Record] = []
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        load = pool.submit(drive, url, shots, before_s + max_after_s, rate=rate, records=records, stop=stop)
        time.sleep(before_s)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        recovery_s = None
        while not load.done() and time.monotonic() < killed_at + max_after_s:
            if recovery_s is None:
                answered = [r.end for r in list(records) if r.start >= killed_at and r.outcome == "ok"]
                if answered:
                    recovery_s = min(answered) - killed_at
            elif time.monotonic() > killed_at + recovery_s + steady_s:
                break
            time.sleep(0.05)
        stop.set()
        load.result()
    replacement = [
        proc.pid
        for proc in worker_processes(arbiter_pid)
        if service_name(proc).startswith(f"{service}:") and proc.pid != victim.pid
    ]
    return KillReport(
        service, victim.pid, replacement[0] if replacement else None, recovery_s, records, killed_at
    )


def slow_batch_shot(images: int = 16) -> Shot:
    """A `/classify_batch` request whose decoding takes a while: `images` full-HD PNG photos."""
    from load_tests.fixtures import Attachment, encode, multipart, photo_like

    png = Attachment("photo.png", "image/png", encode(photo_like(1920, 1080), "PNG"))
    body, content_type = multipart("images", [png] * images)
    return ("/classify_batch", body, {"Content-Type": content_type})


@dataclass
class ShutdownReport:
    """SIGTERM (or another signal) with requests in flight."""

    #: Per in-flight request: "200", another status, or the client-side error.
    outcomes: list[str]
    #: Exit status of `bentoml serve`; None if it was still running at the timeout.
    exit_code: int | None
    #: Seconds from the signal to the process exit.
    seconds: float

    def failures(self) -> list[str]:
        reasons = []
        if any(outcome != "200" for outcome in self.outcomes):
            reasons.append(f"requests in flight at shutdown were not all answered 200: {self.outcomes}")
        if self.exit_code is None:
            reasons.append("bentoml serve did not exit after the signal")
        return reasons

    def summary(self) -> str:
        return (
            f"graceful shutdown: in-flight answers {self.outcomes}; exit status {self.exit_code} "
            f"after {self.seconds:.1f} s"
        )


def shutdown_with_requests_in_flight(
    process: subprocess.Popen[bytes],
    url: str,
    shot: Shot,
    *,
    requests: int = 3,
    delay_s: float = 0.5,
    sig: int = signal.SIGTERM,
    timeout_s: float = 60.0,
) -> ShutdownReport:
    """Send `requests` copies of `shot` at once, signal `process` once the server has all of them in
    progress (or `delay_s` after that can no longer be seen), collect the answers.

    In flight means that a worker has read the request's headers: BentoML's
    `bentoml_service_request_in_progress` counts them. A connection still waiting in the listening
    socket's backlog when the workers stop was never received, and is closed unanswered.
    """
    path, body, headers = shot

    def send() -> str:
        try:
            return str(httpx.post(url + path, content=body, headers=headers, timeout=timeout_s).status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        answers = [pool.submit(send) for _ in range(requests)]
        _wait_in_progress(url, path, requests, timeout_s=timeout_s / 2)
        time.sleep(delay_s)
        process.send_signal(sig)
        signalled = time.monotonic()
        outcomes = [answer.result() for answer in answers]
    try:
        exit_code: int | None = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        exit_code = None
    return ShutdownReport(outcomes, exit_code, time.monotonic() - signalled)


def _wait_in_progress(url: str, path: str, requests: int, timeout_s: float) -> None:
    """Wait until `/metrics` shows `requests` requests to `path` in progress, summed over workers."""
    pattern = re.compile(
        r'^bentoml_service_request_in_progress\{[^}]*endpoint="' + re.escape(path) + r'"[^}]*\} (\S+)$', re.M
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            text = httpx.get(url + "/metrics", timeout=5.0).text
        except httpx.HTTPError:
            text = ""
        if sum(float(value) for value in pattern.findall(text)) >= requests:
            return
        time.sleep(0.05)


@dataclass
class StartupReport:
    """`bentoml serve` started with a model it cannot use."""

    model: Path
    #: None: still running at the timeout (half alive).
    exit_code: int | None
    seconds: float
    log: str = field(repr=False)

    @property
    def names_the_file(self) -> bool:
        return str(self.model) in self.log

    def failures(self) -> list[str]:
        if self.exit_code is None:
            return [f"with {self.model}: still running after {self.seconds:.0f} s instead of exiting"]
        reasons = []
        if self.exit_code == 0:
            reasons.append(f"with {self.model}: exited with status 0")
        if not self.names_the_file:
            reasons.append(f"with {self.model}: the log does not name the file")
        return reasons

    def summary(self) -> str:
        state = "still running" if self.exit_code is None else f"exit status {self.exit_code}"
        named = "names" if self.names_the_file else "does not name"
        return f"start with {self.model}: {state} after {self.seconds:.1f} s; the log {named} the file"


def watch_startup(
    process: subprocess.Popen[bytes], log: Callable[[], str], model: Path, timeout_s: float = 60.0
) -> StartupReport:
    """Wait up to `timeout_s` for a server started with a bad `model` to give up."""
    started = time.monotonic()
    try:
        exit_code: int | None = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        exit_code = None
    return StartupReport(model, exit_code, time.monotonic() - started, log())


def main(argv: Sequence[str] | None = None) -> int:
    from load_tests.servers import start_service

    parser = argparse.ArgumentParser(prog="python -m load_tests.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=default_model_file(), help="model to serve")
    parser.add_argument("--rate", type=float, default=30.0, help="requests/s during the kills (30)")
    parser.add_argument("--max-recovery", type=float, default=30.0, help="seconds a recovery may take (30)")
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to exit on a bad model")
    parser.add_argument("--log-dir", type=Path, default=Path(".cache/faults"), help="server log folder")
    args = parser.parse_args(argv)

    failures: list[str] = []
    singles = [shot for shot in mixed_shots() if shot[0] == "/classify"]
    server = start_service(args.model, args.log_dir / "kills")
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        server.wait_ready(timeout=180)
        report = kill_worker_under_load(
            server.url,
            server.process.pid,
            "EluClassifier",
            singles,
            rate=args.rate,
            max_after_s=args.max_recovery,
        )
        print(report.summary(), flush=True)
        failures += report.failures(args.max_recovery)
        shot = slow_batch_shot()
        shutdown = shutdown_with_requests_in_flight(server.process, server.url, shot)
        print(shutdown.summary(), flush=True)
        failures += shutdown.failures()

    with tempfile.TemporaryDirectory() as tmp:
        corrupt = Path(tmp) / "corrupt.onnx"
        corrupt.write_bytes(os.urandom(4096))
        for name, model in (("missing", Path(tmp) / "missing" / "model.onnx"), ("corrupt", corrupt)):
            bad = start_service(model, args.log_dir / name)
            try:
                startup = watch_startup(bad.process, bad.log_tail, model, args.startup_timeout)
            finally:
                bad.stop()
            print(startup.summary(), flush=True)
            failures += startup.failures()

    print("PASS" if not failures else "FAIL:\n- " + "\n- ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
