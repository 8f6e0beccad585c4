"""Start, watch and stop the servers that `eluserve bench` compares, all on 127.0.0.1 and free ports.

Each server is a process tree: BentoML's arbiter starts its workers in sessions of their own and
PyTriton starts `tritonserver` and the Python backend stubs the same way, so killing a process group
would orphan them. `ServerProcess` therefore records the tree while it is alive, asks the parent to
stop gracefully (PyTriton cleans its workspace only on SIGINT), then kills by pid what is left;
psutil remembers each process's start time, so a recycled pid is never killed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from load_tests import REPO_ROOT

#: Where `load_tests/requirements-triton.txt` is installed by default (ignored by git).
TRITON_VENV_PYTHON = REPO_ROOT / ".cache" / "triton-venv" / "bin" / "python"
TRITON_MODEL_PATH = "/v2/models/eluserve"
TRITON_SETUP_HINT = (
    "python3.11 -m venv .cache/triton-venv && "
    ".cache/triton-venv/bin/pip install -r load_tests/requirements-triton.txt"
)


class ServerUnavailable(RuntimeError):
    """A baseline that cannot run on this machine; the message says why and how to fix it."""


class NotReady(RuntimeError):
    """A started server exited before it answered, or did not answer as asked in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_answer(
    process: subprocess.Popen[bytes],
    url: str,
    *,
    since: float,
    timeout: float,
    log_tail: Callable[[], str],
    name: str = "the server",
    status: int = 200,
    request_timeout: float = 2.0,
    interval: float = 0.1,
) -> httpx.Response:
    """Poll `url` until it answers `status`, for up to `timeout` seconds after `since` (a
    `time.monotonic()` instant): how the benchmarks and the tests wait for the servers they start.

    Raises:
        NotReady: `process` exited first, or `url` did not answer `status` in time; the message ends
            with `log_tail()`.
    """
    deadline = since + timeout
    last = "no answer"
    with httpx.Client(timeout=request_timeout) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise NotReady(
                    f"{name} exited with {process.returncode} before {url} answered {status}:\n{log_tail()}"
                )
            try:
                response = client.get(url)
                if response.status_code == status:
                    return response
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(interval)
    raise NotReady(f"{url} did not answer {status} within {timeout:.0f} s (last: {last}):\n{log_tail()}")


def stop_tree(
    process: subprocess.Popen[bytes],
    tree: Iterable[psutil.Process],
    stop_signal: int = signal.SIGTERM,
    timeout: float = 30.0,
) -> None:
    """Ask `process` to stop with `stop_signal`, kill it after `timeout`, then kill what of `tree` lives.

    The tree is recorded while the server runs: BentoML's and PyTriton's workers run in sessions of
    their own, and psutil remembers each process's start time, so a recycled pid is never killed.
    """
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    _, alive = psutil.wait_procs(list(tree), timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)  # gone before the caller removes their files


@dataclass
class ServerProcess:
    """One started server: its URL, its log, and the process tree to profile and stop."""

    name: str
    url: str
    ready_path: str
    process: subprocess.Popen[bytes]
    log_path: Path
    #: What asks the parent to shut down cleanly.
    stop_signal: int = signal.SIGTERM
    #: time.monotonic() just before the process was started, for the cold-start figure.
    started: float = field(default_factory=time.monotonic)
    #: A folder the server works in, removed after it stops (even when it had to be killed).
    scratch: Path | None = None
    _tree: dict[int, psutil.Process] = field(default_factory=dict)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def processes(self) -> list[psutil.Process]:
        """The live processes of the tree (the parent first), recorded for cleanup as a side effect."""
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            self._tree.setdefault(root.pid, root)
            for child in root.children(recursive=True):
                self._tree.setdefault(child.pid, child)
        return [proc for proc in self._tree.values() if proc.is_running()]

    def wait_ready(self, timeout: float) -> float:
        """Poll `ready_path` until it answers 200.

        Returns:
            seconds from process start to the first 200: the cold start.

        Raises:
            NotReady: the process exited, or was not ready within `timeout` (with its log tail).
        """
        wait_for_answer(
            self.process,
            self.url + self.ready_path,
            since=self.started,
            timeout=timeout,
            log_tail=self.log_tail,
            name=self.name,
        )
        elapsed = time.monotonic() - self.started
        self.processes()
        return elapsed

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop of the parent, then SIGKILL for whatever of the recorded tree survives."""
        self.processes()
        stop_tree(self.process, self._tree.values(), self.stop_signal, timeout)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


#: Set in a process that imported the service (`eluserve.service.control`): a server started with it
#: would share that server's control state and metrics folder instead of making its own.
PER_SERVER_ENVIRONMENT = ("ELUSERVE_CONTROL_DIR", "PROMETHEUS_MULTIPROC_DIR")


def inherited_environment() -> dict[str, str]:
    """This process's environment without what belongs to one server."""
    return {key: value for key, value in os.environ.items() if key not in PER_SERVER_ENVIRONMENT}


def _spawn(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    log_dir: Path,
    url: str,
    ready_path: str,
    stop_signal: int = signal.SIGTERM,
) -> ServerProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env={**inherited_environment(), "BENTOML_DO_NOT_TRACK": "True", "PYTHONUNBUFFERED": "1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return ServerProcess(name, url, ready_path, process, log_path, stop_signal, started)


def start_service(model: Path, log_dir: Path, env: Mapping[str, str] | None = None) -> ServerProcess:
    """`bentoml serve .` (the bentofile's service), as README documents it, with ELUSERVE_MODEL=model.

    `env` adds or overrides ELUSERVE_* settings (batching, workers, threads) for experiments.
    """
    port = free_port()
    # `python -m bentoml` rather than the console script beside the interpreter: a --target install
    # (the GPU check's) puts the script elsewhere.
    command = [sys.executable, "-m", "bentoml", "serve", ".", "--host", "127.0.0.1", "--port", str(port)]
    return _spawn(
        "service",
        command,
        {"ELUSERVE_MODEL": str(model), **(env or {})},
        log_dir,
        f"http://127.0.0.1:{port}",
        "/readyz",
    )


def start_naive(model: Path, log_dir: Path) -> ServerProcess:
    """`load_tests.naive_server` under uvicorn, one worker."""
    port = free_port()
    command = [sys.executable, "-m", "load_tests.naive_server", "--model", str(model), "--port", str(port)]
    return _spawn("naive", command, {}, log_dir, f"http://127.0.0.1:{port}", "/readyz")


def triton_python(explicit: str | None = None) -> Path:
    """The interpreter of an environment with nvidia-pytriton.

    In order: `explicit`, $ELUSERVE_TRITON_PYTHON, `.cache/triton-venv`, this interpreter.

    Raises:
        ServerUnavailable: none has PyTriton; the message says how to make one.
    """
    candidates = [explicit, os.environ.get("ELUSERVE_TRITON_PYTHON"), str(TRITON_VENV_PYTHON), sys.executable]
    for candidate in candidates:
        if not candidate or not Path(candidate).is_file():
            continue
        probe = subprocess.run(
            [candidate, "-c", "import pytriton.triton"], capture_output=True, check=False, timeout=60
        )
        if probe.returncode == 0:
            return Path(candidate)
    raise ServerUnavailable(
        "no Python environment with nvidia-pytriton was found (PyTriton pins numpy<2, the project "
        f"runs numpy 2, so it lives in an environment of its own); create it with: {TRITON_SETUP_HINT}"
    )


def start_triton(model: Path, log_dir: Path, python: Path, max_batch_size: int = 64) -> ServerProcess:
    """`load_tests.triton_server` (PyTriton) under `python`, with its libpython on LD_LIBRARY_PATH."""
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    library_path = ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    command = [
        str(python),
        "-m",
        "load_tests.triton_server",
        "--model",
        str(model),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--max-batch-size",
        str(max_batch_size),
    ]
    # A workspace of our own rather than one in ~/.cache/pytriton, so that a server that had to be
    # killed leaves nothing behind; short, because it holds Unix sockets (paths of at most 107 bytes).
    scratch = Path(tempfile.mkdtemp(prefix="eluserve-triton-"))
    command += ["--workspace", str(scratch / "workspace")]
    env = {"LD_LIBRARY_PATH": library_path, "PYTHONPATH": str(REPO_ROOT)}
    server = _spawn(
        "triton",
        command,
        env,
        log_dir,
        f"http://127.0.0.1:{http_port}",
        TRITON_MODEL_PATH + "/ready",
        stop_signal=signal.SIGINT,
    )
    server.scratch = scratch
    return server
