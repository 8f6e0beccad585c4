"""`eluserve classify --engine ray`: the same rows as the in-process engine, from a Ray Data pipeline.

    eluserve classify photos/ -o rows.parquet --engine ray                        # a local Ray
    eluserve classify s3://bucket/photos/ -o rows.parquet --engine ray --ray-address auto  # a cluster

The pipeline (one Ray Data dataset per window of `WINDOW` files):

    paths (listed here, in input order) → read + decode + single crop in CPU tasks (`load_image`, the
    service's code, with the model's rule and the service's `Limits`) → an actor pool of ONNX Runtime
    sessions (`ModelSession`, on a GPU each where the cluster has GPUs) → rows, back here in input order

Rows come back in input order (`preserve_order`), so `--resume`, CSV/JSONL/Parquet and `--evaluate` work
as with the other engines: this engine only implements `Engine.classify`. A bad file is a row with the
error code the in-process engine gives (decoding never raises out of a task), never a failed job.

Local paths are listed by the in-process engine's walker (same files, same order, same rules for hidden
entries and symlink loops); URIs (`s3://`, `gs://`, `file://`, anything pyarrow's file systems read) are
listed and read with pyarrow on the workers, so the driver never reads an image. The model file travels
to the workers through Ray's object store, so nodes need eluserve installed but no copy of the model.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from eluserve.classify.engines import DEFAULT_BATCH_SIZE, checked_top_k, usage_errors_of_loading
from eluserve.classify.files import UsageError, chunks, iter_image_files, read_image_file
from eluserve.classify.rows import Row
from eluserve.core.contract import ModelMetadata, read_model_info, resolve_model_file
from eluserve.core.engines import AUTO
from eluserve.core.errors import ClientError
from eluserve.core.preprocessing import Limits, PreprocessingRule, load_image
from eluserve.core.results import format_results
from eluserve.core.session import CUDA, ModelSession

if TYPE_CHECKING:
    import pyarrow.fs

logger = logging.getLogger(__name__)

#: Files per Ray Data dataset. The path list of a window is built on the driver (~100 bytes a path),
#: and each window starts its actor pool anew (seconds), so windows are large but bounded.
WINDOW = 100_000


def require_ray() -> ModuleType:
    """`import ray`, or a `UsageError` saying how to install it (the serving install leaves Ray out)."""
    # Ray's usage statistics would phone home from every node started here.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray Data ({exc}): pip install 'eluserve[distributed]'") from exc
    return ray


def is_uri(path: str) -> bool:
    """`s3://bucket/key`, `file:///data`: read with pyarrow's file systems, not `open`."""
    return "://" in path


@functools.lru_cache(maxsize=16)
def _filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(file system, its path for `location`) per `scheme://host`, once per process: creating an S3 file
    system resolves the bucket's region, a round trip that one per file would pay again."""
    import pyarrow.fs

    filesystem, base = pyarrow.fs.FileSystem.from_uri(location + "/")
    return filesystem, base.rstrip("/")


def _split_uri(uri: str) -> tuple[pyarrow.fs.FileSystem, str, str]:
    """(file system, path inside it, prefix that turns such a path back into a URI)."""
    import pyarrow.fs

    try:
        filesystem, inner = pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for unknown schemes
        raise UsageError(f"cannot read {uri}: {exc}") from exc
    trimmed = uri.rstrip("/")
    prefix = trimmed[: -len(inner)] if inner and trimmed.endswith(inner) else uri.split("://", 1)[0] + "://"
    return filesystem, inner, prefix


def open_uri(uri: str) -> BinaryIO:
    """Open a URI for reading on a worker; missing files raise FileNotFoundError like `open`.

    `s3://bucket/key` → the bucket's file system, path `bucket/key`; `file:///a/b` → `/a/b`;
    `hdfs://host:port/a` → `/a`.
    """
    scheme, _, rest = uri.partition("://")
    host = "" if scheme in ("file", "local") else rest.split("/", 1)[0]
    filesystem, base = _filesystem(f"{scheme}://{host}")
    return filesystem.open_input_stream(base + rest[len(host) :])  # type: ignore[return-value]


def iter_uri_files(uri: str, extensions: Container[str], recursive: bool = True) -> Iterator[str]:
    """Image files under a URI, sorted by path; a URI naming a file is yielded as given.

    The rules of the local walker: entries whose name starts with "." (and what lies below them) are
    skipped, files are kept by extension.
    """
    import pyarrow.fs

    filesystem, root, prefix = _split_uri(uri)
    try:
        info = filesystem.get_file_info(root)
        if info.type == pyarrow.fs.FileType.NotFound:
            raise UsageError(f"no such file or folder: {uri}")
        if info.type != pyarrow.fs.FileType.Directory:
            yield uri
            return
        listing = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=recursive))
    except OSError as exc:
        raise UsageError(f"cannot list {uri}: {exc}") from exc
    for entry in sorted(listing, key=lambda entry: entry.path):
        relative = entry.path[len(root) :].lstrip("/")
        if entry.type != pyarrow.fs.FileType.File or any(
            part.startswith(".") for part in relative.split("/")
        ):
            continue
        if os.path.splitext(entry.base_name)[1][1:].lower() in extensions:
            yield prefix + entry.path


def list_files(roots: Sequence[str], extensions: Container[str], recursive: bool = True) -> Iterator[str]:
    """Local roots through the in-process engine's walker, URIs through pyarrow, in the order given."""
    if not any(map(is_uri, roots)):
        yield from iter_image_files(roots, extensions, recursive=recursive)
        return
    for root in roots:
        if is_uri(root):
            yield from iter_uri_files(root, extensions, recursive=recursive)
        else:
            yield from iter_image_files([root], extensions, recursive=recursive)


def read_file(path: str, max_bytes: int) -> bytes:
    """A local path or a URI, with the in-process engine's bounds and error codes."""
    return read_image_file(path, max_bytes, open_uri if is_uri(path) else None)


def _error_json(exc: ClientError) -> str:
    return json.dumps({"error": {"code": exc.code, "message": exc.message}})


def decode_batch(
    batch: dict[str, np.ndarray], rule: PreprocessingRule, limits: Limits
) -> dict[str, np.ndarray]:
    """Ray task: read, decode and single-crop each file as the service would.

    Paths travel as bytes (`os.fsencode`): Arrow strings are UTF-8, file names need not be.
    Returns the rows' indices, the crops (zeros where a file failed) and `result`: "" for a crop to
    classify, or the failed file's result object as JSON (the in-process engine's code and message).
    """
    paths = batch["path"]
    height, width = rule.crop
    crops = np.zeros((len(paths), height, width, 3), dtype=np.uint8)
    results = np.full(len(paths), "", dtype=object)
    for slot, path in enumerate(paths):
        try:
            crops[slot] = load_image(read_file(os.fsdecode(path), limits.max_image_bytes), rule, limits)
        except ClientError as exc:
            results[slot] = _error_json(exc)
    return {"index": batch["index"], "image": crops, "result": results}


class InferenceActor:
    """Ray actor: one ONNX Runtime session, loaded once, classifying the crops of each batch.

    The model's bytes come from the object store (`model` is their reference) and go through a private
    temporary file, removed once loaded: ONNX Runtime loads by path, and the node need not share the
    driver's file system.
    """

    def __init__(self, model: Any, suffix: str, top_k: int, threads: int, runtime: str) -> None:
        import ray

        with tempfile.TemporaryDirectory(prefix="eluserve-ray-") as folder:
            model_file = Path(folder) / f"model{suffix}"
            model_file.write_bytes(ray.get(model))
            self.session = ModelSession.from_path(model_file, intra_op_threads=threads, engine=runtime)
        if ray.get_gpu_ids() and self.session.provider != CUDA:
            logger.warning(
                "an inference actor was given a GPU but runs on %s: install onnxruntime-gpu on this node",
                self.session.provider,
            )
        self.session.warm_up()
        self.top_k = top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = np.array(batch["result"], dtype=object)
        todo = np.flatnonzero(results == "")
        if len(todo):
            probs = self.session.predict(np.ascontiguousarray(batch["image"][todo]))
            for slot, result in zip(
                todo, format_results(probs, self.session.labels, self.top_k), strict=True
            ):
                results[slot] = json.dumps(result)
        return {"index": batch["index"], "result": results}


@dataclass(frozen=True)
class RayResources:
    """What the user asked for; None: decided from the cluster by `plan`."""

    actors: int | None = None
    gpus_per_actor: float | None = None


@dataclass(frozen=True)
class Plan:
    """The resources one run asks for, resolved against the cluster."""

    actors: int
    gpus_per_actor: float
    #: CPUs each inference actor reserves.
    cpus_per_actor: float
    #: Its session's intra-op threads.
    threads: int
    #: CPUs each decoding task reserves.
    decode_cpus: float


#: Intra-op threads of a CPU inference actor (fewer on smaller nodes). On 32×32 crops a session's
#: img/s grows little past a few threads, so a large node gets several actors rather than one wide one.
ACTOR_THREADS = 4
#: The share of a CPU node left to decoding. Decoding a CIFAR JPEG costs 0.25-0.6 ms and the default
#: model's inference 4.5-6 ms per image on one core (measured on the shared 2-core project machine), so
#: decoding needs about a tenth of the cores. An actor reserves its threads less this share: on 2 cores,
#: one actor of 2 threads (1.75 CPUs) ran at 0.81× the in-process engine's img/s on 2 000 files, one of
#: 1 thread at 0.40×, two of 1 thread at 0.40× (the same machine, minutes apart).
DECODE_SHARE = 0.125
#: CPUs one decoding task reserves: fractions, so that decoding fits beside the actors.
DECODE_CPUS = 0.25


def plan(node_cpus: Sequence[float], gpus: float, resources: RayResources) -> Plan:
    """Actor count and sizes from the alive nodes' CPUs and the cluster's GPUs.

    GPU actors (default when the cluster has GPUs): one per GPU, each reserving one CPU to feed it;
    decoding runs on every CPU left. CPU actors: `ACTOR_THREADS` threads (at most the smallest node's
    CPUs), reserving that less `DECODE_SHARE`, as many as fit on each node.
    """
    gpus_per_actor = (
        resources.gpus_per_actor if resources.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    )
    if gpus_per_actor > 0:
        if gpus < gpus_per_actor:
            raise UsageError(
                f"--ray-gpus-per-actor {gpus_per_actor:g}: the cluster has {gpus:g} GPUs; "
                "pass --ray-gpus-per-actor 0 for CPU actors"
            )
        fitting = int(gpus // gpus_per_actor)
        if (resources.actors or 0) > fitting:
            raise UsageError(
                f"{resources.actors} inference actors of {gpus_per_actor:g} GPUs do not fit on the "
                f"cluster's {gpus:g} GPUs; lower --ray-actors"
            )
        return Plan(resources.actors or fitting, gpus_per_actor, 1.0, 1, DECODE_CPUS)
    # A head node started with --num-cpus=0 (a common way to keep work off it) runs no actor.
    cpu_nodes = [cpus for cpus in node_cpus if cpus > 0]
    threads = max(1, min(ACTOR_THREADS, int(min(cpu_nodes, default=1.0))))
    reserved = threads * (1 - DECODE_SHARE)
    fitting = sum(int(cpus // reserved) for cpus in cpu_nodes)
    if fitting < 1 or (resources.actors or 0) > fitting:
        raise UsageError(
            f"{resources.actors or 1} inference actors of {reserved:g} CPUs do not fit on the cluster's "
            f"nodes ({', '.join(f'{cpus:g}' for cpus in node_cpus)} CPUs); lower --ray-actors"
        )
    return Plan(resources.actors or fitting, 0.0, reserved, threads, DECODE_CPUS)


class RayEngine:
    """Classifies on a Ray cluster: decoding tasks feed an actor pool of inference sessions.

    `connect` starts a local Ray (address None) or joins a cluster; `close` shuts down only a Ray that
    this engine started.
    """

    def __init__(
        self,
        model_file: Path,
        info: ModelMetadata,
        top_k: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        resources: RayResources | None = None,
        runtime: str = AUTO,
    ) -> None:
        self.model_file = model_file
        #: The inference engine each actor opens its session on (`eluserve.core.engines`).
        self.runtime = runtime
        self.info = info
        self.top_k = top_k
        self.batch_size = batch_size
        self.resources = resources or RayResources()
        #: The service's default limits, so that every engine refuses the same files.
        self.limits = Limits()
        self._ray = require_ray()
        self._started = False
        self._model_ref: Any = None
        self.plan: Plan | None = None

    @classmethod
    def load(
        cls,
        model: str | Path,
        top_k: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        resources: RayResources | None = None,
        runtime: str = AUTO,
    ) -> RayEngine:
        """Read the model's metadata here (labels, crop rule); sessions load on the workers."""
        require_ray()
        with usage_errors_of_loading(model):
            model_file = resolve_model_file(model)
            info = read_model_info(model_file)
        return cls(model_file, info, checked_top_k(top_k, info.num_classes), batch_size, resources, runtime)

    def connect(self, address: str | None = None) -> RayEngine:
        """Join the cluster at `address` ("auto", "ray://head:10001", ...), or start a local Ray."""
        ray = self._ray
        # Ray logs each dataset's plan and start at INFO, and warns that its progress bars are off; the
        # command prints its own summary. Errors still show.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UsageError(
                    f"cannot start or reach Ray at {address or 'a new local instance'}: {exc}"
                ) from exc
            self._started = True
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        self.plan = plan(
            [node.get("CPU", 0.0) for node in nodes],
            sum(node.get("GPU", 0.0) for node in nodes),
            self.resources,
        )
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        # One progress bar, `classify_files`' rows: Ray's per-operator bars would fight it for the terminal.
        context.enable_progress_bars = False
        return self

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def model(self) -> str:
        return self.info.tag

    @property
    def labels(self) -> Sequence[str]:
        return self.info.labels

    def classify(self, paths: Iterable[str]) -> Iterator[Row]:
        if self.plan is None:
            self.connect()
        for window in chunks(paths, WINDOW):
            yield from self._classify_window(window)

    def _classify_window(self, paths: list[str]) -> Iterator[Row]:
        ray = self._ray
        assert self.plan is not None
        if self._model_ref is None:
            self._model_ref = ray.put(self.model_file.read_bytes())
        blocks = max(1, math.ceil(len(paths) / self.batch_size))
        dataset = (
            ray.data.from_items(
                [{"index": index, "path": os.fsencode(path)} for index, path in enumerate(paths)],
                override_num_blocks=blocks,
            )
            .map_batches(
                decode_batch,
                batch_size=self.batch_size,
                batch_format="numpy",
                fn_kwargs={"rule": self.info.preprocessing, "limits": self.limits},
                num_cpus=self.plan.decode_cpus,
            )
            .map_batches(
                InferenceActor,
                batch_size=self.batch_size,
                batch_format="numpy",
                fn_constructor_kwargs={
                    "model": self._model_ref,
                    "suffix": self.model_file.suffix,
                    "top_k": self.top_k,
                    "threads": self.plan.threads,
                    "runtime": self.runtime,
                },
                compute=ray.data.ActorPoolStrategy(size=self.plan.actors),
                num_cpus=self.plan.cpus_per_actor,
                num_gpus=self.plan.gpus_per_actor or None,
            )
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for index, result in zip(batch["index"], batch["result"], strict=True):
                yield Row.from_result(paths[index], json.loads(result))
