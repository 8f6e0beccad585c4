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
import re
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
from eluserve.service.api.classify import BODY_TIMEOUT_SHARE, count_client_error
from eluserve.service.config import Settings
from eluserve.service.repository import ModelRegistry, ServedVersion, version_key

logger = logging.getLogger(__name__)

#: The BYTES input: encoded images.
ENCODED_INPUT = "image_bytes"
INPUTS_HINT = f"send {INPUT_NAME!r} (UINT8 crops) or {ENCODED_INPUT!r} (BYTES, encoded images)"
HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("classification", "binary_tensor_data", "model_repository", "model_configuration")
#: A byte count in a header: ASCII digits only (`str.isdigit` also takes "²", which `int` refuses).
_DIGITS = re.compile(r"[0-9]{1,19}")
#: The datatypes of the v2 protocol whose JSON data are integers, as numpy dtypes.
INTEGER_TYPES = {
    name: np.dtype(name.lower())
    for name in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
}


class ProtocolError(ClientError):
    """A v2 request the service refuses; answered as ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400, code: str = "protocol_error") -> None:
        super().__init__(code, message, status)


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
        header, binary, literals = _split(body, request.headers.get(HEADER_LENGTH))
        if not isinstance(header.get("inputs"), list) or len(header["inputs"]) != 1:
            raise ProtocolError(
                f"send exactly one input: {INPUT_NAME!r} (UINT8) or {ENCODED_INPUT!r} (BYTES)"
            )
        (tensor,) = header["inputs"]
        if not isinstance(tensor, dict):
            raise ProtocolError("an input must be an object with name, shape, datatype and data")
        data, rest = _tensor_data(tensor, binary)
        if rest:
            raise ProtocolError(f"{len(rest)} bytes of binary data follow the inputs that no input claims")
        crops = await self._crops(tensor, data, served.info, literals)
        probs = await served.batcher(crops)
        served.frontend.count_results(format_results(probs, served.info.labels, 1))
        return _answer(header, served.info, probs)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if _DIGITS.fullmatch(declared) and int(declared) > self.max_body_bytes:
            raise _too_large(int(declared), self.max_body_bytes)
        chunks = []
        size = 0
        try:
            with anyio.fail_after(self.read_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise _too_large(size, self.max_body_bytes)
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
        if not (isinstance(shape, list) and shape and all(_is_int(d) and d >= 0 for d in shape)):
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
            return _integers(data, shape, INTEGER_TYPES["UINT8"], literals=literals)
        if name == ENCODED_INPUT:
            if datatype != "BYTES" or shape not in ([shape[0]], [shape[0], 1]):
                raise ProtocolError(f"input {ENCODED_INPUT!r} must be BYTES [N], got {datatype} {shape}")
            images = _bytes_elements(data, shape[0])
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


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(f"the request is {size} bytes; at most {limit} bytes", 413, "request_too_large")


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes, bool]:
    """The JSON inference header, the binary data after it, and whether the inputs' data may hold a
    boolean (`_data_may_hold_bools`)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not _DIGITS.fullmatch(header_length) or int(header_length) > len(body):
            raise ProtocolError(
                f"{HEADER_LENGTH} must be a byte count within the body, got {header_length!r}"
            )
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        header = jsonio.loads(json_part, what="the inference request")
    except jsonio.JsonError as exc:
        raise ProtocolError(str(exc)) from exc
    if not isinstance(header, dict):
        raise ProtocolError("the inference request must be a JSON object")
    if "id" in header and not isinstance(header["id"], str):
        raise ProtocolError("the request id must be a string")
    return header, binary, _data_may_hold_bools(header, json_part)


def _data_may_hold_bools(header: dict[str, Any], text: bytes) -> bool:
    """False where no input's data can hold a boolean, without looking at the data.

    Every JSON `true` and `false` is one of those words in the text. Where the text has no more of
    them than the header has booleans outside the inputs' data (`"binary_data": false` and the
    like, a walk over a few small values), the data have none. More (the data have some, or a
    string contains the word) means the data are looked through (`_holds_bool`).
    """
    literals = text.count(b"true") + text.count(b"false")
    if not literals:
        return False
    inputs = header.get("inputs")
    data = (
        {id(t["data"]) for t in inputs if isinstance(t, dict) and "data" in t}
        if isinstance(inputs, list)
        else set()
    )
    outside, stack = 0, [header]
    while stack:
        value = stack.pop()
        if isinstance(value, bool):
            outside += 1
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list) and id(value) not in data:
            stack.extend(value)
    return literals > outside


def _is_int(value: Any) -> bool:
    """Whether a JSON value is an integer (JSON's `true` is a Python bool, which is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _flag(options: dict[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"the parameter {key!r} must be true or false, got {value!r}")
    return value


def _parameters(owner: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = owner.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"the parameters of {what} must be an object")
    return parameters


def _tensor_data(tensor: dict[str, Any], binary: bytes) -> tuple[Any, bytes]:
    """The input's data (a JSON value or its binary slice) and the binary data left over."""
    size = _parameters(tensor, f"input {tensor.get('name')!r}").get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise ProtocolError(f"input {tensor.get('name')!r} has neither data nor binary_data_size")
        return tensor["data"], binary
    if not _is_int(size) or size < 0 or size > len(binary):
        raise ProtocolError(f"binary_data_size {size!r} exceeds the {len(binary)} binary bytes sent")
    return binary[:size], binary[size:]


def _integers(data: Any, shape: list[int], dtype: np.dtype, *, literals: bool) -> np.ndarray:
    """An integer tensor from binary data (little-endian) or JSON data (integers in the type's range).

    JSON data goes to numpy as parsed: numpy infers one type for the whole list in C, so a float
    anywhere makes it floating-point and a string makes it a string array, both refused; only
    booleans mixed with integers pass that test (numpy reads them as 0 and 1), so they are looked
    for one by one, only where the request's text says the data may hold one (`literals`).
    """
    count = int(np.prod(shape))
    kind = dtype.name.upper()
    if isinstance(data, bytes):
        if len(data) != count * dtype.itemsize:
            raise ProtocolError(
                f"{kind} {shape} needs {count * dtype.itemsize} bytes of binary data, got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    limits = np.iinfo(dtype)
    wanted = f"{kind} {shape} needs {count} integers in {limits.min}..{limits.max}"
    if not isinstance(data, list):
        raise ProtocolError(f"{wanted} as a JSON list, got {type(data).__name__}")
    try:
        array = np.asarray(data).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"{wanted}: the data is no regular array of numbers ({exc})") from exc
    if array.dtype.kind not in "iu":
        raise ProtocolError(f"{wanted}; the data holds {_offender(array)}")
    if literals and _holds_bool(data):
        raise ProtocolError(f"{wanted}; the data holds booleans")
    if array.size != count:
        raise ProtocolError(f"{wanted}, got {array.size} values")
    if array.size and (array.min() < limits.min or array.max() > limits.max):
        raise ProtocolError(f"{wanted}, got values in {array.min()}..{array.max()}")
    return array.astype(dtype).reshape(shape)


def _holds_bool(data: list[Any]) -> bool:
    """Whether (nested) JSON data holds a boolean: numpy reads `true` among integers as 1."""
    return any(type(item) is bool for item in np.asarray(data, dtype=object).reshape(-1))


def _offender(array: np.ndarray) -> str:
    """What JSON data that numpy did not read as integers holds, in the client's terms."""
    return {
        "f": "numbers that are not integers",
        "c": "numbers that are not integers",
        "U": "strings",
        "b": "booleans",
    }.get(array.dtype.kind, "values of mixed types, or integers out of range")


def _bytes_elements(data: Any, count: int) -> list[bytes]:
    if isinstance(data, bytes):
        elements, offset = [], 0
        while offset < len(data):
            if offset + 4 > len(data):
                raise ProtocolError("BYTES binary data is cut short inside a length prefix")
            (length,) = struct.unpack_from("<I", data, offset)
            offset += 4
            if offset + length > len(data):
                raise ProtocolError("BYTES binary data is cut short inside an element")
            elements.append(data[offset : offset + length])
            offset += length
    elif isinstance(data, list) and all(isinstance(item, str) for item in data):
        elements = [item.encode("utf-8") for item in data]
    else:
        raise ProtocolError("BYTES data must be binary data or a JSON list of strings")
    if len(elements) != count:
        raise ProtocolError(f"the shape says {count} images, the data holds {len(elements)}")
    return elements


def _answer(header: dict[str, Any], info: ModelMetadata, probs: np.ndarray) -> Response:
    binary_default = _flag(_parameters(header, "the request"), "binary_data_output", False)
    requested = header.get("outputs") or [{"name": OUTPUT_NAME}]
    if not isinstance(requested, list) or len(requested) > 1:
        raise ProtocolError(f"outputs must be a list of at most one output, {OUTPUT_NAME!r}")
    outputs, chunks = [], []
    for output in requested:
        if not isinstance(output, dict) or output.get("name") != OUTPUT_NAME:
            name = output.get("name") if isinstance(output, dict) else output
            raise ProtocolError(f"unknown output {name!r}; the model has {OUTPUT_NAME!r}")
        options = _parameters(output, f"output {OUTPUT_NAME!r}")
        k = options.get("classification")
        if k is not None:
            if not _is_int(k) or not 1 <= k <= info.num_classes:
                raise ProtocolError(f"classification must be an integer in 1..{info.num_classes}, got {k!r}")
            entry, raw = _classification(probs, info, k)
        else:
            entry = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(probs.shape)}
            raw = probs.astype("<f4").tobytes()
            entry["data"] = np.ascontiguousarray(probs, dtype=np.float32).reshape(-1)
        if _flag(options, "binary_data", binary_default):
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
