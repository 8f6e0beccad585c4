"""Request payloads for the load tests: real CIFAR-10 JPEGs, generated photo-sized images, bad uploads.

Everything is built once per process and kept as bytes, so that generating load costs the client as
little CPU as possible: on a 2-core machine the client shares the cores with the server it measures.
Multipart bodies are encoded here by hand for the same reason (no per-request form encoder).
"""

from __future__ import annotations

import io
import secrets
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from eluserve.core.errors import ClientError, EmptyFile, InvalidImage, UnsupportedFormat
from load_tests import REPO_ROOT

#: The shared CIFAR-10 JPEG training zip (an ImageFolder in a zip: train/<class>/<n>.jpg).
CIFAR_ZIP = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "train.zip"
#: Sizes of the generated photo-like images: a web photo and a full-HD camera frame.
PHOTO_SIZES: tuple[tuple[int, int], ...] = ((640, 480), (1920, 1080))
#: One boundary per process; 32 random hex digits do not occur inside image bytes in practice.
BOUNDARY = "eluserve-load-" + secrets.token_hex(16)
CONTENT_TYPES: Mapping[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png"}


@dataclass(frozen=True)
class Attachment:
    """One file part: what a client would attach."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class BadUpload:
    """An upload the service must refuse, and the error it must answer with."""

    upload: Attachment
    code: str
    status: int

    @classmethod
    def of(cls, upload: Attachment, error: Callable[[str], ClientError]) -> BadUpload:
        """Expect the code and status of the `eluserve.core.errors` type `error` (one source of truth)."""
        expected = error("")
        return cls(upload, expected.code, expected.status)


def cifar_jpegs(count: int, zip_path: Path = CIFAR_ZIP) -> list[Attachment]:
    """`count` JPEGs spread evenly over the whole zip, so every class is present.

    Raises:
        FileNotFoundError: where the shared zip is absent, naming where it was looked for.
    """
    if not zip_path.is_file():
        raise FileNotFoundError(
            f"{zip_path} is missing: the load tests send the shared CIFAR-10 JPEGs; put the zip there "
            "or pass its path"
        )
    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(name for name in archive.namelist() if name.lower().endswith((".jpg", ".jpeg")))
        if not names:
            raise FileNotFoundError(f"{zip_path} holds no .jpg files")
        step = max(1, len(names) // count)
        chosen = names[::step][:count]
        return [Attachment(Path(name).name, "image/jpeg", archive.read(name)) for name in chosen]


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image that encodes like a photo: smooth regions, edges, gradients and sensor-like noise.

    Random pixels would be incompressible and a flat colour would compress to nothing; either would
    make the upload size and the decode time unlike a real camera picture's.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (max(2, height // 60), max(2, width // 60), 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    gradient = (xs / width * 60.0 + ys / height * 40.0)[..., np.newaxis]
    blocks = ((xs // max(1, width // 7) + ys // max(1, height // 5)) % 2 * 30.0)[..., np.newaxis]
    noise = rng.normal(0.0, 6.0, (height, width, 3))
    pixels = np.clip(smooth * 0.7 + gradient + blocks + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode(img: Image.Image, fmt: str) -> bytes:
    """`img` as a JPEG (quality 90, as cameras and browsers save) or a PNG."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        img.save(buffer, "JPEG", quality=90)
    else:
        img.save(buffer, fmt)
    return buffer.getvalue()


def photo_uploads(sizes: Sequence[tuple[int, int]] = PHOTO_SIZES) -> list[Attachment]:
    """One JPEG and one PNG per size, generated (a second or so for full HD)."""
    uploads = []
    for index, (width, height) in enumerate(sizes):
        img = photo_like(width, height, seed=index)
        for fmt in ("JPEG", "PNG"):
            extension = "jpg" if fmt == "JPEG" else "png"
            uploads.append(
                Attachment(f"photo-{width}x{height}.{extension}", CONTENT_TYPES[fmt], encode(img, fmt))
            )
    return uploads


def bad_uploads(valid_jpeg: bytes) -> list[BadUpload]:
    """Uploads that a client gets wrong, each with the error code and status the contract promises."""
    return [
        BadUpload.of(Attachment("empty.jpg", "image/jpeg", b""), EmptyFile),
        BadUpload.of(Attachment("notes.txt", "text/plain", b"this is not an image\n" * 20), InvalidImage),
        BadUpload.of(
            Attachment("truncated.jpg", "image/jpeg", valid_jpeg[: len(valid_jpeg) // 2]), InvalidImage
        ),
        BadUpload.of(
            Attachment("scan.pdf", "application/pdf", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"),
            UnsupportedFormat,
        ),
    ]


def multipart(
    field: str, uploads: Sequence[Attachment], fields: Mapping[str, str] | None = None
) -> tuple[bytes, str]:
    """A multipart/form-data body with every upload in the file field `field`, plus text `fields`.

    Returns:
        (body, the Content-Type header value with its boundary)
    """
    parts: list[bytes] = []
    for name, value in (fields or {}).items():
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for upload in uploads:
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{upload.filename}"\r\nContent-Type: {upload.content_type}\r\n\r\n'
        )
        parts.append(head.encode() + upload.data + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={BOUNDARY}"
