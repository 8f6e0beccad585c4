"""Exact graph rewrites that turn a plain ONNX export into the fused-ELU form.

Rules, applied in this order, each one pattern → check → replacement:

    Dropout(x)                       -> x                                    (StripDropout)
    MaxPool(Elu(y))                  -> Elu(MaxPool(y))                      (PoolBeforeElu)
    Elu(MaxPool(Conv(x, W, B)))      -> ai.eluserve::ConvMaxPoolElu(x, W, B) (FuseConvMaxPoolElu)
    Elu(Conv(x, W, B))               -> ai.eluserve::ConvElu(x, W, B)        (FuseConvElu)

The fused ops are defined by model-local ONNX functions built from standard ops (`function_protos`),
so stock onnxruntime and `onnx.reference` run the result with nothing registered. Every rewrite is
exact: dropout is the identity at inference, and ELU with α ≥ 0 is monotone non-decreasing, so it
commutes with max — pooling first leaves the values unchanged and ELU touches a quarter of them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, helper, numpy_helper

DOMAIN = "ai.eluserve"
DOMAIN_VERSION = 1
CONV_ELU = "ConvElu"
CONV_MAXPOOL_ELU = "ConvMaxPoolElu"

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
POOL_ATTRS = ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")
POOL_PREFIX = "pool_"


class GraphIndex:
    """Producer and consumer maps of a graph, rebuilt after every rewrite (graphs here are small)."""

    def __init__(self, graph: GraphProto) -> None:
        self.graph = graph
        self.producer: dict[str, NodeProto] = {}
        self.consumers: dict[str, list[NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers[name].append(node)
        self.graph_outputs = {o.name for o in graph.output}

    def only_consumer(self, value: str, node: NodeProto) -> bool:
        """True when `node` alone reads `value` and it is no graph output: the value may vanish."""
        return value not in self.graph_outputs and self.consumers[value] == [node]

    def produced_by(self, value: str, op_type: str, domain: str = "") -> NodeProto | None:
        node = self.producer.get(value)
        return node if node is not None and node.op_type == op_type and node.domain == domain else None


def attr(node: NodeProto, name: str, default: object = None) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _used_outputs(node: NodeProto, index: GraphIndex) -> list[str]:
    return [o for o in node.output if o and (index.consumers.get(o) or o in index.graph_outputs)]


@dataclass
class Match:
    """Nodes to remove and the nodes that replace them at the position of the last removed one."""

    remove: list[NodeProto]
    add: list[NodeProto]
    new_initializers: tuple[onnx.TensorProto, ...] = ()


class Rule:
    """One fusion: `match` finds the pattern rooted at a node and checks it, returning a Match or None."""

    name = "rule"

    def match(self, node: NodeProto, index: GraphIndex) -> Match | None:
        raise NotImplementedError


class StripDropout(Rule):
    """Dropout(x) -> x. Refused when the mask output is used: then the node is not a plain identity."""

    name = "strip_dropout"

    def match(self, node: NodeProto, index: GraphIndex) -> Match | None:
        if node.op_type != "Dropout" or node.domain:
            return None
        if len(_used_outputs(node, index)) != 1 or _used_outputs(node, index)[0] != node.output[0]:
            return None  # the mask is consumed downstream
        identity = helper.make_node("Identity", [node.input[0]], [node.output[0]], name=f"{node.name}_id")
        return Match(remove=[node], add=[identity])


class PoolBeforeElu(Rule):
    """MaxPool(Elu(y)) -> Elu(MaxPool(y)).

    Checks: α ≥ 0 (else ELU is not monotone and max does not commute with it); the Elu output feeds
    only this MaxPool (another reader would still need the full-size ELU); MaxPool's Indices output
    is unused (indices would then point into a tensor that no longer exists).
    """

    name = "pool_before_elu"

    def match(self, node: NodeProto, index: GraphIndex) -> Match | None:
        if node.op_type != "MaxPool" or node.domain:
            return None
        elu = index.produced_by(node.input[0], "Elu")
        if elu is None or float(attr(elu, "alpha", 1.0)) < 0:
            return None
        if not index.only_consumer(elu.output[0], node) or _used_outputs(node, index) != [node.output[0]]:
            return None
        pooled = f"{node.output[0]}_prepool"
        pool = helper.make_node("MaxPool", [elu.input[0]], [pooled], name=node.name)
        pool.attribute.extend(node.attribute)
        new_elu = helper.make_node("Elu", [pooled], [node.output[0]], name=elu.name)
        new_elu.attribute.extend(elu.attribute)
        return Match(remove=[elu, node], add=[pool, new_elu])


def _conv_inputs(conv: NodeProto, index: GraphIndex) -> tuple[list[str], tuple[onnx.TensorProto, ...]]:
    """Conv's (X, W, B); a missing bias becomes an explicit zero initializer so the op has one form."""
    if len(conv.input) == 3 and conv.input[2]:
        return list(conv.input), ()
    weight = next((t for t in index.graph.initializer if t.name == conv.input[1]), None)
    if weight is None:
        return [], ()
    out_channels = weight.dims[0]
    dtype = helper.tensor_dtype_to_np_dtype(weight.data_type)
    bias = numpy_helper.from_array(np.zeros(out_channels, dtype=dtype), f"{conv.input[1]}_zero_bias")
    return [conv.input[0], conv.input[1], bias.name], (bias,)


def explicit_attrs(node: NodeProto, kernel_shape: list[int] | None = None) -> dict[str, object] | None:
    """Every Conv/MaxPool attribute spelt out, `auto_pad` turned into explicit `pads`.

    The fused ops' functions bind each attribute by reference, and onnx.reference needs every
    referenced attribute on the calling node; so defaults are written out. Returns None (refuse the
    fusion) for SAME padding with a stride above 1, whose pads depend on the input size.
    """
    kernel = list(attr(node, "kernel_shape", None) or kernel_shape or [])
    if not kernel:
        return None
    rank = len(kernel)
    dilations = list(attr(node, "dilations", None) or [1] * rank)
    strides = list(attr(node, "strides", None) or [1] * rank)
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    pads = list(attr(node, "pads", None) or [0] * 2 * rank)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(s != 1 for s in strides):
            return None
        totals = [d * (k - 1) for d, k in zip(dilations, kernel, strict=True)]
        small = [t // 2 for t in totals]
        large = [t - t // 2 for t in totals]
        pads = small + large if auto_pad == "SAME_UPPER" else large + small
    elif auto_pad == "VALID":
        pads = [0] * 2 * rank
    values: dict[str, object] = {
        "auto_pad": "NOTSET",
        "dilations": dilations,
        "kernel_shape": kernel,
        "pads": pads,
        "strides": strides,
    }
    if node.op_type == "Conv":
        values["group"] = int(attr(node, "group", 1))
    else:
        values["ceil_mode"] = int(attr(node, "ceil_mode", 0))
    return values


def _weight_kernel(conv: NodeProto, index: GraphIndex) -> list[int] | None:
    weight = next((t for t in index.graph.initializer if t.name == conv.input[1]), None)
    return list(weight.dims[2:]) if weight is not None else None


def _set_attrs(target: NodeProto, values: dict[str, object], prefix: str = "") -> None:
    for name, value in sorted(values.items()):
        target.attribute.append(helper.make_attribute(prefix + name, value))


def _fuse(
    op_type: str, conv: NodeProto, elu: NodeProto, index: GraphIndex, pool: NodeProto | None = None
) -> Match | None:
    """The fused node replacing conv (→ pool) → elu, or None where the attributes cannot be spelt out."""
    inputs, extra = _conv_inputs(conv, index)
    conv_attrs = explicit_attrs(conv, _weight_kernel(conv, index))
    pool_attrs = explicit_attrs(pool) if pool is not None else {}
    if not inputs or conv_attrs is None or pool_attrs is None:
        return None
    fused = helper.make_node(op_type, inputs, [elu.output[0]], name=f"{conv.name}_{op_type}", domain=DOMAIN)
    fused.attribute.append(helper.make_attribute("alpha", float(attr(elu, "alpha", 1.0))))
    _set_attrs(fused, conv_attrs)
    _set_attrs(fused, pool_attrs, POOL_PREFIX)
    removed = [conv, elu] if pool is None else [conv, pool, elu]
    return Match(remove=removed, add=[fused], new_initializers=extra)


class FuseConvMaxPoolElu(Rule):
    """Elu(MaxPool(Conv(x, W, B))) -> ConvMaxPoolElu(x, W, B).

    Checks: the Conv and MaxPool outputs have no other reader (they disappear into the fused node);
    MaxPool's Indices output is unused; W is a constant when the bias must be synthesised; the padding
    can be written as explicit pads (see `explicit_attrs`).
    """

    name = "fuse_conv_maxpool_elu"

    def match(self, node: NodeProto, index: GraphIndex) -> Match | None:
        if node.op_type != "Elu" or node.domain:
            return None
        pool = index.produced_by(node.input[0], "MaxPool")
        if pool is None or not index.only_consumer(pool.output[0], node):
            return None
        if _used_outputs(pool, index) != [pool.output[0]]:
            return None
        conv = index.produced_by(pool.input[0], "Conv")
        if conv is None or not index.only_consumer(conv.output[0], pool):
            return None
        return _fuse(CONV_MAXPOOL_ELU, conv, node, index, pool)


class FuseConvElu(Rule):
    """Elu(Conv(x, W, B)) -> ConvElu(x, W, B).

    Checks: the Conv output has no other reader; the padding can be written as explicit pads.
    """

    name = "fuse_conv_elu"

    def match(self, node: NodeProto, index: GraphIndex) -> Match | None:
        if node.op_type != "Elu" or node.domain:
            return None
        conv = index.produced_by(node.input[0], "Conv")
        if conv is None or not index.only_consumer(conv.output[0], node):
            return None
        return _fuse(CONV_ELU, conv, node, index)


RULES: tuple[Rule, ...] = (StripDropout(), PoolBeforeElu(), FuseConvMaxPoolElu(), FuseConvElu())


def _apply_once(graph: GraphProto, rule: Rule) -> bool:
    index = GraphIndex(graph)
    for node in graph.node:
        found = rule.match(node, index)
        if found is None:
            continue
        removed = {id(n) for n in found.remove}
        position = max(i for i, n in enumerate(graph.node) if id(n) in removed)
        kept: list[NodeProto] = []
        for i, existing in enumerate(graph.node):
            if i == position:
                kept.extend(found.add)
            elif id(existing) not in removed:
                kept.append(existing)
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(found.new_initializers)
        return True
    return False


def _remove_identities(graph: GraphProto) -> None:
    """Bypass Identity nodes whose output is internal (StripDropout leaves them behind)."""
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and not node.domain and node.output[0] not in outputs:
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
        else:
            kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)


def _elu(x: str, y: str) -> NodeProto:
    """ELU with the function's α, written as Selu(x; alpha=α, gamma=1), which is ELU by definition.

    Why not `Elu(alpha=@alpha)`: onnx.reference cannot bind a function attribute into its unary ops
    (Elu, LeakyRelu, … reject `linked_attributes`), while Selu is a general op there; onnxruntime has
    native Selu kernels on CPU and CUDA, so the inlined graph costs the same as with Elu.
    """
    node = helper.make_node("Selu", [x], [y], gamma=1.0)
    ref = helper.make_attribute_ref("alpha", AttributeProto.FLOAT)
    node.attribute.append(ref)
    return node


def function_protos(opset: int) -> list[FunctionProto]:
    """The model-local definitions of the domain's ops, from standard ops of `opset`."""
    imports = [helper.make_opsetid("", opset)]

    def refs(node: NodeProto, names: Iterable[str], prefix: str = "") -> None:
        """Bind each attribute of `node` to the function attribute `prefix + name`."""
        for name in names:
            ref = helper.make_attribute_ref(name, _ATTR_TYPES[name])
            ref.ref_attr_name = prefix + name
            node.attribute.append(ref)

    conv = helper.make_node("Conv", ["X", "W", "B"], ["conv"])
    refs(conv, CONV_ATTRS)
    elu = _elu("conv", "Y")
    conv_elu = helper.make_function(
        DOMAIN,
        CONV_ELU,
        ["X", "W", "B"],
        ["Y"],
        [conv, elu],
        imports,
        ["alpha", *CONV_ATTRS],
        doc_string="Elu(Conv(X, W, B), alpha): a convolution (BatchNorm folded in) and its ELU.",
    )

    conv2 = helper.make_node("Conv", ["X", "W", "B"], ["conv"])
    refs(conv2, CONV_ATTRS)
    pool = helper.make_node("MaxPool", ["conv"], ["pooled"])
    refs(pool, POOL_ATTRS, POOL_PREFIX)
    elu2 = _elu("pooled", "Y")
    conv_pool_elu = helper.make_function(
        DOMAIN,
        CONV_MAXPOOL_ELU,
        ["X", "W", "B"],
        ["Y"],
        [conv2, pool, elu2],
        imports,
        ["alpha", *CONV_ATTRS, *(POOL_PREFIX + a for a in POOL_ATTRS)],
        doc_string="Elu(MaxPool(Conv(X, W, B)), alpha): pooling before ELU, exact since ELU is monotone.",
    )
    return [conv_elu, conv_pool_elu]


_ATTR_TYPES = {
    "alpha": AttributeProto.FLOAT,
    "auto_pad": AttributeProto.STRING,
    "ceil_mode": AttributeProto.INT,
    "dilations": AttributeProto.INTS,
    "group": AttributeProto.INT,
    "kernel_shape": AttributeProto.INTS,
    "pads": AttributeProto.INTS,
    "strides": AttributeProto.INTS,
}


def default_opset(model: ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def fuse_elu(model: ModelProto, rules: Iterable[Rule] = RULES) -> Counter[str]:
    """Rewrite `model` in place; returns how often each rule fired. Adds the domain and its functions."""
    counts: Counter[str] = Counter()
    graph = model.graph
    for rule in rules:
        while _apply_once(graph, rule):
            counts[rule.name] += 1
    _remove_identities(graph)
    if counts[FuseConvElu.name] or counts[FuseConvMaxPoolElu.name]:
        if not any(o.domain == DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        existing = {(f.domain, f.name) for f in model.functions}
        for function in function_protos(default_opset(model)):
            if (function.domain, function.name) not in existing:
                model.functions.append(function)
    del graph.value_info[:]  # stale intermediate shapes; shape inference re-derives them
    return counts
