"""Adaptive batching inside each HTTP worker: the crops of concurrent requests become one ORT batch.

The batcher works like Triton's dynamic batcher with no queue delay: while one batch runs in ONNX
Runtime, the crops of requests that arrive meanwhile queue up, and become the next batch as soon as it
finishes. An idle worker therefore answers at batch-1 latency, and a loaded one batches as deeply as
the load (up to `max_batch_size`), with nobody ever waiting for a batch to fill.

Why in the HTTP worker rather than in a second BentoML service behind `@bentoml.api(batchable=True)`
(the first design): every call between BentoML services is an HTTP request through BentoML's stack
on both sides, which cost more CPU per 32×32 image than the inference itself, and capped the service
far below a hand-written server without any batching (`eluserve bench`, figures in docs/results.md).
Running the model in the same process also lets a worker finish the requests it holds when it is
stopped (graceful shutdown), which two services stopped at once could not.

Overload is bounded, not queued: a request whose images would, by the measured per-image time, wait
longer than `max_latency_s` behind what is already queued is refused with 429 `overloaded`, counted in
`eluserve_requests_rejected_total{reason="latency_budget"}`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from eluserve.core.errors import ServiceError
from eluserve.service import metrics

Predict = Callable[[np.ndarray], np.ndarray]
#: Called after every batch with its size and its ONNX Runtime seconds (metrics).
BatchObserver = Callable[[int, float], None]
#: Called once per batch with how many distinct sources (`__call__`'s `source`) its requests came from.
SourceObserver = Callable[[int], None]

#: Weight of the newest batch in the per-image time estimate: recent enough to follow a change of
#: load or machine, smooth enough that one slow batch (a page fault, a noisy neighbour) does not
#: start refusing requests.
EMA_WEIGHT = 0.2


def overloaded(what: str, wait_s: float, max_latency_s: float) -> ServiceError:
    """The contract's 429 `overloaded` for work that would wait `wait_s` behind the queue, counted in
    `eluserve_requests_rejected_total{reason="latency_budget"}` where it is made: the per-worker
    batcher and the shared device host's workers refuse alike (`eluserve.service.device.client`)."""
    metrics.REQUESTS_REJECTED.labels(reason="latency_budget").inc()
    return ServiceError(
        "overloaded",
        f"{what} is at capacity: about {wait_s * 1000:.0f} ms of work is queued ahead, over the "
        f"{max_latency_s * 1000:.0f} ms limit; retry shortly",
        429,
    )


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future[np.ndarray]
    source: Hashable = None


class Batcher:
    """`await batcher(images)` returns `predict(images)`, computed within a pooled batch.

    One batch runs at a time, on a dedicated thread, so the event loop keeps reading and decoding
    requests meanwhile (ONNX Runtime releases the GIL). Batches hold at most `max_batch_size` images;
    a single request with more is split into several runs of at most that size. Must be called from
    one event loop.
    """

    def __init__(
        self,
        predict: Predict,
        *,
        max_batch_size: int,
        max_latency_s: float,
        observe: BatchObserver | None = None,
        observe_sources: SourceObserver | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self._observe = observe
        self._observe_sources = observe_sources
        self._pending: deque[_Job] = deque()
        self._queued_images = 0
        self._running_images = 0
        self._seconds_per_image: float | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eluserve-inference")
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def seconds_per_image(self) -> float | None:
        """The smoothed ONNX Runtime time per image of recent batches; None before the first."""
        return self._seconds_per_image

    @property
    def backlog_images(self) -> int:
        """Images queued or running now (what a new request would wait behind)."""
        return self._queued_images + self._running_images

    async def __call__(self, images: np.ndarray, source: Hashable = None) -> np.ndarray:
        """Probabilities for `images` (uint8 [N, H, W, 3]).

        `source` says where the request came from (the shared device host passes the HTTP worker), so
        that `observe_sources` can tell how many sources each batch merged.

        Raises:
            ServiceError: 429 `overloaded` when the queue ahead is longer than `max_latency_s`.
        """
        self.admit(len(images))
        job = _Job(images, asyncio.get_running_loop().create_future(), source)
        self._pending.append(job)
        self._queued_images += len(images)
        self._dispatch()
        return await job.future

    def estimated_wait_s(self, images: int) -> float:
        """Seconds until `images` more would be classified, given what is queued and running now."""
        if self._seconds_per_image is None:
            return 0.0
        return (self._queued_images + self._running_images + images) * self._seconds_per_image

    def close(self) -> None:
        """Let the inference thread finish the batch it runs and end."""
        self._executor.shutdown(wait=False)

    def admit(self, images: int) -> None:
        """Refuse `images` more if they would wait longer than `max_latency_s` behind the queue.

        `__call__` checks this itself; the service also asks it for one image before it reads and
        decodes a request, so that under overload a refusal costs no decoding (see `eluserve.service.app`).

        Raises:
            ServiceError: 429 `overloaded`.
        """
        wait = self.estimated_wait_s(images)
        if wait > self.max_latency_s and (self._queued_images or self._running_images):
            raise overloaded("the model", wait, self.max_latency_s)

    def _dispatch(self) -> None:
        if self._running_images or not self._pending:
            return
        taken: list[_Job] = []
        size = 0
        while self._pending and (not taken or size + len(self._pending[0].images) <= self.max_batch_size):
            job = self._pending.popleft()
            self._queued_images -= len(job.images)
            if job.future.cancelled():  # the request went away while it waited
                continue
            taken.append(job)
            size += len(job.images)
        if not taken:
            return
        self._running_images = size
        task = asyncio.get_running_loop().create_task(self._run(taken))
        self._tasks.add(task)  # the loop holds tasks weakly: keep a reference until done
        task.add_done_callback(self._tasks.discard)

    async def _run(self, jobs: list[_Job]) -> None:
        images = jobs[0].images if len(jobs) == 1 else np.concatenate([job.images for job in jobs])
        if self._observe_sources is not None:
            self._observe_sources(len({job.source for job in jobs}))
        loop = asyncio.get_running_loop()
        try:
            probs, seconds = await loop.run_in_executor(self._executor, self._predict_timed, images)
        except Exception as exc:  # every request in the batch learns of the failure
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
        else:
            self._learn(len(images), seconds)
            offset = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(probs[offset : offset + len(job.images)])
                offset += len(job.images)
        finally:
            self._running_images = 0
            self._dispatch()

    def _predict_timed(self, images: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        parts = []
        for offset in range(0, len(images), self.max_batch_size):
            chunk = images[offset : offset + self.max_batch_size]
            chunk_start = time.perf_counter()
            parts.append(self._predict(chunk))
            if self._observe is not None:
                self._observe(len(chunk), time.perf_counter() - chunk_start)
        probs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return probs, time.perf_counter() - start

    def _learn(self, images: int, seconds: float) -> None:
        per_image = seconds / images
        previous = self._seconds_per_image
        if previous is not None:
            per_image = previous + EMA_WEIGHT * (per_image - previous)
        self._seconds_per_image = per_image
