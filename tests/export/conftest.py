"""Fixtures for the export-stage tests: small real data from the shared CIFAR-10 JPEG zip."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED_ZIP = REPO.parent / "shared" / "data" / "cifar10-jpeg" / "train.zip"


@pytest.fixture(scope="session")
def cifar_zip() -> Path:
    if not SHARED_ZIP.exists():
        pytest.skip(f"shared CIFAR-10 zip not found at {SHARED_ZIP}")
    return SHARED_ZIP


@pytest.fixture(scope="session")
def small_cifar_zip(cifar_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 600-image ImageFolder zip (60 per class) cut from the shared data, plus one corrupt file."""
    out = tmp_path_factory.mktemp("data") / "small.zip"
    with zipfile.ZipFile(cifar_zip) as src, zipfile.ZipFile(out, "w") as dst:
        names = sorted(n for n in src.namelist() if n.endswith(".jpg"))
        per_class: dict[str, int] = {}
        for name in names:
            cls = name.split("/")[-2]
            if per_class.get(cls, 0) < 60:
                per_class[cls] = per_class.get(cls, 0) + 1
                dst.writestr(name, src.read(name))
        dst.writestr("train/cat/corrupt.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg")
    return out


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
