"""The Selu(gamma=1) -> Elu rewrite that keeps ELU fused on OpenVINO: exact op lists, refusals, numbers.

The models are built inline and fused by the exporter's own rules, so the function bodies hold the
`Selu(alpha=α, gamma=1)` that ships; numbers are compared on ONNX Runtime with optimisations off, on
onnx.reference and on OpenVINO, seeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from eluserve.core.openvino_graph import RewriteReport, prepare_for_openvino, selu_as_elu
from eluserve.export.fusion import fuse_elu

OPSET = 18


def _conv_elu_maxpool_model(seed: int = 0, alpha: float = 0.7) -> onnx.ModelProto:
    """Conv → Elu(α) → MaxPool, then Conv → Elu(1): fused into ConvMaxPoolElu and ConvElu."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.5, 4).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.5, (5, 4, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.5, 5).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Elu", ["c1"], ["e1"], alpha=alpha),
        helper.make_node("MaxPool", ["e1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Elu", ["c2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "blocks",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 4, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    fuse_elu(model)
    return model


def _ops(model: onnx.ModelProto) -> list[str]:
    return [f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node]


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_functions_are_inlined_and_every_gamma1_selu_becomes_elu() -> None:
    fused = _conv_elu_maxpool_model()
    assert _ops(fused) == ["ai.eluserve::ConvMaxPoolElu", "ai.eluserve::ConvElu"]
    assert sorted(n.op_type for f in fused.functions for n in f.node if n.op_type == "Selu") == [
        "Selu",
        "Selu",
    ]

    rewritten, report = prepare_for_openvino(fused)

    assert _ops(rewritten) == ["Conv", "MaxPool", "Elu", "Conv", "Elu"]
    assert report == RewriteReport(functions_inlined=2, selu_to_elu=2, selu_kept=0)
    alphas = [helper.get_attribute_value(n.attribute[0]) for n in rewritten.graph.node if n.op_type == "Elu"]
    assert alphas == [pytest.approx(0.7), pytest.approx(1.0)]
    assert _ops(fused) == ["ai.eluserve::ConvMaxPoolElu", "ai.eluserve::ConvElu"]  # the input is untouched


def test_the_rewrite_computes_what_the_exported_functions_compute(tmp_path: Path) -> None:
    fused = _conv_elu_maxpool_model(seed=3)
    rewritten, _ = prepare_for_openvino(fused)
    x = np.random.default_rng(4).normal(0, 2, (2, 3, 8, 8)).astype(np.float32)
    expected = _ort(fused, x)
    assert (expected < 0).any(), "the input must reach ELU's negative branch"

    np.testing.assert_allclose(_ort(rewritten, x), expected, rtol=1e-6, atol=1e-6)
    (reference,) = ReferenceEvaluator(fused).run(None, {"x": x})  # the file as shipped still runs there
    np.testing.assert_allclose(reference, expected, rtol=1e-5, atol=1e-5)
    onnx.save(rewritten, tmp_path / "rewritten.onnx")
    compiled = ov.Core().compile_model(
        str(tmp_path / "rewritten.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    np.testing.assert_allclose(compiled({"x": x})[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("attributes", "why"),
    [
        ({}, "ONNX's default gamma 1.0507 scales the positive half"),
        ({"gamma": 1.05, "alpha": 1.0}, "gamma ≠ 1"),
    ],
)
def test_a_selu_whose_gamma_is_not_one_is_refused(attributes: dict[str, float], why: str) -> None:
    node = helper.make_node("Selu", ["x"], ["y"], **attributes)
    assert selu_as_elu(node) is None, why
    graph = helper.make_graph(
        [node],
        "selu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    rewritten, report = prepare_for_openvino(model)
    assert _ops(rewritten) == ["Selu"] and report == RewriteReport(0, 0, 1)


def test_a_gamma1_selu_without_alpha_keeps_selus_default_alpha() -> None:
    elu = selu_as_elu(helper.make_node("Selu", ["x"], ["y"], gamma=1.0))
    assert elu is not None and elu.op_type == "Elu"
    assert helper.get_attribute_value(elu.attribute[0]) == pytest.approx(1.6732632423543772)
