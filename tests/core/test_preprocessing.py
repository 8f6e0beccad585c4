"""Decoding untrusted bytes and the single-crop rule (docs/model-format.md)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from eluserve.core import preprocessing
from eluserve.core.errors import (
    ClientError,
    EmptyFile,
    ImageTooLarge,
    InvalidImage,
    ModelFormatError,
    TooManyPixels,
    UnsupportedFormat,
)
from eluserve.core.preprocessing import (
    DRAFT_MARGIN,
    FORMAT_EXTENSIONS,
    Limits,
    PreprocessingRule,
    decode_image,
    load_image,
    single_crop,
    to_rgb,
)
from tests.service.image_samples import cifar_samples, encode, gradient, png_declaring, solid

LIMITS = Limits()
CIFAR_RULE = PreprocessingRule(resize_shorter_side=32, crop=(32, 32))
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    assert img.mode == "RGB"
    return tuple(img.getpixel(xy))


# --- pixel modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, WHITE),
        ("1", 0, (0, 0, 0)),
        ("CMYK", (0, 255, 255, 0), RED),
        ("YCbCr", (76, 85, 255), (254, 0, 0)),
        ("I;16", 257 * 100, (100, 100, 100)),
        ("I;16", 65535, WHITE),
        ("I", 257 * 40, (40, 40, 40)),
        ("I", 200, (200, 200, 200)),
        ("F", 0.5, (128, 128, 128)),
        ("F", 64.0, (64, 64, 64)),
    ],
)
def test_every_opaque_mode_becomes_rgb(mode: str, value: object, expected: tuple[int, int, int]) -> None:
    rgb = to_rgb(Image.new(mode, (4, 3), value))
    assert rgb.mode == "RGB" and rgb.size == (4, 3)
    assert np.abs(np.subtract(pixel(rgb, (1, 1)), expected)).max() <= 1


@pytest.mark.parametrize(
    ("mode", "value"),
    [("RGBA", (255, 0, 0, 0)), ("LA", (0, 0)), ("PA", (0, 0)), ("RGBa", (0, 0, 0, 0)), ("La", (0, 0))],
)
def test_fully_transparent_pixels_become_white(mode: str, value: object) -> None:
    assert pixel(to_rgb(Image.new(mode, (2, 2), value)), (0, 0)) == WHITE


def test_half_transparent_red_is_composited_on_white() -> None:
    assert pixel(to_rgb(Image.new("RGBA", (2, 2), (255, 0, 0, 128))), (0, 0)) == (255, 127, 127)


def test_palette_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 1
    rgb = decode_image(encode(img, "PNG", transparency=1), LIMITS)
    assert pixel(rgb, (0, 0)) == RED and pixel(rgb, (1, 0)) == WHITE


@pytest.mark.parametrize(
    ("mode", "value", "fmt", "expected"),
    [
        ("L", 90, "PNG", (90, 90, 90)),
        ("LA", (90, 255), "PNG", (90, 90, 90)),
        ("RGBA", (0, 0, 255, 0), "PNG", WHITE),
        ("RGBA", (0, 0, 255, 255), "WEBP", BLUE),
        ("1", 1, "BMP", WHITE),
        ("I;16", 257 * 10, "PNG", (10, 10, 10)),
        ("I", 257 * 200, "TIFF", (200, 200, 200)),
        ("F", 0.25, "TIFF", (64, 64, 64)),
        ("CMYK", (0, 0, 0, 0), "JPEG", WHITE),
        ("CMYK", (0, 0, 0, 0), "TIFF", WHITE),
    ],
)
def test_modes_survive_an_encode_decode_round_trip(
    mode: str, value: object, fmt: str, expected: tuple
) -> None:
    params = {"lossless": True} if fmt == "WEBP" else {}
    rgb = decode_image(encode(Image.new(mode, (16, 8), value), fmt, **params), LIMITS)
    assert rgb.mode == "RGB" and rgb.size == (16, 8)
    assert np.abs(np.subtract(pixel(rgb, (3, 3)), expected)).max() <= 2


# --- orientation, frames, draft ---------------------------------------------------------------------


def left_red_right_blue(width: int = 40, height: int = 20) -> Image.Image:
    img = Image.new("RGB", (width, height), RED)
    img.paste(BLUE, (width // 2, 0, width, height))
    return img


@pytest.mark.parametrize(
    ("orientation", "size", "first", "second"),
    [
        (1, (40, 20), ((5, 10), RED), ((35, 10), BLUE)),
        (3, (40, 20), ((5, 10), BLUE), ((35, 10), RED)),  # rotated 180°
        (6, (20, 40), ((10, 5), RED), ((10, 35), BLUE)),  # stored rotated: turn 90° clockwise
        (8, (20, 40), ((10, 5), BLUE), ((10, 35), RED)),  # turn 90° counter-clockwise
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], first: tuple, second: tuple
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(left_red_right_blue(), "JPEG", quality=95, exif=exif.tobytes())
    img = decode_image(data, LIMITS)
    assert img.size == size
    for xy, color in (first, second):
        assert np.abs(np.subtract(pixel(img, xy), color)).max() < 40


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_corrupt_exif_does_not_reject_the_image() -> None:
    data = encode(left_red_right_blue(), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert decode_image(data, LIMITS).size == (40, 20)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_the_first_frame_of_an_animation_or_multipage_file_is_used(fmt: str) -> None:
    frames = [solid(RED, (8, 8)), solid(BLUE, (8, 8))]
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 2
    assert np.abs(np.subtract(pixel(decode_image(data, LIMITS), (4, 4)), RED)).max() <= 2


def test_large_jpegs_are_draft_decoded_close_to_the_full_decode() -> None:
    data = encode(gradient(1600, 1200), "JPEG", quality=90)
    drafted = decode_image(data, LIMITS, min_side=32 * DRAFT_MARGIN)
    assert min(drafted.size) >= 32 * DRAFT_MARGIN and drafted.size[0] < 1600
    fast = single_crop(drafted, CIFAR_RULE).astype(int)
    full = single_crop(decode_image(data, LIMITS), CIFAR_RULE).astype(int)
    assert np.abs(fast - full).mean() < 3.0


# --- the libjpeg-turbo fast path: bit-identical to Pillow, or not taken -----------------------------


def pillow_decoded(data: bytes, min_side: int) -> np.ndarray:
    """What `decode_image` gave before the fast path: Pillow's open, draft, load, orientation, RGB."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft(None, (min_side, min_side))
        img.load()
        return np.asarray(to_rgb(ImageOps.exif_transpose(img)))


def pillow_reference(data: bytes, rule: PreprocessingRule) -> np.ndarray:
    """What `load_image` gave before the fast path."""
    return single_crop(pillow_decoded(data, rule.resize_shorter_side * DRAFT_MARGIN), rule)


def fast_path_taken(data: bytes, rule: PreprocessingRule) -> bool:
    return preprocessing._decode_plain_jpeg(data, LIMITS, rule.resize_shorter_side * DRAFT_MARGIN) is not None


PARITY_RULES = [CIFAR_RULE, PreprocessingRule(224, (224, 224)), PreprocessingRule(64, (56, 56))]


@pytest.mark.parametrize("rule", PARITY_RULES, ids=lambda r: f"side{r.resize_shorter_side}")
@pytest.mark.parametrize(
    ("size", "grey", "params"),
    [
        ((32, 32), False, {}),
        ((33, 17), False, {"subsampling": 0}),
        ((640, 480), False, {"subsampling": 1}),
        ((1001, 777), False, {"progressive": True}),
        ((4000, 3000), False, {"quality": 30, "optimize": True}),
        ((130, 2000), False, {"restart_marker_blocks": 2}),
        ((257, 129), True, {}),
        ((1600, 1200), True, {"progressive": True}),
    ],
)
def test_plain_jpegs_decode_bit_identically_to_pillow_on_the_fast_path(
    rule: PreprocessingRule, size: tuple[int, int], grey: bool, params: dict
) -> None:
    """Sizes from CIFAR's to a 12-megapixel photo cover the full decode and every draft scale
    (1/2, 1/4, 1/8) of every rule; greyscale, progressive, 4:4:4/4:2:2/4:2:0, restart markers."""
    img = gradient(*size)
    data = encode(img.convert("L") if grey else img, "JPEG", **params)
    assert fast_path_taken(data, rule)
    np.testing.assert_array_equal(load_image(data, rule, LIMITS), pillow_reference(data, rule))
    min_side = rule.resize_shorter_side * DRAFT_MARGIN
    np.testing.assert_array_equal(
        np.asarray(decode_image(data, LIMITS, min_side=min_side)), pillow_decoded(data, min_side)
    )


def test_cifar_jpegs_decode_bit_identically_to_pillow_on_the_fast_path(cifar_zip: object) -> None:
    for _, data in cifar_samples(cifar_zip, per_class=20):
        assert fast_path_taken(data, CIFAR_RULE)
        np.testing.assert_array_equal(
            load_image(data, CIFAR_RULE, LIMITS), pillow_reference(data, CIFAR_RULE)
        )


def xmp_with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """`jpeg` with an XMP APP1 segment carrying tiff:Orientation (which Pillow also applies)."""
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + f'<x:xmpmeta tiff:Orientation="{orientation}"/>'.encode()
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


@pytest.mark.parametrize(
    "data",
    [
        encode(left_red_right_blue(), "JPEG", exif=Image.Exif().tobytes()),
        xmp_with_orientation(encode(left_red_right_blue(), "JPEG"), 6),
        encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
        encode(left_red_right_blue(), "JPEG")[:-40],
        encode(gradient(100, 100), "JPEG")[:200] + b"\x00" * 600,
    ],
    ids=["exif", "xmp-orientation", "cmyk", "truncated", "corrupt-scan"],
)
def test_jpegs_the_fast_path_cannot_match_go_through_pillow(data: bytes) -> None:
    assert not fast_path_taken(data, CIFAR_RULE)


def test_xmp_orientation_is_applied_as_pillow_applies_it() -> None:
    data = xmp_with_orientation(encode(left_red_right_blue(), "JPEG", quality=95), 6)
    img = decode_image(data, LIMITS)
    assert img.size == (20, 40)
    assert np.abs(np.subtract(pixel(img, (10, 5)), RED)).max() < 40


def test_jpeg_pixel_limits_are_checked_from_the_header_before_the_fast_path() -> None:
    data = encode(solid(RED, (100, 100)), "JPEG")
    with pytest.raises(TooManyPixels, match="100×100 = 10000 pixels"):
        load_image(data, CIFAR_RULE, Limits(max_pixels=9_999))
    assert load_image(data, CIFAR_RULE, Limits(max_pixels=10_000)).shape == (32, 32, 3)


# --- refusals ---------------------------------------------------------------------------------------


def test_empty_bytes() -> None:
    with pytest.raises(EmptyFile):
        decode_image(b"", LIMITS)


def test_bytes_over_the_limit_are_refused_before_decoding() -> None:
    data = encode(gradient(64, 64), "PNG")
    with pytest.raises(ImageTooLarge, match=str(len(data))):
        decode_image(data, Limits(max_image_bytes=len(data) - 1))
    assert decode_image(data, Limits(max_image_bytes=len(data))).size == (64, 64)


@pytest.mark.parametrize("declared", [(20_000, 20_000), (7_000, 7_000), (1, 50_000_000)])
def test_decompression_bombs_are_refused_from_the_header(
    declared: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = png_declaring(*declared)
    assert len(data) < 5_000
    decoded: list[tuple[int, int]] = []  # the images whose pixels were read: none may be
    real_load = ImageFile.ImageFile.load

    def load(image: ImageFile.ImageFile) -> object:
        decoded.append(image.size)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(TooManyPixels):
        decode_image(data, LIMITS)
    assert decoded == []


def test_the_pixel_limit_is_configurable() -> None:
    data = encode(solid(RED, (100, 100)), "PNG")
    with pytest.raises(TooManyPixels, match="10000"):
        decode_image(data, Limits(max_pixels=9_999))
    assert decode_image(data, Limits(max_pixels=10_000)).size == (100, 100)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_files_are_invalid(fmt: str) -> None:
    data = encode(gradient(64, 64), fmt)
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], LIMITS)


@pytest.mark.parametrize(
    "data",
    [b"garbage", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"<html></html>", bytes(range(256)) * 8],
)
def test_non_images_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data, LIMITS)


@pytest.mark.parametrize(
    "data",
    [
        encode(gradient(16, 16), "TGA"),
        encode(gradient(16, 16), "PCX"),
        encode(gradient(16, 16), "ICO"),
        encode(gradient(16, 16), "PPM"),
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
        b"%PDF-1.7\n",
        b'<svg xmlns="http://www.w3.org/2000/svg"></svg>',
    ],
    ids=["tga", "pcx", "ico", "ppm", "heic", "pdf", "svg"],
)
def test_known_but_refused_formats_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedFormat):
        decode_image(data, LIMITS)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corruption it survives
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_images_raise_only_client_errors(data: st.DataObject) -> None:
    fmt = data.draw(st.sampled_from(["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"]))
    raw = bytearray(encode(gradient(24, 20, seed=3), fmt))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    try:
        crop = load_image(bytes(raw[:cut]), CIFAR_RULE, LIMITS)
    except ClientError:
        return
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8


# --- single crop ------------------------------------------------------------------------------------


def column_coded(width: int, height: int) -> Image.Image:
    """Red channel = column index, green = row index: a crop's pixels say where they came from."""
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8), "RGB")


def test_an_image_already_at_the_crop_size_is_unchanged() -> None:
    img = gradient(32, 32)
    np.testing.assert_array_equal(single_crop(img, CIFAR_RULE), np.asarray(img))


@pytest.mark.parametrize(("size", "left", "top"), [((64, 32), 16, 0), ((32, 65), 0, 16), ((33, 32), 0, 0)])
def test_centre_crop_offsets_follow_torchvision(size: tuple[int, int], left: int, top: int) -> None:
    crop = single_crop(column_coded(*size), CIFAR_RULE)
    assert crop.shape == (32, 32, 3) and crop.flags["C_CONTIGUOUS"]
    assert crop[0, 0, 0] == left and crop[0, 0, 1] == top


@pytest.mark.parametrize(
    ("size", "resized"),
    [((100, 50), (64, 32)), ((50, 100), (32, 64)), ((16, 16), (32, 32)), ((45, 32), (45, 32))],
)
def test_the_shorter_side_is_resized_and_the_longer_one_truncated(
    size: tuple[int, int], resized: tuple[int, int]
) -> None:
    img = gradient(*size)
    expected = np.asarray(img.resize(resized, Image.Resampling.BICUBIC))
    height, width = expected.shape[:2]
    top, left = round((height - 32) / 2.0), round((width - 32) / 2.0)
    np.testing.assert_array_equal(single_crop(img, CIFAR_RULE), expected[top : top + 32, left : left + 32])


def test_a_crop_larger_than_the_resized_image_is_zero_padded() -> None:
    rule = PreprocessingRule(resize_shorter_side=32, crop=(40, 36))
    crop = single_crop(solid(WHITE, (32, 32)), rule)
    assert crop.shape == (40, 36, 3)
    assert crop[:4].max() == 0 and crop[-4:].max() == 0 and crop[:, :2].max() == 0
    assert crop[4:36, 2:34].min() == 255


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 400), height=st.integers(1, 400), side=st.integers(8, 64))
def test_single_crop_always_yields_the_crop_shape(width: int, height: int, side: int) -> None:
    rule = PreprocessingRule(resize_shorter_side=side, crop=(side, side))
    crop = single_crop(Image.new("RGB", (width, height), (10, 20, 30)), rule)
    assert crop.shape == (side, side, 3) and crop.dtype == np.uint8


def test_load_image_is_decode_then_single_crop() -> None:
    data = encode(gradient(120, 80), "PNG")
    np.testing.assert_array_equal(
        load_image(data, CIFAR_RULE, LIMITS), single_crop(decode_image(data, LIMITS), CIFAR_RULE)
    )


@pytest.mark.parametrize(
    "data",
    [
        encode(gradient(120, 80), "JPEG"),  # the libjpeg-turbo fast path reads the buffer itself
        *(encode(gradient(50, 40), fmt) for fmt in ("PNG", "WEBP", "GIF", "BMP", "TIFF")),
        b"",
        b"garbage",
        encode(gradient(16, 16), "TGA"),
        b"\xff" * (LIMITS.max_image_bytes + 1),
    ],
    ids=["jpeg", "png", "webp", "gif", "bmp", "tiff", "empty", "garbage", "tga", "too-large"],
)
def test_a_received_bytearray_decodes_as_its_bytes_do(data: bytes) -> None:
    """The service hands the decoder the buffer a body arrived in: same pixels, same errors."""

    def outcome(value: bytes | bytearray) -> np.ndarray | str:
        try:
            return load_image(value, CIFAR_RULE, LIMITS)
        except ClientError as exc:
            return exc.code

    expected, actual = outcome(data), outcome(bytearray(data))
    if isinstance(expected, str):
        assert actual == expected
    else:
        np.testing.assert_array_equal(actual, expected)


# --- the rule's metadata ----------------------------------------------------------------------------


def test_rule_round_trips_through_metadata_json() -> None:
    text = (
        '{"resize_shorter_side": 36, "crop": [32, 30], "interpolation": "Bilinear", '
        '"normalization": "gcn_zca"}'
    )
    rule = PreprocessingRule.from_metadata(text)
    assert rule == PreprocessingRule(36, (32, 30), "bilinear", "gcn_zca")
    assert PreprocessingRule.from_metadata(rule.to_dict()) == rule


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"crop": [32, 32]}',
        '{"resize_shorter_side": 0, "crop": [32, 32]}',
        '{"resize_shorter_side": 32, "crop": [32]}',
        '{"resize_shorter_side": 32, "crop": [32, 32], "interpolation": "magic"}',
    ],
)
def test_malformed_rules_are_model_format_errors(text: str) -> None:
    with pytest.raises(ModelFormatError):
        PreprocessingRule.from_metadata(text)


def test_image_extensions_name_their_formats_as_pillow_does() -> None:
    """A file picked up by its extension is opened as the format listed for it (AVIF where this Pillow
    build registers it)."""
    registered = Image.registered_extensions()
    assert {registered[".jpg"], registered[".png"]} == {"JPEG", "PNG"}
    for fmt, extensions in FORMAT_EXTENSIONS.items():
        for extension in extensions:
            assert registered.get(f".{extension}", fmt) == fmt, extension
