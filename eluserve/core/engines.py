"""Inference engines behind one interface: ONNX Runtime (CPU, CUDA) and OpenVINO (CPU).

`ModelSession` (eluserve.core.session) holds one loaded `Engine` and is all callers see; this module
loads engines and chooses between them:

- ``onnxruntime``: the reference. Every other engine is checked against it when it starts.
- ``openvino``: the fastest CPU engine here (measured: 1 046-1 100 against ORT's 980-990 img/s
  fp32 on 2 cores, 2 079 img/s bf16 on a CPU with AMX/AVX-512 BF16; docs/results.md). It reads the graph as
  `eluserve.core.openvino_graph` rewrites it, so ELU stays fused with its Conv.
- ``auto``: every engine that works here and passes parity runs short timed passes at a representative
  batch; the fastest serves (ONNX Runtime unless another is `AUTO_MARGIN` faster). On 2 cores this
  costs under a second for the default model (0.3 s of timing per engine plus loading).

A non-ORT engine that fails to load or fails parity with ORT fp32 (deterministic synthetic crops,
`eluserve.core.contract.parity_tolerance`) is logged with the reason and ORT serves instead.
Lower precision (bf16 on OpenVINO CPU) is opt-in per model: the model card must carry a passing
record of `eluserve validate-precision` (`precision_record`), else start-up refuses with a `ConfigError`.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort

from eluserve.core.contract import INPUT_NAME, LOGITS_NAME, OUTPUT_NAME, ModelMetadata, parity_tolerance
from eluserve.core.errors import ConfigError
from eluserve.core.throughput import measure

logger = logging.getLogger(__name__)

AUTO = "auto"
ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
ENGINES = (AUTO, ONNXRUNTIME, OPENVINO)
FP32 = "fp32"
BF16 = "bf16"
FP16 = "fp16"
PRECISIONS = (FP32, BF16, FP16)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

#: A lower precision may serve a model only where its validation record shows at least this top-1
#: agreement with fp32 ...
MIN_TOP1_AGREEMENT = 0.995
#: ... and an accuracy at most this far (absolute, 0.2 points) below fp32's on the validation split.
MAX_ACCURACY_DROP = 0.002
#: At start-up a lower precision must keep the top-1 of every synthetic crop whose fp32 top-1 leads
#: the runner-up by at least this probability: rounding to bf16 moves logits by ~1 %, not decisions
#: this clear. (A logit tolerance would refuse bf16 always; the accuracy gate is the validation record.)
CLEAR_MARGIN = 0.1
#: The batch that `auto` times: the adaptive batcher's batches under load are 16-64 images.
SELECTION_BATCH = 32
#: Seconds of timed runs per candidate, split into interleaved rounds.
SELECTION_SECONDS = 0.3
SELECTION_ROUNDS = 3
#: `auto` leaves the reference (ONNX Runtime) only for an engine at least this much faster: each
#: worker measures on its own, and near-equal speeds would otherwise split workers across engines
#: at random (measured: OpenVINO fp32 is 5-11 % ahead on 2 cores, bf16 about 2×).
AUTO_MARGIN = 0.03


class Engine(Protocol):
    """One model loaded on one engine; `run` is called from one thread at a time per engine."""

    #: `onnxruntime` or `openvino`.
    name: str
    #: Where the graph runs: the ORT execution provider, or the OpenVINO device.
    device: str
    #: fp32, bf16 or fp16.
    precision: str

    def run(self, batch: np.ndarray, output: str = OUTPUT_NAME) -> np.ndarray:
        """`output` (probabilities or logits) for uint8 [N, H, W, 3] crops, as float32."""
        ...


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


def choose_providers(providers: Sequence[str] | None) -> list[str]:
    """ORT providers in priority order; None means CUDA when this onnxruntime build has it, else CPU."""
    available = ort.get_available_providers()
    if providers is None:
        return [CUDA, CPU] if CUDA in available else [CPU]
    unknown = [name for name in providers if name not in available]
    if unknown:
        raise ValueError(f"execution providers {unknown} are not available here; available: {available}")
    return list(providers)


class OrtEngine:
    """ONNX Runtime, fp32, on the first provider that initialises."""

    name = ONNXRUNTIME
    precision = FP32

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.device: str = session.get_providers()[0]

    @classmethod
    def create(cls, model_file: Path, providers: Sequence[str] | None, threads: int) -> OrtEngine:
        chosen = choose_providers(providers)
        if CUDA in chosen and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* wheels only once they are preloaded.
            try:
                ort.preload_dlls()
            except Exception:
                logger.debug("onnxruntime.preload_dlls failed", exc_info=True)
        options = _session_options(threads)
        try:
            session = ort.InferenceSession(str(model_file), sess_options=options, providers=chosen)
        except Exception:
            if chosen == [CPU] or CPU not in chosen:
                raise
            logger.warning("creating a session with %s failed; retrying on CPU only", chosen, exc_info=True)
            session = ort.InferenceSession(str(model_file), sess_options=options, providers=[CPU])
        engine = cls(session)
        if CUDA in chosen and engine.device != CUDA:
            logger.warning(
                "%s is installed but unusable (no working GPU?); running on %s", CUDA, engine.device
            )
        return engine

    def run(self, batch: np.ndarray, output: str = OUTPUT_NAME) -> np.ndarray:
        (result,) = self.session.run([output], {INPUT_NAME: batch})
        return np.asarray(result, dtype=np.float32)


def openvino_available() -> bool:
    """True when the `openvino` package imports (it is a base dependency; a broken install is not)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_supports_bf16() -> bool:
    """OpenVINO's CPU plugin reports BF16 among its optimisation capabilities (AVX-512 BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoEngine:
    """OpenVINO on its CPU device, fp32 or bf16 (`INFERENCE_PRECISION_HINT`)."""

    name = OPENVINO

    def __init__(self, compiled: Any, device: str, precision: str) -> None:
        self._compiled = compiled  # its infer request needs it alive
        self._request = compiled.create_infer_request()
        self._outputs = {port.get_any_name(): port for port in compiled.outputs}
        # One infer request is reused (creating one per batch costs); the warm-up thread and the
        # batcher can overlap at start-up, so calls are serialised here.
        self._lock = threading.Lock()
        self.device = device
        self.precision = precision

    @classmethod
    def create(
        cls, model_file: Path, threads: int, precision: str = FP32, device: str = "CPU"
    ) -> OpenVinoEngine:
        import openvino as ov

        from eluserve.core.openvino_graph import prepare_for_openvino

        if precision not in (FP32, BF16):
            raise ConfigError(f"OpenVINO on {device} runs fp32 or bf16 here, not {precision}")
        if precision == BF16 and not cpu_supports_bf16():
            raise ConfigError("this CPU has no bf16 support (AVX-512 BF16 or AMX); use fp32")
        proto, report = prepare_for_openvino(onnx.load(str(model_file)))
        if report.selu_kept:
            logger.warning(
                "%d Selu nodes with gamma != 1 stay Selu: OpenVINO will not fuse them with their Conv",
                report.selu_kept,
            )
        core = ov.Core()
        with tempfile.TemporaryDirectory(prefix="eluserve-ov-") as tmp:
            rewritten = Path(tmp) / "model.onnx"
            onnx.save(proto, str(rewritten))
            model = core.read_model(str(rewritten))
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == BF16 else "f32",
            "INFERENCE_NUM_THREADS": threads,
            # One stream: the batcher sends one batch at a time, as with ORT's sequential mode.
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # OpenVINO pins its threads to cores by default, and the service's workers each pick the same
            # cores: two workers with one thread each then share one core. Measured on 2 cores, two
            # processes at batch 64: 1 678 img/s each pinned, 3 632-3 762 each unpinned.
            "ENABLE_CPU_PINNING": False,
        }
        compiled = core.compile_model(model, device, config)
        logger.info(
            "OpenVINO %s: %d functions inlined, %d Selu(gamma=1) written as Elu",
            ov.get_version(),
            report.functions_inlined,
            report.selu_to_elu,
        )
        return cls(compiled, device, precision)

    def run(self, batch: np.ndarray, output: str = OUTPUT_NAME) -> np.ndarray:
        with self._lock:
            result = self._request.infer({INPUT_NAME: batch})
            return np.array(result[self._outputs[output]], dtype=np.float32)


def synthetic_crops(height: int, width: int, count: int = 16, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 crops: half seeded noise, half smooth colour gradients (natural-image-like
    low frequencies, so the logits spread as on photos, not only as on noise)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (count - count // 2, height, width, 3), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gradients = []
    for _ in range(count // 2):
        a, b, c = rng.uniform(-1, 1, (3, 3))
        image = 127.5 + 127.5 * np.tanh(a * x[..., None] / width + b * y[..., None] / height + c)
        gradients.append(image.astype(np.uint8))
    return np.concatenate([noise, np.stack(gradients)]) if gradients else noise


@dataclass(frozen=True)
class Parity:
    """A candidate engine against ORT fp32 on the same crops."""

    max_abs_logit_diff: float
    tolerance: float
    #: Share of the crops with a clear fp32 top-1 (`CLEAR_MARGIN`) whose top-1 the candidate keeps.
    clear_top1_kept: float
    precision: str

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.max_abs_logit_diff):
            return False
        if self.precision == FP32:
            return self.max_abs_logit_diff <= self.tolerance
        return self.clear_top1_kept == 1.0

    def describe(self) -> str:
        return (
            f"max |logit diff| {self.max_abs_logit_diff:.2e} (tolerance {self.tolerance:.2e}), "
            f"clear top-1 kept {100 * self.clear_top1_kept:.1f} %"
        )


def check_parity(candidate: Engine, reference: Engine, crops: np.ndarray) -> Parity:
    """Compare logits and clear top-1 decisions of `candidate` with `reference` (ORT fp32)."""
    expected = reference.run(crops, LOGITS_NAME)
    actual = candidate.run(crops, LOGITS_NAME)
    diff = float(np.abs(actual - expected).max()) if np.isfinite(actual).all() else float("inf")
    probs = reference.run(crops, OUTPUT_NAME)
    ordered = np.sort(probs, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] >= CLEAR_MARGIN
    kept = (actual.argmax(1) == expected.argmax(1))[clear]
    return Parity(
        max_abs_logit_diff=diff,
        tolerance=parity_tolerance(float(np.abs(expected).max())),
        clear_top1_kept=float(kept.mean()) if kept.size else 1.0,
        precision=candidate.precision,
    )


def measure_engine(
    engine: Engine, batch: np.ndarray, seconds: float = SELECTION_SECONDS, warm_up: bool = True
) -> float:
    """Images/s of `engine` on `batch` over about `seconds` (at least one run), after one warm-up run."""
    return measure(engine.run, batch, seconds, warmup=int(warm_up)).images_per_second


def measure_parallel(engines: Sequence[Engine], batch: np.ndarray, seconds: float) -> float:
    """Images/s of `engines` running `batch` at once, one thread each, `measure_engine` in each: the
    throughput of several one-thread sessions that share the cores, as the service's workers and the
    in-process folder engine run them. A session that fails raises here: a thread that died would
    otherwise count as 0 img/s and quietly lower the limit."""
    with ThreadPoolExecutor(max_workers=len(engines)) as pool:
        futures = [pool.submit(measure_engine, engine, batch, seconds) for engine in engines]
        return sum(future.result() for future in futures)


def measure_interleaved(
    engines: Sequence[Engine], batch: np.ndarray, rounds: int = SELECTION_ROUNDS
) -> dict[str, float]:
    """Best images/s per engine over `rounds` interleaved short runs, so that a change in the
    machine's load during the measurement (other workers starting) hits every engine alike. The best,
    not the median: other work only ever slows a run down, so each engine's fastest round is the
    nearest to what it can do, and a burst that happened to land on one engine's rounds does not decide
    (with medians, a busy start-up chose ONNX Runtime where OpenVINO was 10-20 % faster). Only the
    first round warms up: a slow model (the flagship, ~0.25 s per batch of 32 on 2 cores) then costs
    four batches per engine, not six."""
    samples: dict[str, list[float]] = {_label(engine): [] for engine in engines}
    for round_ in range(rounds):
        for engine in engines:
            seconds = SELECTION_SECONDS / rounds
            samples[_label(engine)].append(measure_engine(engine, batch, seconds, warm_up=round_ == 0))
    return {label: max(values) for label, values in samples.items()}


def precision_record(info: ModelMetadata, precision: str) -> Mapping[str, Any] | None:
    """The model card's validation record for `precision`, or None if absent."""
    card = info.model_card or {}
    record = card.get("precision", {}).get(precision)
    return record if isinstance(record, Mapping) else None


def record_allows(record: Mapping[str, Any]) -> bool:
    """The thresholds, recomputed from the record's figures (not taken from its `passed` flag)."""
    try:
        agreement = float(record["top1_agreement"])
        drop = float(record["fp32_accuracy"]) - float(record["accuracy"])
    except (KeyError, TypeError, ValueError):
        return False
    return agreement >= MIN_TOP1_AGREEMENT and drop <= MAX_ACCURACY_DROP


def require_precision(info: ModelMetadata, precision: str) -> None:
    """Refuse a lower precision that this model's card does not show to be safe.

    Raises:
        ConfigError: naming the model, the precision and the command that measures it.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == FP32:
        return
    record = precision_record(info, precision)
    how = (
        f"measure it with `eluserve validate-precision MODEL_FOLDER --precision {precision} --data "
        f"TRAIN_ZIP` (needs top-1 agreement ≥ {100 * MIN_TOP1_AGREEMENT:.1f} % and accuracy within "
        f"{100 * MAX_ACCURACY_DROP:.1f} points of fp32), or serve fp32"
    )
    if record is None:
        raise ConfigError(f"model {info.tag} has no {precision} validation record in its model card; {how}")
    if not record_allows(record):
        raise ConfigError(
            f"model {info.tag}: its {precision} validation record fails (top-1 agreement "
            f"{record.get('top1_agreement')}, accuracy {record.get('accuracy')} against fp32 "
            f"{record.get('fp32_accuracy')}); {how}"
        )


@dataclass
class Selection:
    """Which engine serves and why: measured speeds, parity results, reasons for skipping engines."""

    engine: Engine
    images_per_second: dict[str, float] = field(default_factory=dict)
    parity: dict[str, Parity] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _label(engine: Engine) -> str:
    return f"{engine.name}/{engine.device}/{engine.precision}"


def select_engine(
    model_file: Path,
    info: ModelMetadata,
    engine: str = ONNXRUNTIME,
    providers: Sequence[str] | None = None,
    threads: int = 1,
    precision: str = FP32,
    agree_with: str | None = None,
) -> Selection:
    """Load the engine that `engine` and `precision` ask for (see the module docstring).

    `agree_with` names a group of processes that must choose alike (the workers of one server): the
    first to get there measures and records its `auto` choice, the others take it (`_agreed_choice`).

    Raises:
        ConfigError: an unknown engine or precision, or a precision the model card does not allow.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    require_precision(info, precision)
    if engine == ONNXRUNTIME and precision != FP32:
        raise ConfigError(f"onnxruntime serves fp32 here; {precision} runs on the openvino engine")
    if precision == FP16:
        raise ConfigError(
            "fp16 needs a GPU engine with fp16 kernels, and none is wired here; serve fp32 or bf16"
        )
    reference = OrtEngine.create(model_file, providers, threads)
    selection = Selection(reference)
    if engine == ONNXRUNTIME:
        return selection
    crops = synthetic_crops(*info.input_size)
    candidates: list[Engine] = [] if precision != FP32 else [reference]
    try:
        if not openvino_available():
            raise ConfigError("the openvino package is not installed")
        openvino = OpenVinoEngine.create(model_file, threads, precision)
    except Exception as exc:
        selection.skipped[OPENVINO] = f"{type(exc).__name__}: {exc}"
        logger.warning("OpenVINO unusable, ONNX Runtime fp32 serves instead: %s", exc)
    else:
        parity = check_parity(openvino, reference, crops)
        selection.parity[_label(openvino)] = parity
        if parity.passed:
            candidates.append(openvino)
        else:
            selection.skipped[OPENVINO] = f"parity with ONNX Runtime fp32 failed: {parity.describe()}"
            logger.warning(
                "OpenVINO %s failed parity, ONNX Runtime fp32 serves: %s", precision, parity.describe()
            )
    if not candidates:
        return selection
    if engine == OPENVINO or len(candidates) == 1:
        selection.engine = candidates[-1]
        return selection

    def choose() -> str:
        batch = np.resize(crops, (SELECTION_BATCH, *crops.shape[1:]))
        selection.images_per_second = measure_interleaved(candidates, batch)
        speed = selection.images_per_second
        best = max(candidates, key=lambda c: speed[_label(c)])
        if reference in candidates and speed[_label(best)] < (1 + AUTO_MARGIN) * speed[_label(reference)]:
            best = reference
        return _label(best)

    if agree_with is None:
        chosen = choose()
    else:
        # The model by content, not path: the Ray runner's actors each load a private copy of one file.
        # Read and hashed only here: a process that agrees with no one need not read the model again.
        model = hashlib.sha256(model_file.read_bytes()).hexdigest()
        chosen = _agreed_choice(f"{agree_with}|{model}|{precision}|{[_label(c) for c in candidates]}", choose)
    selection.engine = next((c for c in candidates if _label(c) == chosen), reference)
    logger.info(
        "engine auto: %s (%s)",
        _label(selection.engine),
        f"measured at batch {SELECTION_BATCH}: "
        + ", ".join(f"{k} {v:.0f} img/s" for k, v in selection.images_per_second.items())
        if selection.images_per_second
        else "as another process of the same group measured",
    )
    return selection


def _agreed_choice(key: str, choose: Callable[[], str]) -> str:
    """`choose()` once per `key` across processes: the first caller measures under an exclusive lock
    and records its answer; the others wait for the lock and read it.

    Each BentoML worker chooses its engine on its own; on 2 busy cores two measurements of engines
    within a few per cent of each other can disagree, and one server would then answer from two
    engines, with two `eluserve_model_info` series. The record lives in the temporary directory,
    named by a hash of `key` (the service puts its `bentoml serve` process id in it, so that every
    start measures afresh).
    """
    import fcntl
    import json
    import os

    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"eluserve-engine-{digest}.json"
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return str(json.loads(path.read_text())["choice"])
        except (OSError, ValueError, KeyError):
            choice = choose()
            path.write_text(json.dumps({"key": key, "choice": choice, "pid": os.getpid()}))
            return choice
