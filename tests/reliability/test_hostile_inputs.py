"""Hostile input against one real `bentoml serve` process with the documented default limits.

Every request here is something a careless or malicious client may send: bombs, polyglots, cut and
corrupt files, malformed multipart, absurd fields, thousands of parts, uploads trickled byte by byte,
and the same files as raw image bodies (chunked, endless, trickled, mislabelled).
Each must get a 4xx with the contract's `{"error": {"code", "message"}}` body (or a correct 200 where
the input is a valid image), be counted by `eluserve_client_errors_total{code=...}`, and leave the
server healthy: after every test `/livez` answers and a valid image is still classified. The last test
reads the server's whole log and checks that no uploaded bytes or filenames ever reached it.

The limits are the defaults (10 MiB and 40 megapixels per image, 64 images per batch) so that the
"just over the limit" cases are the ones a production client would hit; only the request timeout
(8 s) and the header deadline (3 s) are shortened, so that the slow-client cases finish quickly. Those
cases check that a deadline does not fire early, and allow it to fire up to `LATE_S` late on a busy
machine (tests/deadlines.py).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from eluserve.core.contract import ModelMetadata, read_model_info
from eluserve.core.errors import ClientError
from eluserve.core.preprocessing import Limits, load_image
from eluserve.service.api.classify import BODY_TIMEOUT_SHARE
from tests.deadlines import LATE_S, REQUEST_S
from tests.reliability import raw_http
from tests.reliability.hostile_samples import (
    CANARY,
    bombs,
    corrupted,
    exif_rotated_jpeg,
    odd_modes,
    polyglots,
    truncated,
)
from tests.service.bento_server import BentoServer, running_server
from tests.service.image_samples import encode, gradient
from tests.service.metrics_scrape import MetricsDelta

pytestmark = pytest.mark.integration

TIMEOUT_S = 8.0
HEADER_TIMEOUT_S = 3.0
LIMITS = Limits()
#: Every upload's filename carries the canary too: filenames must not be logged either.
FILENAME = f"upload-{CANARY.decode()}.bin"
BOUNDARY = "hostile-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
ERRORS = "eluserve_client_errors_total"


def hostile_server(folder: Path, model: Path, parser: str) -> contextlib.AbstractContextManager[BentoServer]:
    """The server under test: default limits, shortened request timeout and header deadline, and the
    access log on (what it writes down is checked last)."""
    return running_server(
        folder,
        {
            "ELUSERVE_MODEL": str(model),
            "ELUSERVE_ACCESS_LOG": "true",
            "ELUSERVE_TIMEOUT_S": str(TIMEOUT_S),
            "ELUSERVE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "ELUSERVE_HTTP_PARSER": parser,
        },
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    folder = tmp_path_factory.mktemp("hostile-server")
    with hostile_server(folder, serving_model_path, "httptools") as running:
        yield running


@pytest.fixture(scope="module")
def h11_server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    """The same server on uvicorn's other HTTP parser, h11, for the header-deadline cases."""
    folder = tmp_path_factory.mktemp("hostile-h11-server")
    with hostile_server(folder, serving_model_path, "h11") as running:
        yield running


@pytest.fixture(params=["httptools", "h11"])
def parser_server(request: pytest.FixtureRequest) -> BentoServer:
    """The default server (httptools) and the h11 one: the header deadline is written once per parser."""
    return request.getfixturevalue("server" if request.param == "httptools" else "h11_server")


@pytest.fixture(scope="module")
def client(server: BentoServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        yield http


@pytest.fixture(scope="module")
def info(serving_model_path: Path) -> ModelMetadata:
    """The served model's metadata: its crop rule makes `in_process_outcome` the oracle."""
    return read_model_info(serving_model_path)


@pytest.fixture(autouse=True)
def stays_healthy(client: httpx.Client) -> Iterator[None]:
    """After every test, the server is alive and still classifies a valid image."""
    yield
    assert client.get("/livez").status_code == 200
    response = classify(client, encode(gradient(32, 32), "PNG"))
    assert response.status_code == 200, response.text


def classify(
    client: httpx.Client,
    data: bytes,
    *,
    content_type: str = "application/octet-stream",
    top_k: str | None = None,
) -> httpx.Response:
    fields = {} if top_k is None else {"top_k": top_k}
    return client.post("/classify", files={"image": (FILENAME, data, content_type)}, data=fields)


def classify_batch(client: httpx.Client, images: list[bytes], *, top_k: str | None = None) -> httpx.Response:
    files = [("images", (FILENAME, data, "application/octet-stream")) for data in images]
    return client.post("/classify_batch", files=files, data={} if top_k is None else {"top_k": top_k})


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code and body["error"]["message"], body


def assert_prediction(response: httpx.Response, k: int = 5) -> list[float]:
    """A 200 with the contract's prediction; returns the top-k probabilities."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "label", "probability", "top_k"}
    assert len(body["top_k"]) == k and body["label"] == body["top_k"][0]["label"]
    return [entry["probability"] for entry in body["top_k"]]


def in_process_outcome(data: bytes, info: ModelMetadata) -> tuple[int, str | None]:
    """What the service must answer for one image: (200, None) or the client error's status and code."""
    try:
        load_image(data, info.preprocessing, LIMITS)
    except ClientError as exc:
        return exc.status, exc.code
    return 200, None


def file_part(data: bytes, field: str = "image") -> bytes:
    """One multipart file part (boundary line, headers, data, line end) under `BOUNDARY`."""
    disposition = f'Content-Disposition: form-data; name="{field}"; filename="{FILENAME}"'
    return f"--{BOUNDARY}\r\n{disposition}\r\n\r\n".encode() + data + b"\r\n"


#: The closing boundary line.
CLOSING = f"--{BOUNDARY}--\r\n".encode()


def multipart_body(data: bytes) -> bytes:
    return file_part(data) + CLOSING


# --- images that are not what they claim --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(bombs()))
def test_decompression_bombs_are_refused_from_the_header(
    server: BentoServer, client: httpx.Client, name: str
) -> None:
    with MetricsDelta(server.url) as delta:
        assert_error(classify(client, bombs()[name]), 413, "too_many_pixels")
    assert delta(ERRORS, code="too_many_pixels") == 1 and delta(ERRORS) == 1


def cut_and_corrupt() -> dict[str, bytes]:
    """Each decodable format cut at several points and with noise over a third of the file."""
    cases: dict[str, bytes] = {}
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"):
        data = encode(gradient(64, 48, seed=11), fmt)
        for keep in (0.02, 0.3, 0.7, 0.97):
            cases[f"{fmt.lower()}-cut-{keep}"] = truncated(data, keep)
        cases[f"{fmt.lower()}-noise"] = corrupted(data, seed=1)
    return cases


@pytest.mark.parametrize("name", sorted(cut_and_corrupt()))
def test_cut_and_corrupt_files_are_refused_or_decoded_as_in_process(
    server: BentoServer, client: httpx.Client, info: ModelMetadata, name: str
) -> None:
    """A cut file is `invalid_image`; noise that a codec survives may still decode (then 200).

    Either way the answer is what decoding the same bytes in-process gives, and never anything else.
    """
    data = cut_and_corrupt()[name]
    status, code = in_process_outcome(data, info)
    assert (status, code) in {(200, None), (400, "invalid_image")}
    if "-cut-" in name:
        assert code == "invalid_image"
    with MetricsDelta(server.url) as delta:
        response = classify(client, data)
    if code is None:
        assert_prediction(response)
        assert delta(ERRORS) == 0
    else:
        assert_error(response, status, code)
        assert delta(ERRORS, code=code) == 1 and delta(ERRORS) == 1


#: Bytes that are no image the service decodes, with the answer each gets: name → (data, status, code).
NOT_IMAGES: dict[str, tuple[bytes, int, str]] = {
    "zero-bytes": (b"", 400, "empty_file"),
    "one-nul": (b"\x00", 400, "invalid_image"),
    "text": (b"just some text " + CANARY, 400, "invalid_image"),
    "html": (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)>" + CANARY, 400, "invalid_image"),
    "json": (b'{"image": "' + CANARY + b'"}', 400, "invalid_image"),
    "elf": (b"\x7fELF\x02\x01\x01" + b"\x00" * 64, 400, "invalid_image"),
    "zip": (b"PK\x03\x04" + b"\x00" * 64, 400, "invalid_image"),
    "png-magic-only": (b"\x89PNG\r\n\x1a\n", 400, "invalid_image"),
    "jpeg-magic-only": (b"\xff\xd8\xff", 400, "invalid_image"),
    "gif-magic-only": (b"GIF89a", 400, "invalid_image"),
    "webp-magic-only": (b"RIFF\x00\x00\x00\x00WEBP", 400, "invalid_image"),
    "svg": (b"<svg><script>" + CANARY + b"</script></svg>", 415, "unsupported_format"),
    "pdf": (b"%PDF-1.7\n%" + CANARY, 415, "unsupported_format"),
    "tga": (encode(gradient(16, 16), "TGA"), 415, "unsupported_format"),
    "ico": (encode(gradient(16, 16), "ICO"), 415, "unsupported_format"),
}


@pytest.mark.parametrize(("data", "status", "code"), list(NOT_IMAGES.values()), ids=list(NOT_IMAGES))
def test_what_is_not_an_image_is_refused(
    server: BentoServer, client: httpx.Client, data: bytes, status: int, code: str
) -> None:
    with MetricsDelta(server.url) as delta:
        assert_error(classify(client, data, content_type="image/jpeg"), status, code)
    assert delta(ERRORS, code=code) == 1 and delta(ERRORS) == 1


@pytest.mark.parametrize("name", sorted(polyglots()))
def test_polyglots_are_classified_as_the_image_they_start_with(client: httpx.Client, name: str) -> None:
    image, glued = polyglots()[name]
    assert assert_prediction(classify(client, glued)) == pytest.approx(
        assert_prediction(classify(client, image)), rel=1e-5, abs=1e-7
    )


@pytest.mark.parametrize("name", sorted(odd_modes()))
def test_odd_pixel_modes_sizes_and_animations_are_classified(
    server: BentoServer, client: httpx.Client, name: str
) -> None:
    with MetricsDelta(server.url) as delta:
        assert_prediction(classify(client, odd_modes()[name]))
    assert delta(ERRORS) == 0


def test_exif_orientation_is_applied(client: httpx.Client) -> None:
    tagged, upright = exif_rotated_jpeg()
    assert assert_prediction(classify(client, tagged)) == pytest.approx(
        assert_prediction(classify(client, encode(upright, "PNG"))), rel=1e-5, abs=1e-7
    )


# --- giant but valid images -----------------------------------------------------------------------------


def png_just_over_the_byte_limit() -> bytes:
    """A valid, uncompressed noise PNG of 1870×1870 (3.5 megapixels): just over 10 MiB."""
    pixels = np.random.default_rng(0).integers(0, 256, (1870, 1870, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels, "RGB"), "PNG", compress_level=0)
    assert LIMITS.max_image_bytes < len(data) < LIMITS.max_image_bytes + 16 * 1024
    return data


def bilevel_png(side: int) -> bytes:
    """A valid 1-bit PNG of side × side: a real full-size image that costs next to nothing to send."""
    return encode(Image.new("1", (side, side), 1), "PNG")


def test_an_image_just_over_the_byte_limit_is_refused(server: BentoServer, client: httpx.Client) -> None:
    big = png_just_over_the_byte_limit()
    with MetricsDelta(server.url) as delta:
        assert_error(classify(client, big), 413, "image_too_large")
        response = classify_batch(client, [encode(gradient(32, 32), "PNG"), big])
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert "label" in first and second["error"]["code"] == "image_too_large"
    assert delta(ERRORS, code="image_too_large") == 2 and delta(ERRORS) == 2


def test_an_image_just_over_the_pixel_limit_is_refused(server: BentoServer, client: httpx.Client) -> None:
    side = int(LIMITS.max_pixels**0.5) + 1  # 6325 × 6325 = 40 005 625 pixels
    with MetricsDelta(server.url) as delta:
        assert_error(classify(client, bilevel_png(side)), 413, "too_many_pixels")
    assert delta(ERRORS, code="too_many_pixels") == 1


def test_an_image_just_under_the_pixel_limit_is_classified(client: httpx.Client) -> None:
    assert_prediction(classify(client, bilevel_png(int(LIMITS.max_pixels**0.5) - 5)))


# --- what the request says about itself ----------------------------------------------------------------


def test_the_part_content_type_is_ignored_the_bytes_decide(client: httpx.Client) -> None:
    jpeg = encode(gradient(40, 40, seed=2), "JPEG")
    expected = assert_prediction(classify(client, jpeg, content_type="image/jpeg"))
    for label in ("image/png", "text/html", "application/json", "image/svg+xml"):
        assert assert_prediction(classify(client, jpeg, content_type=label)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"image": "aGVsbG8="}', "application/json"),
        (b"image=" + CANARY, "text/plain"),
        (b"image=abc", "application/x-www-form-urlencoded"),
        (b"--b\r\n\r\n--b--\r\n", "multipart/mixed; boundary=b"),
        (b"", ""),
    ],
    ids=["json", "text", "urlencoded", "multipart-mixed", "none"],
)
def test_bodies_that_are_neither_form_data_nor_an_image_are_415(
    server: BentoServer, client: httpx.Client, content: bytes, content_type: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    with MetricsDelta(server.url) as delta:
        for path in ("/classify", "/classify_batch"):
            assert_error(client.post(path, content=content, headers=headers), 415, "unsupported_media_type")
    assert delta(ERRORS, code="unsupported_media_type") == 2


def malformed_multipart() -> dict[str, tuple[bytes, str]]:
    """name → (body, Content-Type) of multipart bodies that break the grammar one way each."""
    png = encode(gradient(8, 8), "PNG")
    part, closing = file_part(png), CLOSING
    start = f"--{BOUNDARY}\r\n".encode()
    many_headers = b"".join(b"X-%d: 1\r\n" % i for i in range(5000)) + b"\r\n"
    return {
        "boundary-mismatch": (part + closing, "multipart/form-data; boundary=not-the-one"),
        "no-boundary": (part + closing, "multipart/form-data"),
        "empty-boundary": (part + closing, "multipart/form-data; boundary="),
        "boundary-over-256": (
            part.replace(BOUNDARY.encode(), b"b" * 300) + b"--" + b"b" * 300 + b"--\r\n",
            "multipart/form-data; boundary=" + "b" * 300,
        ),
        "missing-final-boundary": (part, MULTIPART),
        "no-content-disposition": (start + b"X-Other: 1\r\n\r\n" + png + b"\r\n" + closing, MULTIPART),
        "disposition-without-name": (
            start + b'Content-Disposition: form-data; filename="a"\r\n\r\n' + png + b"\r\n" + closing,
            MULTIPART,
        ),
        "attachment-disposition": (part.replace(b"form-data", b"attachment") + closing, MULTIPART),
        "header-without-colon": (start + b"Content-Disposition form-data\r\n\r\nx\r\n" + closing, MULTIPART),
        "header-over-limit": (
            part.replace(b"\r\n\r\n", b"\r\nX-Junk: " + b"a" * 200_000 + b"\r\n\r\n", 1) + closing,
            MULTIPART,
        ),
        "thousands-of-headers": (part.replace(b"\r\n\r\n", b"\r\n" + many_headers, 1) + closing, MULTIPART),
        "bare-lf-line-ends": (part.replace(b"\r\n", b"\n") + closing.replace(b"\r\n", b"\n"), MULTIPART),
        "preamble-garbage": (b"garbage before the first boundary\r\n" + part + closing, MULTIPART),
        "only-garbage": (b"not multipart at all " + CANARY, MULTIPART),
        "empty-body": (b"", MULTIPART),
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(malformed_multipart()))
def test_malformed_multipart_is_400(server: BentoServer, client: httpx.Client, name: str) -> None:
    body, content_type = malformed_multipart()[name]
    with MetricsDelta(server.url) as delta:
        for path in ("/classify", "/classify_batch"):
            response = client.post(path, content=body, headers={"content-type": content_type})
            assert_error(response, 400, "invalid_request")
    assert delta(ERRORS, code="invalid_request") == 2 and delta(ERRORS) == 2


def test_a_body_cut_short_by_a_client_that_gives_up_leaves_the_server_healthy(server: BentoServer) -> None:
    body = multipart_body(encode(gradient(64, 64), "PNG"))
    head = raw_http.request_head("/classify", MULTIPART, len(body) + 10_000)
    answer = raw_http.send(server.url, head, [body[: len(body) // 2]], half_close=True, timeout=15)
    # Nobody is left to read an answer; the server may send none or a 4xx, never a 5xx.
    assert answer.status is None or 400 <= answer.status < 500


# --- fields ---------------------------------------------------------------------------------------------


def test_duplicate_and_missing_fields(server: BentoServer, client: httpx.Client) -> None:
    png = encode(gradient(16, 16), "PNG")
    two_images = [("image", (FILENAME, png)), ("image", (FILENAME, png))]
    top_k_twice = [("image", (FILENAME, png)), ("top_k", (None, "1")), ("top_k", (None, "2"))]
    extra_fields = [("image", (FILENAME, png)), ("note", (None, "hello")), ("file", ("a.txt", b"text"))]
    too_many_fields = [("image", (FILENAME, png))] + [(f"field{i}", (None, "x")) for i in range(40)]
    with MetricsDelta(server.url) as delta:
        assert_error(client.post("/classify", files=two_images), 413, "too_many_images")
        assert_error(client.post("/classify", files=top_k_twice), 400, "invalid_top_k")
        assert_error(client.post("/classify", files={"top_k": (None, "3")}), 400, "missing_field")
        assert_error(client.post("/classify_batch", files={"image": (FILENAME, png)}), 400, "missing_field")
        assert_error(client.post("/classify", files={"images": (FILENAME, png)}), 400, "missing_field")
        assert_error(client.post("/classify", files=too_many_fields), 400, "invalid_request")
        assert_prediction(client.post("/classify", files=extra_fields))
    assert delta(ERRORS, code="too_many_images") == 1
    assert delta(ERRORS, code="invalid_top_k") == 1
    assert delta(ERRORS, code="missing_field") == 3
    assert delta(ERRORS, code="invalid_request") == 1
    assert delta(ERRORS) == 6


@pytest.mark.parametrize(
    ("top_k", "code"),
    [
        ("0", "invalid_top_k"),
        ("-1", "invalid_top_k"),
        ("{classes+1}", "invalid_top_k"),
        ("1e9", "invalid_top_k"),
        ("abc" + CANARY.decode(), "invalid_top_k"),
        ("", "invalid_top_k"),
        ("5.5", "invalid_top_k"),
        ("+3", "invalid_top_k"),
        ("0x5", "invalid_top_k"),
        ("３", "invalid_top_k"),  # a full-width digit: str.isdigit() says yes, int() would accept it
        ("9" * 1000, "invalid_top_k"),
        ("9" * 5000, "invalid_request"),  # longer than a text field may be
    ],
    ids=[
        "zero", "negative", "classes+1", "float-exponent", "letters", "empty", "decimal", "plus-sign", "hex",
        "fullwidth-digit", "1000-digits", "5000-digits",
    ],
)  # fmt: skip
def test_absurd_top_k_is_refused_on_both_endpoints(
    server: BentoServer, client: httpx.Client, info: ModelMetadata, top_k: str, code: str
) -> None:
    value = top_k.replace("{classes+1}", str(info.num_classes + 1))
    png = encode(gradient(16, 16), "PNG")
    with MetricsDelta(server.url) as delta:
        assert_error(classify(client, png, top_k=value), 400, code)
        assert_error(classify_batch(client, [png], top_k=value), 400, code)
    assert delta(ERRORS, code=code) == 2 and delta(ERRORS) == 2


def test_top_k_with_surrounding_spaces_is_accepted(client: httpx.Client) -> None:
    """Whitespace around digits is forgiven (form encoders add it); the value itself must still be valid."""
    assert_prediction(classify(client, encode(gradient(16, 16), "PNG"), top_k=" 3 "), k=3)


# --- volume and time ------------------------------------------------------------------------------------


def test_thousands_of_files_are_refused_quickly(server: BentoServer, client: httpx.Client) -> None:
    """Refused while the form is read: not one of the images is decoded."""
    tiny = encode(gradient(2, 2), "PNG")
    with MetricsDelta(server.url) as delta:
        assert_error(classify_batch(client, [tiny] * 2000), 413, "too_many_images")
        many_singles = [("image", (FILENAME, tiny))] * 2000
        assert_error(client.post("/classify", files=many_singles), 413, "too_many_images")
    assert delta("eluserve_preprocess_duration_seconds_count") == 0
    assert delta(ERRORS, code="too_many_images") == 2


def test_an_endless_stream_of_parts_is_cut_off_after_the_limit(server: BentoServer) -> None:
    """The server answers once part max_images + 1 begins, without reading the rest of the body."""
    fifty_parts = file_part(encode(gradient(2, 2), "PNG"), field="images") * 50
    declared = 90 * 1024 * 1024  # under the 100 MB request limit: only the part count can stop it
    chunks = (fifty_parts for _ in range(declared // len(fifty_parts)))
    head = raw_http.request_head("/classify_batch", MULTIPART, declared)
    with MetricsDelta(server.url) as delta:
        answer = raw_http.send(server.url, head, chunks)
    assert answer.status == 413 and answer.body is not None, answer
    assert answer.body["error"]["code"] == "too_many_images"
    assert answer.bytes_sent < 5 * 1024 * 1024, answer.bytes_sent
    assert delta(ERRORS, code="too_many_images") == 1


def test_a_trickled_upload_times_out_with_408_while_others_are_served(
    server: BentoServer, client: httpx.Client
) -> None:
    body = multipart_body(encode(gradient(16, 16), "PNG"))
    head = raw_http.request_head("/classify", MULTIPART, len(body))
    one_byte_at_a_time = (body[i : i + 1] for i in range(len(body)))
    with MetricsDelta(server.url) as delta, concurrent.futures.ThreadPoolExecutor(1) as pool:
        trickle = pool.submit(
            raw_http.send, server.url, head, one_byte_at_a_time, pause=0.1, timeout=REQUEST_S
        )
        time.sleep(1.0)
        served_meanwhile = 0  # answers that came while the trickle still held its connection
        while not trickle.done():
            assert client.get("/livez").status_code == 200
            assert_prediction(classify(client, encode(gradient(24, 24), "PNG")))
            served_meanwhile += not trickle.done()
            time.sleep(0.5)
        answer = trickle.result()
    assert served_meanwhile > 0
    assert answer.status == 408 and answer.body is not None, answer
    assert answer.body["error"]["code"] == "request_timeout"
    assert TIMEOUT_S * BODY_TIMEOUT_SHARE - 1 < answer.seconds < TIMEOUT_S + LATE_S
    assert delta(ERRORS, code="request_timeout") == 1


def test_hundreds_of_connections_stalled_mid_headers_get_408_and_do_not_block_others(
    server: BentoServer, client: httpx.Client
) -> None:
    """Slowloris: connections that never finish their headers. Everyone else is served meanwhile, and
    each stalled one is answered 408 and closed once the header deadline passes."""
    with MetricsDelta(server.url) as delta, contextlib.ExitStack() as stack:
        stalled = []
        for _ in range(300):
            sock = stack.enter_context(raw_http.connect(server.url, timeout=REQUEST_S))
            sock.sendall(b"POST /classify HTTP/1.1\r\nHost: test\r\nX-Slow: ")
            stalled.append(sock)
        started = time.monotonic()
        assert client.get("/livez").status_code == 200
        assert_prediction(classify(client, encode(gradient(24, 24), "PNG")))
        assert time.monotonic() - started < HEADER_TIMEOUT_S + LATE_S  # not held up past the deadline
        answers = [raw_http.read_answer(sock, timeout=REQUEST_S) for sock in stalled]
    assert all(answer.status == 408 for answer in answers), {a.status for a in answers}
    assert all(answer.body and answer.body["error"]["code"] == "request_timeout" for answer in answers)
    assert all(answer.closed for answer in answers)
    assert delta(ERRORS, code="request_timeout") == len(stalled)


REQUEST_LINE = b"POST /classify HTTP/1.1\r\nHost: test\r\n"


@pytest.mark.parametrize(
    ("head", "trickle"),
    [
        (b"", []),
        (b"", [REQUEST_LINE[i : i + 1] for i in range(len(REQUEST_LINE))]),
        (REQUEST_LINE, [b"X-Slow: a\r\n"] * 100),
    ],
    ids=["silent", "request-line-byte-by-byte", "header-lines-trickled"],
)
def test_a_request_whose_headers_do_not_arrive_in_time_gets_408(
    parser_server: BentoServer, head: bytes, trickle: list[bytes]
) -> None:
    answer = raw_http.send(parser_server.url, head, trickle, pause=0.25, timeout=REQUEST_S)
    assert answer.status == 408 and answer.body is not None, answer
    assert answer.body["error"]["code"] == "request_timeout" and "headers" in answer.body["error"]["message"]
    assert HEADER_TIMEOUT_S - 0.5 < answer.seconds < HEADER_TIMEOUT_S + LATE_S, answer


def test_the_header_deadline_starts_again_for_each_request_on_a_kept_alive_connection(
    parser_server: BentoServer,
) -> None:
    """A kept-alive connection that idles between requests, each sent in time, is never cut off.

    The first request goes at once (the deadline is armed when the connection opens, and a busy machine
    could stretch an idle start past it); the idles between requests add up to 1.8 deadlines."""
    body = multipart_body(encode(gradient(16, 16), "PNG"))
    request = raw_http.request_head("/classify", MULTIPART, len(body)) + body
    with raw_http.connect(parser_server.url, timeout=REQUEST_S) as sock:
        for index in range(4):
            if index:
                time.sleep(HEADER_TIMEOUT_S * 0.6)
            sock.sendall(request)
            answer = raw_http.read_answer(sock, timeout=REQUEST_S)
            assert answer.status == 200 and answer.body is not None and "label" in answer.body, answer


def test_a_slow_but_steady_upload_is_classified(server: BentoServer) -> None:
    body = multipart_body(encode(gradient(16, 16), "PNG"))
    head = raw_http.request_head("/classify", MULTIPART, len(body))
    step = len(body) // 10 + 1
    answer = raw_http.send(
        server.url,
        head,
        (body[i : i + step] for i in range(0, len(body), step)),
        pause=0.25,
        timeout=REQUEST_S,
    )
    assert answer.status == 200 and answer.body is not None and "label" in answer.body, answer


# --- the image itself as the body -----------------------------------------------------------------------

#: The Content-Types raw bodies go under, in turn: the bytes decide the format, whatever the label says.
RAW_TYPES = ("application/octet-stream", "image/jpeg", "image/png", "image/svg+xml", "image/x-anything")


def classify_raw(
    client: httpx.Client, data: bytes, content_type: str = "application/octet-stream", **params: str
) -> httpx.Response:
    return client.post("/classify", content=data, headers={"content-type": content_type}, params=params)


@functools.cache
def raw_corpus() -> dict[str, bytes]:
    """Every file of the corpus above, to send as a raw body."""
    cases = {f"bomb-{name}": data for name, data in bombs().items()}
    cases |= {f"broken-{name}": data for name, data in cut_and_corrupt().items()}
    cases |= {f"not-an-image-{name}": data for name, (data, _, _) in NOT_IMAGES.items()}
    cases |= {f"polyglot-{name}": glued for name, (_, glued) in polyglots().items()}
    cases |= {f"mode-{name}": data for name, data in odd_modes().items()}
    cases["exif-rotated"] = exif_rotated_jpeg()[0]
    return cases


@pytest.mark.parametrize("name", sorted(raw_corpus()))
def test_a_raw_body_gets_the_answer_a_form_gets(
    server: BentoServer, client: httpx.Client, info: ModelMetadata, name: str
) -> None:
    corpus = raw_corpus()
    data = corpus[name]
    content_type = RAW_TYPES[sorted(corpus).index(name) % len(RAW_TYPES)]
    status, code = in_process_outcome(data, info)
    with MetricsDelta(server.url) as delta:
        raw = classify_raw(client, data, content_type)
    form = classify(client, data)
    if code is None:
        assert assert_prediction(raw) == pytest.approx(assert_prediction(form), rel=1e-5, abs=1e-7)
        assert delta(ERRORS) == 0
    else:
        assert_error(raw, status, code)
        assert_error(form, status, code)
        assert delta(ERRORS, code=code) == 1 and delta(ERRORS) == 1


def test_a_raw_body_just_over_the_byte_limit_is_refused_from_its_length(
    server: BentoServer, client: httpx.Client
) -> None:
    with MetricsDelta(server.url) as delta:
        assert_error(
            classify_raw(client, png_just_over_the_byte_limit(), "image/png"), 413, "image_too_large"
        )
    assert delta(ERRORS, code="image_too_large") == 1
    assert delta("eluserve_preprocess_duration_seconds_count") == 0


def test_an_endless_chunked_raw_body_is_cut_off_at_the_limit(server: BentoServer) -> None:
    head = (
        b"POST /classify HTTP/1.1\r\nHost: reliability-test\r\nContent-Type: image/jpeg\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"\xff" * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    endless = (chunk for _ in range(20 * LIMITS.max_image_bytes // len(piece)))
    with MetricsDelta(server.url) as delta:
        answer = raw_http.send(server.url, head, endless, timeout=REQUEST_S)
    assert answer.status == 413 and answer.body is not None, answer
    assert answer.body["error"]["code"] == "image_too_large"
    assert answer.bytes_sent < 10 * LIMITS.max_image_bytes, answer.bytes_sent
    assert delta(ERRORS, code="image_too_large") == 1


@pytest.mark.parametrize(
    "top_k",
    ["0", "-1", "{classes+1}", "1e9", "abc", "", "5.5", "+3", "0x5", "３", "9" * 1000, "9" * 5000],
    ids=[
        "zero", "negative", "classes+1", "float-exponent", "letters", "empty", "decimal", "plus-sign", "hex",
        "fullwidth-digit", "1000-digits", "5000-digits",
    ],
)  # fmt: skip
def test_absurd_top_k_in_the_query_is_refused(
    server: BentoServer, client: httpx.Client, info: ModelMetadata, top_k: str
) -> None:
    value = top_k.replace("{classes+1}", str(info.num_classes + 1))
    with MetricsDelta(server.url) as delta:
        assert_error(classify_raw(client, encode(gradient(16, 16), "PNG"), top_k=value), 400, "invalid_top_k")
    assert delta(ERRORS, code="invalid_top_k") == 1 and delta(ERRORS) == 1


def test_a_trickled_raw_body_times_out_with_408(server: BentoServer) -> None:
    data = encode(gradient(16, 16), "PNG")
    head = raw_http.request_head("/classify", "image/png", len(data))
    with MetricsDelta(server.url) as delta:
        answer = raw_http.send(
            server.url, head, (data[i : i + 1] for i in range(len(data))), pause=0.1, timeout=REQUEST_S
        )
    assert answer.status == 408 and answer.body is not None, answer
    assert answer.body["error"]["code"] == "request_timeout"
    assert TIMEOUT_S * BODY_TIMEOUT_SHARE - 1 < answer.seconds < TIMEOUT_S + LATE_S
    assert delta(ERRORS, code="request_timeout") == 1


def test_a_slow_but_steady_raw_body_is_classified(server: BentoServer) -> None:
    data = encode(gradient(16, 16), "PNG")
    head = raw_http.request_head("/classify", "image/png", len(data))
    step = len(data) // 10 + 1
    chunks = (data[i : i + step] for i in range(0, len(data), step))
    answer = raw_http.send(server.url, head, chunks, pause=0.25, timeout=REQUEST_S)
    assert answer.status == 200 and answer.body is not None and "label" in answer.body, answer


def test_a_raw_body_cut_short_by_a_client_that_gives_up_leaves_the_server_healthy(
    server: BentoServer,
) -> None:
    data = encode(gradient(64, 64), "PNG")
    head = raw_http.request_head("/classify", "image/png", len(data) + 10_000)
    answer = raw_http.send(server.url, head, [data[: len(data) // 2]], half_close=True, timeout=15)
    assert answer.status is None or 400 <= answer.status < 500


def test_a_batch_refuses_an_image_body(server: BentoServer, client: httpx.Client) -> None:
    png = encode(gradient(8, 8), "PNG")
    with MetricsDelta(server.url) as delta:
        for content_type in ("image/png", "application/octet-stream"):
            response = client.post("/classify_batch", content=png, headers={"content-type": content_type})
            assert_error(response, 415, "unsupported_media_type")
    assert delta(ERRORS, code="unsupported_media_type") == 2


# --- last: what the server wrote down -------------------------------------------------------------------


def test_the_log_never_holds_uploaded_bytes_or_filenames(server: BentoServer) -> None:
    log = server.log()
    assert "path=/classify" in log  # the access log is there, so its silence means something
    assert CANARY.decode() not in log
    assert "Traceback" not in log, log[-3000:]
