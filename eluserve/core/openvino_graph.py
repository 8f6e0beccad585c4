"""The exported graph as OpenVINO should see it: functions inlined, ELU written as `Elu`.

    Selu(x; alpha=α, gamma=1) -> Elu(x; alpha=α)                       (selu_gamma1_to_elu)

The exported function bodies write ELU as `Selu(alpha=α, gamma=1)` because `onnx.reference` cannot
bind a function attribute into `Elu` (export/fusion.py). OpenVINO's CPU plugin fuses Conv+Elu into
one kernel but not Conv+Selu: with the bodies as exported, the ELU net ran at 0.55-0.57 of its ReLU
twin on OpenVINO (`eluserve elu-tax`). So before OpenVINO reads the model, the model-local functions
are inlined and each `Selu(gamma=1)` becomes the `Elu` it is by definition. This happens in memory:
the file on disk keeps its functions and `Selu`, which `onnx.reference` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import ModelProto, NodeProto, helper
from onnx.inliner import inline_local_functions


@dataclass(frozen=True)
class RewriteReport:
    """What `prepare_for_openvino` did: functions inlined, Selu nodes turned into Elu, Selu refused."""

    functions_inlined: int
    selu_to_elu: int
    selu_kept: int


def selu_as_elu(node: NodeProto) -> NodeProto | None:
    """`Elu(alpha)` for a `Selu` whose gamma is exactly 1, else None.

    Selu(x) = gamma · (x if x > 0 else alpha · (exp(x) − 1)), so it equals Elu(x; alpha) only when
    gamma = 1; ONNX's default gamma (1.0507…) scales the positive half too, and such a node is
    refused (left as it is), not approximated.
    """
    if node.op_type != "Selu" or node.domain not in ("", "ai.onnx"):
        return None
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    if attributes.get("gamma") != 1.0:
        return None
    # ONNX's Selu default alpha is 1.67326…; Elu's is 1.0: carry the value Selu means, always explicitly.
    alpha = float(attributes.get("alpha", 1.6732632423543772))
    return helper.make_node("Elu", list(node.input), list(node.output), name=node.name, alpha=alpha)


def prepare_for_openvino(model: ModelProto) -> tuple[ModelProto, RewriteReport]:
    """A copy of `model` with local functions inlined and `Selu(gamma=1)` rewritten as `Elu`."""
    functions = len(model.functions)
    inlined = inline_local_functions(model) if functions else _copy(model)
    rewritten = kept = 0
    for index, node in enumerate(inlined.graph.node):
        if node.op_type != "Selu":
            continue
        elu = selu_as_elu(node)
        if elu is None:
            kept += 1
            continue
        inlined.graph.node[index].CopyFrom(elu)
        rewritten += 1
    onnx.checker.check_model(inlined)
    return inlined, RewriteReport(functions, rewritten, kept)


def _copy(model: ModelProto) -> ModelProto:
    copy = ModelProto()
    copy.CopyFrom(model)
    return copy
