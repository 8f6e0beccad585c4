"""Every JSON document the service reads or writes, through orjson, bounded in size and depth.

The standard library's parser recurses once per nesting level, so a body of 200 000 ``[`` (200 kB,
far inside the byte limits) ended in a `RecursionError` and a 500. orjson refuses anything nested
deeper than `MAX_DEPTH` levels with a `ValueError` of its own, which `loads` turns into a
`JsonError` (a 400 where a client sent it, a config error where a file holds it). orjson also parses
the v2 protocol's tensors about four times faster than the standard library (a 16-image UINT8
request is 49 152 integers; README.md, "Open Inference Protocol", has the measurement), and writes
numpy arrays without a `tolist()`.
"""

from __future__ import annotations

from typing import Any

import orjson

#: orjson's own nesting limit (arrays and objects), which it enforces in C while it parses.
MAX_DEPTH = 1024


class JsonError(ValueError):
    """A document that is not JSON, is larger than allowed, or is nested deeper than `MAX_DEPTH`."""


def loads(data: bytes | str, *, what: str, max_bytes: int | None = None) -> Any:
    """`data` parsed, or a `JsonError` whose message names `what` ("the inference request")."""
    if max_bytes is not None and len(data) > max_bytes:
        raise JsonError(f"{what} is {len(data)} bytes of JSON; at most {max_bytes}")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc):
            raise JsonError(f"{what} is nested deeper than {MAX_DEPTH} levels") from exc
        raise JsonError(f"{what} is not valid JSON: {exc}") from exc


def dumps(document: Any) -> bytes:
    """`document` as UTF-8 JSON; numpy arrays in it are written as (nested) lists of numbers."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
