"""Prototype for `eluserve bench --servers inprocess`: the service's own frontend, batching in-process.

    .venv/bin/python -m load_tests.inprocess_server --model models/elufast-cifar10/model.onnx --port 8000

Not a product path: it measures a proposed change before anyone makes it. It serves the service's
`service.frontend.Frontend` unchanged (same multipart reader, decode, limits, metrics, JSON), on
Starlette and uvicorn with one worker, but instead of sending every request's crop to a second
BentoML service (`EluModel`) over a socket, `infer` hands it to `MicroBatcher` in the same process,
which pools the crops of concurrent requests into one ONNX Runtime batch, as Triton's dynamic batcher
does with no queue delay: whatever has queued while the previous batch ran becomes the next batch, so
an idle server answers at batch-1 latency and a loaded one batches up to `--max-batch-size`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import metrics
from service.config import load_settings
from service.frontend import Frontend
from service.inference import Classifier


class MicroBatcher:
    """Pools concurrent `infer` calls into ONNX Runtime batches of at most `max_batch_size` images.

    One batch runs at a time, in a worker thread so the event loop keeps accepting and decoding; a
    request never waits for a batch to fill, only for the batch ahead of it to finish.
    """

    def __init__(self, classifier: Classifier, max_batch_size: int) -> None:
        self.classifier = classifier
        self.max_batch_size = max_batch_size
        self._pending: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._limiter = anyio.CapacityLimiter(1)

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for `batch` (uint8 [N, H, W, 3]), computed within a pooled batch."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            jobs = [self._pending.popleft()]
            size = len(jobs[0][0])
            while self._pending and size + len(self._pending[0][0]) <= self.max_batch_size:
                jobs.append(self._pending.popleft())
                size += len(jobs[-1][0])
            pooled = np.concatenate([batch for batch, _ in jobs])
            info = self.classifier.info
            metrics.BATCH_SIZE.labels(model=info.name).observe(size)
            try:
                with metrics.INFERENCE_DURATION.labels(
                    model=info.name, provider=self.classifier.provider
                ).time():
                    probs = await anyio.to_thread.run_sync(
                        self.classifier.predict, pooled, limiter=self._limiter
                    )
            except Exception as exc:  # every waiting request learns of the failure
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for batch, future in jobs:
                if not future.done():
                    future.set_result(probs[start : start + len(batch)])
                start += len(batch)


def build_app(classifier: Classifier, max_batch_size: int) -> Starlette:
    """The service's public routes over `Frontend`, with `MicroBatcher` as its `infer`."""
    settings = load_settings()
    batcher = MicroBatcher(classifier, max_batch_size)
    description = classifier.info.to_dict()

    async def describe() -> dict[str, Any]:
        return description

    metrics.init_http_metrics(classifier.info)
    metrics.init_model_metrics(classifier.info)
    frontend = Frontend(classifier.info, settings, infer=batcher.infer, describe=describe)

    async def readyz(_: Request) -> Response:
        return Response("ready")

    return Starlette(
        routes=[
            Route("/classify", frontend.classify, methods=["POST"]),
            Route("/classify_batch", frontend.classify_batch, methods=["POST"]),
            Route("/model", frontend.model, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="prototype: service frontend + in-process batching")
    parser.add_argument("--model", required=True, help=".onnx file or model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    classifier = Classifier.from_path(
        args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.threads
    )
    classifier.warm_up(batch_sizes=sorted({1, args.max_batch_size}), rounds=2)
    app = build_app(classifier, args.max_batch_size)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
