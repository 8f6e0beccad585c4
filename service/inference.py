"""The inference core: a contract-conforming ONNX model on ONNX Runtime.

The BentoML service, the folder CLI and the benchmarks all classify through this module, so they agree
on the model interface (docs/model-format.md), the execution provider choice and the result format.
Inputs are already preprocessed crops (see `service.preprocessing`): uint8 RGB, [N, H, W, 3].
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from service.errors import InvalidTopK, ModelFormatError
from service.preprocessing import PreprocessingRule

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
MODEL_FILE = "model.onnx"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEFAULT_TOP_K = 5

_STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"})
_REQUIRED_METADATA = ("name", "version", "labels", "input_size", "preprocessing")


@dataclass(frozen=True)
class ModelInfo:
    """What `metadata_props` and the graph say about a model, plus where it runs."""

    name: str
    version: str
    labels: tuple[str, ...]
    #: (height, width) of the graph input.
    input_size: tuple[int, int]
    preprocessing: PreprocessingRule
    path: str
    input_layout: str = "NHWC uint8 RGB"
    val_accuracy: float | None = None
    architecture: str | None = None
    activation: str | None = None
    dataset: str | None = None
    custom_domain: str | None = None
    #: Version of the default ONNX domain the graph imports.
    opset: int | None = None
    checkpoint_sha256: str | None = None
    exported_at: str | None = None
    model_card: Mapping[str, Any] | None = None
    #: The ONNX Runtime execution provider in use; None until a session exists.
    provider: str | None = None

    @property
    def tag(self) -> str:
        """`name:version`, the model's identity in responses."""
        return f"{self.name}:{self.version}"

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def with_provider(self, provider: str) -> ModelInfo:
        return dataclasses.replace(self, provider=provider)

    def to_dict(self) -> dict[str, Any]:
        """The `GET /model` document."""
        return {
            "model": self.tag,
            "name": self.name,
            "version": self.version,
            "labels": list(self.labels),
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "input_layout": self.input_layout,
            "preprocessing": self.preprocessing.to_dict(),
            "val_accuracy": self.val_accuracy,
            "architecture": self.architecture,
            "activation": self.activation,
            "dataset": self.dataset,
            "execution_provider": self.provider,
            "opset": self.opset,
            "custom_domain": self.custom_domain,
            "checkpoint_sha256": self.checkpoint_sha256,
            "exported_at": self.exported_at,
            "model_card": dict(self.model_card) if self.model_card is not None else None,
        }

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto, path: str | Path) -> ModelInfo:
        """Read and check the contract: graph interface and required metadata.

        Raises:
            ModelFormatError: naming the first thing that does not follow docs/model-format.md.
        """
        where = str(path)
        meta = {prop.key: prop.value for prop in model.metadata_props}
        missing = [key for key in _REQUIRED_METADATA if key not in meta]
        if missing:
            raise ModelFormatError(
                f"{where}: metadata_props lacks {missing}; export it with the exporter in export/ "
                "(docs/model-format.md lists the keys)"
            )
        labels = _json_metadata(meta, "labels", where)
        if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
            raise ModelFormatError(f"{where}: metadata 'labels' must be a non-empty JSON list of strings")
        input_size = _json_metadata(meta, "input_size", where)
        if not (
            isinstance(input_size, list)
            and len(input_size) == 2
            and all(isinstance(v, int) and v > 0 for v in input_size)
        ):
            raise ModelFormatError(f"{where}: metadata 'input_size' must be JSON [height, width]")
        rule = PreprocessingRule.from_metadata(meta["preprocessing"])
        if rule.crop != tuple(input_size):
            raise ModelFormatError(
                f"{where}: preprocessing crop {list(rule.crop)} differs from input_size {input_size}"
            )
        _check_graph(model.graph, (input_size[0], input_size[1]), len(labels), where)
        opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
        custom = meta.get("custom_domain") or next(
            (entry.domain for entry in model.opset_import if entry.domain not in _STANDARD_DOMAINS), None
        )
        card = _json_metadata(meta, "model_card", where) if "model_card" in meta else None
        return cls(
            name=meta["name"],
            version=meta["version"],
            labels=tuple(labels),
            input_size=(input_size[0], input_size[1]),
            preprocessing=rule,
            path=where,
            input_layout=meta.get("input_layout", "NHWC uint8 RGB"),
            val_accuracy=_float_or_none(meta.get("val_accuracy")),
            architecture=meta.get("architecture"),
            activation=meta.get("activation"),
            dataset=meta.get("dataset"),
            custom_domain=custom,
            opset=opset,
            checkpoint_sha256=meta.get("checkpoint_sha256"),
            exported_at=meta.get("exported_at"),
            model_card=card if isinstance(card, dict) else None,
        )


def _json_metadata(meta: Mapping[str, str], key: str, where: str) -> Any:
    try:
        return json.loads(meta[key])
    except ValueError as exc:
        raise ModelFormatError(f"{where}: metadata {key!r} is not valid JSON: {meta[key]!r}") from exc


def _float_or_none(value: str | None) -> float | None:
    """A finite float, else None: JSON has no NaN, and `GET /model` must stay valid JSON."""
    try:
        number = None if value is None else float(value)
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _check_graph(graph: onnx.GraphProto, input_size: tuple[int, int], num_classes: int, where: str) -> None:
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if [value.name for value in inputs] != [INPUT_NAME]:
        raise ModelFormatError(
            f"{where}: the graph must have exactly one input named {INPUT_NAME!r}, "
            f"has {[value.name for value in inputs]}"
        )
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.UINT8:
        raise ModelFormatError(f"{where}: input {INPUT_NAME!r} must be uint8 (raw RGB pixels)")
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
    expected = [None, input_size[0], input_size[1], 3]
    if len(dims) != 4 or any(d is not None and d != e for d, e in zip(dims[1:], expected[1:], strict=True)):
        raise ModelFormatError(
            f"{where}: input {INPUT_NAME!r} has shape {dims}, expected [N, {input_size[0]}, "
            f"{input_size[1]}, 3] (NHWC)"
        )
    outputs = {value.name: value for value in graph.output}
    if OUTPUT_NAME not in outputs:
        raise ModelFormatError(f"{where}: the graph has no output named {OUTPUT_NAME!r}")
    out_dims = outputs[OUTPUT_NAME].type.tensor_type.shape.dim
    if len(out_dims) == 2 and out_dims[1].HasField("dim_value") and out_dims[1].dim_value != num_classes:
        raise ModelFormatError(
            f"{where}: output {OUTPUT_NAME!r} has {out_dims[1].dim_value} classes but 'labels' lists "
            f"{num_classes}"
        )


def resolve_model_file(path: str | Path) -> Path:
    """Accept a model folder (`models/<name>/`) or the .onnx file itself."""
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / MODEL_FILE
    if not candidate.is_file():
        raise FileNotFoundError(
            f"no model at {candidate}; pass an .onnx file or a folder holding {MODEL_FILE}"
        )
    return candidate


def read_model_info(path: str | Path) -> ModelInfo:
    """Read a model's contract metadata without creating an inference session."""
    model_file = resolve_model_file(path)
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except DecodeError as exc:
        raise ModelFormatError(
            f"{model_file} is not an ONNX model ({exc}); the file is corrupt or cut short, export it again"
        ) from exc
    return ModelInfo.from_onnx(model, model_file)


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset/cpuset, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best classes per row, best first; equal probabilities keep index order.

    Returns:
        (indices int64 [N, k], probabilities float32 [N, k])
    """
    if not 1 <= k <= probs.shape[1]:
        raise ValueError(f"k must be in 1..{probs.shape[1]}, got {k}")
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


def format_results(probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """Per-row result objects of the HTTP contract (without "model")."""
    indices, values = top_k(probs, k)
    results = []
    for row_indices, row_values in zip(indices, values, strict=True):
        ranked = [
            {"label": labels[index], "index": int(index), "probability": float(value)}
            for index, value in zip(row_indices, row_values, strict=True)
        ]
        best = ranked[0]
        results.append({"label": best["label"], "probability": best["probability"], "top_k": ranked})
    return results


def parse_top_k(value: str | int | None, num_classes: int, default: int = DEFAULT_TOP_K) -> int:
    """Validate a client's `top_k`: an integer in 1..num_classes; absent means `default` (capped).

    Raises:
        InvalidTopK: for anything else, including booleans, floats and "3.0".
    """
    if value is None:
        return min(default, num_classes)
    if isinstance(value, bool):
        raise InvalidTopK(f"top_k must be an integer from 1 to {num_classes}, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise InvalidTopK(f"top_k must be an integer from 1 to {num_classes}, got {value!r}")
        value = int(text)
    if not 1 <= value <= num_classes:
        raise InvalidTopK(f"top_k must be an integer from 1 to {num_classes}, got {value}")
    return value


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    # One batch runs at a time per process (the batcher serialises them), so a second pool is waste.
    options.inter_op_num_threads = 1
    # Inference shares the cores with the HTTP workers' decoding: idle threads that spin between
    # batches would take CPU from them. Measured on 2 cores: same batch-1 latency, a shorter tail.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _choose_providers(providers: Sequence[str] | None) -> list[str]:
    available = ort.get_available_providers()
    if providers is None:
        return [CUDA, CPU] if CUDA in available else [CPU]
    unknown = [name for name in providers if name not in available]
    if unknown:
        raise ValueError(f"execution providers {unknown} are not available here; available: {available}")
    return list(providers)


def _create_session(model_file: Path, providers: list[str], intra_op_threads: int) -> ort.InferenceSession:
    if CUDA in providers and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* wheels only once they are preloaded.
        try:
            ort.preload_dlls()
        except Exception:
            logger.debug("onnxruntime.preload_dlls failed", exc_info=True)
    options = _session_options(intra_op_threads)
    try:
        return ort.InferenceSession(str(model_file), sess_options=options, providers=providers)
    except Exception:
        if providers == [CPU] or CPU not in providers:
            raise
        logger.warning("creating a session with %s failed; retrying on CPU only", providers, exc_info=True)
        return ort.InferenceSession(str(model_file), sess_options=options, providers=[CPU])


class Classifier:
    """One ONNX Runtime session over a contract-conforming model."""

    def __init__(self, session: ort.InferenceSession, info: ModelInfo) -> None:
        self._session = session
        self.info = info
        self._height, self._width = info.input_size

    @property
    def session(self) -> ort.InferenceSession:
        """The ONNX Runtime session, for raw-throughput measurements beside the serving path."""
        return self._session

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> Classifier:
        """Load a model folder or .onnx file.

        Args:
            providers: ONNX Runtime execution providers in priority order. None picks CUDA when this
                onnxruntime build has it, else CPU; CUDA that fails to initialise falls back to CPU.
            intra_op_threads: threads for one inference. None uses every core this process may run
                on; the service passes cores ÷ workers so that worker processes do not oversubscribe.
        """
        model_file = resolve_model_file(path)
        info = read_model_info(model_file)
        chosen = _choose_providers(providers)
        threads = intra_op_threads if intra_op_threads is not None else available_cores()
        if threads < 1:
            raise ValueError(f"intra_op_threads must be at least 1, got {threads}")
        session = _create_session(model_file, chosen, threads)
        provider = session.get_providers()[0]
        if CUDA in chosen and provider != CUDA:
            logger.warning("%s is installed but unusable (no working GPU?); running on %s", CUDA, provider)
        logger.info("model %s from %s on %s, %d intra-op threads", info.tag, model_file, provider, threads)
        return cls(session, info.with_provider(provider))

    @property
    def provider(self) -> str:
        """The execution provider that runs the graph."""
        return self.info.provider or CPU

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for preprocessed crops.

        Args:
            batch: uint8 [N, H, W, 3] in the model's input size.

        Returns:
            float32 [N, num_classes], rows summing to 1.
        """
        expected = (self._height, self._width, 3)
        if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.shape[1:] != expected:
            shape = getattr(batch, "shape", None)
            dtype = getattr(batch, "dtype", type(batch).__name__)
            raise ValueError(
                f"expected a uint8 array [N, {', '.join(map(str, expected))}], got {dtype} {shape}"
            )
        if batch.shape[0] == 0:
            return np.zeros((0, self.info.num_classes), dtype=np.float32)
        (probs,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch)})
        return np.asarray(probs, dtype=np.float32)

    def top_k(self, probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """See the module-level `top_k`."""
        return top_k(probs, k)

    def classify(self, images: Sequence[np.ndarray], top_k: int = DEFAULT_TOP_K) -> list[dict[str, Any]]:
        """Classify preprocessed crops ([H, W, 3] each) in one batch; results in input order."""
        if not images:
            return []
        probs = self.predict(np.stack(images))
        return format_results(probs, self.info.labels, top_k)

    def warm_up(self, batch_sizes: Sequence[int] = (1,), rounds: int = 1, min_seconds: float = 0.0) -> int:
        """Run zero batches so that the first real request does not pay for lazy initialisation
        (memory arenas, kernel selection, on GPUs cuDNN autotuning).

        Runs `rounds` passes over `batch_sizes`, then keeps going until `min_seconds` have passed.

        Returns:
            the number of inferences run.
        """
        start = time.perf_counter()
        runs = 0
        while runs < rounds * len(batch_sizes) or time.perf_counter() - start < min_seconds:
            size = batch_sizes[runs % len(batch_sizes)]
            self.predict(np.zeros((size, self._height, self._width, 3), dtype=np.uint8))
            runs += 1
        logger.info("warm-up: %d inferences in %.3f s", runs, time.perf_counter() - start)
        return runs
