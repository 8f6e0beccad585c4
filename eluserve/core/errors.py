"""Named errors of the serving core.

`ClientError` is everything a client can cause by what it sends. Each one carries a stable machine
code (clients branch on it, the `eluserve_client_errors_total` metric counts it), an HTTP status and a
message that tells the client what to do instead. The HTTP layer turns it into
``{"error": {"code": ..., "message": ...}}``; the folder CLI prints it. `ServiceError` has the same
shape for what is not the client's fault. Anything else is a bug and is logged as such.
"""

from __future__ import annotations

from typing import ClassVar


class HttpError(Exception):
    """An error with the contract's shape: a stable code, an HTTP status and a message."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def to_dict(self) -> dict[str, str]:
        """The JSON error object of the HTTP contract."""
        return {"code": self.code, "message": self.message}


class ClientError(HttpError):
    """A request the service refuses because of what the client sent.

    The subclasses below fix `code` and `status` per case (`InvalidImage("...")`); the base class takes
    all three for cases that have no subclass.
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(code, message, status)


class _CaseError(ClientError):
    """A client error whose code and status are fixed by its class."""

    CODE: ClassVar[str]
    STATUS: ClassVar[int]

    def __init__(self, message: str) -> None:
        super().__init__(self.CODE, message, self.STATUS)


class InvalidImage(_CaseError):
    """The bytes are not a decodable image: garbage, truncated, or corrupt."""

    CODE = "invalid_image"
    STATUS = 400


class UnsupportedFormat(_CaseError):
    """A real image, but in a file format or pixel mode the service does not decode."""

    CODE = "unsupported_format"
    STATUS = 415


class ImageTooLarge(_CaseError):
    """One image's encoded bytes exceed the per-image byte limit."""

    CODE = "image_too_large"
    STATUS = 413


class TooManyPixels(_CaseError):
    """The declared width × height exceeds the pixel limit (decompression bombs included)."""

    CODE = "too_many_pixels"
    STATUS = 413


class TooManyImages(_CaseError):
    """More images in one request than the endpoint accepts."""

    CODE = "too_many_images"
    STATUS = 413


class InvalidTopK(_CaseError):
    """`top_k` is not an integer in 1..number of classes."""

    CODE = "invalid_top_k"
    STATUS = 400


class MissingField(_CaseError):
    """A required form field is absent."""

    CODE = "missing_field"
    STATUS = 400


class EmptyFile(_CaseError):
    """An image field that holds zero bytes."""

    CODE = "empty_file"
    STATUS = 400


class InvalidRequest(_CaseError):
    """The body is not well-formed multipart/form-data (bad boundary, cut short, oversized headers)."""

    CODE = "invalid_request"
    STATUS = 400


class UnsupportedMediaType(_CaseError):
    """The request body is not multipart/form-data."""

    CODE = "unsupported_media_type"
    STATUS = 415


class RequestTooLarge(_CaseError):
    """The whole request body exceeds the per-request byte limit."""

    CODE = "request_too_large"
    STATUS = 413


class RequestTimeout(_CaseError):
    """The request body did not arrive in time: a client too slow (or stalled) to upload."""

    CODE = "request_timeout"
    STATUS = 408


#: Every client error case, so metrics can create their series at zero before the first error.
CLIENT_ERROR_TYPES: tuple[type[_CaseError], ...] = (
    InvalidImage,
    UnsupportedFormat,
    ImageTooLarge,
    TooManyPixels,
    TooManyImages,
    InvalidTopK,
    MissingField,
    EmptyFile,
    InvalidRequest,
    UnsupportedMediaType,
    RequestTooLarge,
    RequestTimeout,
)
CLIENT_ERROR_CODES: tuple[str, ...] = tuple(error.CODE for error in CLIENT_ERROR_TYPES)


class ServiceError(HttpError):
    """A request the service cannot serve through no fault of the client.

    `overloaded` (429: retry later) or `internal_error` (500: a bug, logged with its traceback). Same
    JSON shape as `ClientError`.
    """


class ModelFormatError(ValueError):
    """A model file that does not follow docs/model-format.md; the message names what is wrong."""


class ConfigError(ValueError):
    """A setting (environment variable or config file entry) with an unusable value."""
