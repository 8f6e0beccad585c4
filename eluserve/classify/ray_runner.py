"""`eluserve classify --runner ray`: the same rows as the in-process runner, from a Ray Data pipeline.

    eluserve classify photos/ -o rows.parquet --runner ray                        # a local Ray
    eluserve classify s3://bucket/photos/ -o rows.parquet --runner ray --ray-address auto  # a cluster

The pipeline (one Ray Data dataset per window of `WINDOW` files), paths listed here in input order:

    CPU actors (no GPU in the cluster, or --ray-gpus-per-actor 0): an actor pool, one per CPU, each
    running the in-process runner (`LocalRunner`: read + decode + single crop with the service's
    `load_image`, `Limits` and the model's rule, then its `ModelSession`) on blocks of paths
    GPU actors: read + decode + crop in CPU tasks over the whole cluster → an actor pool of sessions,
    one per GPU, fed the crops through the object store

and the result objects come back here, as rows, in input order (`preserve_order`), so `--resume`,
CSV/JSONL/Parquet and `--evaluate` work as with the other runners: this runner only implements
`Runner.classify`. A bad file is a row with the error code the in-process runner gives (decoding never
raises out of a task), never a failed job.

Local paths are listed by the in-process runner's walker (same files, same order, same rules for hidden
entries and symlink loops); URIs (`s3://`, `gs://`, `file://`, anything pyarrow's file systems read) are
listed and read with pyarrow on the workers, so the driver never reads an image (`eluserve.classify.uris`).
The model file travels to the workers through Ray's object store, so nodes need eluserve installed but no
copy of the model. The actor pool is sized from the cluster's resources by `eluserve.classify.ray_plan`.
This is the one module that imports Ray, and only when a `RayRunner` is made (`require_ray`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from eluserve.classify.files import UsageError, chunks
from eluserve.classify.ray_plan import Plan, RayResources, files_per_call, plan
from eluserve.classify.rows import Row
from eluserve.classify.runners import DEFAULT_BATCH_SIZE, LocalRunner, checked_top_k, usage_errors_of_loading
from eluserve.classify.uris import read_file
from eluserve.core.contract import ModelMetadata, read_model_info, resolve_model_file
from eluserve.core.engines import AUTO
from eluserve.core.errors import ClientError
from eluserve.core.preprocessing import Limits, PreprocessingRule, load_image
from eluserve.core.results import format_results
from eluserve.core.session import CUDA, ModelSession

logger = logging.getLogger(__name__)

#: The resource that Ray gives its head node alone (`ray.nodes()`): names a cluster's start.
HEAD_RESOURCE = "node:__internal_head__"

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
        raise UsageError(f"--runner ray needs Ray Data ({exc}): pip install 'eluserve[distributed]'") from exc
    return ray


def _error_json(exc: ClientError) -> str:
    return json.dumps({"error": exc.to_dict()})


def load_session(model: Any, suffix: str, threads: int, engine: str, run: str) -> ModelSession:
    """An actor's session, warmed up, from the model bytes that `model` (an object reference) names.

    The bytes go through a private temporary file, removed once loaded: the engines load by path, and
    the node need not share the driver's file system. The actors that one machine runs for one Ray
    (`run`, `RayRunner.run`) make one `auto` choice per thread count, as a server's workers do: measured
    apart, engines within a few per cent of each other would split them, and one run's rows would come
    from two engines.
    """
    import ray

    with tempfile.TemporaryDirectory(prefix="eluserve-ray-") as folder:
        model_file = Path(folder) / f"model{suffix}"
        model_file.write_bytes(ray.get(model))
        session = ModelSession.from_path(
            model_file, intra_op_threads=threads, engine=engine, agree_with=f"{run}|{threads} threads"
        )
    if ray.get_gpu_ids() and session.provider != CUDA:
        logger.warning(
            "an inference actor was given a GPU but runs on %s: install onnxruntime-gpu on this node",
            session.provider,
        )
    session.warm_up()
    return session


def runs_on(session: ModelSession) -> str:
    """What an actor's `auto` chose, for the summary: "openvino CPU", "onnxruntime CUDAExecutionProvider"."""
    return f"{session.engine} {session.provider}"


class ClassifyActor:
    """Ray actor of CPU plans: the in-process runner (`LocalRunner`) on each block of paths.

    Reading, decoding and inference share the actor's cores as they share the in-process runner's:
    decoding threads fill the next batches while the session runs the current one. Only paths go in and
    only result objects come out, so no crop crosses the object store, and the run is one stage of
    tasks instead of two.
    """

    def __init__(
        self, model: Any, suffix: str, top_k: int, threads: int, engine: str, run: str, batch_size: int
    ) -> None:
        session = load_session(model, suffix, threads, engine, run)
        self.runner = LocalRunner(session, top_k, batch_size, threads, read=read_file)
        self.runs_on = runs_on(session)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Paths travel as bytes (`os.fsencode`): Arrow strings are UTF-8, file names need not be."""
        results = self.runner.results(os.fsdecode(path) for path in batch["path"])
        encoded = np.array([json.dumps(result) for _, result in results], dtype=object)
        return {"index": batch["index"], "result": encoded, "engine": np.full(len(encoded), self.runs_on)}


def decode_batch(
    batch: dict[str, np.ndarray], rule: PreprocessingRule, limits: Limits
) -> dict[str, np.ndarray]:
    """Ray task of GPU plans: read, decode and single-crop each file as the service would.

    Returns the rows' indices, the crops (zeros where a file failed) and `result`: "" for a crop to
    classify, or the failed file's result object as JSON (the in-process runner's code and message).
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
    """Ray actor of GPU plans: one session, loaded once, classifying the crops that decoding tasks made.

    A GPU outruns the few CPUs an actor reserves, so decoding runs in tasks over every CPU of the
    cluster and the crops come to the actor through the object store.
    """

    def __init__(self, model: Any, suffix: str, top_k: int, threads: int, engine: str, run: str) -> None:
        self.session = load_session(model, suffix, threads, engine, run)
        self.top_k = top_k
        self.runs_on = runs_on(self.session)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = np.array(batch["result"], dtype=object)
        todo = np.flatnonzero(results == "")
        if len(todo):
            probs = self.session.predict(np.ascontiguousarray(batch["image"][todo]))
            for slot, result in zip(
                todo, format_results(probs, self.session.labels, self.top_k), strict=True
            ):
                results[slot] = json.dumps(result)
        return {"index": batch["index"], "result": results, "engine": np.full(len(results), self.runs_on)}


class RayRunner:
    """Classifies on a Ray cluster: decoding tasks feed an actor pool of inference sessions.

    `connect` starts a local Ray (address None) or joins a cluster; `close` shuts down only a Ray that
    this runner started.
    """

    def __init__(
        self,
        model_file: Path,
        info: ModelMetadata,
        top_k: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        resources: RayResources | None = None,
        engine: str = AUTO,
    ) -> None:
        self.model_file = model_file
        #: The inference engine each actor opens its session on (`eluserve.core.engines`).
        self.engine = engine
        self.info = info
        self.top_k = top_k
        self.batch_size = batch_size
        self.resources = resources or RayResources()
        #: The service's default limits, so that every runner refuses the same files.
        self.limits = Limits()
        self._ray = require_ray()
        self._started = False
        self._model_ref: Any = None
        self.plan: Plan | None = None
        #: The inference engines the actors ran on ("openvino CPU", ...): each node's `auto` chooses.
        self.runs_on: set[str] = set()
        #: Names the Ray this runner joined to its actors (`connect`), so that those on one machine make
        #: one `auto` choice.
        self.run = f"eluserve-ray-{uuid.uuid4().hex}"

    @classmethod
    def load(
        cls,
        model: str | Path,
        top_k: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        resources: RayResources | None = None,
        engine: str = AUTO,
    ) -> RayRunner:
        """Read the model's metadata here (labels, crop rule); sessions load on the workers."""
        require_ray()
        with usage_errors_of_loading(model):
            model_file = resolve_model_file(model)
            info = read_model_info(model_file)
        return cls(model_file, info, checked_top_k(top_k, info.num_classes), batch_size, resources, engine)

    def connect(self, address: str | None = None) -> RayRunner:
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
        alive = [node for node in ray.nodes() if node["Alive"]]
        # One `auto` choice per machine for as long as this Ray runs, not one per command: on a running
        # cluster the first command's actors measure (0.9 s of one core on the 2-core machine, before
        # any actor of that machine classifies) and later commands take their answer, as a server's
        # workers do for as long as it runs. The head's id changes with each start of the cluster.
        head = next((node["NodeID"] for node in alive if HEAD_RESOURCE in node["Resources"]), None)
        if head is not None:
            self.run = f"eluserve-ray-{head}"
        nodes = [node["Resources"] for node in alive]
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

    def __enter__(self) -> RayRunner:
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
        actor_kwargs = {
            "model": self._model_ref,
            "suffix": self.model_file.suffix,
            "top_k": self.top_k,
            "threads": self.plan.threads,
            "engine": self.engine,
            "run": self.run,
        }
        gpu = self.plan.gpus_per_actor > 0
        block = self.batch_size if gpu else files_per_call(len(paths), self.plan.actors, self.batch_size)
        # CPU actors take one call per block (batch_size=None): a batch size would bundle the blocks,
        # which from_items splits evenly and so makes a little smaller than `block`, two by two. Ray Data
        # wants a batch size for GPU actors.
        blocks = max(1, math.ceil(len(paths) / block))
        dataset = ray.data.from_items(
            [{"index": index, "path": os.fsencode(path)} for index, path in enumerate(paths)],
            override_num_blocks=blocks,
        )
        # No more actors than blocks: each starts a process and a session, and one without a block to
        # classify would only cost that (and make Ray Data warn).
        actors = ray.data.ActorPoolStrategy(size=min(self.plan.actors, blocks))
        if gpu:
            dataset = dataset.map_batches(
                decode_batch,
                batch_size=block,
                batch_format="numpy",
                fn_kwargs={"rule": self.info.preprocessing, "limits": self.limits},
                num_cpus=self.plan.decode_cpus,
            ).map_batches(
                InferenceActor,
                batch_size=block,
                batch_format="numpy",
                fn_constructor_kwargs=actor_kwargs,
                compute=actors,
                num_cpus=self.plan.cpus_per_actor,
                num_gpus=self.plan.gpus_per_actor,
            )
        else:
            dataset = dataset.map_batches(
                ClassifyActor,
                batch_size=None,
                batch_format="numpy",
                fn_constructor_kwargs={**actor_kwargs, "batch_size": self.batch_size},
                compute=actors,
                num_cpus=self.plan.cpus_per_actor,
            )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            self.runs_on.update(batch["engine"])
            for index, result in zip(batch["index"], batch["result"], strict=True):
                yield Row.from_result(paths[index], json.loads(result))
