"""Open Inference Protocol v2 (KServe v2, Triton's HTTP API) over the same models and batchers.

    GET  /v2                                         server metadata and extensions
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/{version}]      model metadata: inputs, outputs, platform
    GET  /v2/models/{name}[/versions/{version}]/config  Triton's model configuration extension
    GET  /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer

A request sends exactly one input, either of

- ``image`` UINT8 ``[N, H, W, 3]``: crops already preprocessed to the model's input size (what
  `eluserve.core.preprocessing.load_image` returns), in JSON (integers 0..255, flat or nested) or as
  binary data;
- ``image_bytes`` BYTES ``[N]``: encoded images (JPEG, PNG, WebP...), decoded and single-cropped here
  exactly as /classify does; in practice binary data, since JSON strings cannot carry arbitrary bytes.

The metadata and the configuration declare ``image`` alone, the input each model has: tools that
send every declared input with generated data (perf_analyzer, model_analyzer) then send a request
the model answers. ``image_bytes`` is an alternative to it, named in the configuration's
``parameters`` (README.md, "Open Inference Protocol", says why).

The one output is ``probabilities`` FP32 ``[N, classes]``. Triton's classification extension
(``"parameters": {"classification": k}`` on a requested output) answers BYTES ``[N, k]`` strings
``"score:index:label"`` instead, best first. Binary tensor data works both ways: a request whose
body starts with ``Inference-Header-Content-Length`` bytes of JSON followed by the inputs' raw data
(``"parameters": {"binary_data_size": n}``), and outputs asked with ``"binary_data": true`` (or the
request parameter ``binary_data_output``), which come back the same way (BYTES elements as 4-byte
little-endian length + bytes).

Inference goes through the model version's adaptive batcher, so v2 requests and /classify requests
share batches. Errors have the protocol's shape, ``{"error": "message"}``, with a 4xx status; the
limits are the service's (images per request, bytes per request and image, body read timeout), and
the JSON header is parsed by `eluserve.service.jsonio` (no deeper than its `MAX_DEPTH`). Every value
is checked for its JSON type: a number where a count or a pixel is expected must be an integer (not
a float, a boolean or a string), a flag must be a boolean.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from eluserve.core.contract import INPUT_NAME, MODEL_FILE, OUTPUT_NAME, ModelMetadata
from eluserve.core.engines import ONNXRUNTIME
from eluserve.core.errors import ClientError, ServiceError
from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.results import format_results
from eluserve.service import jsonio
from eluserve.service.api import v2_tensors as tensors
from eluserve.service.api.classify import BODY_TIMEOUT_SHARE, count_client_error
from eluserve.service.api.v2_tensors import DIGITS, HEADER_LENGTH, INTEGER_TYPES, ProtocolError
from eluserve.service.config import Settings
from eluserve.service.repository import ModelRegistry, ServedVersion, version_key

logger = logging.getLogger(__name__)

#: The BYTES input: encoded images.
ENCODED_INPUT = "image_bytes"
INPUTS_HINT = f"send {INPUT_NAME!r} (UINT8 crops) or {ENCODED_INPUT!r} (BYTES, encoded images)"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("classification", "binary_tensor_data", "model_repository", "model_configuration")


def server_version() -> str:
    """The installed eluserve's version (\"unknown\" from a source tree that was never installed)."""
    try:
        return version("eluserve")
    except PackageNotFoundError:
        return "unknown"


def v2_error(error: ClientError | ServiceError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status in (429, 503) else None
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)


def model_metadata(info: ModelMetadata, versions: Sequence[str]) -> dict[str, Any]:
    """The model metadata: the one input every tool may send (`image`) and the output."""
    height, width = info.input_size
    return {
        "name": info.name,
        "versions": list(versions),
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, height, width, 3]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, info.num_classes]}],
    }


def model_config(
    info: ModelMetadata, *, max_batch_size: int, max_latency_ms: int, workers: int, gpu: bool
) -> dict[str, Any]:
    """Triton's model configuration (the JSON form of model_config.proto's `ModelConfig`).

    `max_batch_size` is the largest batch a request may carry and the batcher runs; the batcher
    starts a batch as soon as the previous one ends (no queue delay), and refuses work that would
    wait longer than its latency budget, which Triton's queue policy names a queue timeout with the
    REJECT action. Dims exclude the batch dimension, as Triton's do when `max_batch_size` > 0. The
    backend is the engine that runs the model; Triton's platform names ONNX Runtime's alone, and
    its configurations of other backends (OpenVINO) have an empty one.
    """
    height, width = info.input_size
    backend = info.engine or ONNXRUNTIME
    return {
        "name": info.name,
        "platform": PLATFORM if backend == ONNXRUNTIME else "",
        "backend": backend,
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": INPUT_NAME,
                "data_type": "TYPE_UINT8",
                "format": "FORMAT_NHWC",
                "dims": [height, width, 3],
            }
        ],
        "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [info.num_classes]}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": 0,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": max_latency_ms * 1000,
                "allow_timeout_override": False,
            },
        },
        "instance_group": [
            {"name": f"{info.name}_0", "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": workers}
        ],
        "default_model_filename": MODEL_FILE,
        "parameters": {
            ENCODED_INPUT: {
                "string_value": f"BYTES [-1]: encoded images, decoded and cropped to {height}x{width} by the "
                f"server; send it instead of {INPUT_NAME!r}"
            },
            "model_version": {"string_value": info.version},
        },
    }


class InferenceProtocol:
    """The v2 handlers of one worker."""

    def __init__(
        self, registry: ModelRegistry, settings: Settings, ready: Callable[[], bool], workers: int = 1
    ) -> None:
        self.registry = registry
        self._ready = ready
        self.settings = settings
        self.workers = workers
        self.limits: Limits = settings.limits()
        self.max_images = settings.max_images
        self.max_body_bytes = settings.max_request_bytes
        self.read_timeout_s = settings.timeout_s * BODY_TIMEOUT_SHARE

    async def server(self, _: Request) -> Response:
        return JSONResponse({"name": "eluserve", "version": server_version(), "extensions": list(EXTENSIONS)})

    async def live(self, _: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, _: Request) -> Response:
        return Response(status_code=200 if self._ready() else 503)

    async def model(self, request: Request) -> Response:
        try:
            with self._lease(request) as served:
                versions = sorted(self.registry.loaded().get(served.info.name, {}), key=version_key)
                return JSONResponse(model_metadata(served.info, versions))
        except ClientError as exc:
            count_client_error(exc)
            return v2_error(exc)

    async def config(self, request: Request) -> Response:
        try:
            with self._lease(request) as served:
                document = model_config(
                    served.info,
                    max_batch_size=min(self.settings.max_batch_size, self.max_images),
                    max_latency_ms=self.settings.max_latency_ms,
                    workers=self.workers,
                    gpu="CUDA" in served.provider or "GPU" in served.provider,
                )
                return JSONResponse(document)
        except ClientError as exc:
            count_client_error(exc)
            return v2_error(exc)

    async def model_ready(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        if self.registry.is_loaded(name, version):
            return Response(status_code=200)
        return JSONResponse({"error": f"model {name!r} version {version or 'latest'} is not ready"}, 404)

    async def infer(self, request: Request) -> Response:
        info: ModelMetadata | None = None
        try:
            with self._lease(request) as served:
                info = served.info
                return await self._infer(request, served)
        except ClientError as exc:
            count_client_error(exc, info)
            return v2_error(exc)
        except ServiceError as exc:
            return v2_error(exc)
        except ClientDisconnect:
            return Response(status_code=400)
        except Exception:  # a bug: logged, and answered in the protocol's error body, never a bare 500
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            bug = ServiceError("internal_error", "an unexpected error occurred; it has been logged", 500)
            return v2_error(bug)

    def _lease(self, request: Request) -> Any:
        return self.registry.lease(request.path_params["name"], request.path_params.get("version"))

    async def _infer(self, request: Request, served: ServedVersion) -> Response:
        body = await self._read_body(request)
        header, binary, literals = tensors.split(body, request.headers.get(HEADER_LENGTH))
        if not isinstance(header.get("inputs"), list) or len(header["inputs"]) != 1:
            raise ProtocolError(
                f"send exactly one input: {INPUT_NAME!r} (UINT8) or {ENCODED_INPUT!r} (BYTES)"
            )
        (tensor,) = header["inputs"]
        if not isinstance(tensor, dict):
            raise ProtocolError("an input must be an object with name, shape, datatype and data")
        data, rest = tensors.tensor_data(tensor, binary)
        if rest:
            raise ProtocolError(f"{len(rest)} bytes of binary data follow the inputs that no input claims")
        crops = await self._crops(tensor, data, served.info, literals)
        probs = await served.batcher(crops)
        served.frontend.count_results(format_results(probs, served.info.labels, 1))
        return _answer(header, served.info, probs)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if DIGITS.fullmatch(declared) and int(declared) > self.max_body_bytes:
            raise tensors.too_large(int(declared), self.max_body_bytes)
        chunks = []
        size = 0
        try:
            with anyio.fail_after(self.read_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise tensors.too_large(size, self.max_body_bytes)
                    chunks.append(chunk)
        except TimeoutError as exc:
            raise ProtocolError(
                f"the body did not arrive within {self.read_timeout_s:.0f} s", 408, "request_timeout"
            ) from exc
        return b"".join(chunks)

    async def _crops(
        self, tensor: dict[str, Any], data: Any, info: ModelMetadata, literals: bool
    ) -> np.ndarray:
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not (isinstance(shape, list) and shape and all(tensors.is_int(d) and d >= 0 for d in shape)):
            raise ProtocolError(f"input {name!r}: shape must be a list of non-negative integers")
        if shape[0] > self.max_images:
            raise ProtocolError(
                f"input {name!r} holds {shape[0]} images; at most {self.max_images} per request",
                413,
                "too_many_images",
            )
        if shape[0] == 0:
            raise ProtocolError(f"input {name!r} holds no images")
        if name == INPUT_NAME:
            expected = [shape[0], *info.input_size, 3]
            if datatype != "UINT8" or shape != expected:
                raise ProtocolError(f"input {INPUT_NAME!r} must be UINT8 {expected}, got {datatype} {shape}")
            return tensors.integers(data, shape, INTEGER_TYPES["UINT8"], literals=literals)
        if name == ENCODED_INPUT:
            if datatype != "BYTES" or shape not in ([shape[0]], [shape[0], 1]):
                raise ProtocolError(f"input {ENCODED_INPUT!r} must be BYTES [N], got {datatype} {shape}")
            images = tensors.bytes_elements(data, shape[0])
            return await anyio.to_thread.run_sync(self._decode, images, info)
        raise ProtocolError(
            f"unknown input {name!r}; send {INPUT_NAME!r} (UINT8) or {ENCODED_INPUT!r} (BYTES)"
        )

    def _decode(self, images: list[bytes], info: ModelMetadata) -> np.ndarray:
        crops = []
        for index, data in enumerate(images):
            try:
                crops.append(load_image(data, info.preprocessing, self.limits))
            except ClientError as exc:
                raise ProtocolError(f"{ENCODED_INPUT}[{index}]: {exc.message}", exc.status, exc.code) from exc
        return np.stack(crops)


def _answer(header: dict[str, Any], info: ModelMetadata, probs: np.ndarray) -> Response:
    binary_default = tensors.flag(tensors.parameters(header, "the request"), "binary_data_output", False)
    requested = header.get("outputs") or [{"name": OUTPUT_NAME}]
    if not isinstance(requested, list) or len(requested) > 1:
        raise ProtocolError(f"outputs must be a list of at most one output, {OUTPUT_NAME!r}")
    outputs, chunks = [], []
    for output in requested:
        if not isinstance(output, dict) or output.get("name") != OUTPUT_NAME:
            name = output.get("name") if isinstance(output, dict) else output
            raise ProtocolError(f"unknown output {name!r}; the model has {OUTPUT_NAME!r}")
        options = tensors.parameters(output, f"output {OUTPUT_NAME!r}")
        k = options.get("classification")
        if k is not None:
            if not tensors.is_int(k) or not 1 <= k <= info.num_classes:
                raise ProtocolError(f"classification must be an integer in 1..{info.num_classes}, got {k!r}")
            entry, raw = _classification(probs, info, k)
        else:
            entry = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(probs.shape)}
            raw = probs.astype("<f4").tobytes()
            entry["data"] = np.ascontiguousarray(probs, dtype=np.float32).reshape(-1)
        if tensors.flag(options, "binary_data", binary_default):
            entry.pop("data")
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": info.name, "model_version": info.version, "outputs": outputs}
    if "id" in header:
        document["id"] = header["id"]
    text = jsonio.dumps(document)
    if not chunks:
        return Response(text, media_type="application/json")
    return Response(
        text + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(text))},
    )


def _classification(probs: np.ndarray, info: ModelMetadata, k: int) -> tuple[dict[str, Any], bytes]:
    """Triton's classification output: `"score:index:label"` for the top k of each image."""
    rows = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:k]
        rows.append([f"{row[i]:f}:{i}:{info.labels[i]}" for i in best])
    flat = [item for row in rows for item in row]
    raw = b"".join(struct.pack("<I", len(item.encode())) + item.encode() for item in flat)
    return {"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [len(rows), k], "data": flat}, raw
