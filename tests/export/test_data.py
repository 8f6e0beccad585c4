"""Dataset loading: zip, folder, CIFAR pickles, corrupt files, the deterministic split."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from eluserve.export.data import DatasetError, encode_jpeg, load_dataset, split_train_val


def test_zip_with_a_corrupt_file_is_loaded_and_the_file_reported(small_cifar_zip: Path) -> None:
    dataset = load_dataset(small_cifar_zip, num_classes=10)
    assert len(dataset) == 600
    assert dataset.images.shape == (600, 32, 32, 3) and dataset.images.dtype == np.uint8
    assert dataset.classes[0] == "airplane" and dataset.classes[-1] == "truck"
    assert [name for name, _ in dataset.skipped] == ["train/cat/corrupt.jpg"]
    assert np.bincount(dataset.labels).tolist() == [60] * 10


def test_split_holds_out_the_last_images_of_each_class(small_cifar_zip: Path) -> None:
    dataset = load_dataset(small_cifar_zip)
    train, val = split_train_val(dataset, val_per_class=10)
    assert len(train) == 500 and len(val) == 100
    assert np.bincount(val.labels).tolist() == [10] * 10
    # the last 10 of class 0 in file order are the validation images of class 0
    assert np.array_equal(val.images[:10], dataset.images[50:60])
    again_train, again_val = split_train_val(load_dataset(small_cifar_zip), val_per_class=10)
    assert np.array_equal(val.images, again_val.images) and np.array_equal(train.labels, again_train.labels)


def test_folder_layout_and_resizing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.jpg").write_bytes(
                encode_jpeg(rng.integers(0, 255, (48, 64, 3), np.uint8))
            )
    (tmp_path / "dogs" / ".hidden.jpg").write_bytes(b"ignored")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = load_dataset(tmp_path, input_size=32)
    assert dataset.classes == ["cats", "dogs"]
    assert dataset.images.shape == (6, 32, 32, 3)


def test_class_count_mismatch_is_a_clear_error(small_cifar_zip: Path) -> None:
    with pytest.raises(DatasetError, match=r"has 10 classes .* the model expects 100"):
        load_dataset(small_cifar_zip, num_classes=100)


def test_empty_dataset_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("train/cat/broken.jpg", b"nope")
    with pytest.raises(DatasetError, match="no readable images"):
        load_dataset(empty)


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_cifar10_python_pickles(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(1, 3):
        batch = {b"data": rng.integers(0, 255, (5, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 1, 0]}
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b", b"c"]}))
    dataset = load_dataset(tmp_path)
    assert dataset.classes == ["a", "b", "c"]
    assert dataset.images.shape == (10, 32, 32, 3)
    first = pickle.loads((tmp_path / "data_batch_1").read_bytes())[b"data"][0]
    assert np.array_equal(dataset.images[0], first.reshape(3, 32, 32).transpose(1, 2, 0))
