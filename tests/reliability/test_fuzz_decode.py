"""Property-based fuzzing of the decoder: whatever the bytes, only `ClientError` escapes.

`tests/core/test_preprocessing.py` already flips bytes in one small image per format. This goes
further, from every hostile sample (bombs, polyglots, 16-bit, CMYK, alpha, animations, EXIF): header
integers are overwritten with extreme values (that is where width and height live), byte runs are
inserted, deleted and spliced between formats, and the crop rule and limits vary too. Bounded for CI
(100 examples per property); `fuzz_decode.py` is the long-running coverage-guided version.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from eluserve.core.errors import ClientError
from eluserve.core.preprocessing import RESAMPLING, Limits, PreprocessingRule, decode_image, load_image
from tests.reliability.hostile_samples import seeds

SEEDS = seeds()
#: Values that break size arithmetic when written over a header field.
EXTREMES = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about what it survives


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A hostile sample after one to four structure-aware mutations."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["integer", "overwrite", "insert", "delete", "splice", "cut"]))
        if kind == "integer":
            fmt = draw(st.sampled_from([">H", "<H", ">I", "<I"]))
            value = draw(st.sampled_from(EXTREMES)) & (0xFFFF if fmt.endswith("H") else 0xFFFFFFFF)
            data[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value)
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "splice":
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            start = draw(st.integers(0, len(other) - 1))
            data[at:] = other[start:]
        else:
            del data[at:]
    return bytes(data)


#: Any bytes at all: pure noise, noise behind a real magic number, and mutated samples.
hostile_bytes = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        bytes.__add__,
        st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF", b"II*\x00", b"BM"]),
        st.binary(max_size=512),
    ),
    mutated_images(),
)

rules = st.builds(
    PreprocessingRule,
    resize_shorter_side=st.integers(1, 64),
    crop=st.tuples(st.integers(1, 64), st.integers(1, 64)),
    interpolation=st.sampled_from(sorted(RESAMPLING)),
)

#: Pixel limits up to 4 megapixels keep what a mutated header may make Pillow allocate small.
limits = st.builds(Limits, max_image_bytes=st.integers(1, 1 << 20), max_pixels=st.integers(1, 4_000_000))


@FUZZ
@given(data=hostile_bytes, rule=rules, limit=limits)
def test_load_image_returns_the_crop_or_raises_a_client_error(
    data: bytes, rule: PreprocessingRule, limit: Limits
) -> None:
    try:
        crop = load_image(data, rule, limit)
    except ClientError as exc:
        assert 400 <= exc.status < 500 and exc.code and exc.message
        return
    assert isinstance(crop, np.ndarray) and crop.dtype == np.uint8
    assert crop.shape == (*rule.crop, 3) and crop.flags.c_contiguous


@FUZZ
@given(data=hostile_bytes, limit=limits)
def test_decode_image_returns_rgb_within_the_limits_or_raises_a_client_error(
    data: bytes, limit: Limits
) -> None:
    try:
        img = decode_image(data, limit)
    except ClientError as exc:
        assert 400 <= exc.status < 500 and exc.code and exc.message
        return
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    width, height = img.size
    # EXIF may swap the sides; the area is what the limit bounds.
    assert 0 < width * height <= limit.max_pixels and len(data) <= limit.max_image_bytes


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_decodes_or_is_refused_with_a_client_error(name: str) -> None:
    """The unmutated seeds themselves, under the default limits: the fuzzers start from sane ground."""
    try:
        crop = load_image(SEEDS[name], PreprocessingRule(32, (32, 32)), Limits())
    except ClientError as exc:
        assert exc.code == "too_many_pixels", (name, exc.code)
        return
    assert crop.shape == (32, 32, 3)
