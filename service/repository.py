"""The model repository: every model in a folder served at once, loaded and unloaded without a restart.

Layout (Triton's, with the layout that ships today kept as the one-version case)::

    <repository>/<name>/model.onnx              one version: the `version` in the ONNX metadata
    <repository>/<name>/<version>/model.onnx    several versions, one folder each

The folder names are the model's identity in the routes, so they must agree with the file's metadata
(`name`, and `version` for version folders); a file that disagrees, or that is not a readable model,
is listed in the index as unavailable with the reason and is never served. The latest version of a
model is the largest number, or (for versions that are not all numbers) the last in string order.

Each HTTP worker holds its own `ModelRegistry`: per loaded version, one `Frontend` and one adaptive
`Batcher` over a session of its own, or, with shared device batching, a `SharedBatcher` whose batches
run in the server's device host (`eluserve.service.device.host`). A (re)load builds and warms the new
sessions first, then swaps them in under a lock; a request holds a lease on the version it started on,
and a replaced version is closed only once its last lease is returned, so requests in flight finish on
the version they started on. A load that fails leaves what was serving untouched.

Sessions are created in one place, `open_session`, so that engine choices reach every model.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eluserve.core.contract import MODEL_FILE, ModelMetadata, read_model_info
from eluserve.core.engines import require_precision
from eluserve.core.errors import ClientError, ConfigError, ModelFormatError
from eluserve.core.session import CPU, ModelSession
from eluserve.service import metrics
from eluserve.service.api.classify import Frontend
from eluserve.service.batching import Batcher
from eluserve.service.config import Settings
from eluserve.service.device.client import DeviceLink, SharedBatcher
from eluserve.service.runtime import accept_balance

logger = logging.getLogger(__name__)

#: Seconds a replaced or unloaded version waits for its requests in flight before it is closed anyway.
RETIRE_TIMEOUT_S = 60.0


class ModelNotFound(ClientError):
    """A model or version that the service does not serve (unknown, unloaded or unavailable)."""

    CODE = "model_not_found"

    def __init__(self, message: str) -> None:
        super().__init__(self.CODE, message, 404)


class ModelLoadError(Exception):
    """A model that could not be loaded; the message names the file and what is wrong with it."""


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key of versions: numbers numerically, before names in string order."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


@dataclass(frozen=True)
class RepositoryEntry:
    """What the repository holds for one model name."""

    name: str
    #: version → model file, for the files that follow the contract and agree with their folders.
    versions: Mapping[str, Path]
    #: One line per file that cannot be served: the file and why.
    problems: tuple[str, ...] = ()

    @property
    def latest(self) -> str | None:
        return max(self.versions, key=version_key) if self.versions else None


def _checked_info(model_file: Path, name: str, version: str | None) -> ModelMetadata:
    info = read_model_info(model_file)
    if info.name != name:
        raise ModelFormatError(f"{model_file}: metadata name {info.name!r} differs from its folder {name!r}")
    if version is not None and info.version != version:
        raise ModelFormatError(
            f"{model_file}: metadata version {info.version!r} differs from its folder {version!r}"
        )
    return info


def scan_model(folder: Path) -> RepositoryEntry:
    """Read one model folder (`<name>/model.onnx` and/or `<name>/<version>/model.onnx`)."""
    name = folder.name
    candidates: list[tuple[Path, str | None]] = []
    if (folder / MODEL_FILE).is_file():
        candidates.append((folder / MODEL_FILE, None))
    if folder.is_dir():
        candidates += [
            (sub / MODEL_FILE, sub.name) for sub in sorted(folder.iterdir()) if (sub / MODEL_FILE).is_file()
        ]
    versions: dict[str, Path] = {}
    problems: list[str] = []
    if not candidates:
        problems.append(f"{folder}: no {MODEL_FILE} in it or in a version folder below it")
    for model_file, version in candidates:
        try:
            info = _checked_info(model_file, name, version)
        except (OSError, ModelFormatError) as exc:
            problems.append(str(exc))
            continue
        if info.version in versions:
            problems.append(f"{model_file}: version {info.version} is also {versions[info.version]}")
            continue
        versions[info.version] = model_file
    return RepositoryEntry(name, versions, tuple(problems))


def scan_repository(root: Path) -> dict[str, RepositoryEntry]:
    """Every model folder under `root` (folders holding no model file at any level are skipped)."""
    entries = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith((".", "_")):
            entry = scan_model(folder)
            if entry.versions or any(folder.rglob(MODEL_FILE)):
                entries[entry.name] = entry
    return entries


def open_session(
    model_file: Path, settings: Settings, workers: int, server_pid: int | None = None
) -> ModelSession:
    """The one place where the service creates an inference session.

    The engine and precision are the settings' (`eluserve.core.engines`); the processes of one
    `bentoml serve` (`server_pid`, by default this process's parent: a worker's) agree on one `auto`
    choice per model file, so that they all report and run the same engine.
    """
    return ModelSession.from_path(
        model_file,
        providers=settings.provider_list(),
        intra_op_threads=settings.threads_per_worker(workers),
        engine=settings.engine,
        precision=settings.precision,
        agree_with=f"bentoml-serve-{server_pid or os.getppid()}",
    )


@dataclass(eq=False)
class ServedVersion:
    """One loaded version in one worker: its batcher and HTTP frontend, and its session if it has one."""

    info: ModelMetadata
    batcher: Batcher | SharedBatcher
    frontend: Frontend
    #: The worker's own session; None with shared device batching (the device host holds it).
    session: ModelSession | None = None
    loaded_at: float = field(default_factory=time.time)
    #: Requests that hold this version now (changed under the registry's lock).
    leases: int = 0

    @property
    def provider(self) -> str:
        """The execution provider (or OpenVINO device) that runs the version."""
        return self.info.provider or CPU

    def warm_up(self, settings: Settings) -> None:
        """Warm up the worker's own session; a shared one was warmed by the host as it loaded it."""
        if self.session is not None:
            warm_up(self.session, settings)


def warm_up(session: ModelSession, settings: Settings, largest: int | None = None) -> None:
    """Warm-up passes at batch 1 and the largest batch (`largest`, default `max_batch_size`)."""
    session.warm_up(
        batch_sizes=sorted({1, settings.max_batch_size, largest or settings.max_batch_size}),
        rounds=settings.warmup_rounds,
        min_seconds=settings.warmup_min_seconds,
    )


def serve_version(
    model_file: Path, settings: Settings, workers: int, *, warm: bool = True, link: DeviceLink | None = None
) -> ServedVersion:
    """Open, wrap and (`warm`) warm up one version; nothing is published until this returns.

    With a `link` (shared device batching) the device host opens (and warms up) the session, and this
    worker only counts the images it sent.
    """
    if link is not None:
        shared = SharedBatcher(link, model_file, max_latency_s=settings.max_latency_ms / 1000)
        metrics.init_metrics(shared.info)
        return ServedVersion(shared.info, shared, Frontend(shared.info, settings, infer=shared))
    session = open_session(model_file, settings, workers)
    info = session.info
    metrics.init_metrics(info)
    inference = metrics.INFERENCE_DURATION.labels(
        model=info.name, version=info.version, provider=session.provider
    )
    batch_size = metrics.BATCH_SIZE.labels(model=info.name, version=info.version)
    worker_images = metrics.WORKER_IMAGES.labels(worker=str(accept_balance.worker_index() or 0))

    def observe(images: int, seconds: float) -> None:
        batch_size.observe(images)
        inference.observe(seconds)
        worker_images.inc(images)

    batcher = Batcher(
        session.predict,
        max_batch_size=settings.max_batch_size,
        max_latency_s=settings.max_latency_ms / 1000,
        observe=observe,
    )
    if warm:
        warm_up(session, settings)
    return ServedVersion(info, batcher, Frontend(info, settings, infer=batcher), session)


class ModelRegistry:
    """The models one worker serves, by name and version; see the module docstring."""

    def __init__(self, settings: Settings, workers: int, link: DeviceLink | None = None) -> None:
        self.settings = settings
        self.workers = workers
        #: The device host link with shared device batching; None when each worker runs its sessions.
        self.link = link
        self.root = settings.repository_dir()
        self.pinned = settings.pinned_model_file()
        self.default_name = settings.default_model_name()
        self._models: dict[str, dict[str, ServedVersion]] = {}
        self._lock = threading.Lock()
        #: Serialises loads and unloads (a request and the control poller may ask at once).
        self._changes = threading.Lock()

    # --- what is on disk --------------------------------------------------------------------------

    def scan(self) -> dict[str, RepositoryEntry]:
        """The repository's models, plus the model `ELUSERVE_MODEL` names (pinned, outside it)."""
        entries = scan_repository(self.root) if self.settings.serves_repository() else {}
        if self.pinned is not None:
            info = read_model_info(self.pinned)
            entries[info.name] = RepositoryEntry(info.name, {info.version: self.pinned})
        return entries

    # --- requests -----------------------------------------------------------------------------------

    def acquire(self, name: str | None = None, version: str | None = None) -> ServedVersion:
        """The version a request runs on (default model, latest version when None); `release` it.

        Raises:
            ModelNotFound: the model or version is not loaded.
        """
        with self._lock:
            served = self._find(name or self.default_name, version)
            served.leases += 1
        return served

    def release(self, served: ServedVersion) -> None:
        with self._lock:
            served.leases -= 1

    @contextlib.contextmanager
    def lease(self, name: str | None = None, version: str | None = None) -> Iterator[ServedVersion]:
        """`acquire` and `release` around a block."""
        served = self.acquire(name, version)
        try:
            yield served
        finally:
            self.release(served)

    def _find(self, name: str, version: str | None) -> ServedVersion:
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model {name!r} is not loaded; loaded models: {known} (GET /models)")
        if version is None:
            return versions[max(versions, key=version_key)]
        if version not in versions:
            known = ", ".join(sorted(versions, key=version_key))
            raise ModelNotFound(f"model {name!r} has no loaded version {version!r}; loaded: {known}")
        return versions[version]

    def loaded(self) -> dict[str, dict[str, ServedVersion]]:
        with self._lock:
            return {name: dict(versions) for name, versions in self._models.items()}

    def is_loaded(self, name: str, version: str | None = None) -> bool:
        with self._lock:
            versions = self._models.get(name, {})
            return bool(versions) and (version is None or version in versions)

    def describe(self, name: str) -> dict[str, Any]:
        """`GET /models/{name}`: the versions served and what runs them."""
        with self._lock:
            versions = dict(self._models.get(name, {}))
        if not versions:
            raise ModelNotFound(f"model {name!r} is not loaded; GET /models lists what is")
        ordered = sorted(versions, key=version_key)
        return {
            "name": name,
            "default": name == self.default_name,
            "latest_version": ordered[-1],
            "state": "READY",
            "versions": [
                {
                    "version": version,
                    "model": versions[version].info.tag,
                    "state": "READY",
                    "execution_provider": versions[version].provider,
                    "path": versions[version].info.path,
                    "loaded_at": versions[version].loaded_at,
                }
                for version in ordered
            ],
        }

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: every model on disk and every version, with its state."""
        loaded = self.loaded()
        rows: list[dict[str, str]] = []
        for name, entry in sorted(self.scan().items()):
            for version in sorted(entry.versions, key=version_key):
                ready = version in loaded.get(name, {})
                rows.append(
                    {"name": name, "version": version, "state": "READY" if ready else "UNAVAILABLE"}
                    | ({} if ready else {"reason": "unloaded"})
                )
            rows += [{"name": name, "state": "UNAVAILABLE", "reason": problem} for problem in entry.problems]
        return rows

    # --- changes ------------------------------------------------------------------------------------

    def load_all(self, choose: Callable[[Iterable[str]], Collection[str]] = set) -> None:
        """Load the models `choose` picks from those on disk (default: all; the default model always), not
        warmed up (`warm_up_all` does that, while the worker already answers /livez); a broken model is
        logged, not fatal."""
        entries = self.scan()
        chosen = choose(entries)
        for name, entry in entries.items():
            if name not in chosen and name != self.default_name:
                continue
            for problem in entry.problems:
                logger.warning("model %s: %s is not served", name, problem)
            try:
                self.load(name, strict=False, warm=False)
            except ModelLoadError:
                if name == self.default_name:
                    raise
                logger.exception("model %s is not served", name)

    def warm_up_all(self) -> None:
        """Warm up every loaded version (the first requests then do not pay for lazy initialisation)."""
        for versions in self.loaded().values():
            for served in versions.values():
                served.warm_up(self.settings)

    def load(self, name: str, *, strict: bool = True, warm: bool = True) -> list[str]:
        """(Re)load every version of `name` from disk: built and warmed first, then swapped in.

        `strict` (an operator's load) refuses the whole model when any of its files is unusable, so a
        broken new version is reported rather than silently skipped; at start-up the usable versions
        are served and the others logged.

        Returns:
            the versions now served.

        Raises:
            ModelNotFound: the repository has no such model folder.
            ModelLoadError: naming the file that failed; what was serving stays.
        """
        with self._changes:
            entry = self.scan().get(name)
            if entry is None:
                raise ModelNotFound(f"the repository {self.root} has no model {name!r}")
            if not entry.versions or (strict and entry.problems):
                failed = "; ".join(entry.problems)
                metrics.MODEL_LOADS.labels(model=name, version="", outcome="error").inc()
                raise ModelLoadError(f"model {name!r} cannot be loaded: {failed}")
            fresh: dict[str, ServedVersion] = {}
            for version, model_file in entry.versions.items():
                try:
                    fresh[version] = serve_version(
                        model_file, self.settings, self.workers, warm=warm, link=self.link
                    )
                except Exception as exc:
                    metrics.MODEL_LOADS.labels(model=name, version=version, outcome="error").inc()
                    for built in fresh.values():
                        built.batcher.close()
                    raise ModelLoadError(f"loading {model_file} failed: {exc}") from exc
            with self._lock:
                previous = self._models.get(name, {})
                self._models[name] = fresh
            for version, served in fresh.items():
                metrics.MODEL_LOADS.labels(model=name, version=version, outcome="ok").inc()
                metrics.set_model_info(served.info, served.provider, loaded=True)
            for version, old in previous.items():
                if version not in fresh:
                    metrics.set_model_info(old.info, old.provider, loaded=False)
            self._retire(previous.values())
            logger.info("model %s: serving versions %s", name, sorted(fresh, key=version_key))
            return sorted(fresh, key=version_key)

    def unload(self, name: str) -> None:
        """Stop serving `name`; requests in flight on it finish first.

        Raises:
            ModelNotFound: it is not loaded.
            ClientError: it is the default model, which `/classify` serves.
        """
        if name == self.default_name:
            raise ClientError(
                "default_model",
                f"model {name!r} is the default model (ELUSERVE_DEFAULT_MODEL) that /classify serves; "
                "it cannot be unloaded",
                400,
            )
        with self._changes:
            with self._lock:
                previous = self._models.pop(name, None)
            if previous is None:
                raise ModelNotFound(f"model {name!r} is not loaded")
            for version, old in previous.items():
                metrics.MODEL_UNLOADS.labels(model=name, version=version).inc()
                metrics.set_model_info(old.info, old.provider, loaded=False)
            self._retire(previous.values())
            logger.info("model %s: unloaded", name)

    def _retire(self, versions: Any) -> None:
        """Close replaced versions once their last request is answered, off the caller's thread."""
        retired = list(versions)
        if not retired:
            return

        def wait_and_close() -> None:
            deadline = time.monotonic() + RETIRE_TIMEOUT_S
            for served in retired:
                while served.leases and time.monotonic() < deadline:
                    time.sleep(0.02)
                served.batcher.close()
            retired.clear()
            gc.collect()

        threading.Thread(target=wait_and_close, name="eluserve-retire", daemon=True).start()

    def close(self) -> None:
        for versions in self.loaded().values():
            for served in versions.values():
                served.batcher.close()


def check_repository(settings: Settings) -> None:
    """Fail start-up, naming the files, unless the default model can be served.

    Raises:
        ConfigError: the default model is missing from the repository or none of its files is usable.
    """
    registry = ModelRegistry(settings, workers=1)
    entries = registry.scan()
    entry = entries.get(registry.default_name)
    if entry is None or not entry.versions:
        problems = "; ".join(entry.problems) if entry else f"no folder {registry.default_name!r}"
        raise ConfigError(
            f"the default model {registry.default_name!r} cannot be served from {registry.root} "
            f"({problems}); set ELUSERVE_DEFAULT_MODEL to one of {sorted(entries)} "
            "or ELUSERVE_MODEL to a file"
        )
    # A lower precision the default's model card does not allow stops the start-up the same way.
    require_precision(read_model_info(entry.versions[entry.latest]), settings.precision)
    for name, other in entries.items():
        for problem in other.problems:
            logger.warning("model %s: %s", name, problem)
