"""Real folder trees for the classify tests: what a user's photo folder throws at the command.

`build_tree` writes nested folders of good images (CIFAR JPEGs in class folders, generated PNG/WebP,
an upper-case extension), every kind of bad file, hidden entries, a non-image, and two symlink loops, and
returns what each classified file should come out as.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from eluserve.core.preprocessing import Limits
from tests.service.image_samples import cifar_samples, encode, gradient, png_declaring


def build_tree(root: Path, cifar_zip: Path, per_class: int = 2) -> dict[str, str | None]:
    """Write the tree under `root`; returns {path relative to root: expected error code or None}."""
    expected: dict[str, str | None] = {}

    def put(relative: str, data: bytes, code: str | None = None) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[relative] = code

    counts: dict[str, int] = {}
    for label, data in cifar_samples(cifar_zip, per_class=per_class):
        counts[label] = counts.get(label, 0) + 1
        put(f"cifar/{label}/{counts[label]:04d}.jpg", data)
    put("nested/deeper/deepest/gradient.png", encode(gradient(48, 64, seed=2), "PNG"))
    put("nested/photo.JPG", encode(gradient(200, 150, seed=1), "JPEG", quality=90))
    put("nested/rgba.png", encode(Image.new("RGBA", (40, 40), (0, 128, 255, 100)), "PNG"))
    put("nested/pic.webp", encode(gradient(33, 70, seed=4), "WEBP"))

    jpeg = encode(gradient(64, 64, seed=5), "JPEG", quality=90)
    put("bad/corrupt.jpg", jpeg[: len(jpeg) // 2], "invalid_image")
    put("bad/not-an-image.jpg", b"this is a text file with an image's name\n", "invalid_image")
    put("bad/empty.png", b"", "empty_file")
    put("bad/bomb.png", png_declaring(8_000, 8_000), "too_many_pixels")
    put("bad/huge.jpg", b"\xff\xd8\xff" + bytes(Limits().max_image_bytes), "image_too_large")
    (root / "bad" / "broken-link.jpg").symlink_to(root / "bad" / "missing.jpg")
    expected["bad/broken-link.jpg"] = "unreadable_file"

    # Never classified: not an image extension, hidden, or reached only through a symlink loop.
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.jpg").write_bytes(jpeg)
    (root / "nested" / ".dotfile.jpg").write_bytes(jpeg)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "nested" / "deeper" / "back").symlink_to("..", target_is_directory=True)
    return expected


def relative_rows(rows: list[dict[str, Any]], root: Path) -> dict[str, dict[str, Any]]:
    """Output rows keyed by their path relative to `root`; fails on a file classified twice."""
    keyed = {os.path.relpath(row["path"], root): row for row in rows}
    assert len(keyed) == len(rows), "a file was classified twice"
    return keyed


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
