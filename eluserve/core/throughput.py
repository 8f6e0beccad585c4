"""Raw throughput: the limit every other figure (export checks, CLI, service) is held to.

`measure` is the one timed loop; `measure_session` runs it on an ONNX Runtime session, and
`eluserve.core.engines.measure_engine` on a loaded engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class Throughput:
    batch_size: int
    images_per_second: float
    batch_latency_seconds: float


def measure(
    run: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float, warmup: int
) -> Throughput:
    """`run(batch)` `warmup` times, then repeatedly for about `seconds` (at least once); images/s and
    latency of the timed runs."""
    for _ in range(warmup):
        run(batch)
    runs = 0
    started = time.perf_counter()
    while True:
        run(batch)
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return Throughput(len(batch), runs * len(batch) / elapsed, elapsed / runs)


def measure_session(
    session: ort.InferenceSession, batch: np.ndarray, seconds: float = 1.0, warmup: int = 2
) -> Throughput:
    """Run `batch` through `session` repeatedly for about `seconds`; report images/s and latency."""
    feed = {session.get_inputs()[0].name: batch}
    outputs = [session.get_outputs()[0].name]
    return measure(lambda _: session.run(outputs, feed), batch, seconds, warmup)


def cpu_session(
    path: str, threads: int | None = None, optimize: bool = True, denormal_as_zero: bool = False
) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads (None: ORT's default, one per core).

    `denormal_as_zero` flushes denormals: ELU's exp of large negative inputs lands in the denormal
    range, where x86 arithmetic is slower. It is off by default because ORT sets it in the calling
    thread's FPU state, which then leaks into everything else the process computes (hypothesis, for
    one, refuses to run); `eluserve elu-tax` measures it in a process of its own.
    """
    options = ort.SessionOptions()
    if denormal_as_zero:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
