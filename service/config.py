"""Service settings: defaults, overridden by a config file, overridden by environment variables.

Every field of `Settings` can be set as ``ELUSERVE_<FIELD>`` (e.g. ``ELUSERVE_MAX_BATCH_SIZE=32``) or
as a key of the file that ``ELUSERVE_CONFIG`` points to (YAML, JSON or TOML, by extension). Settings
are read when `eluserve.service.app` is imported, because BentoML takes workers, traffic limits and batching
parameters from its decorators; each worker process imports it again with the same environment.

The service serves every model of a repository folder (``ELUSERVE_MODEL_REPOSITORY``, default the
packaged models; layout in `eluserve.service.repository`), with ``ELUSERVE_DEFAULT_MODEL`` behind
/classify. ``ELUSERVE_MODEL`` (an .onnx file, a model folder holding ``model.onnx``, or a BentoML
model-store tag ``name:version``) names the default model instead; set alone, it is the only model
served, as before the repository existed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from eluserve.core.contract import MODEL_FILE, read_model_info, resolve_model_file
from eluserve.core.engines import AUTO, CUDA, ENGINES, OPENVINO, PRECISIONS
from eluserve.core.errors import ConfigError
from eluserve.core.paths import DEFAULT_MODEL_NAME, packaged_models_dir
from eluserve.core.preprocessing import Limits
from eluserve.core.session import available_cores
from eluserve.service import jsonio

ENV_PREFIX = "ELUSERVE_"
CONFIG_ENV = "ELUSERVE_CONFIG"
#: HTTP/1.1 parsers of the workers' uvicorn (`eluserve.service.runtime.http_protocol`); the first is the
#: default.
HTTP_PARSERS = ("httptools", "h11")
#: `device_batching`: per worker, one shared device host per server, or chosen by where sessions run.
WORKER = "worker"
SHARED = "shared"
DEVICE_BATCHING = (AUTO, WORKER, SHARED)
#: The largest config file read: settings are a few dozen short values, so anything near this size is
#: not a config file (and a parser is not handed megabytes of nesting to recurse through).
MAX_CONFIG_BYTES = 1024 * 1024
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*:[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Settings:
    """Everything an operator may tune; see the module docstring for how to set it."""

    #: .onnx file, model folder, or BentoML model-store tag: the default model; empty means
    #: `default_model` from the repository.
    model: str = ""
    #: Folder of model folders to serve; empty means the packaged models (or, when `model` is set,
    #: that model alone).
    model_repository: str = ""
    #: The repository model that /classify, /classify_batch and /model serve (unless `model` is set).
    default_model: str = DEFAULT_MODEL_NAME
    #: `none`: the models are fixed at start; `explicit`: /v2/repository/... may load and unload them
    #: (Triton's --model-control-mode). Off by default, since it changes what the server serves.
    model_control: str = "none"
    #: Seconds between a worker's checks of the shared control state (loads asked of another worker).
    control_poll_s: float = 0.25
    #: Encoded bytes of one image.
    max_image_bytes: int = 10 * 1024 * 1024
    #: Declared width × height of one image, checked before decoding.
    max_pixels: int = 40_000_000
    #: Images in one /classify_batch request.
    max_images: int = 64
    #: Whole body of one /classify_batch request; /classify allows one image plus form overhead.
    max_request_bytes: int = 100 * 1024 * 1024
    #: Largest batch the adaptive batcher sends to ONNX Runtime (1 turns batching off).
    max_batch_size: int = 64
    #: Largest batch of the shared device host (`device_batching` shared); 0 means `max_batch_size` ×
    #: workers: a full batch from every worker at once. Clients send whole batches (gpu_check: 64-image
    #: requests), so a cap of `max_batch_size` would leave each device batch one worker's request and
    #: nothing to merge, while a GPU runs its best at several hundred images per batch.
    device_max_batch_size: int = 0
    #: The batcher refuses a request (429) whose images would wait longer than this behind the queue.
    #: 64 connections of 16-image requests queue ~1 s of work per worker on 2 cores: with a 1 s budget,
    #: most of them were refused and served throughput fell to 0.4 of the peak (wrk retries at once);
    #: with 2 s, none (1 039 img/s, p99 1.3 s; docs/log/serving-rounds.md).
    max_latency_ms: int = 2000
    #: Worker processes, each parsing and decoding requests (and, with per-worker device batching,
    #: batching and running its own session); 0 means `default_workers`. Two measured best on 2 cores
    #: (`eluserve bench`, c=64: 1 039 images/s against 909 with one): decoding and HTTP then run on
    #: both cores, not beside one ONNX Runtime call at a time.
    workers: int = 0
    #: `worker`: each worker batches its own requests on its own session; `shared`: one device host
    #: process per server batches the crops of every worker on one session
    #: (`eluserve.service.device.host`); `auto`: shared where the session runs on CUDA and there is
    #: more than one worker, else worker (on CPU the host's extra hop costs throughput:
    #: docs/log/shared-device-batching.md).
    device_batching: str = AUTO
    #: ONNX Runtime threads per worker; 0 means available cores ÷ workers.
    intra_op_threads: int = 0
    #: ONNX Runtime execution providers, comma-separated; empty means CUDA if it works, else CPU.
    providers: str = ""
    #: Inference engine: auto (the fastest that works here and passes parity with ONNX Runtime fp32,
    #: timed when each worker starts), onnxruntime or openvino (`eluserve.core.engines`).
    engine: str = "auto"
    #: fp32, or bf16 (OpenVINO CPU) for a model whose card records a passing `eluserve
    #: validate-precision`; without one the service refuses to start.
    precision: str = "fp32"
    #: Requests in flight across all workers before the 429 `overloaded` of BentoML's limit (split evenly
    #: over the workers, as connections are: `eluserve.service.runtime.accept_balance`). A cap on memory
    #: held by in-flight bodies, set clear of the latency budget: 256 single-image connections, 128 per
    #: worker, queue ~0.3 s of work on 2 cores and must not be refused, hence twice that.
    max_concurrency: int = 512
    #: Seconds before BentoML answers 504.
    timeout_s: float = 30.0
    #: Seconds a request's line and headers may take to arrive before the client gets 408 and the
    #: connection closes (`eluserve.service.runtime.http_protocol`: slow or silent clients would hold
    #: connections).
    header_timeout_s: float = 10.0
    #: httptools (llhttp, C: a third of h11's CPU per request) or h11 (pure Python), with the same
    #: header deadline either way (`eluserve.service.runtime.http_protocol`).
    http_parser: str = HTTP_PARSERS[0]
    #: Warm-up passes over the batch sizes 1 and max_batch_size before /readyz turns ready.
    warmup_rounds: int = 2
    #: Keep warming up until this many seconds have passed (GPU autotuning; observing readiness).
    warmup_min_seconds: float = 0.0
    #: OpenTelemetry spans for the endpoints (exported as BentoML's `tracing` config says). Off by
    #: default: BentoML's middleware builds spans per request and per body chunk even when its sample
    #: rate is 0 and nothing is exported, and that cost ~20 % of the service's throughput (`eluserve
    #: bench`, c=64: 740 against 894 images/s).
    tracing: bool = False
    #: BentoML's access log, a line per request on the workers' output. Off by default: at the service's
    #: request rates it is a log line per millisecond and ~6 % of its CPU (`eluserve bench`, /classify
    #: c=32: 464 against 493 images per CPU-second); `eluserve_*` and `bentoml_service_request_*` count
    #: every request either way.
    access_log: bool = False

    def limits(self) -> Limits:
        """The per-image limits for `eluserve.core.preprocessing`."""
        return Limits(max_image_bytes=self.max_image_bytes, max_pixels=self.max_pixels)

    def provider_list(self) -> list[str] | None:
        """`providers` as a list for `ModelSession.from_path`; None lets it choose."""
        names = [name.strip() for name in self.providers.split(",") if name.strip()]
        return names or None

    def threads_per_worker(self, workers: int | None = None) -> int:
        """Intra-op threads so that all workers' sessions together use each core once.

        `workers` is the worker count BentoML actually starts (its own config file may override ours);
        None means `worker_count()`.
        """
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        return max(1, available_cores() // (workers or self.worker_count()))

    def runs_on_cuda(self) -> bool:
        """Whether a session would be created on ONNX Runtime's CUDA provider (`eluserve.core.engines`).

        True where this onnxruntime build offers CUDA, the providers setting leaves it in, and the
        engine is not OpenVINO (CPU only). A build with CUDA on a machine without a usable GPU still
        answers True: the session then falls back to CPU, as it logs.
        """
        providers = self.provider_list()
        return (
            self.engine != OPENVINO
            and CUDA in ort.get_available_providers()
            and (providers is None or CUDA in providers)
        )

    def default_workers(self) -> int:
        """The worker count when `workers` is 0.

        Where shared device batching would feed a GPU (`auto` or `shared`, on CUDA): every core but one
        decodes, and that one is left to the device host, whose event loop receives every worker's
        crops, concatenates the batches and drives the device. On a GPU host the CPU work of HTTP,
        multipart and decoding, not the device, bounds the service, so it gets the cores.
        Elsewhere 2, measured best on 2 cores (see `workers`).
        """
        if self.device_batching != WORKER and self.runs_on_cuda():
            return max(2, available_cores() - 1)
        return 2

    def worker_count(self) -> int:
        """The worker processes to start: `workers`, or `default_workers` when it is 0."""
        return self.workers or self.default_workers()

    def device_batch_size(self, workers: int) -> int:
        """The shared device host's largest batch, for a server of `workers` workers."""
        return self.device_max_batch_size or self.max_batch_size * workers

    def device_batching_mode(self, workers: int) -> str:
        """`shared` or `worker` for a server of `workers` workers (`device_batching` resolved)."""
        if self.device_batching != AUTO:
            return self.device_batching
        return SHARED if workers > 1 and self.runs_on_cuda() else WORKER

    def model_file(self) -> Path:
        """The default model's .onnx file (for a versioned default, see `eluserve.service.repository`)."""
        if self.model:
            return resolve_model(self.model)
        return self.repository_dir() / self.default_model / MODEL_FILE

    def serves_repository(self) -> bool:
        """Whether the repository is served (otherwise only the model `model` names)."""
        return bool(self.model_repository) or not self.model

    def repository_dir(self) -> Path:
        return Path(self.model_repository).expanduser() if self.model_repository else packaged_models_dir()

    def pinned_model_file(self) -> Path | None:
        """The file `model` names, served beside (or instead of) the repository; None when unset."""
        return resolve_model(self.model) if self.model else None

    def default_model_name(self) -> str:
        """The name /classify serves: the metadata name of `model` when set, else `default_model`."""
        if self.model:
            return read_model_info(resolve_model(self.model)).name
        return self.default_model

    @property
    def explicit_model_control(self) -> bool:
        return self.model_control == "explicit"


_MINIMUM: Mapping[str, float] = {
    "max_image_bytes": 1,
    "max_pixels": 1,
    "max_images": 1,
    "max_request_bytes": 1,
    "max_batch_size": 1,
    "device_max_batch_size": 0,
    "max_latency_ms": 1,
    "workers": 0,
    "intra_op_threads": 0,
    "max_concurrency": 1,
    "timeout_s": 0.001,
    "header_timeout_s": 0.001,
    "warmup_rounds": 0,
    "warmup_min_seconds": 0.0,
    "control_poll_s": 0.01,
}
#: Settings that take one of a few words.
_CHOICES: Mapping[str, tuple[str, ...]] = {
    "engine": ENGINES,
    "precision": PRECISIONS,
    "model_control": ("none", "explicit"),
    "http_parser": HTTP_PARSERS,
    "device_batching": DEVICE_BATCHING,
}


def resolve_model(value: str) -> Path:
    """Turn the `model` setting into the .onnx file to load.

    A path that exists wins; otherwise a `name:version` value is looked up in the BentoML model store.
    """
    path = Path(value).expanduser()
    if path.exists():
        return resolve_model_file(path)
    if _TAG.match(value):
        import bentoml  # deferred: only tags need the model store

        try:
            stored = bentoml.models.get(value)
        except bentoml.exceptions.NotFound as exc:
            raise ConfigError(
                f"model {value!r} is neither a file nor a tag in the BentoML model store "
                f"({exc}); list the store with `bentoml models list`"
            ) from exc
        return resolve_model_file(stored.path)
    raise ConfigError(
        f"model {value!r} does not exist; set {ENV_PREFIX}MODEL to an .onnx file, a folder holding "
        f"{MODEL_FILE}, or a BentoML model tag name:version"
    )


def _read_file(path: Path) -> dict[str, Any]:
    """The file's settings: at most `MAX_CONFIG_BYTES`, and nested no deeper than its parser copes
    with (JSON: `jsonio.MAX_DEPTH`; the YAML and TOML parsers recurse, so their `RecursionError` is
    the bound), else a `ConfigError` that names the file."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} named by {CONFIG_ENV}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix == ".json":
            data = jsonio.loads(raw, what=f"config file {path}")
        elif suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:  # not a ValueError
                raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        else:
            raise ConfigError(f"config file {path}: use a .yaml, .yml, .json or .toml extension")
    except jsonio.JsonError as exc:
        raise ConfigError(str(exc)) from exc
    except RecursionError as exc:
        raise ConfigError(f"config file {path} is nested too deeply to be a config file") from exc
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {suffix[1:].upper()}: {exc}") from exc
    except ImportError as exc:
        raise ConfigError(f"config file {path}: reading YAML needs PyYAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting names to values")
    return data


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _coerce(name: str, raw: Any, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            return _coerce_bool(raw)
        if isinstance(raw, bool):
            raise TypeError("booleans are not accepted")
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError("not a whole number")
            value: Any = int(raw)
        elif kind is float:
            value = float(raw)
        else:
            value = str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}={raw!r}: expected {kind.__name__} ({exc})") from exc
    choices = _CHOICES.get(name)
    if choices is not None and value not in choices:
        raise ConfigError(f"setting {name}={raw!r}: use one of {', '.join(choices)}")
    minimum = _MINIMUM.get(name)
    if minimum is not None and value < minimum:
        raise ConfigError(f"setting {name}={raw!r}: must be at least {minimum}")
    return value


def _coerce_bool(raw: Any) -> bool:
    """A YAML/JSON/TOML boolean, or a string such as an environment variable's: 1/0, true/false, ..."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"use one of {sorted(_TRUE)} or {sorted(_FALSE)}")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the `ELUSERVE_CONFIG` file, then `ELUSERVE_*` variables.

    Raises:
        ConfigError: naming the setting and what it accepts.
    """
    env = os.environ if environ is None else environ
    defaults = Settings()
    fields = {field.name: getattr(defaults, field.name) for field in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    if config_path := env.get(CONFIG_ENV):
        for key, raw in _read_file(Path(config_path)).items():
            if key not in fields:
                raise ConfigError(
                    f"config file {config_path}: unknown setting {key!r}; known: {sorted(fields)}"
                )
            values[key] = raw
    for name in fields:
        if (raw := env.get(ENV_PREFIX + name.upper())) is not None and raw != "":
            values[name] = raw
    return Settings(**{name: _coerce(name, raw, fields[name]) for name, raw in values.items()})
