"""The v2 request body, parsed: the JSON header (and Triton's binary tail), every field type-checked,
tensors to numpy without walking lists in Python.

A body is bounded before it is parsed (`eluserve.service.jsonio`: size and nesting depth), and each
field is checked for the type the protocol gives it: integer datatypes take integers in range (not
0.5, not `true`, not "1"), shapes and sizes integers, flags booleans. Whatever a client sends, the
answer is a `ProtocolError` (a 4xx), never an exception that escapes as a 500.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import numpy as np

from eluserve.core.errors import ClientError
from eluserve.service import jsonio

#: Where the JSON header ends and binary tensor data begins (Triton's binary tensor extension).
HEADER_LENGTH = "Inference-Header-Content-Length"
#: A byte count in a header: ASCII digits only (`str.isdigit` also takes "²", which `int` refuses).
DIGITS = re.compile(r"[0-9]{1,19}")
#: The datatypes of the v2 protocol whose JSON data are integers, as numpy dtypes.
INTEGER_TYPES = {
    name: np.dtype(name.lower())
    for name in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
}


class ProtocolError(ClientError):
    """A v2 request the service refuses; answered as ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400, code: str = "protocol_error") -> None:
        super().__init__(code, message, status)


def too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(f"the request is {size} bytes; at most {limit} bytes", 413, "request_too_large")


def split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes, bool]:
    """The JSON inference header, the binary data after it, and whether the inputs' data may hold a
    boolean (`data_may_hold_bools`)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not DIGITS.fullmatch(header_length) or int(header_length) > len(body):
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
    return header, binary, data_may_hold_bools(header, json_part)


def data_may_hold_bools(header: dict[str, Any], text: bytes) -> bool:
    """False where no input's data can hold a boolean, without looking at the data.

    Every JSON `true` and `false` is one of those words in the text. Where the text has no more of
    them than the header has booleans outside the inputs' data (`"binary_data": false` and the
    like, a walk over a few small values), the data have none. More (the data have some, or a
    string contains the word) means the data are looked through (`holds_bool`).
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


def is_int(value: Any) -> bool:
    """Whether a JSON value is an integer (JSON's `true` is a Python bool, which is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def flag(options: dict[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"the parameter {key!r} must be true or false, got {value!r}")
    return value


def parameters(owner: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = owner.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"the parameters of {what} must be an object")
    return parameters


def tensor_data(tensor: dict[str, Any], binary: bytes) -> tuple[Any, bytes]:
    """The input's data (a JSON value or its binary slice) and the binary data left over."""
    size = parameters(tensor, f"input {tensor.get('name')!r}").get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise ProtocolError(f"input {tensor.get('name')!r} has neither data nor binary_data_size")
        return tensor["data"], binary
    if not is_int(size) or size < 0 or size > len(binary):
        raise ProtocolError(f"binary_data_size {size!r} exceeds the {len(binary)} binary bytes sent")
    return binary[:size], binary[size:]


def integers(data: Any, shape: list[int], dtype: np.dtype, *, literals: bool) -> np.ndarray:
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
        raise ProtocolError(f"{wanted}; the data holds {offender(array)}")
    if literals and holds_bool(data):
        raise ProtocolError(f"{wanted}; the data holds booleans")
    if array.size != count:
        raise ProtocolError(f"{wanted}, got {array.size} values")
    if array.size and (array.min() < limits.min or array.max() > limits.max):
        raise ProtocolError(f"{wanted}, got values in {array.min()}..{array.max()}")
    return array.astype(dtype).reshape(shape)


def holds_bool(data: list[Any]) -> bool:
    """Whether (nested) JSON data holds a boolean: numpy reads `true` among integers as 1."""
    return any(type(item) is bool for item in np.asarray(data, dtype=object).reshape(-1))


def offender(array: np.ndarray) -> str:
    """What JSON data that numpy did not read as integers holds, in the client's terms."""
    return {
        "f": "numbers that are not integers",
        "c": "numbers that are not integers",
        "U": "strings",
        "b": "booleans",
    }.get(array.dtype.kind, "values of mixed types, or integers out of range")


def bytes_elements(data: Any, count: int) -> list[bytes]:
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
