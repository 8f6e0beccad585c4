"""`eluserve validate-precision`'s two halves on the real default model: measuring bf16 against fp32
on CIFAR images, and recording it in the card (JSON, Markdown, ONNX metadata) that serving reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from eluserve.core.contract import read_model_info
from eluserve.core.engines import BF16, OPENVINO, cpu_supports_bf16, record_allows
from eluserve.core.errors import ConfigError
from eluserve.core.paths import default_model_file
from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.session import ModelSession
from eluserve.export.data import ImageDataset
from eluserve.export.model_card import record_precision
from eluserve.export.verify import measure_precision
from tests.service.image_samples import cifar_samples

DEFAULT_MODEL_FILE = default_model_file()

pytestmark = pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bf16")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DEFAULT_MODEL_FILE.is_file():
        pytest.skip("the default model is not exported")
    folder = tmp_path_factory.mktemp("card") / "elufast-cifar10"
    shutil.copytree(DEFAULT_MODEL_FILE.parent, folder)
    card = json.loads((folder / "model_card.json").read_text())
    card.pop("precision", None)  # measure from scratch, as on a freshly exported model
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


def test_bf16_is_measured_recorded_and_then_allowed(model_dir: Path, cifar_zip: Path) -> None:
    info = read_model_info(model_dir)
    samples = cifar_samples(cifar_zip, per_class=20)
    images = np.stack([load_image(data, info.preprocessing, Limits()) for _, data in samples])
    labels = np.array([info.labels.index(label) for label, _ in samples])
    val = ImageDataset(images, labels, list(info.labels), str(cifar_zip))
    graph_before = onnx.load(str(model_dir / "model.onnx")).graph

    record = measure_precision(model_dir / "model.onnx", val, BF16)

    assert record["images"] == 200 and 0.0 <= record["top1_agreement"] <= 1.0
    assert record["fp32_accuracy"] > 0.5, "the fp32 reference must classify CIFAR, not noise"
    assert record["passed"] == record_allows(record)
    record |= {"command": "eluserve validate-precision … (test)", "measured_at": "2026-01-01T00:00:00Z"}
    record_precision(model_dir, BF16, record)

    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["precision"]["bf16"]["top1_agreement"] == record["top1_agreement"]
    assert "## Lower precision" in (model_dir / "MODEL_CARD.md").read_text()
    assert onnx.load(str(model_dir / "model.onnx")).graph == graph_before  # metadata only
    assert read_model_info(model_dir).model_card["precision"]["bf16"]["passed"] == record["passed"]
    if record["passed"]:
        session = ModelSession.from_path(model_dir, engine="auto", precision=BF16, intra_op_threads=1)
        assert (session.engine, session.precision) == (OPENVINO, BF16)
    else:
        with pytest.raises(ConfigError, match="bf16 validation record fails"):
            ModelSession.from_path(model_dir, engine="auto", precision=BF16)


def test_only_bf16_can_be_validated(model_dir: Path) -> None:
    empty = ImageDataset(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), [], "none")
    with pytest.raises(ValueError, match="only bf16"):
        measure_precision(model_dir / "model.onnx", empty, "fp16")
