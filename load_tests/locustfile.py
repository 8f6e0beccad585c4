"""Realistic traffic for the eluserve HTTP API, for locust.

    .venv/bin/locust -f load_tests/locustfile.py --headless -u 32 -r 8 -t 60s \
        --host http://127.0.0.1:3000 --csv runs/locust --html runs/locust.html

(start the service first: `BENTOML_DO_NOT_TRACK=True .venv/bin/bentoml serve . --port 3000`). Writes
runs/locust_stats.csv, _stats_history.csv, _failures.csv, _exceptions.csv and runs/locust.html.

One task per endpoint. `/classify` sends one image: mostly real 32×32 CIFAR-10 JPEGs from the shared
zip, sometimes a generated photo-sized JPEG or PNG (640×480, 1920×1080), so the decode path for
camera pictures is loaded too. `/classify_batch` sends 2…64 images (varied, so the adaptive batcher
sees every size). A small share of requests is deliberately wrong (empty, garbage, truncated or PDF
uploads, a bad `top_k`, a missing field, 65 images): they count as successes when the service answers
the documented status and `{"error": {"code", "message"}}` body, failures otherwise. Each payload
kind has its own name in locust's statistics, so errors and photo uploads do not blur the latency of
the common case. Fixture bytes are built once per locust process, before users start.

Mix, by environment variable (shares of requests, 0…1):

| variable | default | meaning |
| --- | --- | --- |
| ELUSERVE_LOCUST_BATCH_SHARE | 0.1 | requests that go to /classify_batch |
| ELUSERVE_LOCUST_MODEL_SHARE | 0.01 | requests that go to GET /model |
| ELUSERVE_LOCUST_INVALID_SHARE | 0.02 | requests that are deliberately wrong |
| ELUSERVE_LOCUST_PHOTO_SHARE | 0.05 | images that are photo-sized instead of CIFAR 32×32 |
| ELUSERVE_LOCUST_BATCH_SIZES | 2,4,8,16,32,64 | batch sizes, picked uniformly |
| ELUSERVE_LOCUST_CIFAR_IMAGES | 256 | distinct CIFAR JPEGs read from the zip |
| ELUSERVE_LOCUST_CIFAR_ZIP | ../shared/data/cifar10-jpeg/train.zip | where they are read from |
| ELUSERVE_LOCUST_MAX_WAIT_S | 0.2 | each user waits 0…this long between requests |
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gevent
from locust import FastHttpUser, between, events, task
from locust.contrib.fasthttp import ResponseContextManager

from eluserve.core.errors import ClientError, InvalidTopK, MissingField, TooManyImages
from load_tests.fixtures import (
    CIFAR_ZIP,
    Attachment,
    BadUpload,
    bad_uploads,
    cifar_jpegs,
    multipart,
    photo_uploads,
)

ENV_PREFIX = "ELUSERVE_LOCUST_"


def _share(name: str, default: float) -> float:
    value = float(os.environ.get(ENV_PREFIX + name, default))
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{ENV_PREFIX}{name}={value}: a share must be between 0 and 1")
    return value


BATCH_SHARE = _share("BATCH_SHARE", 0.1)
MODEL_SHARE = _share("MODEL_SHARE", 0.01)
INVALID_SHARE = _share("INVALID_SHARE", 0.02)
PHOTO_SHARE = _share("PHOTO_SHARE", 0.05)
BATCH_SIZES = tuple(int(v) for v in os.environ.get(ENV_PREFIX + "BATCH_SIZES", "2,4,8,16,32,64").split(","))
MAX_WAIT_S = float(os.environ.get(ENV_PREFIX + "MAX_WAIT_S", 0.2))
if BATCH_SHARE + MODEL_SHARE > 1.0:
    raise ValueError(f"{ENV_PREFIX}BATCH_SHARE + MODEL_SHARE must not exceed 1")


@dataclass(frozen=True)
class BadRequest:
    """A whole request that must be refused with `status` and error `code`."""

    name: str
    body: bytes
    content_type: str
    status: int
    code: str

    @classmethod
    def of(cls, name: str, form: tuple[bytes, str], error: Callable[[str], ClientError]) -> BadRequest:
        """Expect the status and code of the `eluserve.core.errors` type `error`."""
        expected = error("")
        return cls(name, form[0], form[1], expected.status, expected.code)


@dataclass(frozen=True)
class Fixtures:
    cifar: Sequence[Attachment]
    photos: Sequence[Attachment]
    #: Uploads refused one by one (a batch answers for them in their slot).
    bad_uploads: Sequence[BadUpload]
    #: Whole /classify requests that must be refused.
    bad_single: Sequence[BadRequest]
    #: Whole /classify_batch requests that must be refused.
    bad_batch: Sequence[BadRequest]


@functools.cache
def fixtures() -> Fixtures:
    """Every payload, built once per process (the photos take a second or two to encode)."""
    cifar = cifar_jpegs(
        int(os.environ.get(ENV_PREFIX + "CIFAR_IMAGES", 256)),
        Path(os.environ.get(ENV_PREFIX + "CIFAR_ZIP", CIFAR_ZIP)),
    )
    bad = bad_uploads(cifar[0].data)
    bad_single = [
        BadRequest(f"invalid {item.code}", *multipart("image", [item.upload]), item.status, item.code)
        for item in bad
    ]
    bad_single += [
        BadRequest.of("invalid top_k", multipart("image", [cifar[1]], {"top_k": "0"}), InvalidTopK),
        BadRequest.of("missing field", multipart("file", [cifar[2]]), MissingField),
    ]
    too_many = [cifar[i % len(cifar)] for i in range(65)]
    bad_batch = [BadRequest.of("too many images", multipart("images", too_many), TooManyImages)]
    return Fixtures(cifar, photo_uploads(), bad, bad_single, bad_batch)


@events.init.add_listener
def _build_fixtures(**_: object) -> None:
    fixtures()
    # The build blocked gevent's loop, whose clock then lags by as long: `--run-time`, a gevent timer
    # started next, would count from before the build, and on a slow machine the run ended before it
    # began (a 5 s build cut a `-t 6s` run to 30 ms). Bring the loop's clock up to date.
    gevent.get_hub().loop.update_now()


def _json(response: ResponseContextManager) -> dict[str, object] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _check_error(response: ResponseContextManager, status: int, code: str) -> None:
    """Success only for the documented status and error body."""
    body = _json(response)
    error = body.get("error") if body else None
    if (
        response.status_code == status
        and isinstance(error, dict)
        and error.get("code") == code
        and isinstance(error.get("message"), str)
    ):
        response.success()
    else:
        response.failure(f"expected {status} {code}, got {response.status_code}: {response.text[:200]}")


def _check_result(result: object) -> bool:
    return isinstance(result, dict) and isinstance(result.get("label"), str) and bool(result.get("top_k"))


class ClassifierUser(FastHttpUser):
    """A client of the public API; tasks weighted by the shares above."""

    wait_time = between(0.0, MAX_WAIT_S)

    def _image(self) -> tuple[str, Attachment]:
        data = fixtures()
        if random.random() < PHOTO_SHARE:
            return "photo", random.choice(data.photos)
        return "cifar32", random.choice(data.cifar)

    def _send_bad(self, path: str, bad: BadRequest) -> None:
        headers = {"Content-Type": bad.content_type}
        name = f"{path} [{bad.name}]"
        with self.client.post(
            path, data=bad.body, headers=headers, name=name, catch_response=True
        ) as response:
            _check_error(response, bad.status, bad.code)

    @task(max(0, round(1000 * (1.0 - BATCH_SHARE - MODEL_SHARE))))
    def classify(self) -> None:
        """POST /classify: one image, sometimes with a `top_k`; or a request that must be refused."""
        if random.random() < INVALID_SHARE:
            self._send_bad("/classify", random.choice(fixtures().bad_single))
            return
        kind, upload = self._image()
        fields = {"top_k": str(random.choice((1, 3, 5)))} if random.random() < 0.5 else None
        body, content_type = multipart("image", [upload], fields)
        with self.client.post(
            "/classify",
            data=body,
            headers={"Content-Type": content_type},
            name=f"/classify [{kind}]",
            catch_response=True,
        ) as response:
            answer = _json(response)
            if response.status_code == 200 and answer and _check_result(answer) and "model" in answer:
                response.success()
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(round(1000 * BATCH_SHARE))
    def classify_batch(self) -> None:
        """POST /classify_batch with 2…64 images; when invalid, one slot holds a bad upload (answered
        in its slot) or the request has 65 images (refused whole)."""
        data = fixtures()
        size = random.choice(BATCH_SIZES)
        uploads = [self._image()[1] for _ in range(size)]
        bad_slot: tuple[int, BadUpload] | None = None
        if random.random() < INVALID_SHARE:
            if random.random() < 0.2:
                self._send_bad("/classify_batch", random.choice(data.bad_batch))
                return
            bad_slot = (random.randrange(size), random.choice(data.bad_uploads))
            uploads[bad_slot[0]] = bad_slot[1].upload
        body, content_type = multipart("images", uploads)
        name = "/classify_batch [with invalid image]" if bad_slot else "/classify_batch"
        with self.client.post(
            "/classify_batch",
            data=body,
            headers={"Content-Type": content_type},
            name=name,
            catch_response=True,
        ) as response:
            answer = _json(response)
            results = answer.get("results") if answer else None
            if response.status_code != 200 or not isinstance(results, list) or len(results) != size:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            for index, result in enumerate(results):
                if bad_slot and index == bad_slot[0]:
                    error = result.get("error") if isinstance(result, dict) else None
                    if not (isinstance(error, dict) and error.get("code") == bad_slot[1].code):
                        response.failure(f"slot {index}: expected error {bad_slot[1].code}, got {result}")
                        return
                elif not _check_result(result):
                    response.failure(f"slot {index}: not a classification: {result}")
                    return
            response.success()

    @task(round(1000 * MODEL_SHARE))
    def model(self) -> None:
        """GET /model: the model card document."""
        with self.client.get("/model", name="/model", catch_response=True) as response:
            answer = _json(response)
            if response.status_code == 200 and answer and isinstance(answer.get("labels"), list):
                response.success()
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")
