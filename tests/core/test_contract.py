"""The model contract: what `ModelMetadata.to_metadata_props` writes, `read_model_info` reads back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest

from eluserve.core.contract import (
    OUTPUTS_DESCRIPTION,
    REQUIRED_METADATA,
    MetadataKey,
    ModelMetadata,
    parity_tolerance,
    read_model_info,
)
from eluserve.core.errors import ModelFormatError
from eluserve.core.preprocessing import PreprocessingRule
from tests.conftest import CIFAR10_LABELS

EVERY_FIELD = ModelMetadata(
    name="roundtrip-cifar10",
    version="7",
    labels=CIFAR10_LABELS,
    input_size=(32, 32),
    preprocessing=PreprocessingRule(36, (32, 32), "bilinear", "gcn_zca"),
    path="",
    val_accuracy=0.9054,
    architecture="elufast",
    activation="elu",
    dataset="train.zip (train minus the last 500 images per class)",
    custom_domain="ai.eluserve",
    checkpoint_sha256="ab" * 32,
    exported_at="2026-11-29T23:50:00+00:00",
    model_card={"name": "roundtrip-cifar10", "validation": {"accuracy": 0.9054}},
)
REQUIRED_ONLY = ModelMetadata(
    name="bare",
    version="1",
    labels=("a", "b", "c", "d", "e", "f", "g", "h", "i", "j"),
    input_size=(32, 32),
    preprocessing=PreprocessingRule(32, (32, 32)),
    path="",
)


def rewrite_metadata(source: Path, target: Path, props: dict[str, str]) -> Path:
    """`source` with its metadata_props replaced by `props`, saved as `target`."""
    model = onnx.load(str(source))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize("written", [EVERY_FIELD, REQUIRED_ONLY], ids=["every-field", "required-only"])
def test_what_is_written_is_what_is_read(
    written: ModelMetadata, tiny_model_path: Path, tmp_path: Path
) -> None:
    path = rewrite_metadata(tiny_model_path, tmp_path / "model.onnx", written.to_metadata_props())
    read = read_model_info(path)
    # The file adds where it lies and the opset its graph imports; the tiny graph's custom domain is
    # found from its opset imports when the metadata does not name it.
    assert read == dataclasses.replace(
        written, path=str(path), opset=17, custom_domain=written.custom_domain or "ai.eluserve"
    )


def test_every_metadata_key_is_written_when_every_field_is_set() -> None:
    props = EVERY_FIELD.to_metadata_props()
    keys = {value for name, value in vars(MetadataKey).items() if name.isupper()}
    assert set(props) == keys
    assert props[MetadataKey.OUTPUTS] == OUTPUTS_DESCRIPTION
    assert set(REQUIRED_ONLY.to_metadata_props()) >= set(REQUIRED_METADATA)


def test_accuracy_round_trips_exactly() -> None:
    """The shortest repr is written, so a float reads back bit for bit (no 4-digit rounding here)."""
    written = dataclasses.replace(REQUIRED_ONLY, val_accuracy=0.1 + 0.2)
    assert float(written.to_metadata_props()[MetadataKey.VAL_ACCURACY]) == 0.1 + 0.2


def test_missing_required_key_names_it(tiny_model_path: Path, tmp_path: Path) -> None:
    props = REQUIRED_ONLY.to_metadata_props()
    del props[MetadataKey.LABELS]
    path = rewrite_metadata(tiny_model_path, tmp_path / "model.onnx", props)
    with pytest.raises(ModelFormatError, match="labels"):
        read_model_info(path)


def test_parity_tolerance_grows_with_the_logit_scale() -> None:
    assert parity_tolerance(0.0) == pytest.approx(1e-4)
    assert parity_tolerance(17.0) == pytest.approx(1e-4 + 1.7e-4)
