"""The coalescer merges overlapping inference calls and hands every caller its own rows back."""

from __future__ import annotations

import asyncio

import numpy as np

from service.coalesce import Coalescer


class RecordingModel:
    """Stands in for the model service's call: echoes each image's first pixel, records batch sizes."""

    def __init__(self, delay: float = 0.01, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model service down")
        return batch[:, 0, 0, :1].astype(np.float32)


def _images(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.uint8)[:, None, None, None].repeat(3, axis=3)


def test_overlapping_calls_are_merged_and_results_split_in_order() -> None:
    model = RecordingModel()
    coalescer = Coalescer(model, max_batch_size=64, max_in_flight=1)

    async def scenario() -> list[np.ndarray]:
        return await asyncio.gather(*(coalescer(_images(10 * i, i + 1)) for i in range(6)))

    results = asyncio.run(scenario())
    for i, probs in enumerate(results):
        assert probs[:, 0].tolist() == list(range(10 * i, 10 * i + i + 1))
    assert model.calls[0] == 1  # the first request goes at once
    assert sum(model.calls) == 21 and len(model.calls) == 2  # the rest waited and went together


def test_merged_calls_respect_the_batch_limit_but_never_split_a_request() -> None:
    model = RecordingModel()
    coalescer = Coalescer(model, max_batch_size=4, max_in_flight=1)

    async def scenario() -> list[np.ndarray]:
        return await asyncio.gather(*(coalescer(_images(0, n)) for n in (1, 3, 3, 6)))

    results = asyncio.run(scenario())
    assert [len(r) for r in results] == [1, 3, 3, 6]
    assert model.calls == [1, 3, 3, 6]


def test_an_error_reaches_every_request_of_the_merged_call() -> None:
    coalescer = Coalescer(RecordingModel(fail=True), max_batch_size=64)

    async def scenario() -> list[object]:
        return await asyncio.gather(*(coalescer(_images(0, 2)) for _ in range(3)), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(scenario()))


def test_a_cancelled_request_does_not_block_the_others() -> None:
    model = RecordingModel(delay=0.05)
    coalescer = Coalescer(model, max_batch_size=64, max_in_flight=1)

    async def scenario() -> np.ndarray:
        first = asyncio.create_task(coalescer(_images(0, 1)))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(coalescer(_images(5, 1)))
        kept = asyncio.create_task(coalescer(_images(7, 1)))
        await asyncio.sleep(0)
        waiting.cancel()
        await first
        return await kept

    assert asyncio.run(scenario())[:, 0].tolist() == [7]
    assert model.calls == [1, 1]  # the cancelled request was never sent
