"""Fixtures for the export-stage tests: small real data from the shared CIFAR-10 JPEG zip."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest


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
