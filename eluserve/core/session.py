"""The inference session: a contract-conforming ONNX model on ONNX Runtime.

The BentoML service, the folder CLI and the benchmarks all classify through `ModelSession`, so they
agree on the execution provider choice and the input checks. Inputs are already preprocessed crops
(see `eluserve.core.preprocessing`): uint8 RGB, [N, H, W, 3].
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from eluserve.core.contract import INPUT_NAME, OUTPUT_NAME, ModelMetadata, read_model_info, resolve_model_file
from eluserve.core.results import DEFAULT_TOP_K, format_results

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset/cpuset, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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


class ModelSession:
    """One ONNX Runtime session over a contract-conforming model."""

    def __init__(self, session: ort.InferenceSession, info: ModelMetadata) -> None:
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
    ) -> ModelSession:
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
