"""Loads and unloads reach every worker of one server: a shared state file that each worker polls.

A `POST /v2/repository/models/{name}/load` (or `unload`) lands on one HTTP worker. That worker applies
it first (a load builds and warms the new sessions, so a broken file is answered with its error and
changes nothing anywhere), then records it in `state.json`, in a folder that the workers of one server
share, under an exclusive `flock`, with a new generation number. Every worker checks the file's
(mtime, size) every `control_poll_s` seconds and applies the changes of generations it has not seen;
after each it writes the generation it reached to `ack-<pid>.json`. The request that made the change
waits until every live worker has acknowledged it, so its 200 means that every worker serves the new
state.

Why a polled file rather than a signal or a socket between workers: BentoML's workers are siblings
started by its arbiter with no channel between them; a signal carries no model name, and a file also
lets a restarted worker start in the current state (it reads the file before it turns ready). The
check is one `stat()` (3 µs, measured on the shared 2-core machine); at the 0.25 s default a change
reaches the other workers within a quarter second plus their own load time.

The folder is created by the `bentoml serve` process when it imports the service, and passed to the
workers it starts in ``ELUSERVE_CONTROL_DIR`` (they inherit its environment).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from eluserve.service.processes import pid_alive

logger = logging.getLogger(__name__)

CONTROL_DIR_ENV = "ELUSERVE_CONTROL_DIR"
LOADED = "loaded"
UNLOADED = "unloaded"


def ensure_control_dir() -> Path:
    """The shared folder named by ``ELUSERVE_CONTROL_DIR``, created (and exported) when unset."""
    value = os.environ.get(CONTROL_DIR_ENV)
    if not value:
        value = tempfile.mkdtemp(prefix="eluserve-control-")
        os.environ[CONTROL_DIR_ENV] = value
        # The process that made it outlives its server's workers (`bentoml serve` stops them first):
        # removed when it exits, the folder and the metrics files in it do not pile up in /tmp, one per
        # start. A folder the operator named is theirs to keep.
        atexit.register(shutil.rmtree, value, ignore_errors=True)
    folder = Path(value)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ControlState:
    """`state.json`: ``{"generation": g, "initial": [names], "models": {name: {"state", "generation"}}}``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "state.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.folder / "state.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def signature(self) -> tuple[int, int] | None:
        """Changes whenever the state file is rewritten; None while there is none."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"generation": 0, "models": {}}

    def initial(self, on_disk: Iterable[str]) -> dict[str, Any]:
        """The state, with the models on disk recorded as `initial` by the first worker to ask."""
        with self._locked():
            current = self.read()
            if "initial" not in current:
                current["initial"] = sorted(on_disk)
                self._write(current)
        return current

    def _write(self, current: dict[str, Any]) -> None:
        scratch = self.path.with_name(f".state-{os.getpid()}.json")
        scratch.write_text(json.dumps(current))
        os.replace(scratch, self.path)

    def record(self, name: str, state: str) -> int:
        """Record that `name` is now `state`; returns the new generation."""
        with self._locked():
            current = self.read()
            generation = int(current["generation"]) + 1
            current["generation"] = generation
            current["models"][name] = {"state": state, "generation": generation}
            self._write(current)
        return generation

    def acknowledge(self, generation: int, errors: dict[str, str]) -> None:
        """This worker has applied everything up to `generation` (`errors`: what failed, by model)."""
        ack = self.folder / f"ack-{os.getpid()}.json"
        scratch = self.folder / f".ack-{os.getpid()}.json"
        scratch.write_text(json.dumps({"generation": generation, "errors": errors}))
        os.replace(scratch, ack)

    def acknowledgements(self) -> dict[int, dict[str, Any]]:
        """The last acknowledgement of every worker process that is still alive."""
        acks = {}
        for path in self.folder.glob("ack-*.json"):
            pid = int(path.stem.removeprefix("ack-"))
            if not pid_alive(pid):
                path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                acks[pid] = json.loads(path.read_text())
        return acks

    def wait_for_workers(self, generation: int, workers: int, timeout_s: float) -> tuple[int, list[str]]:
        """Wait until `workers` live workers acknowledged `generation` (or `timeout_s` passed).

        Returns:
            how many did, and the errors they reported for it.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            done = [ack for ack in self.acknowledgements().values() if ack["generation"] >= generation]
            if len(done) >= workers or time.monotonic() >= deadline:
                errors = [message for ack in done for message in ack.get("errors", {}).values()]
                return len(done), errors
            time.sleep(0.05)


#: Applies one recorded change in this worker: (model name, LOADED or UNLOADED).
Apply = Callable[[str, str], None]


class Follower:
    """One worker's side: applies changes recorded by other workers, and records its own."""

    def __init__(self, state: ControlState, apply: Apply, poll_s: float) -> None:
        self.state = state
        self._apply = apply
        self.poll_s = poll_s
        self._applied: dict[str, int] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._stop = threading.Event()

    def to_serve(self, on_disk: Iterable[str]) -> frozenset[str]:
        """The models a starting worker loads, so that it serves what the others serve.

        The first worker records the models on disk at start (`initial`); a worker (re)started later
        serves those, plus what was loaded since, minus what was unloaded since, even if other model
        folders have appeared on disk meanwhile. Marks every recorded change as applied.
        """
        current = self.state.initial(on_disk)
        with self._lock:
            for name, entry in current["models"].items():
                self._applied[name] = entry["generation"]
            self._generation = current["generation"]
        self._signature = self.state.signature()
        states = {name: entry["state"] for name, entry in current["models"].items()}
        serve = {name for name in current["initial"] if states.get(name, LOADED) == LOADED}
        return frozenset(serve | {name for name, state in states.items() if state == LOADED})

    def start(self) -> None:
        self.state.acknowledge(self._generation, {})
        threading.Thread(target=self._run, name="eluserve-control", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def changed(self, name: str, state: str) -> int:
        """Record a change this worker has applied itself; returns its generation."""
        with self._lock:
            generation = self.state.record(name, state)
            self._applied[name] = generation
        return generation

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:
                logger.exception("applying the shared model state failed")

    def poll(self) -> None:
        """Apply the changes recorded since the last poll (a no-op when the file is unchanged)."""
        signature = self.state.signature()
        if signature == self._signature:
            return
        self._signature = signature
        current = self.state.read()
        todo = []
        with self._lock:
            for name, entry in current["models"].items():
                if entry["generation"] > self._applied.get(name, 0):
                    self._applied[name] = entry["generation"]
                    todo.append((name, entry["state"]))
        errors = {}
        for name, state in todo:
            try:
                self._apply(name, state)
            except Exception as exc:
                logger.exception("worker %d: %s of model %s failed", os.getpid(), state, name)
                errors[name] = f"worker {os.getpid()}: {exc}"
        self._generation = max(self._generation, current["generation"])
        self.state.acknowledge(self._generation, errors)
