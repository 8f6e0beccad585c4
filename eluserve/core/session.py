"""The inference session: a contract-conforming ONNX model on one engine (`eluserve.core.engines`).

The BentoML service, the folder CLI and the benchmarks all classify through `ModelSession`, so they
agree on the engine and execution provider choice and the input checks. Inputs are already preprocessed crops
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

from eluserve.core.contract import ModelMetadata, read_model_info, resolve_model_file
from eluserve.core.engines import CPU, CUDA, FP32, ONNXRUNTIME, Engine, Selection, select_engine
from eluserve.core.results import DEFAULT_TOP_K, format_results

logger = logging.getLogger(__name__)

__all__ = ["CPU", "CUDA", "ModelSession", "available_cores"]


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset/cpuset, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class ModelSession:
    """A contract-conforming model on one loaded engine (`Engine`)."""

    def __init__(self, engine: Engine, info: ModelMetadata, selection: Selection | None = None) -> None:
        #: The engine the model is loaded on; `engine` is its name.
        self.loaded_engine = engine
        self.info = info
        #: How `from_path` chose the engine (speeds measured, parity, engines skipped and why).
        self.selection = selection or Selection(engine)
        self._height, self._width = info.input_size

    @property
    def session(self) -> ort.InferenceSession:
        """The ONNX Runtime session, for raw-throughput measurements beside the serving path.

        Raises:
            TypeError: when another engine runs the model.
        """
        session = getattr(self.loaded_engine, "session", None)
        if not isinstance(session, ort.InferenceSession):
            raise TypeError(f"model {self.info.tag} runs on {self.engine}, not on an ONNX Runtime session")
        return session

    @property
    def engine(self) -> str:
        """`onnxruntime` or `openvino`."""
        return self.loaded_engine.name

    @property
    def precision(self) -> str:
        return self.loaded_engine.precision

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        engine: str = ONNXRUNTIME,
        precision: str = FP32,
        agree_with: str | None = None,
    ) -> ModelSession:
        """Load a model folder or .onnx file.

        Args:
            providers: ONNX Runtime execution providers in priority order. None picks CUDA when this
                onnxruntime build has it, else CPU; CUDA that fails to initialise falls back to CPU.
            intra_op_threads: threads for one inference. None uses every core this process may run
                on; the service passes cores ÷ workers so that worker processes do not oversubscribe.
            engine: `onnxruntime`, `openvino` or `auto` (`eluserve.core.engines`). The library
                default is ONNX Runtime, the reference, which costs no start-up measurement; the
                service and `eluserve classify` default to `auto`.
            precision: fp32, or a lower precision that the model card's validation record allows.
            agree_with: processes on one machine that pass the same value (a server's workers, the
                Ray runner's actors of one run) make one `auto` choice: the first measures, the others
                take its answer.

        Raises:
            ConfigError: an unknown engine or precision, or a precision the model card does not allow.
        """
        model_file = resolve_model_file(path)
        info = read_model_info(model_file)
        threads = intra_op_threads if intra_op_threads is not None else available_cores()
        if threads < 1:
            raise ValueError(f"intra_op_threads must be at least 1, got {threads}")
        selection = select_engine(model_file, info, engine, providers, threads, precision, agree_with)
        loaded = selection.engine
        logger.info(
            "model %s from %s on %s %s %s, %d threads",
            info.tag,
            model_file,
            loaded.name,
            loaded.device,
            loaded.precision,
            threads,
        )
        return cls(loaded, info.with_engine(loaded.name, loaded.device, loaded.precision), selection)

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
        return self.loaded_engine.run(np.ascontiguousarray(batch))

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
