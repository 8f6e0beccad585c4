"""Request bodies read within the service's limits while bytes arrive: multipart forms and raw images.

Starlette's `request.form()` spools every file to disk with no size cap and BentoML's typed file
parameters additionally fetch URLs sent in place of files, so the service reads bodies itself. Both
readers share `receive_body`: a declared Content-Length over the limit is refused before the body is
read, a body without one (chunked) is counted as it streams and cut off at the limit, and the whole
body must arrive within the endpoint's deadline (408 `request_timeout`).

- `read_form` parses multipart/form-data as it arrives: an oversized image stops being buffered at the
  limit (and becomes a per-image error), and the part count is bounded.
- `read_body` takes the body itself as one image (``Content-Type: image/*`` or
  ``application/octet-stream``): one buffer, sized from Content-Length (up to `RESERVE_BYTES` before
  the bytes arrive) and filled in place from the server's chunks, which the decoder then reads as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from eluserve.core.errors import (
    ClientError,
    ImageTooLarge,
    InvalidRequest,
    RequestTimeout,
    TooManyImages,
    UnsupportedMediaType,
)

#: Bytes allowed beyond the image bytes for part headers, boundaries and small fields.
FORM_OVERHEAD_BYTES = 64 * 1024
#: Longest value of a text field such as top_k.
MAX_TEXT_BYTES = 1024
#: Parts other than images (top_k, unknown fields) one request may carry.
MAX_OTHER_PARTS = 32
#: Bytes of a raw body allocated before they arrive. Allocating all of a declared 10 MiB at once
#: would let clients that declare it and send nothing hold 10 MiB each (times `max_concurrency`);
#: a body up to this size (a VGA photo) still gets its whole buffer in one allocation.
RESERVE_BYTES = 256 * 1024


@dataclass
class Upload:
    """One file part. `error` is set (and `data` empty) when it exceeded the per-image byte limit."""

    filename: str | None
    #: The image's bytes, in the buffer they were received into (the decoder reads it without a copy).
    data: bytes | bytearray
    size: int
    error: ClientError | None = None


@dataclass
class Form:
    """The parts of one request: the image field's uploads in order, and the text fields."""

    uploads: list[Upload] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class BodyLimits:
    """How many bytes one endpoint's request body may hold, and how long it may take to arrive."""

    max_body_bytes: int
    #: The error for a body over `max_body_bytes`, given the byte count seen (or declared).
    body_too_large: Callable[[int, int], ClientError] = field(
        default=lambda size, limit: InvalidRequest(f"the request body is {size} bytes; the limit is {limit}")
    )
    #: Seconds the whole body may take to arrive (None: no limit); a slower client gets `request_timeout`.
    read_timeout_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class FormLimits(BodyLimits):
    """How much one multipart endpoint accepts."""

    #: The form field holding images ("image" or "images").
    file_field: str
    #: Image parts accepted; one more is refused with `too_many_images`.
    max_files: int
    max_file_bytes: int
    #: Text fields kept (at most MAX_TEXT_BYTES each); other fields are read and discarded.
    text_fields: frozenset[str] = frozenset({"top_k"})
    #: The other bodies the endpoint takes, as its `unsupported_media_type` message adds them.
    other_bodies: str = ""


class _FormBuilder:
    """Collects python-multipart callbacks into a `Form`, raising as soon as a limit is crossed."""

    def __init__(self, limits: FormLimits) -> None:
        self.limits = limits
        self.form = Form()
        self.finished = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._filename: str | None = None
        self._buffer = bytearray()
        self._size = 0
        self._error: ClientError | None = None
        self._kind = "other"
        self._other_parts = 0

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._headers = {}
        self._buffer = bytearray()
        self._size = 0
        self._error = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name = bytearray()
        self._header_value = bytearray()

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequest("a multipart part lacks 'Content-Disposition: form-data; name=...'")
        self._name = options[b"name"].decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = filename.decode("utf-8", "replace") if filename is not None else None
        if self._name == self.limits.file_field:
            self._kind = "file"
            if len(self.form.uploads) >= self.limits.max_files:
                hint = "; send several images to /classify_batch" if self.limits.max_files == 1 else ""
                raise TooManyImages(
                    f"at most {self.limits.max_files} image(s) in field '{self.limits.file_field}' per "
                    f"request{hint}"
                )
            return
        self._other_parts += 1
        if self._other_parts > MAX_OTHER_PARTS:
            raise InvalidRequest(f"more than {MAX_OTHER_PARTS} form fields besides the images")
        self._kind = "text" if self._name in self.limits.text_fields else "other"

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._kind == "file":
            if self._error is not None:
                return
            if self._size > self.limits.max_file_bytes:
                self._error = ImageTooLarge(
                    f"an image is over {self.limits.max_file_bytes} bytes, the limit per image"
                )
                self._buffer = bytearray()
                return
            self._buffer += data[start:end]
        elif self._kind == "text":
            if self._size > MAX_TEXT_BYTES:
                raise InvalidRequest(f"form field '{self._name}' is longer than {MAX_TEXT_BYTES} bytes")
            self._buffer += data[start:end]

    def on_part_end(self) -> None:
        if self._kind == "file":
            self.form.uploads.append(
                Upload(filename=self._filename, data=self._buffer, size=self._size, error=self._error)
            )
        elif self._kind == "text":
            text = self._buffer.decode("utf-8", "replace")
            self.form.fields.setdefault(self._name, []).append(text)
        self._buffer = bytearray()

    def on_end(self) -> None:
        self.finished = True


def is_raw_image(content_type: str | None) -> bool:
    """Whether a request with this Content-Type sends one image as the body: ``image/*`` (any; the
    decoder reads the format from the bytes) or ``application/octet-stream``."""
    media_type, _ = parse_options_header(content_type)
    return media_type.startswith(b"image/") or media_type == b"application/octet-stream"


def declared_length(request: Request, limits: BodyLimits) -> int | None:
    """The body's declared Content-Length, refused at once when over the limit; None when not declared.

    Raises:
        ClientError: the endpoint's body-too-large error, before a byte of the body is read.
    """
    declared = request.headers.get("content-length")
    if declared is None or not (declared.isascii() and declared.isdigit()):
        return None  # chunked; a malformed value never gets past the HTTP parser
    size = int(declared)
    if size > limits.max_body_bytes:
        raise limits.body_too_large(size, limits.max_body_bytes)
    return size


async def receive_body(request: Request, limits: BodyLimits, consume: Callable[[bytes], object]) -> int:
    """Hand each chunk of the body to `consume` as it arrives, within the byte limit and the deadline.

    Returns:
        the number of bytes received.

    Raises:
        ClientError: the endpoint's body-too-large error as soon as the count passes the limit (a
            chunked body, or one longer than it declared), or `request_timeout`.
    """
    received = 0
    try:
        # asyncio's own timeout, not anyio's cancel scope: 22 against 45 µs per request measured in a
        # loop, and anyio's scope was 6.5 % of a worker's event-loop samples under wrk (py-spy).
        async with asyncio.timeout(limits.read_timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limits.max_body_bytes:
                    raise limits.body_too_large(received, limits.max_body_bytes)
                consume(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(
            f"the request body did not arrive within {limits.read_timeout_s:g} s ({received} bytes "
            "received); send it faster or in smaller requests"
        ) from exc
    return received


async def read_form(request: Request, limits: FormLimits) -> Form:
    """Read a multipart/form-data body within `limits`.

    Raises:
        ClientError: `unsupported_media_type`, `invalid_request`, `too_many_images`, `request_timeout`,
            or the endpoint's body-too-large error. An image over the byte limit is not raised but returned
            as an `Upload` with `error` set, so that a batch answers for it alone.
    """
    media_type, options = parse_options_header(request.headers.get("content-type"))
    if media_type != b"multipart/form-data":
        raise UnsupportedMediaType(
            f"send multipart/form-data with the image(s) in field '{limits.file_field}'"
            f"{limits.other_bodies}, not {media_type.decode('latin-1') or 'a body without Content-Type'}"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("the multipart/form-data Content-Type has no boundary")
    declared_length(request, limits)
    builder = _FormBuilder(limits)
    try:
        parser = MultipartParser(boundary, builder.callbacks())
        await receive_body(request, limits, parser.write)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    if not builder.finished:
        raise InvalidRequest("the multipart body ended before its closing boundary")
    return builder.form


async def read_body(request: Request, limits: BodyLimits) -> bytearray:
    """The whole body, within `limits`, in one buffer.

    Each chunk is copied into its place in the buffer as it arrives (no list of chunks joined at the
    end, no second copy for the decoder). A declared Content-Length up to `RESERVE_BYTES` is allocated
    at once, exactly; past that, and for a chunked body, the buffer doubles as bytes arrive, up to the
    declared length or the limit.

    Raises:
        ClientError: `request_timeout`, or the endpoint's body-too-large error.
    """
    declared = declared_length(request, limits)
    expected = declared if declared is not None else limits.max_body_bytes
    buffer = bytearray(min(declared or 0, RESERVE_BYTES))
    filled = 0

    def fill(chunk: bytes) -> None:
        nonlocal filled
        end = filled + len(chunk)
        if end > len(buffer):
            # `receive_body` has checked `end` against the limit; one resize per doubling.
            buffer.extend(bytes(max(end, min(2 * len(buffer), expected)) - len(buffer)))
        buffer[filled:end] = chunk
        filled = end

    await receive_body(request, limits, fill)
    if filled < len(buffer):  # a chunked body's spare room, or a body ended short of its length
        del buffer[filled:]
    return buffer
