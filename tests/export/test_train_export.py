"""A tiny training run on real shared images, then the whole export stage, end to end."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from eluserve.cli import main
from eluserve.core.contract import INPUT_NAME, LOGITS_NAME, MetadataKey, read_model_info
from eluserve.export.config import RECIPES
from eluserve.export.exporter import export_and_verify, export_run, round_to_fp16
from eluserve.export.fusion import CONV_ELU, CONV_MAXPOOL_ELU, DOMAIN
from eluserve.export.train import TrainConfig, load_trained, train
from eluserve.export.verify import sample_index


def tiny_config(data: Path, out: Path, **changes: Any) -> TrainConfig:
    """The small net on the 600-image zip: seconds per epoch on two cores."""
    values = {"model": "elufast_small", "batch_size": 64, "val_per_class": 10, **changes}
    return TrainConfig(data=str(data), out=str(out), **values)


@pytest.fixture(scope="module")
def tiny_run(small_cifar_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    summary = train(tiny_config(small_cifar_zip, out, epochs=2))
    assert summary["train_images"] == 500 and summary["val_images"] == 100
    assert summary["skipped_images"] == 1  # the corrupt file is reported and skipped
    return out


def test_training_writes_log_checkpoint_curves(tiny_run: Path) -> None:
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_accuracy"] <= 1 for r in rows)
    assert (tiny_run / "checkpoint.pt").exists() and (tiny_run / "curves.png").stat().st_size > 1000
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["model"] == "elufast_small" and len(config["classes"]) == 10


def test_resume_continues_from_the_checkpoint(tiny_run: Path) -> None:
    """Asking for one more epoch trains exactly one more and appends to the log."""
    _, config, _ = load_trained(tiny_run)
    config.epochs = 3
    train(config)
    rows = (tiny_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_time_budget_settles_the_epoch_count(
    small_cifar_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budgeted run records the epochs it settled on (and no budget), so its config reproduces it.

    The epoch is "measured" at 4 s whatever the machine's speed: 15 s of budget ÷ (1.08 × 4 s) is 3
    epochs, so a busy machine changes how long the test takes, never what it checks."""
    monkeypatch.setattr("eluserve.export.train.time_epoch", lambda *args, **kwargs: 4.0)
    train(tiny_config(small_cifar_zip, tmp_path, time_budget_min=0.25), clock=lambda: 0.0)
    recorded = json.loads((tmp_path / "config.json").read_text())
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert recorded["time_budget_min"] is None
    assert recorded["epochs"] == 3 and len(rows) == 3


def test_packed_run_exports_like_the_original(tiny_run: Path, tmp_path: Path) -> None:
    """`eluserve pack --fp16` keeps exactly the weights fp16 storage would ship, and nothing to resume."""
    tar_path = tmp_path / "run.tar"
    assert main(["pack", str(tiny_run), "--out", str(tar_path), "--fp16"]) == 0
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked" / tiny_run.name
    assert tar_path.stat().st_size < (tiny_run / "checkpoint.pt").stat().st_size / 2
    original, config, _ = load_trained(tiny_run)
    round_to_fp16(original)
    packed, packed_config, summary = load_trained(unpacked)
    assert packed_config == config and summary["val_images"] == 100
    for (name, want), got in zip(original.state_dict().items(), packed.state_dict().values(), strict=True):
        assert torch.equal(want, got), name
    with pytest.raises(ValueError, match="weights only"):
        train(dataclasses.replace(packed_config, out=str(unpacked), epochs=3))


def test_export_and_verify_round_trip(tiny_run: Path, tmp_path: Path) -> None:
    card = export_and_verify(tiny_run, tmp_path, "tiny", sample=100, throughput_seconds=0.1)
    model_path = tmp_path / "model.onnx"
    report = json.loads((tmp_path / "verification.json").read_text())
    assert report["passed"] and report["parity_max_abs_logit_diff"] <= report["parity_tolerance"] <= 2e-4
    assert report["top1_agreement_torch_vs_ort"] == 1.0 and report["fused_vs_plain_identical_predictions"]
    assert report["custom_ops"] == {CONV_ELU: 4, CONV_MAXPOOL_ELU: 3}
    openvino = report["openvino_parity"]
    assert openvino["passed"] and openvino["max_abs_logit_diff"] <= openvino["tolerance"]
    assert "openvino" in (tmp_path / "verification.md").read_text()

    proto = onnx.load(str(model_path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta[MetadataKey.LABELS])[0] == "airplane"
    assert json.loads(meta[MetadataKey.PREPROCESSING])["crop"] == [32, 32]
    assert meta[MetadataKey.CUSTOM_DOMAIN] == DOMAIN
    assert read_model_info(model_path).model_card == json.loads(json.dumps(card))
    assert not any(n.op_type in ("Elu", "Dropout", "BatchNormalization") for n in proto.graph.node)

    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    logits, probs = ort.InferenceSession(str(model_path)).run(None, {INPUT_NAME: images})
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        ReferenceEvaluator(proto).run([LOGITS_NAME], {INPUT_NAME: images})[0], logits, atol=1e-4
    )
    assert card["macs_per_image"] > 0 and (tmp_path / "MODEL_CARD.md").read_text().startswith(
        "# Model card: tiny"
    )
    assert (tmp_path / "confusion.png").exists() and (tmp_path / "curves.png").exists()


def test_what_export_writes_is_what_serving_reads(tiny_run: Path, tmp_path: Path) -> None:
    """The exporter writes its `ModelMetadata` through the contract; serving's reader gives it back."""
    classifier, config, summary = load_trained(tiny_run)
    result = export_run(
        classifier, dataclasses.asdict(config), summary, tiny_run / "checkpoint.pt", tmp_path, "tiny", "3"
    )
    read = read_model_info(result.model_path)
    assert read == dataclasses.replace(result.metadata, opset=read.opset)
    assert read.opset == 18 and read.tag == "tiny:3" and read.custom_domain == DOMAIN
    assert read.val_accuracy == round(summary["val_accuracy_fp32"], 4)
    assert read.preprocessing.crop == (32, 32) and read.labels[0] == "airplane"


def test_cli_lists_models_and_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    assert "elufast" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0


@pytest.mark.parametrize(("size", "sample"), [(5000, 2000), (5000, None), (50, 100), (10, 3)])
def test_verification_sample_spreads_over_the_split(size: int, sample: int | None) -> None:
    # The split is ordered by class: a prefix would score a few classes only.
    labels = np.repeat(np.arange(10), size // 10)
    index = sample_index(size, sample)
    assert len(index) == min(size, sample or size) and len(np.unique(index)) == len(index)
    assert index[0] == 0 and index[-1] == size - 1
    if len(index) >= 10:
        assert set(labels[index]) == set(range(10))


@pytest.mark.parametrize("recipe", [None, "airbench"])
def test_segments_resume_to_the_uninterrupted_run(
    small_cifar_zip: Path, tmp_path: Path, recipe: str | None
) -> None:
    """Three one-epoch segments (stop, resume, resume) train the same weights, bit for bit, and log the
    same epochs as one uninterrupted three-epoch run: momentum, schedule position, every random
    stream (shuffles, crops, flips) and, with the airbench recipe, the lookahead average survive the
    checkpoint."""
    changes = {**RECIPES[recipe], "whiten_bias_epochs": 2} if recipe else {"crop_pad": 2}
    whole = tiny_config(small_cifar_zip, tmp_path / "whole", **{**changes, "epochs": 3, "batch_size": 64})
    whole = dataclasses.replace(whole, model="elubench_small")
    assert train(whole)["finished"]
    pieces = dataclasses.replace(whole, out=str(tmp_path / "pieces"), segment_min=1e-6)
    reached = [train(pieces) for _ in range(3)]
    assert [(r["finished"], r["epoch"]) for r in reached] == [(False, 1), (False, 2), (True, 3)]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt")
    b = torch.load(tmp_path / "pieces" / "checkpoint.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert (
        reached[-1]["val_accuracy_fp32"]
        == json.loads((tmp_path / "whole" / "summary.json").read_text())["val_accuracy_fp32"]
    )

    def losses(run: str) -> list[float]:
        rows = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r)["train_loss"] for r in rows]

    assert losses("pieces") == losses("whole") and len(losses("whole")) == 3


def test_resumable_pack_keeps_what_resuming_needs(tiny_run: Path, tmp_path: Path) -> None:
    tar_path = tmp_path / "run.tar"
    assert main(["pack", str(tiny_run), "--out", str(tar_path), "--resumable"]) == 0
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    packed = torch.load(tmp_path / "unpacked" / tiny_run.name / "checkpoint.pt")
    assert {"model", "optimizer", "epoch", "rng"} <= set(packed)
