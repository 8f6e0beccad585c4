"""Engines behind one interface: ORT and OpenVINO on the tiny and the default model, parity, `auto`,
and the refusal of a lower precision that the model card does not allow."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from eluserve.core.contract import parity_tolerance, read_model_info
from eluserve.core.engines import (
    AUTO,
    AUTO_MARGIN,
    BF16,
    FP32,
    ONNXRUNTIME,
    OPENVINO,
    OpenVinoEngine,
    OrtEngine,
    check_parity,
    cpu_supports_bf16,
    measure_parallel,
    require_precision,
    synthetic_crops,
)
from eluserve.core.errors import ConfigError
from eluserve.core.paths import default_model_file
from eluserve.core.session import CPU, ModelSession
from tests.conftest import build_tiny_model

DEFAULT_MODEL_FILE = default_model_file()


@pytest.fixture(scope="module", params=["tiny", "default"])
def model_file(request: pytest.FixtureRequest, tiny_model_path: Path) -> Path:
    if request.param == "default":
        if not DEFAULT_MODEL_FILE.is_file():
            pytest.skip("the default model is not exported")
        return DEFAULT_MODEL_FILE
    return tiny_model_path


def test_openvino_computes_what_onnxruntime_computes(model_file: Path) -> None:
    crops = np.random.default_rng(11).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    ort_session = ModelSession.from_path(model_file, engine=ONNXRUNTIME, intra_op_threads=1)
    ov_session = ModelSession.from_path(model_file, engine=OPENVINO, intra_op_threads=1)

    assert (ort_session.engine, ort_session.provider, ort_session.precision) == (ONNXRUNTIME, CPU, FP32)
    assert (ov_session.engine, ov_session.provider, ov_session.precision) == (OPENVINO, "CPU", FP32)
    logits_ort = ort_session.loaded_engine.run(crops, "logits")
    logits_ov = ov_session.loaded_engine.run(crops, "logits")
    assert np.abs(logits_ov - logits_ort).max() <= parity_tolerance(float(np.abs(logits_ort).max()))
    ov_rows, ort_rows = ov_session.classify(list(crops), top_k=3), ort_session.classify(list(crops), top_k=3)
    assert [row["label"] for row in ov_rows] == [row["label"] for row in ort_rows]
    np.testing.assert_allclose(ov_session.predict(crops), ort_session.predict(crops), rtol=1e-4, atol=1e-6)
    parity = ov_session.selection.parity[f"{OPENVINO}/CPU/{FP32}"]
    assert parity.passed and parity.max_abs_logit_diff <= parity.tolerance


def test_auto_times_the_engines_that_pass_parity_and_reports_its_choice(model_file: Path) -> None:
    session = ModelSession.from_path(model_file, engine=AUTO, intra_op_threads=1)

    measured = session.selection.images_per_second
    assert set(measured) == {f"{ONNXRUNTIME}/{CPU}/{FP32}", f"{OPENVINO}/CPU/{FP32}"}
    assert all(value > 0 for value in measured.values())
    # ONNX Runtime, the reference, serves unless the fastest is AUTO_MARGIN faster.
    reference = f"{ONNXRUNTIME}/{CPU}/{FP32}"
    fastest = max(measured, key=measured.get)
    expected = fastest if measured[fastest] >= (1 + AUTO_MARGIN) * measured[reference] else reference
    assert f"{session.engine}/{session.provider}/{session.precision}" == expected
    document = session.info.to_dict()
    assert (document["engine"], document["execution_provider"], document["precision"]) == (
        session.engine,
        session.provider,
        FP32,
    )
    probs = session.predict(synthetic_crops(32, 32, count=4))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


class _Shifted:
    """A working engine whose logits are off by more than the tolerance: what parity must catch."""

    name = OPENVINO
    device = "CPU"
    precision = FP32

    def __init__(self, inner: OrtEngine, shift: float) -> None:
        self.inner = inner
        self.shift = shift

    def run(self, batch: np.ndarray, output: str = "probabilities") -> np.ndarray:
        return self.inner.run(batch, output) + (self.shift if output == "logits" else 0.0)


def test_openvino_leaves_thread_placement_to_the_os(tiny_model_path: Path) -> None:
    """Pinned threads of several workers land on the same cores (half the throughput on 2 cores)."""
    engine = OpenVinoEngine.create(tiny_model_path, 1)
    assert engine._compiled.get_property("ENABLE_CPU_PINNING") is False


def test_parity_refuses_an_engine_whose_logits_differ(tiny_model_path: Path) -> None:
    reference = OrtEngine.create(tiny_model_path, [CPU], 1)
    crops = synthetic_crops(32, 32)
    assert check_parity(OpenVinoEngine.create(tiny_model_path, 1), reference, crops).passed
    failing = check_parity(_Shifted(reference, 1e-2), reference, crops)
    assert not failing.passed and failing.max_abs_logit_diff == pytest.approx(1e-2, rel=1e-3)


def test_synthetic_crops_are_deterministic() -> None:
    first, second = synthetic_crops(32, 32, seed=0), synthetic_crops(32, 32, seed=0)
    assert first.dtype == np.uint8 and first.shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(first, second)


def _with_card(path: Path, card: dict) -> Path:
    return build_tiny_model(path, metadata_overrides={"model_card": json.dumps(card)})


def test_a_lower_precision_without_a_record_is_refused(tiny_model_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no bf16 validation record.*eluserve validate-precision"):
        ModelSession.from_path(tiny_model_path, engine=AUTO, precision=BF16)
    with pytest.raises(ConfigError, match="not one of"):
        ModelSession.from_path(tiny_model_path, precision="int4")
    with pytest.raises(ConfigError, match="engine 'tensorrt' is not one of"):
        ModelSession.from_path(tiny_model_path, engine="tensorrt")


def test_a_failing_record_is_refused_whatever_its_passed_flag_says(tmp_path: Path) -> None:
    record = {"top1_agreement": 0.62, "accuracy": 0.70, "fp32_accuracy": 0.88, "passed": True}
    model = _with_card(tmp_path / "model.onnx", {"name": "tiny", "precision": {"bf16": record}})
    with pytest.raises(ConfigError, match="bf16 validation record fails"):
        require_precision(read_model_info(model), BF16)
    drop = {"top1_agreement": 0.999, "accuracy": 0.895, "fp32_accuracy": 0.9, "passed": True}
    model = _with_card(tmp_path / "drop.onnx", {"name": "tiny", "precision": {"bf16": drop}})
    with pytest.raises(ConfigError, match="fails"):
        require_precision(read_model_info(model), BF16)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bf16")
def test_a_passing_record_lets_bf16_serve_on_openvino(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = {"top1_agreement": 1.0, "accuracy": 0.9, "fp32_accuracy": 0.9, "passed": True}
    model = _with_card(tmp_path / "model.onnx", {"name": "tiny", "precision": {"bf16": record}})
    with caplog.at_level(logging.INFO):
        session = ModelSession.from_path(model, engine=AUTO, precision=BF16, intra_op_threads=1)
    assert (session.engine, session.precision) == (OPENVINO, BF16)
    assert session.info.to_dict()["precision"] == BF16
    with pytest.raises(ConfigError, match="onnxruntime serves fp32"):
        ModelSession.from_path(model, engine=ONNXRUNTIME, precision=BF16)


def test_processes_that_agree_make_one_auto_choice(tiny_model_path: Path, tmp_path: Path) -> None:
    # Records outlive the test in the temporary folder, and the tiny model's bytes are the same in every
    # session: a group name of its own, so that the first session measures.
    group = f"test-{uuid.uuid4().hex}"
    first = ModelSession.from_path(tiny_model_path, engine=AUTO, intra_op_threads=1, agree_with=group)
    second = ModelSession.from_path(tiny_model_path, engine=AUTO, intra_op_threads=1, agree_with=group)
    alone = ModelSession.from_path(tiny_model_path, engine=AUTO, intra_op_threads=1, agree_with=f"{group}-b")
    # The Ray runner's actors each load a private copy of the model: the same model, by content.
    copy = tmp_path / "copy" / tiny_model_path.name
    copy.parent.mkdir()
    shutil.copyfile(tiny_model_path, copy)
    copied = ModelSession.from_path(copy, engine=AUTO, intra_op_threads=1, agree_with=group)

    assert len(first.selection.images_per_second) == 2  # measured
    assert second.selection.images_per_second == {}  # took the first one's answer
    assert (second.engine, second.provider) == (first.engine, first.provider)
    assert copied.selection.images_per_second == {}
    assert copied.engine == first.engine
    assert len(alone.selection.images_per_second) == 2  # another group measures for itself


def test_parallel_measurement_runs_every_session(tiny_model_path: Path) -> None:
    class Counting:
        def __init__(self) -> None:
            self.engine = OrtEngine.create(tiny_model_path, [CPU], 1)
            self.calls = 0

        def run(self, batch: np.ndarray) -> np.ndarray:
            self.calls += 1
            return self.engine.run(batch)

    sessions = [Counting(), Counting()]
    batch = synthetic_crops(32, 32, count=4)
    assert measure_parallel(sessions, batch, seconds=0.05) > 0  # type: ignore[arg-type]
    assert all(session.calls >= 2 for session in sessions)  # a warm-up run and at least one measured


def test_parallel_measurement_raises_when_a_session_fails(tiny_model_path: Path) -> None:
    """A session that fails must not count as 0 img/s: that would quietly lower the bench's limit."""

    class Failing:
        def run(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("device lost")

    working = OrtEngine.create(tiny_model_path, [CPU], 1)
    batch = synthetic_crops(32, 32, count=4)
    with pytest.raises(RuntimeError, match="device lost"):
        measure_parallel([working, Failing()], batch, seconds=0.05)  # type: ignore[list-item]
