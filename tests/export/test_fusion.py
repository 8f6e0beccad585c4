"""The fusion rules: exact op lists after the rewrite, refusals, and numerical equality.

Models are built inline; numbers are compared on ONNX Runtime with graph optimisations off (so ORT
cannot hide a wrong rewrite behind its own fusions), on onnx.reference, and against torch.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from eluserve.export.fusion import CONV_ELU, CONV_MAXPOOL_ELU, DOMAIN, fuse_elu

OPSET = 18


def _model(nodes, inits, x_shape, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


def _conv_block(rng, c_in, c_out, kernel, bias=True, pads=None):
    w = numpy_helper.from_array(rng.normal(0, 0.5, (c_out, c_in, kernel, kernel)).astype(np.float32), "w")
    inits = [w]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, c_out).astype(np.float32), "b"))
        inputs.append("b")
    pads = pads if pads is not None else [kernel // 2] * 4
    return helper.make_node("Conv", inputs, ["c"], kernel_shape=[kernel, kernel], pads=pads), inits


def _run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node]


def _fused(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    counts = fuse_elu(copy)
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(copy, strict_mode=True), full_check=True)
    return copy, dict(counts)


def test_conv_elu_becomes_one_custom_node() -> None:
    rng = np.random.default_rng(0)
    conv, inits = _conv_block(rng, 3, 4, 3)
    model = _model([conv, helper.make_node("Elu", ["c"], ["y"], alpha=0.7)], inits, [1, 3, 6, 6], ["y"])
    fused, counts = _fused(model)
    assert _ops(fused) == [f"{DOMAIN}::{CONV_ELU}"]
    assert counts == {"fuse_conv_elu": 1}
    node = fused.graph.node[0]
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "alpha")) == pytest.approx(
        0.7
    )
    assert {(f.domain, f.name) for f in fused.functions} >= {(DOMAIN, CONV_ELU)}
    assert any(o.domain == DOMAIN for o in fused.opset_import)


def test_conv_elu_maxpool_is_reordered_then_fused() -> None:
    rng = np.random.default_rng(1)
    conv, inits = _conv_block(rng, 3, 4, 3)
    nodes = [
        conv,
        helper.make_node("Elu", ["c"], ["e"]),
        helper.make_node("MaxPool", ["e"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    fused, counts = _fused(_model(nodes, inits, [2, 3, 8, 8], ["y"]))
    assert _ops(fused) == [f"{DOMAIN}::{CONV_MAXPOOL_ELU}"]
    assert counts == {"pool_before_elu": 1, "fuse_conv_maxpool_elu": 1}


def test_dropout_is_stripped() -> None:
    rng = np.random.default_rng(2)
    conv, inits = _conv_block(rng, 3, 4, 1)
    nodes = [conv, helper.make_node("Elu", ["c"], ["e"]), helper.make_node("Dropout", ["e"], ["y"])]
    fused, counts = _fused(_model(nodes, inits, [1, 3, 4, 4], ["y"]))
    assert _ops(fused) == ["Identity"] or _ops(fused) == [f"{DOMAIN}::{CONV_ELU}", "Identity"]
    assert counts["strip_dropout"] == 1 and counts["fuse_conv_elu"] == 1


def test_missing_bias_gets_an_explicit_zero_bias() -> None:
    rng = np.random.default_rng(3)
    conv, inits = _conv_block(rng, 3, 4, 3, bias=False)
    model = _model([conv, helper.make_node("Elu", ["c"], ["y"])], inits, [1, 3, 5, 5], ["y"])
    fused, _ = _fused(model)
    assert len(fused.graph.node[0].input) == 3
    x = rng.normal(size=(1, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_run_ort(fused, {"x": x})[0], _run_ort(model, {"x": x})[0], atol=1e-6)


def test_refuses_when_the_elu_output_has_another_reader() -> None:
    """Pooling first would drop the full-size ELU that the second reader needs."""
    rng = np.random.default_rng(4)
    conv, inits = _conv_block(rng, 3, 4, 3)
    nodes = [
        conv,
        helper.make_node("Elu", ["c"], ["e"]),
        helper.make_node("MaxPool", ["e"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["e"], ["z"]),
    ]
    fused, counts = _fused(_model(nodes, inits, [1, 3, 4, 4], ["y", "z"]))
    assert "pool_before_elu" not in counts
    assert _ops(fused) == [f"{DOMAIN}::{CONV_ELU}", "MaxPool", "Relu"]


def test_refuses_when_maxpool_indices_are_used() -> None:
    rng = np.random.default_rng(5)
    conv, inits = _conv_block(rng, 3, 4, 3)
    nodes = [
        conv,
        helper.make_node("Elu", ["c"], ["e"]),
        helper.make_node("MaxPool", ["e"], ["y", "idx"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Cast", ["idx"], ["i"], to=TensorProto.FLOAT),
    ]
    _, counts = _fused(_model(nodes, inits, [1, 3, 4, 4], ["y", "i"]))
    assert "pool_before_elu" not in counts


def test_refuses_pool_reorder_for_negative_alpha() -> None:
    """With α < 0 ELU is not monotone: max and ELU no longer commute."""
    rng = np.random.default_rng(6)
    conv, inits = _conv_block(rng, 3, 4, 3)
    nodes = [
        conv,
        helper.make_node("Elu", ["c"], ["e"], alpha=-0.5),
        helper.make_node("MaxPool", ["e"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    _, counts = _fused(_model(nodes, inits, [1, 3, 4, 4], ["y"]))
    assert "pool_before_elu" not in counts


def test_refuses_when_conv_output_is_a_graph_output() -> None:
    rng = np.random.default_rng(7)
    conv, inits = _conv_block(rng, 3, 4, 3)
    model = _model([conv, helper.make_node("Elu", ["c"], ["y"])], inits, [1, 3, 4, 4], ["y", "c"])
    fused, counts = _fused(model)
    assert not counts and _ops(fused) == ["Conv", "Elu"]


@settings(max_examples=25, deadline=None)
@given(
    c_in=st.integers(1, 4),
    c_out=st.integers(1, 5),
    kernel=st.sampled_from([1, 2, 3]),
    size=st.integers(4, 9),
    pool=st.sampled_from([None, 2, 3]),
    pool_stride=st.integers(1, 3),
    alpha=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_rewritten_graph_equals_the_original(
    c_in, c_out, kernel, size, pool, pool_stride, alpha, seed
) -> None:
    """Property: for any shapes, α ≥ 0 and pooling geometry, the rewrite changes no output value."""
    rng = np.random.default_rng(seed)
    conv, inits = _conv_block(rng, c_in, c_out, kernel, pads=[0, 0, kernel - 1, kernel - 1])
    nodes = [conv, helper.make_node("Elu", ["c"], ["e"], alpha=alpha)]
    out = "e"
    if pool:
        nodes.append(
            helper.make_node("MaxPool", ["e"], ["y"], kernel_shape=[pool, pool], strides=[pool_stride] * 2)
        )
        out = "y"
    model = _model(nodes, inits, [2, c_in, size, size], [out])
    fused, counts = _fused(model)
    assert counts.get("fuse_conv_maxpool_elu" if pool else "fuse_conv_elu") == 1
    x = (rng.normal(size=(2, c_in, size, size)) * 3).astype(np.float32)
    expected = _run_ort(model, {"x": x})[0]
    np.testing.assert_allclose(_run_ort(fused, {"x": x})[0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        ReferenceEvaluator(fused).run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_fused_op_function_matches_torch_and_reference(alpha: float) -> None:
    """ConvElu / ConvMaxPoolElu function bodies: ORT vs onnx.reference vs torch."""
    rng = np.random.default_rng(8)
    conv, inits = _conv_block(rng, 3, 6, 3)
    nodes = [
        conv,
        helper.make_node("Elu", ["c"], ["e"], alpha=alpha),
        helper.make_node("MaxPool", ["e"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    fused, _ = _fused(_model(nodes, inits, [2, 3, 8, 8], ["y"]))
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    w, b = (torch.from_numpy(numpy_helper.to_array(t).copy()) for t in inits)
    expected = torch.nn.functional.max_pool2d(
        torch.nn.functional.elu(torch.nn.functional.conv2d(torch.from_numpy(x), w, b, padding=1), alpha), 2
    ).numpy()
    np.testing.assert_allclose(_run_ort(fused, {"x": x})[0], expected, atol=1e-5)
    np.testing.assert_allclose(ReferenceEvaluator(fused).run(None, {"x": x})[0], expected, atol=1e-5)
