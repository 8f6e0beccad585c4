"""The public HTTP endpoints: an image in, JSON out, errors as ``{"error": {"code", "message"}}``.

    POST /classify        file field `image` of a multipart form, or the image itself as the body
                          (Content-Type image/* or application/octet-stream); optional `top_k`
                          (default 5, 1..num_classes), a form field or a query parameter
        → {"model": "name:version", "label", "probability", "top_k": [{"label", "index", "probability"}]}
    POST /classify_batch  multipart only: repeated file field `images` (1..max_images), optional `top_k`
        → {"model": ..., "results": [per image, in order: the object above without "model",
                                       or {"error": {"code", "message"}}]}
    GET  /model           the model's metadata and execution provider

A raw body is the same image as the multipart field, with the same limits (its bytes, checked from
Content-Length before it is read and while it arrives; its deadline) and the same answers; its bytes,
not its Content-Type, say which format it is. One bad image in a batch is answered in its slot; the
others are classified. Request-level problems (another body type, no image, bad top_k, too many images,
body too large or too slow) fail the whole request with a 4xx. Overload is 429 (BentoML's concurrency
limit, or the batcher refusing work it cannot finish in time).

Large uploads are decoded in a worker thread so the event loop keeps accepting requests; inference
goes through `infer`, which in the service is the adaptive batcher (`eluserve.service.batching`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio.to_thread
import numpy as np
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from eluserve.core.contract import ModelMetadata
from eluserve.core.errors import (
    ClientError,
    ImageTooLarge,
    InvalidTopK,
    MissingField,
    RequestTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.results import format_results, parse_top_k
from eluserve.service import metrics
from eluserve.service.api.forms import (
    FORM_OVERHEAD_BYTES,
    BodyLimits,
    Form,
    FormLimits,
    Upload,
    is_raw_image,
    read_body,
    read_form,
)
from eluserve.service.config import Settings

logger = logging.getLogger(__name__)

#: Share of BentoML's request timeout (`timeout_s`) that the body may take to arrive. A slow upload is
#: then answered by us, 408 `request_timeout` with the error body and metric, before BentoML's timeout
#: answers 504 (a server error, in alerts) with a body outside the contract; the rest of the budget is
#: left for decoding and inference.
BODY_TIMEOUT_SHARE = 0.8

#: What a raw image body may be labelled with, as the error messages name it.
RAW_BODY_TYPES = "Content-Type: image/* or application/octet-stream"

#: Uploads up to this many bytes in total are decoded on the event loop (see `Frontend._prepare`).
INLINE_DECODE_BYTES = 64 * 1024

Infer = Callable[[np.ndarray], Awaitable[np.ndarray]]


def error_response(error: ClientError | ServiceError) -> JSONResponse:
    """The contract's error body with the error's status."""
    headers = {"Retry-After": "1"} if error.status in (429, 503) else None
    return JSONResponse({"error": error.to_dict()}, status_code=error.status, headers=headers)


def count_client_error(error: ClientError, info: ModelMetadata | None = None) -> None:
    """Count a client error against the model version it was sent to (none: empty labels)."""
    model, version = (info.name, info.version) if info is not None else ("", "")
    metrics.CLIENT_ERRORS.labels(model=model, version=version, code=error.code).inc()


class Frontend:
    """Parses, validates and preprocesses requests for one model; `infer` does the rest."""

    def __init__(self, info: ModelMetadata, settings: Settings, infer: Infer) -> None:
        self.info = info
        self.series = metrics.ModelSeries.of(info)
        self.limits: Limits = settings.limits()
        self._infer = infer
        read_timeout_s = settings.timeout_s * BODY_TIMEOUT_SHARE
        self.single_form = FormLimits(
            file_field="image",
            max_files=1,
            max_file_bytes=settings.max_image_bytes,
            max_body_bytes=settings.max_image_bytes + FORM_OVERHEAD_BYTES,
            body_too_large=lambda size, limit: ImageTooLarge(
                f"the request is {size} bytes; one image may be at most {limit - FORM_OVERHEAD_BYTES} bytes"
            ),
            read_timeout_s=read_timeout_s,
            other_bodies=f", or the image itself as the body ({RAW_BODY_TYPES})",
        )
        self.single_body = BodyLimits(
            max_body_bytes=settings.max_image_bytes,
            body_too_large=lambda size, limit: ImageTooLarge(
                f"the image is {size} bytes; the limit is {limit} bytes per image"
            ),
            read_timeout_s=read_timeout_s,
        )
        self.batch_form = FormLimits(
            file_field="images",
            max_files=settings.max_images,
            max_file_bytes=settings.max_image_bytes,
            max_body_bytes=settings.max_request_bytes,
            body_too_large=lambda size, limit: RequestTooLarge(
                f"the request is {size} bytes; a batch request may be at most {limit} bytes, "
                "split it into several requests"
            ),
            read_timeout_s=read_timeout_s,
        )

    async def classify(self, request: Request) -> Response:
        """POST /classify."""
        return await self._guarded(self._classify, request)

    async def classify_batch(self, request: Request) -> Response:
        """POST /classify_batch."""
        return await self._guarded(self._classify_batch, request)

    async def model(self, request: Request) -> Response:
        """GET /model: the contract metadata, with the execution provider in use."""
        return await self._guarded(self._model, request)

    async def _guarded(self, handler: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
        try:
            return await handler(request)
        except ClientError as exc:
            count_client_error(exc, self.info)
            return error_response(exc)
        except ServiceError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=400)
        except Exception:
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            return error_response(
                ServiceError("internal_error", "an unexpected error occurred; it has been logged", 500)
            )

    async def _classify(self, request: Request) -> Response:
        if is_raw_image(request.headers.get("content-type")):
            k = self._top_k(request)  # before the body is read: a bad top_k costs no upload
            # An empty body goes to the decoder too: `empty_file`, counted as multipart's empty file is.
            data = await read_body(request, self.single_body)
            uploads = [Upload(filename=None, data=data, size=len(data))]
        else:
            form = await read_form(request, self.single_form)
            if not form.uploads:
                raise MissingField(
                    "send the image as multipart/form-data file field 'image', or as the body "
                    f"({RAW_BODY_TYPES})"
                )
            k = self._top_k(request, form)
            uploads = form.uploads
        (item,) = await self._prepare(uploads)
        if isinstance(item, ClientError):
            return error_response(item)
        (result,) = self._results(await self._infer(item[np.newaxis]), k)
        return JSONResponse({"model": self.info.tag, **result})

    async def _classify_batch(self, request: Request) -> Response:
        if is_raw_image(request.headers.get("content-type")):
            raise UnsupportedMediaType(
                "a batch is multipart/form-data with the images in field 'images' (repeat the field), "
                "not an image as the body; one image may be sent as the body to classify"
            )
        form = await read_form(request, self.batch_form)
        if not form.uploads:
            raise MissingField(
                "send the images as multipart/form-data file fields named 'images' (repeat the field)"
            )
        k = self._top_k(request, form)
        items = await self._prepare(form.uploads)
        crops = [item for item in items if isinstance(item, np.ndarray)]
        classified = iter(self._results(await self._infer(np.stack(crops)), k) if crops else [])
        results = [
            {"error": item.to_dict()} if isinstance(item, ClientError) else next(classified) for item in items
        ]
        return JSONResponse({"model": self.info.tag, "results": results})

    async def _model(self, _: Request) -> Response:
        return JSONResponse(self.info.to_dict())

    def _top_k(self, request: Request, form: Form | None = None) -> int:
        """`top_k` from the query string or the form (a raw body has only the query string)."""
        values = request.query_params.getlist("top_k")
        if form is not None:
            values += form.fields.get("top_k", [])
        if len(values) > 1:
            raise InvalidTopK("send top_k at most once, as a form field or a query parameter")
        return parse_top_k(values[0] if values else None, self.info.num_classes)

    async def _prepare(self, uploads: Sequence[Upload]) -> list[np.ndarray | ClientError]:
        """Decode and crop every upload; failures stay in their slot.

        Large uploads are decoded off the event loop so it keeps accepting requests; small ones (a
        32×32 JPEG decodes in ~0.1 ms) inline, where the thread hand-off would cost more than the
        decode (measured with `eluserve bench` and py-spy: 7-21 % less CPU per image).
        """
        if sum(upload.size for upload in uploads) <= INLINE_DECODE_BYTES:
            return self._prepare_sync(uploads)
        return await anyio.to_thread.run_sync(self._prepare_sync, uploads)

    def _prepare_sync(self, uploads: Sequence[Upload]) -> list[np.ndarray | ClientError]:
        items: list[np.ndarray | ClientError] = []
        for upload in uploads:
            try:
                if upload.error is not None:
                    raise upload.error
                with self.series.preprocess.time():
                    items.append(load_image(upload.data, self.info.preprocessing, self.limits))
            except ClientError as exc:
                self.series.images_error.inc()
                count_client_error(exc, self.info)
                items.append(exc)
        return items

    def _results(self, probs: np.ndarray, k: int) -> list[dict[str, Any]]:
        results = format_results(probs, self.info.labels, k)
        self.count_results(results)
        return results

    def count_results(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Count classified images (the top-1 label and probability of each result)."""
        series = self.series
        for result in results:
            series.images_ok.inc()
            series.predictions[result["label"]].inc()
            series.top1_probability.observe(result["probability"])
