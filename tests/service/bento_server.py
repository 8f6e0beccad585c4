"""Start and stop real `bentoml serve` processes for the integration tests.

BentoML's arbiter starts its worker processes in sessions of their own, so killing the arbiter's
process group would orphan them: `stop` sends SIGTERM to the arbiter (which stops its workers
gracefully), then kills by pid whatever of the recorded process tree is still alive.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from load_tests import REPO_ROOT
from load_tests.servers import free_port, stop_tree, wait_for_answer
from tests.deadlines import STARTUP_S

BENTOML = str(Path(sys.executable).parent / "bentoml")
SERVICE = "eluserve.service.app:EluClassifier"


@dataclass
class BentoServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    home: Path
    _tree: dict[int, psutil.Process] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def remember_processes(self) -> None:
        """Record the arbiter's process tree while it is alive, to clean up orphans later."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self._tree.setdefault(child.pid, child)

    def wait_for(self, path: str, status: int = 200, timeout: float = STARTUP_S) -> httpx.Response:
        """Poll `path` until it answers `status`; fail with the server log if it does not in time."""
        response = wait_for_answer(
            self.process,
            self.url + path,
            since=time.monotonic(),
            timeout=timeout,
            log_tail=lambda: self.log()[-4000:],
            name="bentoml serve",
            status=status,
            request_timeout=5.0,
            interval=0.2,
        )
        self.remember_processes()
        return response

    def stop(self, timeout: float = 30.0) -> None:
        self.remember_processes()
        stop_tree(self.process, self._tree.values(), timeout=timeout)


def start_server(tmp: Path, env: Mapping[str, str]) -> BentoServer:
    """Start `bentoml serve` on a free port with its own BENTOML_HOME; does not wait for readiness."""
    home = tmp / "bentoml-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ELUSERVE_", "PROMETHEUS_", "BENTOML_"))},
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    log_path = tmp / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [BENTOML, "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return BentoServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path, home=home)


@contextlib.contextmanager
def running_server(tmp: Path, env: Mapping[str, str], timeout: float = STARTUP_S) -> Iterator[BentoServer]:
    """A started server that answered /readyz, stopped (with its whole process tree) afterwards."""
    server = start_server(tmp, env)
    try:
        server.wait_for("/readyz", timeout=timeout)
        yield server
    finally:
        server.stop()
