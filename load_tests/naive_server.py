"""Baseline for `eluserve bench`: the server one writes first. Not a product path.

    .venv/bin/python -m load_tests.naive_server --model models/elufast-cifar10/model.onnx --port 8000

Starlette on uvicorn with one worker process, `POST /classify` with the service's request and response
shape, decoding with the same `eluserve.core.preprocessing` and inferring with the same ONNX Runtime
session options (`eluserve.core.session.ModelSession`), but the way a first version does it: Starlette's
own form parser, and one `session.run` per request (batch of one) in Starlette's thread pool, so
concurrent requests run concurrent single-image inferences instead of being batched.
`GET /readyz` answers 200 once the model is loaded and warmed up, as the service's does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from eluserve.core.errors import ClientError, MissingField
from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.results import format_results, parse_top_k
from eluserve.core.session import ModelSession


def build_app(classifier: ModelSession, limits: Limits | None = None) -> Starlette:
    """The baseline ASGI app around one loaded `classifier`."""
    limits = limits or Limits()
    info = classifier.info

    def classify_sync(data: bytes, k: int) -> dict[str, object]:
        crop = load_image(data, info.preprocessing, limits)
        (result,) = format_results(classifier.predict(crop[np.newaxis]), info.labels, k)
        return {"model": info.tag, **result}

    async def classify(request: Request) -> Response:
        try:
            form = await request.form()
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise MissingField("send the image as multipart/form-data file field 'image'")
            top_k = form.get("top_k")
            k = parse_top_k(top_k if isinstance(top_k, str) else None, info.num_classes)
            return JSONResponse(await run_in_threadpool(classify_sync, await upload.read(), k))
        except ClientError as exc:
            return JSONResponse({"error": exc.to_dict()}, status_code=exc.status)

    async def readyz(_: Request) -> Response:
        return Response("ready")

    return Starlette(
        routes=[Route("/classify", classify, methods=["POST"]), Route("/readyz", readyz, methods=["GET"])]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="naive Starlette + ONNX Runtime baseline server")
    parser.add_argument("--model", required=True, help=".onnx file or model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    classifier = ModelSession.from_path(
        args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.threads
    )
    classifier.warm_up(batch_sizes=(1,), rounds=2)
    # The model loads before uvicorn binds the port, so /readyz answers only once it is warm.
    uvicorn.run(build_app(classifier), host=args.host, port=args.port, workers=1, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
