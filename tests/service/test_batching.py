"""The batcher pools concurrent requests, hands every caller its own rows back and sheds overload."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from eluserve.core.errors import ServiceError
from eluserve.service import batching, metrics
from eluserve.service.batching import Batcher
from tests.deadlines import REQUEST_S


class FakeClock:
    """The batcher's clock (`time.perf_counter`), moved only by the model: a batch takes the time the
    test says, whatever else the machine is doing."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(batching, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


class GatedModel:
    """Records each batch; the first batch blocks until `release()` so that later calls queue up.

    Row i of the output carries image i's first pixel, so a caller can tell whose rows it got. With a
    `clock`, each batch takes `seconds_per_image` per image on it.
    """

    def __init__(
        self, fail: bool = False, seconds_per_image: float = 0.0, clock: FakeClock | None = None
    ) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.seconds_per_image = seconds_per_image
        self.clock = clock
        self._gate = threading.Event()
        self.started = threading.Event()

    def release(self) -> None:
        self._gate.set()

    def hold(self) -> None:
        """Block the next batch again until `release()`."""
        self._gate.clear()
        self.started.clear()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.batches.append([int(image[0, 0, 0]) for image in images])
        self.started.set()
        self._gate.wait(timeout=REQUEST_S)
        if self.clock is not None:
            self.clock.now += self.seconds_per_image * len(images)
        if self.fail:
            raise RuntimeError("the session failed")
        return images[:, 0, 0, :1].astype(np.float32)


def _images(first: int, count: int) -> np.ndarray:
    images = np.zeros((count, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(first, first + count)
    return images


async def _wait_started(model: GatedModel) -> None:
    while not model.started.is_set():
        await asyncio.sleep(0.001)


def test_requests_that_arrive_during_a_batch_form_the_next_one() -> None:
    model = GatedModel()
    observed: list[int] = []
    batcher = Batcher(model, max_batch_size=64, max_latency_s=10.0, observe=lambda n, _: observed.append(n))

    async def scenario() -> list[np.ndarray]:
        first = asyncio.create_task(batcher(_images(0, 1)))
        await _wait_started(model)
        rest = [asyncio.create_task(batcher(_images(10 * i, i))) for i in range(1, 5)]
        await asyncio.sleep(0.01)
        model.release()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    # The idle batcher ran the first request at once; the four that queued behind it went together.
    assert model.batches == [[0], [10, 20, 21, 30, 31, 32, 40, 41, 42, 43]]
    assert observed == [1, 10]
    assert [row.ravel().tolist() for row in results] == [
        [0],
        [10],
        [20, 21],
        [30, 31, 32],
        [40, 41, 42, 43],
    ]


def test_batches_never_exceed_max_batch_size_and_big_requests_are_split() -> None:
    model = GatedModel()
    batcher = Batcher(model, max_batch_size=4, max_latency_s=10.0)

    async def scenario() -> list[np.ndarray]:
        first = asyncio.create_task(batcher(_images(0, 1)))
        await _wait_started(model)
        rest = [asyncio.create_task(batcher(_images(first, n))) for first, n in ((10, 3), (20, 3), (30, 6))]
        await asyncio.sleep(0.01)
        model.release()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    assert all(len(batch) <= 4 for batch in model.batches), model.batches
    assert model.batches == [[0], [10, 11, 12], [20, 21, 22], [30, 31, 32, 33], [34, 35]]
    assert results[3].ravel().tolist() == [30, 31, 32, 33, 34, 35]


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_runs() -> None:
    model = GatedModel(fail=True)
    model.release()
    batcher = Batcher(model, max_batch_size=64, max_latency_s=10.0)

    async def scenario() -> tuple[list[object], np.ndarray]:
        failed = await asyncio.gather(*(batcher(_images(0, 2)) for _ in range(3)), return_exceptions=True)
        model.fail = False
        return failed, await batcher(_images(7, 1))

    failed, after = asyncio.run(scenario())
    assert all(isinstance(result, RuntimeError) for result in failed)
    assert after.ravel().tolist() == [7]


def test_a_request_cancelled_while_queued_is_not_computed() -> None:
    model = GatedModel()
    batcher = Batcher(model, max_batch_size=64, max_latency_s=10.0)

    async def scenario() -> np.ndarray:
        first = asyncio.create_task(batcher(_images(0, 1)))
        await _wait_started(model)
        gone = asyncio.create_task(batcher(_images(5, 1)))
        kept = asyncio.create_task(batcher(_images(7, 1)))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.release()
        await first
        return await kept

    assert asyncio.run(scenario()).ravel().tolist() == [7]
    assert model.batches == [[0], [7]]


def test_a_request_that_would_queue_past_max_latency_is_refused_with_429(clock: FakeClock) -> None:
    model = GatedModel(seconds_per_image=0.05, clock=clock)
    batcher = Batcher(model, max_batch_size=8, max_latency_s=0.3)

    async def scenario() -> None:
        model.release()
        await batcher(_images(0, 2))  # teaches the batcher its time per image: about 50 ms
        assert batcher.seconds_per_image == pytest.approx(0.05, abs=0.02)
        # Idle: a request longer than the limit is still taken, since nothing is queued ahead of it.
        model.hold()
        running = asyncio.create_task(batcher(_images(0, 8)))
        await _wait_started(model)
        # 8 images running (about 0.4 s of work) + 1: over the 0.3 s limit.
        with pytest.raises(ServiceError) as refused:
            await batcher(_images(0, 1))
        assert refused.value.status == 429 and refused.value.code == "overloaded"
        model.release()
        await running
        assert batcher.estimated_wait_s(1) == pytest.approx(batcher.seconds_per_image)

    asyncio.run(scenario())


def test_admit_refuses_before_anything_is_queued_and_counts_the_refusal(clock: FakeClock) -> None:
    """The service asks `admit(1)` before reading a request's body: a refusal must queue nothing."""
    model = GatedModel(seconds_per_image=0.05, clock=clock)
    batcher = Batcher(model, max_batch_size=8, max_latency_s=0.3)
    rejected = metrics.REQUESTS_REJECTED.labels(reason="latency_budget")

    async def scenario() -> None:
        model.release()
        await batcher(_images(0, 2))
        batcher.admit(8)  # idle: anything is admitted
        model.hold()
        running = asyncio.create_task(batcher(_images(0, 8)))
        await _wait_started(model)
        before = rejected._value.get()
        with pytest.raises(ServiceError) as refused:
            batcher.admit(1)
        assert refused.value.status == 429 and refused.value.code == "overloaded"
        assert rejected._value.get() == before + 1
        assert batcher.estimated_wait_s(0) == pytest.approx(8 * batcher.seconds_per_image)  # nothing added
        model.release()
        await running
        batcher.admit(1)

    asyncio.run(scenario())


def test_max_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(GatedModel(), max_batch_size=0, max_latency_s=1.0)
