"""Shared fixtures: contract-conforming ONNX models built in code, and paths into ../shared.

`build_tiny_model` writes a model that follows docs/model-format.md in every respect the service reads
(uint8 NHWC `image` input, `logits` + `probabilities` outputs, an `ai.eluserve::ConvElu` node carried
with its function body, the metadata keys), small enough to build in milliseconds. Tests serve the real
default model when it has been exported, and this one until then.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, settings
from onnx import TensorProto, helper, numpy_helper

from eluserve.core.contract import INPUT_LAYOUT, INPUT_NAME, LOGITS_NAME, OUTPUT_NAME, MetadataKey
from eluserve.core.paths import default_model_file
from eluserve.export.fusion import DOMAIN as CUSTOM_DOMAIN
from load_tests.fixtures import CIFAR_ZIP

#: Fails any test that starts a process without the `integration` marker (see tests/process_guard.py).
pytest_plugins = ["tests.process_guard"]

# Hypothesis' two clocks, off for the whole suite: its per-example deadline (200 ms by default) and its
# too_slow health check (generating the first examples took over a second) both fail a test whose
# examples are merely slow, as any are on a busy machine.
settings.register_profile("eluserve", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("eluserve")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build matplotlib's font cache before any test runs: on a fresh machine its first use runs
    `fc-list`, which the process guard would charge to whichever in-process test plots first."""
    with contextlib.suppress(ImportError):  # the serving install has no matplotlib, nor plots
        import matplotlib.font_manager  # noqa: F401  (importing it builds the cache)


CIFAR10_LABELS = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _conv_elu_function() -> onnx.FunctionProto:
    """`ai.eluserve::ConvElu(X, W, B) = Elu(Conv(X, W, B))`, attributes forwarded by reference."""

    def ref(name: str, kind: int) -> onnx.AttributeProto:
        return helper.make_attribute_ref(name, kind)

    conv = helper.make_node("Conv", ["X", "W", "B"], ["C"])
    conv.attribute.extend([ref("strides", onnx.AttributeProto.INTS), ref("pads", onnx.AttributeProto.INTS)])
    elu = helper.make_node("Elu", ["C"], ["Y"])
    elu.attribute.extend([ref("alpha", onnx.AttributeProto.FLOAT)])
    return helper.make_function(
        CUSTOM_DOMAIN,
        "ConvElu",
        inputs=["X", "W", "B"],
        outputs=["Y"],
        nodes=[conv, elu],
        opset_imports=[helper.make_opsetid("", 17)],
        attributes=["alpha", "strides", "pads"],
    )


def build_tiny_model(
    path: Path,
    *,
    labels: Sequence[str] = CIFAR10_LABELS,
    name: str = "tiny-cifar10",
    version: str = "1",
    input_size: tuple[int, int] = (32, 32),
    resize_shorter_side: int | None = None,
    seed: int = 0,
    metadata_overrides: dict[str, str | None] | None = None,
) -> Path:
    """Write a tiny contract-conforming classifier to `path` and return it.

    uint8 [N, H, W, 3] → Cast → scale and centre → NCHW → ConvElu (stride 2) → global average pool →
    MatMul + bias → `logits` → Softmax → `probabilities`. The weights are seeded and the logits scaled
    so that differently coloured images get clearly different top classes.
    `metadata_overrides` replaces metadata values; None removes the key (for contract-violation tests).
    """
    rng = np.random.default_rng(seed)
    height, width = input_size
    classes = len(labels)
    conv_w = rng.normal(0.0, 1.0, (8, 3, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0.0, 0.1, (8,)).astype(np.float32)
    fc_w = (rng.normal(0.0, 1.0, (8, classes)) * 4.0).astype(np.float32)
    fc_b = rng.normal(0.0, 0.1, (classes,)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(np.array(1.0 / 127.5, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(conv_b, "conv_b"),
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(fc_b, "fc_b"),
    ]
    conv_elu = helper.make_node(
        "ConvElu",
        ["nchw", "conv_w", "conv_b"],
        ["features"],
        domain=CUSTOM_DOMAIN,
        alpha=1.0,
        strides=[2, 2],
        pads=[1, 1, 1, 1],
    )
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["as_float", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "one"], ["centred"]),
        helper.make_node("Transpose", ["centred"], ["nchw"], perm=[0, 3, 1, 2]),
        conv_elu,
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc_w"], ["product"]),
        helper.make_node("Add", ["product", "fc_b"], [LOGITS_NAME]),
        helper.make_node("Softmax", [LOGITS_NAME], [OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", height, width, 3])],
        [
            helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", classes]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(CUSTOM_DOMAIN, 1)],
        functions=[_conv_elu_function()],
        producer_name="eluserve-tests",
    )
    model.ir_version = 8
    card = {"name": name, "version": version, "note": "tiny test model, random weights"}
    metadata: dict[str, str | None] = {
        MetadataKey.NAME: name,
        MetadataKey.VERSION: version,
        MetadataKey.LABELS: json.dumps(list(labels)),
        MetadataKey.INPUT_SIZE: json.dumps([height, width]),
        MetadataKey.INPUT_LAYOUT: INPUT_LAYOUT,
        MetadataKey.PREPROCESSING: json.dumps(
            {
                "resize_shorter_side": resize_shorter_side or min(height, width),
                "crop": [height, width],
                "interpolation": "bicubic",
                "normalization": "mean_std",
            }
        ),
        MetadataKey.ARCHITECTURE: "tiny",
        MetadataKey.ACTIVATION: "elu",
        MetadataKey.DATASET: "none (random weights)",
        MetadataKey.VAL_ACCURACY: "0.1",
        MetadataKey.CHECKPOINT_SHA256: "0" * 64,
        MetadataKey.EXPORTED_AT: "2026-01-01T00:00:00Z",
        MetadataKey.CUSTOM_DOMAIN: CUSTOM_DOMAIN,
        MetadataKey.MODEL_CARD: json.dumps(card),
    }
    metadata.update(metadata_overrides or {})
    helper.set_model_props(model, {key: value for key, value in metadata.items() if value is not None})
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny contract-conforming CIFAR-10 model, built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model.onnx")


@pytest.fixture(scope="session")
def serving_model_path(tiny_model_path: Path) -> Path:
    """The model the integration tests serve: the exported default model once it exists."""
    default = default_model_file()
    return default if default.is_file() else tiny_model_path


@pytest.fixture(scope="session")
def cifar_zip() -> Path:
    """The shared CIFAR-10 JPEG training zip; tests that need it skip where it is absent."""
    if not CIFAR_ZIP.is_file():
        pytest.skip(f"{CIFAR_ZIP} is not available")
    return CIFAR_ZIP
