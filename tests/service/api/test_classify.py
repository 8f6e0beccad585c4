"""`Frontend` in-process (httpx's ASGI transport, the tiny model, inference without the batcher): a raw
image body answers as the same image in a form does, and the body kinds each endpoint takes.

The same contract against a real `bentoml serve` is tests/service/test_http.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from eluserve.core.session import ModelSession
from eluserve.service.api.classify import Frontend
from eluserve.service.config import Settings
from tests.service.image_samples import encode, gradient

MAX_IMAGE_BYTES = 1_000_000


class Client:
    """POSTs to the app, each in an event loop of its own."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def post(self, path: str, **request: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await http.post(path, **request)

        return asyncio.run(send())


@pytest.fixture(scope="module")
def client(tiny_model_path: Path) -> Client:
    session = ModelSession.from_path(tiny_model_path, intra_op_threads=1)

    async def infer(crops: np.ndarray) -> np.ndarray:
        return session.predict(crops)

    frontend = Frontend(session.info, Settings(max_image_bytes=MAX_IMAGE_BYTES), infer)
    app = Starlette(
        routes=[
            Route("/classify", frontend.classify, methods=["POST"]),
            Route("/classify_batch", frontend.classify_batch, methods=["POST"]),
        ]
    )
    return Client(app)


IMAGES = {
    "jpeg": encode(gradient(120, 90, seed=1), "JPEG", quality=90),
    "png": encode(gradient(48, 64, seed=2), "PNG"),
    "webp": encode(gradient(33, 70, seed=3), "WEBP"),
    # Over the 64 KiB that are decoded on the event loop: this one goes through the decode thread.
    "large-png": encode(gradient(400, 300, seed=4), "PNG"),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("content_type", ["image/{fmt}", "application/octet-stream", "image/jpeg"])
def test_a_raw_body_answers_as_the_same_image_in_a_form(client: Client, name: str, content_type: str) -> None:
    data = IMAGES[name]
    label = content_type.format(fmt=name.removeprefix("large-"))
    form = client.post("/classify", files={"image": ("a", data)}, data={"top_k": "3"})
    raw = client.post("/classify?top_k=3", content=data, headers={"content-type": label})
    assert form.status_code == raw.status_code == 200, raw.text
    assert raw.json() == form.json() and len(raw.json()["top_k"]) == 3


def test_top_k_is_a_query_parameter_or_a_form_field_but_not_both(client: Client) -> None:
    data = IMAGES["png"]
    headers = {"content-type": "image/png"}
    assert len(client.post("/classify", content=data, headers=headers).json()["top_k"]) == 5
    assert (
        len(client.post("/classify", params={"top_k": "2"}, files={"image": ("a", data)}).json()["top_k"])
        == 2
    )
    for response in (
        client.post("/classify?top_k=0", content=data, headers=headers),
        client.post("/classify?top_k=1&top_k=2", content=data, headers=headers),
        client.post("/classify?top_k=1", files={"image": ("a", data)}, data={"top_k": "1"}),
        client.post("/classify?top_k=" + "9" * 5000, content=data, headers=headers),
    ):
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_top_k"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_file"),
        (b"not an image", 400, "invalid_image"),
        (encode(gradient(16, 16), "TGA"), 415, "unsupported_format"),
        (b"\xff" * (MAX_IMAGE_BYTES + 1), 413, "image_too_large"),
    ],
    ids=["empty", "not-an-image", "tga", "too-large"],
)
def test_a_raw_body_fails_as_the_same_file_in_a_form(
    client: Client, data: bytes, status: int, code: str
) -> None:
    form = client.post("/classify", files={"image": ("a", data)})
    raw = client.post("/classify", content=data, headers={"content-type": "application/octet-stream"})
    assert (form.status_code, form.json()["error"]["code"]) == (status, code)
    assert (raw.status_code, raw.json()["error"]["code"]) == (status, code)


def test_other_bodies_are_415_naming_what_is_accepted(client: Client) -> None:
    response = client.post("/classify", content=b"{}", headers={"content-type": "application/json"})
    assert response.status_code == 415
    message = response.json()["error"]["message"]
    assert "multipart/form-data" in message and "image/*" in message and "application/octet-stream" in message


def test_a_batch_is_multipart_only(client: Client) -> None:
    response = client.post("/classify_batch", content=IMAGES["png"], headers={"content-type": "image/png"})
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type" and "multipart/form-data" in error["message"]
    assert "one image may be sent as the body to classify" in error["message"]
