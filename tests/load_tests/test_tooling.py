"""Unit checks of the load-test tooling: payloads, request encoding, goal arithmetic, the CLI wiring.

No server runs here and nothing is timed; the live runs are in test_live_runs.py.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from eluserve.core.errors import ClientError
from eluserve.core.preprocessing import Limits, PreprocessingRule, load_image
from eluserve.core.throughput import Throughput
from load_tests import fixtures
from load_tests.__main__ import build_parser
from load_tests.bench import BenchConfig, triton_request
from load_tests.loadgen import LevelResult
from load_tests.report import ServerRun, ratios, table

RULE = PreprocessingRule(resize_shorter_side=32, crop=(32, 32))


def test_bad_uploads_get_the_errors_they_expect_from_the_real_decoder() -> None:
    """The locustfile counts a refusal as success only with the expected code: the expectations must
    be what eluserve.core.preprocessing really answers."""
    valid = fixtures.encode(fixtures.photo_like(64, 48), "JPEG")
    for bad in fixtures.bad_uploads(valid):
        with pytest.raises(ClientError) as caught:
            load_image(bad.upload.data, RULE, Limits())
        assert (caught.value.code, caught.value.status) == (bad.code, bad.status), bad.upload.filename


def test_photo_like_images_decode_to_a_crop_and_compress_like_photos() -> None:
    img = fixtures.photo_like(320, 240, seed=3)
    jpeg, png = fixtures.encode(img, "JPEG"), fixtures.encode(img, "PNG")
    assert load_image(jpeg, RULE, Limits()).shape == (32, 32, 3)
    # Neither flat (compresses to nothing) nor noise (incompressible, 3 bytes a pixel in a PNG).
    pixels = 320 * 240
    assert 0.1 < len(jpeg) / pixels < 1.0 < len(png) / pixels < 2.8


def test_cifar_jpegs_cover_every_class(cifar_zip) -> None:
    uploads = fixtures.cifar_jpegs(20, cifar_zip)
    assert len(uploads) == 20
    assert all(load_image(u.data, RULE, Limits()).shape == (32, 32, 3) for u in uploads)


def test_multipart_body_carries_each_part_and_field() -> None:
    body, content_type = fixtures.multipart(
        "images",
        [fixtures.Attachment("a.jpg", "image/jpeg", b"AAA"), fixtures.Attachment("b.png", "image/png", b"B")],
        {"top_k": "3"},
    )
    boundary = content_type.split("boundary=")[1]
    parts = body.split(f"--{boundary}".encode())
    assert parts[-1] == b"--\r\n"
    assert b'name="top_k"\r\n\r\n3\r\n' in parts[1]
    assert parts[2].endswith(b"\r\n\r\nAAA\r\n") and b'filename="a.jpg"' in parts[2]
    assert parts[3].endswith(b"\r\n\r\nB\r\n") and b"Content-Type: image/png" in parts[3]


def test_triton_request_uses_the_binary_tensor_extension() -> None:
    body, headers = triton_request(b"\xff\xd8jpeg")
    split = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:split])
    (tensor,) = header["inputs"]
    assert (tensor["datatype"], tensor["shape"]) == ("BYTES", [1, 1])
    assert body[split:] == (6).to_bytes(4, "little") + b"\xff\xd8jpeg"
    assert tensor["parameters"]["binary_data_size"] == len(body) - split


def _level(concurrency: int, images_per_second: float, p99_ms: float) -> LevelResult:
    return LevelResult(
        concurrency=concurrency,
        seconds=1.0,
        ok=int(images_per_second),
        images=int(images_per_second),
        latencies_ms=np.full(100, p99_ms),
    )


def test_ratios_compare_like_with_like() -> None:
    runs = {
        "service": ServerRun("service", [_level(1, 100, 5), _level(64, 900, 120)]),
        "naive": ServerRun("naive", [_level(1, 200, 3), _level(64, 300, 400)]),
        "triton": ServerRun("triton", [_level(1, 150, 4), _level(64, 1000, 300)]),
    }
    raw = Throughput(batch_size=64, images_per_second=1000.0, batch_latency_seconds=0.064)
    to_raw, to_naive, to_triton = ratios(runs, raw, top=64, p99_budget_ms=250)
    assert to_raw.value == pytest.approx(0.9) and to_raw.met
    assert to_naive.value == pytest.approx(3.0) and to_naive.met
    # Triton's c=64 is over the p99 budget, so its best within budget is c=1 (150 img/s).
    assert to_triton.value == pytest.approx(6.0) and to_triton.met


def test_missing_baselines_are_reported_not_guessed() -> None:
    runs = {
        "service": ServerRun("service", [_level(64, 500, 900)]),
        "triton": ServerRun("triton", problem="nvidia-pytriton is not installed"),
    }
    to_raw, to_naive, to_triton = ratios(runs, None, top=64, p99_budget_ms=250)
    assert to_raw.value is None and to_naive.value is None and to_triton.value is None
    assert "nvidia-pytriton" in to_triton.detail
    errors = LevelResult(concurrency=1, seconds=1.0, errors=Counter({"429": 3}))
    assert "429×3" in table([ServerRun("service", [errors])], [])


def test_bench_subcommand_is_registered() -> None:
    args = build_parser().parse_args(
        ["bench", "--quick", "--servers", "naive,service", "--concurrency", "1,2", "--service-env", "A=b=c"]
    )
    assert args.command == "bench" and args.quick
    assert args.servers == ("naive", "service") and args.concurrency == (1, 2)
    assert args.service_env == [("A", "b=c")]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--servers", "nginx"])
    assert BenchConfig.quick(seconds=2.0).seconds == 2.0
