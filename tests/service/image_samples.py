"""Image bytes for the service tests, generated with Pillow or read from the shared CIFAR zip."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    """The image saved in `fmt` (JPEG, PNG, ...) as bytes."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB image with structure at every scale (gradients plus seeded noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [
            255 * x / max(width - 1, 1),
            255 * y / max(height - 1, 1),
            127 + 100 * np.sin(x / 7.0 + seed) * np.cos(y / 5.0),
        ],
        axis=-1,
    )
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def solid(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.new("RGB", size, color)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, syntactically valid PNG whose header declares width × height RGB pixels.

    Its compressed data covers one row only: a decoder that trusts the header would allocate the full
    size before noticing. This is the shape of a decompression bomb without the bomb.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * 3 * min(width, 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(row))
        + _png_chunk(b"IEND", b"")
    )


def cifar_samples(zip_path: Path, per_class: int = 1) -> list[tuple[str, bytes]]:
    """(class name, JPEG bytes) for the first `per_class` images of every class in the CIFAR zip."""
    samples: list[tuple[str, bytes]] = []
    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(name for name in archive.namelist() if name.endswith(".jpg"))
        by_class: dict[str, list[str]] = {}
        for name in names:
            by_class.setdefault(name.split("/")[1], []).append(name)
        for label, files in sorted(by_class.items()):
            samples.extend((label, archive.read(name)) for name in files[:per_class])
    return samples
