"""The inference core on a tiny contract-conforming model, on stock onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from eluserve.core.contract import read_model_info
from eluserve.core.errors import InvalidTopK, ModelFormatError
from eluserve.core.results import format_results, parse_top_k, top_k
from eluserve.core.session import CPU, CUDA, ModelSession
from tests.conftest import CIFAR10_LABELS, build_tiny_model


@pytest.fixture(scope="module")
def classifier(tiny_model_path: Path) -> ModelSession:
    return ModelSession.from_path(tiny_model_path, intra_op_threads=1)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_metadata_is_read_per_the_contract(tiny_model_path: Path) -> None:
    info = read_model_info(tiny_model_path.parent)  # a model folder works as well as the file
    assert info.tag == "tiny-cifar10:1"
    assert info.labels == CIFAR10_LABELS and info.num_classes == 10
    assert info.input_size == (32, 32)
    assert info.preprocessing.resize_shorter_side == 32 and info.preprocessing.crop == (32, 32)
    assert info.val_accuracy == pytest.approx(0.1)
    assert (info.opset, info.custom_domain, info.provider) == (17, "ai.eluserve", None)
    document = info.to_dict()
    assert document["model"] == "tiny-cifar10:1"
    assert document["preprocessing"]["interpolation"] == "bicubic"
    assert document["model_card"]["name"] == "tiny-cifar10"


def test_the_classifier_runs_the_custom_domain_on_cpu(classifier: ModelSession, crops: np.ndarray) -> None:
    assert classifier.provider == CPU and classifier.info.provider == CPU
    probs = classifier.predict(crops)
    assert probs.shape == (6, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_batched_and_single_inference_agree(classifier: ModelSession, crops: np.ndarray) -> None:
    singles = np.concatenate([classifier.predict(crops[i : i + 1]) for i in range(len(crops))])
    np.testing.assert_allclose(classifier.predict(crops), singles, rtol=1e-5, atol=1e-7)


def test_an_empty_batch_needs_no_session_run(classifier: ModelSession) -> None:
    assert classifier.predict(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 10)


@pytest.mark.parametrize(
    "batch",
    [
        np.zeros((1, 32, 32, 3), np.float32),
        np.zeros((1, 28, 28, 3), np.uint8),
        np.zeros((32, 32, 3), np.uint8),
        [[0]],
    ],
    ids=["float", "wrong-size", "no-batch-axis", "list"],
)
def test_predict_refuses_what_the_graph_cannot_take(classifier: ModelSession, batch: object) -> None:
    with pytest.raises(ValueError, match="uint8"):
        classifier.predict(batch)  # type: ignore[arg-type]


def test_top_k_orders_best_first_and_keeps_index_order_on_ties() -> None:
    probs = np.array([[0.1, 0.4, 0.1, 0.4], [0.7, 0.1, 0.1, 0.1]], np.float32)
    indices, values = top_k(probs, 3)
    np.testing.assert_array_equal(indices, [[1, 3, 0], [0, 1, 2]])
    np.testing.assert_allclose(values, [[0.4, 0.4, 0.1], [0.7, 0.1, 0.1]])
    for k in (0, 5):
        with pytest.raises(ValueError):
            top_k(probs, k)


def test_results_follow_the_http_contract() -> None:
    probs = np.array([[0.2, 0.5, 0.3]], np.float32)
    (result,) = format_results(probs, ("a", "b", "c"), 2)
    assert result == {
        "label": "b",
        "probability": pytest.approx(0.5),
        "top_k": [
            {"label": "b", "index": 1, "probability": pytest.approx(0.5)},
            {"label": "c", "index": 2, "probability": pytest.approx(0.3)},
        ],
    }
    assert all(
        type(entry["index"]) is int and type(entry["probability"]) is float for entry in result["top_k"]
    )


def test_classify_is_predict_plus_formatting(classifier: ModelSession, crops: np.ndarray) -> None:
    results = classifier.classify(list(crops), top_k=3)
    assert results == format_results(classifier.predict(crops), CIFAR10_LABELS, 3)
    assert classifier.classify([]) == []


@pytest.mark.parametrize(("raw", "expected"), [(None, 5), ("1", 1), (" 10 ", 10), ("07", 7), (3, 3)])
def test_top_k_values_clients_may_send(raw: str | int | None, expected: int) -> None:
    assert parse_top_k(raw, 10) == expected


@pytest.mark.parametrize("raw", ["0", "11", "-1", "2.5", "3.0", "", "abc", "١", "9" * 5000, True, 0, 11])
def test_top_k_values_that_are_refused(raw: str | int) -> None:
    with pytest.raises(InvalidTopK, match="1 to 10"):
        parse_top_k(raw, 10)


def test_default_top_k_is_capped_by_the_class_count() -> None:
    assert parse_top_k(None, 3) == 3


def test_warm_up_runs_the_rounds_and_the_minimum_time(classifier: ModelSession) -> None:
    assert classifier.warm_up(batch_sizes=(1, 4), rounds=2) == 4
    assert classifier.warm_up(batch_sizes=(1,), rounds=0) == 0


def test_unavailable_providers_are_named(tiny_model_path: Path) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(ValueError, match="CPUExecutionProvider"):
        ModelSession.from_path(tiny_model_path, providers=[CUDA])


def test_thread_count_must_be_positive(tiny_model_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ModelSession.from_path(tiny_model_path, intra_op_threads=0)


def test_a_missing_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.onnx"):
        ModelSession.from_path(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"labels": None}, "lacks"),
        ({"labels": "not json"}, "not valid JSON"),
        ({"labels": "[]"}, "non-empty"),
        ({"input_size": "[32]"}, "height, width"),
        ({"preprocessing": '{"resize_shorter_side": 32, "crop": [28, 28]}'}, "differs from input_size"),
        ({"labels": '["just", "three", "labels"]'}, "10 classes"),
    ],
)
def test_contract_violations_are_model_format_errors(
    tmp_path: Path, overrides: dict[str, str | None], message: str
) -> None:
    path = build_tiny_model(tmp_path / "model.onnx", metadata_overrides=overrides)
    with pytest.raises(ModelFormatError, match=message):
        read_model_info(path)


def test_a_float_input_is_a_model_format_error(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "model.onnx")
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.save(model, str(path))
    with pytest.raises(ModelFormatError, match="uint8"):
        read_model_info(path)
