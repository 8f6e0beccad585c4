"""Datasets for training: an ImageFolder directory, a zip of one, or the CIFAR-10/100 python pickles.

Everything is decoded once into uint8 NHWC arrays at the model's input size. CIFAR-sized data fits in
memory many times over (50 000 × 32 × 32 × 3 = 150 MB), and augmenting whole batches of tensors is far
cheaper on two cores than a per-image loader pipeline. Images of another size go through the same
single-crop rule the service applies, so what the network sees in training is what it sees in serving.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from eluserve.core.errors import ClientError
from eluserve.core.preprocessing import IMAGE_EXTENSIONS, Limits, PreprocessingRule, load_image

log = logging.getLogger(__name__)

#: Suffixes of the image files an ImageFolder (directory or zip) holds: what the service decodes.
IMAGE_SUFFIXES = frozenset(f".{extension}" for extension in IMAGE_EXTENSIONS)


class DatasetError(ValueError):
    """The dataset cannot be used as given (empty, wrong layout, class count mismatch)."""


@dataclass
class ImageDataset:
    """Decoded images with integer labels; `skipped` lists unreadable files and why."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ImageDataset:
        return ImageDataset(self.images[index], self.labels[index], self.classes, self.source)


def load_dataset(path: str | Path, input_size: int = 32, num_classes: int | None = None) -> ImageDataset:
    """Load a dataset from `path`, detecting its kind; check the class count if one is expected."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist")
    if path.is_file() and zipfile.is_zipfile(path):
        dataset = _decode_all(_zip_members(path), input_size, str(path))
    elif path.is_dir() and _find_cifar_pickles(path):
        dataset = _load_cifar_pickles(path)
    elif path.is_dir():
        dataset = _decode_all(_folder_members(path), input_size, str(path))
    else:
        raise DatasetError(
            f"{path} is neither an ImageFolder directory, a zip of one, nor a CIFAR pickle directory"
        )
    if len(dataset) == 0:
        raise DatasetError(f"{path} holds no readable images")
    if num_classes is not None and len(dataset.classes) != num_classes:
        raise DatasetError(
            f"{path} has {len(dataset.classes)} classes ({', '.join(dataset.classes)}), "
            f"the model expects {num_classes}"
        )
    if dataset.skipped:
        log.warning("skipped %d unreadable images in %s:", len(dataset.skipped), path)
        for name, reason in dataset.skipped[:20]:
            log.warning("  %s: %s", name, reason)
    return dataset


def split_train_val(dataset: ImageDataset, val_per_class: int) -> tuple[ImageDataset, ImageDataset]:
    """Deterministic split: the last `val_per_class` images of each class (in file order) validate."""
    val_index: list[np.ndarray] = []
    for label in range(len(dataset.classes)):
        members = np.flatnonzero(dataset.labels == label)
        if len(members) <= val_per_class:
            raise DatasetError(
                f"class {dataset.classes[label]!r} has {len(members)} images, "
                f"too few to hold out {val_per_class} for validation"
            )
        val_index.append(members[-val_per_class:])
    val = np.sort(np.concatenate(val_index))
    train = np.setdiff1d(np.arange(len(dataset)), val)
    return dataset.subset(train), dataset.subset(val)


Member = tuple[str, str, bytes]  # (name, class, encoded bytes)


def _zip_members(path: Path) -> Iterator[Member]:
    with zipfile.ZipFile(path) as archive:
        infos = sorted(
            (i for i in archive.infolist() if not i.is_dir() and _is_image_name(i.filename)),
            key=lambda i: i.filename,
        )
        for info in infos:
            parts = info.filename.split("/")
            if len(parts) < 2:
                continue  # a file at the zip's root has no class folder
            yield info.filename, parts[-2], archive.read(info)


def _folder_members(root: Path) -> Iterator[Member]:
    for file in sorted(p for p in root.rglob("*") if p.is_file() and _is_image_name(p.name)):
        if file.parent == root:
            continue
        yield str(file.relative_to(root)), file.parent.name, file.read_bytes()


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and Path(base).suffix.lower() in IMAGE_SUFFIXES


def _decode_all(members: Iterator[Member], input_size: int, source: str) -> ImageDataset:
    rule = PreprocessingRule(resize_shorter_side=input_size, crop=(input_size, input_size))
    limits = Limits()
    images: list[np.ndarray] = []
    class_names: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name, cls, data in tqdm(members, desc=f"decoding {Path(source).name}", unit="img", leave=False):
        try:
            images.append(load_image(data, rule, limits))
        except ClientError as exc:
            skipped.append((name, exc.message))
            continue
        class_names.append(cls)
    classes = sorted(set(class_names))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for c in class_names], dtype=np.int64)
    array = np.stack(images) if images else np.zeros((0, input_size, input_size, 3), np.uint8)
    return ImageDataset(array, labels, classes, source, skipped)


def _find_cifar_pickles(path: Path) -> list[Path]:
    cifar10 = sorted(path.glob("data_batch_*"))
    return cifar10 if cifar10 else [p for p in [path / "train"] if p.is_file()]


def _load_cifar_pickles(path: Path) -> ImageDataset:
    """The official python versions: cifar-10-batches-py/ (data_batch_*) or cifar-100-python/ (train)."""
    files = _find_cifar_pickles(path)
    data, labels = [], []
    for file in files:
        with file.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data.append(batch[b"data"])
        labels.extend(batch.get(b"labels", batch.get(b"fine_labels", [])))
    meta_file = path / ("batches.meta" if (path / "batches.meta").exists() else "meta")
    with meta_file.open("rb") as handle:
        meta = pickle.load(handle, encoding="bytes")
    names = meta.get(b"label_names", meta.get(b"fine_label_names"))
    classes = [n.decode() for n in names]
    images = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return ImageDataset(images, np.asarray(labels, dtype=np.int64), classes, str(path))


def encode_jpeg(image: np.ndarray, quality: int = 75) -> bytes:
    """JPEG bytes of a uint8 HWC image (used to build test folders and zips)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
