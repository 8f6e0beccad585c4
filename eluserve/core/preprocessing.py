"""Decode untrusted image bytes and apply the model's single-crop rule (docs/model-format.md).

Everything here runs on bytes a client sent, so the order of checks matters: byte size first, then the
size the header *declares* (before a single pixel is decoded, which is what stops decompression bombs),
then decoding. Every failure of Pillow or the codecs underneath becomes a `ClientError`; nothing a
client sends may surface as a server error.

The output is what the graph's `image` input takes: uint8 RGB, [H, W, 3]. Scaling and normalisation
live inside the graph, so they are not repeated here.

Plain JPEGs (YCbCr or greyscale, no EXIF/XMP block that could carry an orientation, no MPO index)
are decoded by libjpeg-turbo through `simplejpeg`, straight into a numpy array: the same decoder Pillow
calls, with the same (slow, exact) IDCT and upsampling, so the pixels are identical
(tests/core/test_preprocessing.py checks it), without the ~80 µs of Python plugin work Pillow spends per
file, which on a 32×32 CIFAR JPEG is most of the decode. Everything else, and anything the fast path
would not decode exactly as Pillow does (an error, a warning on a corrupt stream, a size the draft
rule maps differently), goes through Pillow as before, so the checks and error codes do not change.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from eluserve.core.errors import (
    ClientError,
    EmptyFile,
    ImageTooLarge,
    InvalidImage,
    ModelFormatError,
    TooManyPixels,
    UnsupportedFormat,
)

logger = logging.getLogger(__name__)

#: File formats the service decodes, with the file name extensions they go by. A short list on
#: purpose: every Pillow plugin is attack surface, and some (EPS) shell out to other programs. Others
#: are answered with `unsupported_format`.
FORMAT_EXTENSIONS: Mapping[str, tuple[str, ...]] = {
    "JPEG": ("jpg", "jpeg"),
    "PNG": ("png",),
    "GIF": ("gif",),
    "WEBP": ("webp",),
    "BMP": ("bmp",),
    "TIFF": ("tif", "tiff"),
    "AVIF": ("avif",),
}
#: The Pillow format names `Image.open` may use.
DECODABLE_FORMATS: tuple[str, ...] = tuple(FORMAT_EXTENSIONS)
#: File name extensions (lower case, no dot) of decodable images: what the folder walks of training
#: data and of `eluserve classify` pick up.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(ext for exts in FORMAT_EXTENSIONS.values() for ext in exts)

#: A JPEG may be decoded at 1/2, 1/4 or 1/8 scale (`Image.draft`) as long as both sides stay at
#: least this many times the resize target: the bicubic antialiased resize then still does the final
#: reduction, so the result stays within a grey level or two of decoding at full size, for a fraction
#: of the time on camera-sized photos.
DRAFT_MARGIN = 2

RESAMPLING: Mapping[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# Magic numbers of common image formats Pillow cannot open at all, so that they are answered with
# "unsupported format" (the client can convert) rather than "invalid image" (the file is broken).
_FOREIGN_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftyphevc", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypmsf1", "HEIF"),
    (0, b"%PDF", "PDF"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)

_HIGH_BIT_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})

#: JPEG colour spaces (as `simplejpeg.decode_jpeg_header` names them) that libjpeg-turbo turns into
#: RGB exactly as Pillow's JPEG plugin + `to_rgb` do. CMYK/YCCK (Pillow inverts Adobe CMYK and
#: converts with its own formula) and Adobe RGB-transform files go through Pillow.
_FAST_JPEG_COLORSPACES = frozenset({"YCbCr", "Gray"})
_JPEG_SOI = b"\xff\xd8\xff"
_SOS, _APP1, _APP2 = 0xDA, 0xE1, 0xE2
#: Markers without a length field (TEM, RSTn) that may sit between segments.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(frozen=True)
class Limits:
    """What one image may cost the service before it is refused.

    The defaults are the documented service defaults; `eluserve.service.config.Settings.limits()` builds the
    configured ones.
    """

    #: Encoded bytes of one image (10 MiB).
    max_image_bytes: int = 10 * 1024 * 1024
    #: Declared width × height of one image (40 megapixels), checked before decoding.
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class PreprocessingRule:
    """The single-crop rule of one model, read from its `preprocessing` metadata."""

    resize_shorter_side: int
    #: (height, width) of the centre crop; equals the graph's input size.
    crop: tuple[int, int]
    interpolation: str = "bicubic"
    #: Informational: normalisation happens inside the graph.
    normalization: str | None = None

    @classmethod
    def from_metadata(cls, value: str | Mapping[str, Any]) -> PreprocessingRule:
        """Parse the `preprocessing` metadata value (a JSON string or an already parsed mapping)."""
        try:
            data = json.loads(value) if isinstance(value, str) else dict(value)
            side = data["resize_shorter_side"]
            crop = data["crop"]
            interpolation = str(data.get("interpolation", "bicubic")).lower()
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelFormatError(
                f"preprocessing metadata {value!r} is not a JSON object with 'resize_shorter_side' and "
                "'crop' (docs/model-format.md); re-export the model"
            ) from exc
        valid_crop = (
            isinstance(crop, list | tuple)
            and len(crop) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in crop)
        )
        if not (isinstance(side, int) and not isinstance(side, bool) and side > 0) or not valid_crop:
            raise ModelFormatError(
                f"preprocessing metadata {value!r}: 'resize_shorter_side' must be a positive integer and "
                "'crop' a list of two positive integers [height, width]"
            )
        if interpolation not in RESAMPLING:
            raise ModelFormatError(
                f"preprocessing interpolation {interpolation!r} is not one of {sorted(RESAMPLING)}"
            )
        normalization = data.get("normalization")
        return cls(
            resize_shorter_side=side,
            crop=(crop[0], crop[1]),
            interpolation=interpolation,
            normalization=None if normalization is None else str(normalization),
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule as the metadata JSON object, for `GET /model`."""
        return {
            "resize_shorter_side": self.resize_shorter_side,
            "crop": list(self.crop),
            "interpolation": self.interpolation,
            "normalization": self.normalization,
        }


def decode_image(data: bytes | bytearray, limits: Limits, *, min_side: int | None = None) -> Image.Image:
    """Decode untrusted bytes into an upright RGB image.

    Applies EXIF orientation, takes the first frame of animated or multi-page files, and converts
    every pixel mode to RGB (alpha composited on white). With `min_side`, a JPEG may be decoded at a
    reduced DCT scale as long as both sides stay at least `min_side` pixels.

    Raises:
        ClientError: `empty_file`, `image_too_large`, `too_many_pixels`, `unsupported_format` or
            `invalid_image`; never anything else, whatever the bytes are.
    """
    decoded = _decode_checked(data, limits, min_side)
    return decoded if isinstance(decoded, Image.Image) else Image.fromarray(decoded)


def _decode_checked(
    data: bytes | bytearray, limits: Limits, min_side: int | None
) -> Image.Image | np.ndarray:
    """`decode_image`'s work and error contract; a plain JPEG comes back as its RGB array."""
    if not data:
        raise EmptyFile("the image file is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise ImageTooLarge(
            f"the image is {len(data)} bytes; the limit is {limits.max_image_bytes} bytes per image"
        )
    try:
        pixels = _decode_plain_jpeg(data, limits, min_side)
        return pixels if pixels is not None else _decode(data, limits, min_side)
    except ClientError:
        raise
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"the image declares too many pixels: {exc}") from exc
    except Exception as exc:  # any decoder failure on untrusted input is the input's fault
        logger.debug("image decoding failed", exc_info=True)
        raise InvalidImage(f"the image could not be decoded ({type(exc).__name__}: {exc})") from exc


def _decode_plain_jpeg(data: bytes | bytearray, limits: Limits, min_side: int | None) -> np.ndarray | None:
    """The RGB pixels of a plain JPEG by libjpeg-turbo alone, or None: then Pillow decodes it.

    None for everything that is not a baseline/progressive 8-bit YCbCr or greyscale JPEG whose pixels
    Pillow would leave as decoded: an APP1 block (EXIF or XMP, which may carry an orientation
    `exif_transpose` applies), an MPO index, another colour space, a size over either pixel limit
    (Pillow's path raises the documented error), and any stream libjpeg warns about or refuses
    (`strict`: Pillow decides what a damaged file is).
    """
    if not data.startswith(_JPEG_SOI) or not _jpeg_without_orientation(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:  # any header libjpeg-turbo refuses is Pillow's to judge
        return None
    bomb_limit = Image.MAX_IMAGE_PIXELS
    pixels = width * height
    if (
        colorspace not in _FAST_JPEG_COLORSPACES
        or pixels <= 0
        or pixels > limits.max_pixels
        or (bomb_limit is not None and pixels > bomb_limit)
    ):
        return None
    # Pillow's `draft` rule: the largest of 1/8, 1/4, 1/2 that keeps both sides ≥ min_side.
    scale = 1
    if min_side is not None:
        fits = min(width // min_side, height // min_side)
        scale = next((s for s in (8, 4, 2) if fits >= s), 1)
    expected = (-(-height // scale), -(-width // scale))
    try:
        decoded = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=expected[0], min_width=expected[1], strict=True
        )
    except Exception:  # corrupt or unsupported (12-bit, arithmetic coding): Pillow decides
        return None
    # libjpeg-turbo may offer scales Pillow does not (3/8, 5/8, ...): only Pillow's own is taken.
    return decoded if decoded.shape[:2] == expected else None


def _jpeg_without_orientation(data: bytes | bytearray) -> bool:
    """True when no segment before the first scan is APP1 (EXIF, XMP) or an APP2 MPO index.

    Pillow reads its `info` (and so the orientation `exif_transpose` applies, from EXIF or from XMP's
    tiff:Orientation) from these segments only; a file whose segments do not parse is left to Pillow.
    """
    offset, end = 2, len(data)
    while offset + 4 <= end:
        if data[offset] != 0xFF:
            return False
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _STANDALONE_MARKERS:
            offset += 2
            continue
        if marker == _SOS:
            return True
        if marker == _APP1 or (marker == _APP2 and data[offset + 4 : offset + 8] == b"MPF\x00"):
            return False
        offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
    return False


def _decode(data: bytes | bytearray, limits: Limits, min_side: int | None) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
    except UnidentifiedImageError:
        raise _unrecognised(data) from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image declares an empty size {width}×{height}")
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"the image declares {width}×{height} = {width * height} pixels; the limit is "
            f"{limits.max_pixels} pixels, downscale it before sending"
        )
    if min_side is not None:
        img.draft(None, (min_side, min_side))
    img.load()
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # a corrupt EXIF block does not make the pixels unusable
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        upright = img
    return to_rgb(upright)


def _unrecognised(data: bytes | bytearray) -> ClientError:
    """Tell a known-but-refused format (415) from bytes that are no image at all (400)."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            name = other.format or "this"
    except Exception:
        name = next((fmt for offset, magic, fmt in _FOREIGN_MAGIC if data[offset:].startswith(magic)), "")
        if not name and data.lstrip()[:256].lower().startswith((b"<svg", b"<?xml")):
            name = "SVG"
    if name:
        return UnsupportedFormat(
            f"{name} images are not supported; send one of {', '.join(DECODABLE_FORMATS)}"
        )
    return InvalidImage(f"the data is not a recognised image; send one of {', '.join(DECODABLE_FORMATS)}")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white, as the contract says."""
    if img.mode == "RGB":
        return img
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        return Image.fromarray(_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    try:
        if "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info:
            if img.mode == "La":  # Pillow converts premultiplied grey to LA only
                img = img.convert("LA")
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError as exc:
        raise UnsupportedFormat(f"images in pixel mode {img.mode} are not supported") from exc


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer and float grey levels to 0..255.

    These modes carry no bit depth, so the value range decides: 16-bit files scale by 1/257, integer
    data already within 0..255 is kept, float data within 0..1 scales by 255, anything else is
    stretched from its minimum to its maximum.
    """
    if mode.startswith("I;16"):
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    array = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(array.min()), float(array.max())
    if mode == "F" and low >= 0.0 and high <= 1.0:
        array = array * 255.0
    elif low >= 0.0 and high <= 255.0:
        pass
    elif mode == "I" and low >= 0.0 and high <= 65535.0:
        array = array / 257.0
    else:
        array = (array - low) * (255.0 / (high - low) if high > low else 0.0)
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def single_crop(img: Image.Image | np.ndarray, rule: PreprocessingRule) -> np.ndarray:
    """Resize the shorter side to `rule.resize_shorter_side`, then centre-crop `rule.crop`.

    The geometry follows torchvision's `Resize(int)` + `CenterCrop` (the longer side is truncated, the
    crop offset rounded, zero padding if the crop is larger than the resized image) so that the
    service sees exactly what the validation transform showed the model.

    `img` may be an RGB uint8 array [H, W, 3] (a JPEG decoded by the fast path): it is only wrapped in
    a Pillow image when it needs resizing.

    Returns:
        uint8 array [crop_height, crop_width, 3], C-contiguous.
    """
    if isinstance(img, Image.Image) and img.mode != "RGB":
        img = to_rgb(img)
    width, height = img.size if isinstance(img, Image.Image) else (img.shape[1], img.shape[0])
    side = rule.resize_shorter_side
    size = (side, int(side * height / width)) if width <= height else (int(side * width / height), side)
    if size != (width, height):
        image = img if isinstance(img, Image.Image) else Image.fromarray(img)
        img = image.resize(size, RESAMPLING[rule.interpolation])
    pixels = np.asarray(img, dtype=np.uint8)
    crop_height, crop_width = rule.crop
    height, width = pixels.shape[:2]
    if crop_height > height or crop_width > width:
        pad_top = max(crop_height - height, 0) // 2
        pad_left = max(crop_width - width, 0) // 2
        pad_bottom = max(crop_height - height, 0) - pad_top
        pad_right = max(crop_width - width, 0) - pad_left
        pixels = np.pad(pixels, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
        height, width = pixels.shape[:2]
    top = round((height - crop_height) / 2.0)
    left = round((width - crop_width) / 2.0)
    return np.ascontiguousarray(pixels[top : top + crop_height, left : left + crop_width])


def load_image(data: bytes | bytearray, rule: PreprocessingRule, limits: Limits) -> np.ndarray:
    """Bytes in, model input out: `decode_image` then `single_crop`.

    `data` may be the buffer a request body was received into: a plain JPEG is decoded from it in
    place; Pillow reads other files through `io.BytesIO`, which shares `bytes` but copies a bytearray.
    """
    return single_crop(_decode_checked(data, limits, rule.resize_shorter_side * DRAFT_MARGIN), rule)
