"""The HTTP contract against a real `bentoml serve` process (one HTTP worker, one inference worker).

The server runs with small limits (1 MB per image, 4 megapixels, 8 images, 3 MB per batch request,
4 requests in flight) so that every refusal is cheap to provoke; the defaults are unit-tested.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.session import ModelSession
from tests.deadlines import REQUEST_S
from tests.reliability import raw_http
from tests.service.bento_server import BentoServer, running_server
from tests.service.image_samples import cifar_samples, encode, gradient, png_declaring, solid
from tests.service.metrics_scrape import MetricsDelta

pytestmark = pytest.mark.integration

MAX_IMAGE_BYTES = 1_000_000
MAX_IMAGES = 8
MAX_REQUEST_BYTES = 3_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    with running_server(
        tmp_path_factory.mktemp("http-server"),
        {
            "ELUSERVE_MODEL": str(serving_model_path),
            "ELUSERVE_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
            "ELUSERVE_MAX_PIXELS": "4000000",
            "ELUSERVE_MAX_IMAGES": str(MAX_IMAGES),
            "ELUSERVE_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
            "ELUSERVE_MAX_CONCURRENCY": "4",
            "ELUSERVE_MAX_BATCH_SIZE": "16",
            # The answers are compared with an in-process ONNX Runtime session (`reference`).
            "ELUSERVE_ENGINE": "onnxruntime",
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BentoServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        yield http


@pytest.fixture(scope="module")
def reference(serving_model_path: Path) -> ModelSession:
    """The same model in-process: what the service must answer."""
    return ModelSession.from_path(serving_model_path, intra_op_threads=1)


@pytest.fixture(scope="module")
def samples(cifar_zip: Path) -> list[tuple[str, bytes]]:
    """CIFAR JPEGs plus generated JPEG/PNG/WebP photos of other shapes, each (name, bytes)."""
    generated = [
        ("gradient-jpeg", encode(gradient(200, 150, seed=1), "JPEG", quality=90)),
        ("gradient-png", encode(gradient(48, 64, seed=2), "PNG")),
        ("photo-jpeg", encode(gradient(1200, 900, seed=3), "JPEG", quality=85)),
        ("rgba-png", encode(Image.new("RGBA", (40, 40), (0, 128, 255, 100)), "PNG")),
        ("webp", encode(gradient(33, 70, seed=4), "WEBP")),
    ]
    return cifar_samples(cifar_zip, per_class=1) + generated


def expected_result(reference: ModelSession, data: bytes, k: int) -> dict[str, Any]:
    crop = load_image(data, reference.info.preprocessing, Limits())
    return reference.classify([crop], top_k=k)[0]


def assert_same_result(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Same probabilities; same classes in the same order unless two are tied to float precision
    (batch composition may change the last bits of a result)."""
    assert set(actual) == {"label", "probability", "top_k"}
    assert (actual["label"], actual["probability"]) == (
        actual["top_k"][0]["label"],
        actual["top_k"][0]["probability"],
    )
    probabilities = [entry["probability"] for entry in expected["top_k"]]
    np.testing.assert_allclose(
        [entry["probability"] for entry in actual["top_k"]], probabilities, rtol=1e-4, atol=1e-6
    )
    if not any(abs(a - b) < 1e-5 for a, b in itertools.pairwise(probabilities)):
        assert [entry["index"] for entry in actual["top_k"]] == [
            entry["index"] for entry in expected["top_k"]
        ]
        assert [entry["label"] for entry in actual["top_k"]] == [
            entry["label"] for entry in expected["top_k"]
        ]


def post_classify(client: httpx.Client, data: bytes, **fields: str) -> httpx.Response:
    return client.post("/classify", files={"image": ("image", data)}, data=fields)


def post_batch(client: httpx.Client, images: list[bytes], **fields: str) -> httpx.Response:
    files = [("images", (f"image-{i}", data)) for i, data in enumerate(images)]
    return client.post("/classify_batch", files=files, data=fields)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code and body["error"]["message"]


# --- health -----------------------------------------------------------------------------------------


def test_health_endpoints(client: httpx.Client) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


# --- predictions ------------------------------------------------------------------------------------


def test_classify_matches_in_process_inference(
    client: httpx.Client, reference: ModelSession, samples: list[tuple[str, bytes]]
) -> None:
    for name, data in samples:
        response = post_classify(client, data, top_k="3")
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        assert body["model"] == reference.info.tag
        assert len(body["top_k"]) == 3
        assert_same_result(
            {k: v for k, v in body.items() if k != "model"}, expected_result(reference, data, 3)
        )


def test_top_k_defaults_to_five_and_may_be_every_class(client: httpx.Client, reference: ModelSession) -> None:
    data = encode(gradient(32, 32), "PNG")
    assert len(post_classify(client, data).json()["top_k"]) == 5
    everything = post_classify(client, data, top_k=str(reference.info.num_classes)).json()["top_k"]
    assert sorted(entry["index"] for entry in everything) == list(range(reference.info.num_classes))
    assert sum(entry["probability"] for entry in everything) == pytest.approx(1.0, abs=1e-4)


def test_batch_results_keep_order_and_isolate_bad_images(
    client: httpx.Client, reference: ModelSession, samples: list[tuple[str, bytes]]
) -> None:
    good = [data for _, data in samples[:5]]
    images = [
        good[0],
        b"not an image",
        good[1],
        b"",
        good[2],
        good[3],
        encode(gradient(16, 16), "TGA"),
        good[4],
    ]
    response = post_batch(client, images, top_k="2")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == reference.info.tag and len(body["results"]) == len(images)
    errors = {1: "invalid_image", 3: "empty_file", 6: "unsupported_format"}
    for index, (data, result) in enumerate(zip(images, body["results"], strict=True)):
        if index in errors:
            assert result == {"error": {"code": errors[index], "message": result["error"]["message"]}}
        else:
            assert_same_result(result, expected_result(reference, data, 2))


def test_a_batch_of_only_bad_images_still_answers_per_image(client: httpx.Client) -> None:
    body = post_batch(client, [b"x", b"y"]).json()
    assert [result["error"]["code"] for result in body["results"]] == ["invalid_image", "invalid_image"]


def test_an_oversized_image_in_a_batch_fails_alone(client: httpx.Client) -> None:
    big = np.random.default_rng(0).integers(0, 256, MAX_IMAGE_BYTES + 10, dtype=np.uint8).tobytes()
    body = post_batch(client, [encode(solid((1, 2, 3)), "PNG"), big]).json()
    assert "label" in body["results"][0]
    assert body["results"][1]["error"]["code"] == "image_too_large"


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"garbage", 400, "invalid_image"),
        (encode(gradient(64, 64), "JPEG")[:300], 400, "invalid_image"),
        (encode(gradient(64, 64), "PNG")[:-40], 400, "invalid_image"),
        (b"", 400, "empty_file"),
        (encode(gradient(16, 16), "TGA"), 415, "unsupported_format"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", 415, "unsupported_format"),
        (encode(solid((9, 9, 9), (2100, 2100)), "PNG"), 413, "too_many_pixels"),
        (png_declaring(50_000, 50_000), 413, "too_many_pixels"),
        (b"\xff" * (MAX_IMAGE_BYTES + 1), 413, "image_too_large"),
    ],
    ids=[
        "garbage",
        "truncated-jpeg",
        "truncated-png",
        "empty",
        "tga",
        "heic",
        "too-many-pixels",
        "bomb",
        "too-many-bytes",
    ],
)
def test_bad_images_are_client_errors(client: httpx.Client, data: bytes, status: int, code: str) -> None:
    assert_error(post_classify(client, data), status, code)


@pytest.mark.parametrize("top_k", ["0", "11", "-1", "2.5", "abc", ""])
def test_bad_top_k(client: httpx.Client, top_k: str) -> None:
    data = encode(solid((1, 2, 3)), "PNG")
    assert_error(post_classify(client, data, top_k=top_k), 400, "invalid_top_k")
    assert_error(post_batch(client, [data], top_k=top_k), 400, "invalid_top_k")


def test_top_k_twice_is_refused(client: httpx.Client) -> None:
    data = encode(solid((1, 2, 3)), "PNG")
    files = [("image", ("a", data)), ("top_k", (None, "1")), ("top_k", (None, "2"))]
    assert_error(client.post("/classify", files=files), 400, "invalid_top_k")


def test_missing_image_fields(client: httpx.Client) -> None:
    assert_error(client.post("/classify", files={"top_k": (None, "3")}), 400, "missing_field")
    data = encode(solid((1, 2, 3)), "PNG")
    assert_error(client.post("/classify_batch", files={"image": ("a", data)}), 400, "missing_field")
    assert_error(client.post("/classify", files={"images": ("a", data)}), 400, "missing_field")


def test_too_many_images(client: httpx.Client) -> None:
    data = encode(solid((1, 2, 3)), "PNG")
    assert_error(post_batch(client, [data] * (MAX_IMAGES + 1)), 413, "too_many_images")
    assert post_batch(client, [data] * MAX_IMAGES).status_code == 200
    two = [("image", ("a", data)), ("image", ("b", data))]
    assert_error(client.post("/classify", files=two), 413, "too_many_images")


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b'{"image": "x"}', {"content-type": "application/json"}, 415, "unsupported_media_type"),
        (b"image=abc", {"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        (b"", {}, 415, "unsupported_media_type"),
        (b"--b\r\n", {"content-type": "multipart/form-data"}, 400, "invalid_request"),
        (
            b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc',
            {"content-type": "multipart/form-data; boundary=b"},
            400,
            "invalid_request",
        ),
        (
            b"--b\r\nX-Nothing: 1\r\n\r\nabc\r\n--b--\r\n",
            {"content-type": "multipart/form-data; boundary=b"},
            400,
            "invalid_request",
        ),
        (
            b"garbage without boundary",
            {"content-type": "multipart/form-data; boundary=b"},
            400,
            "invalid_request",
        ),
    ],
    ids=["json", "urlencoded", "no-content-type", "no-boundary", "cut-short", "no-disposition", "no-parts"],
)
def test_malformed_requests(
    client: httpx.Client, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    for path in ("/classify", "/classify_batch"):
        assert_error(client.post(path, content=content, headers=headers), status, code)


def raw_request(server: BentoServer, head: bytes) -> tuple[int, dict[str, Any]]:
    """Send request headers (and maybe a body start) over a socket; read one JSON response."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=REQUEST_S) as sock:
        sock.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        header_block, body = received.split(b"\r\n\r\n", 1)
        lines = header_block.decode("latin-1").split("\r\n")
        length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
        while len(body) < length:
            body += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(body)


@pytest.mark.parametrize(
    ("path", "code"), [("/classify", "image_too_large"), ("/classify_batch", "request_too_large")]
)
def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    server: BentoServer, path: str, code: str
) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 1000000000\r\n\r\n--b\r\n"
    ).encode()
    status, body = raw_request(server, head)
    assert status == 413 and body["error"]["code"] == code


def test_a_streamed_body_over_the_limit_is_cut_off(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="a"\r\n\r\n'
        for _ in range(MAX_REQUEST_BYTES // 65536 + 2):
            yield b"\xff" * 65536

    headers = {"content-type": "multipart/form-data; boundary=b"}
    try:
        response = client.post("/classify_batch", content=chunks(), headers=headers)
    except httpx.TransportError:
        pytest.skip("the server closed the connection before the client read its 413")
    assert_error(response, 413, "request_too_large")


# --- raw image bodies --------------------------------------------------------------------------------


def post_raw(
    client: httpx.Client, data: bytes, content_type: str, path: str = "/classify", **params: str
) -> httpx.Response:
    return client.post(path, content=data, headers={"content-type": content_type}, params=params)


def chunked_head(path: str, content_type: str) -> bytes:
    """A POST's request line and headers for a body in HTTP/1.1 chunks (so without Content-Length)."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def assert_same_probabilities(raw: dict[str, Any], form: dict[str, Any]) -> None:
    assert raw["model"] == form["model"] and raw["label"] == form["label"]
    assert [entry["index"] for entry in raw["top_k"]] == [entry["index"] for entry in form["top_k"]]
    np.testing.assert_allclose(
        [entry["probability"] for entry in raw["top_k"]],
        [entry["probability"] for entry in form["top_k"]],
        rtol=0,
        atol=1e-6,
    )


def test_a_raw_body_answers_as_the_same_file_in_a_form(
    client: httpx.Client, samples: list[tuple[str, bytes]]
) -> None:
    """JPEG and PNG (the CIFAR JPEGs, a photo-sized JPEG decoded off the event loop, PNGs) under their
    own type and as application/octet-stream, on /classify and on the per-model routes."""
    info = client.get("/model").json()
    paths = [
        "/classify",
        f"/models/{info['name']}/classify",
        f"/models/{info['name']}/versions/{info['version']}/classify",
    ]
    chosen = [(name, data) for name, data in samples if data[:2] == b"\xff\xd8" or data[:4] == b"\x89PNG"]
    assert any(len(data) > 64 * 1024 for _, data in chosen)  # one goes through the decode thread
    for index, (name, data) in enumerate(chosen):
        path = paths[index % len(paths)]
        own_type = "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png"
        form = client.post(path, files={"image": ("image", data)}, data={"top_k": "3"})
        assert form.status_code == 200, (name, form.text)
        for content_type in (own_type, "application/octet-stream"):
            raw = post_raw(client, data, content_type, path, top_k="3")
            assert raw.status_code == 200, (name, content_type, raw.text)
            assert_same_probabilities(raw.json(), form.json())


def test_top_k_of_a_raw_body_is_a_query_parameter(client: httpx.Client, reference: ModelSession) -> None:
    data = encode(gradient(32, 32), "PNG")
    assert len(post_raw(client, data, "image/png").json()["top_k"]) == 5
    assert len(post_raw(client, data, "image/png", top_k="2").json()["top_k"]) == 2
    for top_k in ("0", str(reference.info.num_classes + 1), "abc", "", "9" * 5000):
        assert_error(post_raw(client, data, "image/png", top_k=top_k), 400, "invalid_top_k")
    twice = client.post("/classify?top_k=1&top_k=2", content=data, headers={"content-type": "image/png"})
    assert_error(twice, 400, "invalid_top_k")


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_file"),
        (b"garbage", 400, "invalid_image"),
        (encode(gradient(64, 64), "JPEG")[:300], 400, "invalid_image"),
        (encode(gradient(16, 16), "TGA"), 415, "unsupported_format"),
        (png_declaring(50_000, 50_000), 413, "too_many_pixels"),
        (b"\xff" * (MAX_IMAGE_BYTES + 1), 413, "image_too_large"),
    ],
    ids=["empty", "garbage", "truncated-jpeg", "tga", "bomb", "too-many-bytes"],
)
def test_a_bad_raw_body_fails_as_the_same_file_in_a_form(
    client: httpx.Client, data: bytes, status: int, code: str
) -> None:
    assert_error(post_classify(client, data), status, code)
    for content_type in ("image/jpeg", "application/octet-stream"):
        assert_error(post_raw(client, data, content_type), status, code)


def test_a_raw_body_declared_over_the_limit_is_refused_before_it_is_sent(server: BentoServer) -> None:
    head = (
        "POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {MAX_IMAGE_BYTES + 1}\r\n\r\n\xff\xd8"
    ).encode("latin-1")
    status, body = raw_request(server, head)
    assert status == 413 and body["error"]["code"] == "image_too_large"


def test_a_chunked_raw_body_over_the_limit_is_cut_off(server: BentoServer) -> None:
    """No Content-Length to refuse by: the server counts and answers once the limit is passed,
    without reading the rest (the client stops sending when the answer arrives)."""
    chunks = (http_chunk(b"\xff" * 65536) for _ in range(40 * MAX_IMAGE_BYTES // 65536))
    answer = raw_http.send(server.url, chunked_head("/classify", "image/jpeg"), chunks, timeout=REQUEST_S)
    assert answer.status == 413 and answer.body is not None, answer
    assert answer.body["error"]["code"] == "image_too_large"
    assert answer.bytes_sent < 20 * MAX_IMAGE_BYTES, answer.bytes_sent  # the limit plus socket buffers


def test_a_chunked_raw_body_under_the_limit_is_classified(server: BentoServer) -> None:
    data = encode(gradient(200, 150, seed=5), "PNG")
    chunks = [http_chunk(data[i : i + 1000]) for i in range(0, len(data), 1000)] + [b"0\r\n\r\n"]
    answer = raw_http.send(server.url, chunked_head("/classify", "image/png"), chunks, timeout=REQUEST_S)
    assert answer.status == 200 and answer.body is not None and "label" in answer.body, answer


def test_a_raw_body_longer_than_it_declared_is_read_as_declared(server: BentoServer) -> None:
    """HTTP frames the body by Content-Length: the rest is no part of it but the next request's
    start (here garbage, which uvicorn's parser refuses with a plain-text 400 and a close). Either
    answer is a client error, and the server stays healthy (the last test)."""
    head = raw_http.request_head("/classify", "image/jpeg", 100)
    chunks = (b"\xff" * 65536 for _ in range(2 * MAX_IMAGE_BYTES // 65536))
    answer = raw_http.send(server.url, head, chunks, timeout=REQUEST_S)
    assert answer.status is not None and 400 <= answer.status < 500, answer
    assert answer.body is None or answer.body["error"]["code"] == "invalid_image", answer


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "application/x-www-form-urlencoded", "video/mp4"]
)
def test_other_body_types_are_415_naming_what_is_accepted(client: httpx.Client, content_type: str) -> None:
    response = post_raw(client, encode(gradient(16, 16), "PNG"), content_type)
    assert_error(response, 415, "unsupported_media_type")
    message = response.json()["error"]["message"]
    assert all(name in message for name in ("multipart/form-data", "image/*", "application/octet-stream"))


def test_a_batch_takes_no_raw_body(client: httpx.Client) -> None:
    for content_type in ("image/png", "application/octet-stream"):
        response = post_raw(client, encode(gradient(16, 16), "PNG"), content_type, "/classify_batch")
        assert_error(response, 415, "unsupported_media_type")
        assert "multipart/form-data" in response.json()["error"]["message"]


def test_wrong_methods_are_4xx(client: httpx.Client) -> None:
    assert client.get("/classify").status_code == 405
    assert client.post("/model").status_code == 405


# --- model, metrics, robustness ---------------------------------------------------------------------


def test_model_endpoint(client: httpx.Client, reference: ModelSession) -> None:
    body = client.get("/model").json()
    info = reference.info
    assert body["model"] == info.tag and (body["name"], body["version"]) == (info.name, info.version)
    assert body["labels"] == list(info.labels) and body["input_size"] == list(info.input_size)
    assert body["preprocessing"] == info.preprocessing.to_dict()
    assert body["val_accuracy"] == info.val_accuracy
    assert (body["engine"], body["execution_provider"], body["precision"]) == (
        "onnxruntime",
        "CPUExecutionProvider",
        "fp32",
    )
    assert body["opset"] == info.opset and body["custom_domain"] == "ai.eluserve"


def test_metrics_count_the_traffic(
    server: BentoServer, client: httpx.Client, reference: ModelSession
) -> None:
    name = reference.info.name
    good = [encode(gradient(40, 40, seed=s), "PNG") for s in range(4)]
    with MetricsDelta(server.url) as delta:
        for data in good[:3]:
            assert post_classify(client, data).status_code == 200
        assert post_batch(client, [good[3], b"bad", good[0]]).status_code == 200
        assert post_classify(client, good[0], top_k="99").status_code == 400
    assert delta("eluserve_images_total", model=name, outcome="ok") == 5
    assert delta("eluserve_images_total", model=name, outcome="error") == 1
    assert delta("eluserve_client_errors_total", code="invalid_image") == 1
    assert delta("eluserve_client_errors_total", code="invalid_top_k") == 1
    assert delta.sum("eluserve_predictions_total", model=name) == 5
    assert delta("eluserve_top1_probability_count", model=name) == 5
    assert delta("eluserve_preprocess_duration_seconds_count", model=name) == 6
    assert delta("eluserve_batch_size_sum", model=name) == 5
    assert (
        1
        <= delta("eluserve_inference_duration_seconds_count", model=name, provider="CPUExecutionProvider")
        <= 4
    )
    after = delta.after
    info_labels = {"model": name, "version": reference.info.version, "provider": "CPUExecutionProvider"}
    assert after.value("eluserve_model_info", **info_labels) == 1
    assert after.value("eluserve_client_errors_total", code="empty_file") is not None  # pre-initialised
    assert (
        after.value("bentoml_service_request_total", endpoint="/classify", http_response_code="200")
        is not None
    )


def test_overload_is_429_and_never_5xx(server: BentoServer) -> None:
    images = [("images", (f"{i}", encode(gradient(300, 300, seed=i), "PNG"))) for i in range(MAX_IMAGES)]

    def send(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60.0) as http:
            return http.post("/classify_batch", files=images).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(send, range(24)))
    assert set(statuses) <= {200, 429}, statuses
    assert 429 in statuses and 200 in statuses


def test_the_server_is_still_healthy_after_everything(client: httpx.Client, server: BentoServer) -> None:
    assert client.get("/livez").status_code == 200
    assert post_classify(client, encode(gradient(32, 32), "PNG")).status_code == 200
    log = server.log()
    assert "Traceback" not in log, log[-3000:]


def test_no_access_log_unless_the_operator_turns_it_on(
    client: httpx.Client, server: BentoServer, samples: list[tuple[str, bytes]]
) -> None:
    assert post_classify(client, samples[0][1]).status_code == 200
    assert "path=/classify," not in server.log()  # ELUSERVE_ACCESS_LOG: tests/service/test_fast_path.py


def test_loading_models_is_off_unless_the_operator_turns_it_on(client: httpx.Client) -> None:
    for action in ("load", "unload"):
        response = client.post(f"/v2/repository/models/anything/{action}", json={})
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["code"] == "model_control_disabled"
        assert "ELUSERVE_MODEL_CONTROL=explicit" in error["message"]
