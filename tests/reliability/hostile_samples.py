"""Hostile image bytes: bombs that declare huge sizes, polyglots, cut and corrupted files, odd pixel modes.

Shared by the HTTP suite (`test_hostile_inputs.py`), the hypothesis fuzz tests and the atheris harness
(whose seed corpus is `seeds()`), so all three attack the service with the same shapes. Everything is
generated with Pillow and a few header patches; nothing is read from disk.

A bomb here is the header of one: a few hundred bytes whose declared width × height is enormous. A
decoder that trusted the header would allocate gigabytes before noticing that the data is missing.
"""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
from PIL import Image

from tests.service.image_samples import encode, gradient, png_declaring

#: Appended to (or embedded in) uploads so tests can prove the server never logs what clients send.
CANARY = b"ELUSERVE-CANARY-7f3c9a1e"


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 header is patched to declare width × height."""
    data = bytearray(encode(gradient(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    # SOF0: marker, length (2), precision (1), height (2), width (2).
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    """A small GIF whose logical screen declares width × height (its one frame stays 8×8)."""
    data = bytearray(encode(gradient(8, 8).convert("P"), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP whose canvas declares width × height around an 8×8 lossless image."""
    image_chunk = encode(gradient(8, 8), "WEBP", lossless=True)[12:]
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + canvas
    body = b"WEBP" + vp8x + image_chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bmp_declaring(width: int, height: int) -> bytes:
    """An 8×8 BMP whose info header declares width × height."""
    data = bytearray(encode(gradient(8, 8), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def tiff_declaring(width: int, height: int) -> bytes:
    """An 8×8 little-endian TIFF whose ImageWidth and ImageLength tags declare width × height."""
    data = bytearray(encode(gradient(8, 8), "TIFF"))
    ifd = struct.unpack("<I", data[4:8])[0]
    (entries,) = struct.unpack("<H", data[ifd : ifd + 2])
    for index in range(entries):
        entry = ifd + 2 + 12 * index
        (tag,) = struct.unpack("<H", data[entry : entry + 2])
        if tag in (256, 257):
            # Rewrite the entry as one LONG, whatever type Pillow wrote it with.
            data[entry + 2 : entry + 12] = struct.pack("<HII", 4, 1, width if tag == 256 else height)
    return bytes(data)


def bombs() -> dict[str, bytes]:
    """name → bytes declaring an enormous size; every one must be refused with `too_many_pixels`."""
    return {
        "png-100000x100000": png_declaring(100_000, 100_000),
        "jpeg-65500x65500": jpeg_declaring(65_500, 65_500),
        "gif-screen-65535x65535": gif_declaring(65_535, 65_535),
        "webp-canvas-65535x65535": webp_declaring(65_535, 65_535),
        "bmp-100000x100000": bmp_declaring(100_000, 100_000),
        "tiff-100000x100000": tiff_declaring(100_000, 100_000),
        # Just over 40 megapixels declared, far under Pillow's own bomb threshold: our limit decides.
        "png-6325x6325": png_declaring(6325, 6325),
    }


def truncated(data: bytes, keep: float) -> bytes:
    """The first `keep` share of `data` (at least one byte)."""
    return data[: max(1, int(len(data) * keep))]


def corrupted(data: bytes, seed: int) -> bytes:
    """`data` with a run of bytes past the header overwritten with seeded noise."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    start = len(out) // 3
    out[start : start + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    return bytes(out)


def zip_archive() -> bytes:
    """A small ZIP holding a text file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", b"polyglot payload " + CANARY)
    return buffer.getvalue()


def gif_js_polyglot() -> bytes:
    """A GIF that is also JavaScript: `GIF89a/*...*/=1;` — the screen width bytes open a comment.

    The logical screen becomes 10799 pixels wide (the bytes `/*`), the one frame stays 8×8, and the
    script tail follows the GIF trailer. Browsers that sniff it as script run it; decoders see a GIF.
    """
    data = bytearray(encode(gradient(8, 8).convert("P"), "GIF"))
    data[6:8] = b"/*"
    return bytes(data) + b"*/=1;alert(document.domain);//" + CANARY


def polyglots() -> dict[str, tuple[bytes, bytes]]:
    """name → (a valid image, the same image with something else glued on).

    A decoder reads the image and ignores the rest, so both must be classified alike.
    """
    jpeg = encode(gradient(48, 40, seed=5), "JPEG")
    png = encode(gradient(30, 30, seed=6), "PNG")
    gif = gif_js_polyglot()
    gif_alone = gif[: gif.index(b"*/=1;")]
    return {
        "jpeg+zip": (jpeg, jpeg + zip_archive()),
        "jpeg+html": (jpeg, jpeg + b"<html><script>alert(1)</script>" + CANARY + b"</html>"),
        "png+php": (png, png + b"<?php system($_GET['c']); ?>" + CANARY),
        "gif+js": (gif_alone, gif),
    }


def animated(fmt: str) -> bytes:
    """A three-frame animation (GIF or WEBP) of different images."""
    frames = [gradient(24, 24, seed=seed) for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def odd_modes() -> dict[str, bytes]:
    """Valid images in the pixel modes and formats a camera, a scanner or an editor may produce."""
    base = gradient(40, 30, seed=7)
    grey16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    return {
        "png-16bit-grey": encode(Image.fromarray(grey16), "PNG"),
        "tiff-16bit-grey": encode(Image.fromarray(grey16), "TIFF"),
        "png-palette": encode(base.convert("P"), "PNG"),
        "png-palette-transparency": encode(base.convert("P"), "PNG", transparency=0),
        "jpeg-cmyk": encode(base.convert("CMYK"), "JPEG"),
        "png-rgba": encode(rgba, "PNG"),
        "webp-rgba": encode(rgba, "WEBP"),
        "png-grey-alpha": encode(base.convert("LA"), "PNG"),
        "png-1bit": encode(base.convert("1"), "PNG"),
        "tiff-float": encode(Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255.0), "TIFF"),
        "bmp": encode(base, "BMP"),
        "avif": encode(base, "AVIF"),
        "png-1x1": encode(gradient(1, 1), "PNG"),
        "jpeg-1x1": encode(gradient(1, 1), "JPEG"),
        "gif-1x1": encode(gradient(1, 1).convert("P"), "GIF"),
        "png-1x1000": encode(gradient(1, 1000), "PNG"),
        "gif-animated": animated("GIF"),
        "webp-animated": animated("WEBP"),
    }


def exif_rotated_jpeg() -> tuple[bytes, Image.Image]:
    """A 40×20 JPEG tagged EXIF orientation 6 (camera held upright), and its pixels turned upright.

    The second item is what the service must classify: the stored pixels rotated 90° clockwise.
    """
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(gradient(40, 20, seed=8), "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as stored:
        upright = stored.transpose(Image.Transpose.ROTATE_270)
    return data, upright


def seeds() -> dict[str, bytes]:
    """Every sample above plus plain images of each decodable format: the fuzzers' starting points."""
    plain = {
        f"plain-{fmt.lower()}": encode(gradient(24, 20, seed=3), fmt)
        for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "AVIF")
    }
    glued = {name: data for name, (_, data) in polyglots().items()}
    return {**plain, **bombs(), **glued, **odd_modes(), "exif-jpeg": exif_rotated_jpeg()[0]}
