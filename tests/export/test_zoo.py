"""Generated from the registry, as in timm: every registered model gets the same checks."""

from __future__ import annotations

import pytest
import torch

from eluserve.export.zoo import UnknownModelError, create_model, list_models

MODELS = list_models()


def test_registry_lists_the_zoo() -> None:
    assert {"elufast", "elufast_small", "elu_paper11", "elu_paper18"} <= set(MODELS)


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(UnknownModelError, match=r"registered models: .*elufast"):
        create_model("resnet9000")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_forward_shape_and_finite(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).train()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("activation", ["elu", "relu", "leaky_relu", "shifted_relu"])
def test_activation_is_a_parameter(activation: str) -> None:
    model = create_model("elufast_small", activation=activation)
    kinds = {type(m).__name__ for m in model.modules()}
    expected = {"elu": "ELU", "relu": "ReLU", "leaky_relu": "LeakyReLU", "shifted_relu": "ShiftedReLU"}
    assert expected[activation] in kinds


def test_shifted_relu_is_max_minus_one() -> None:
    act = create_model("elufast_small", activation="shifted_relu").features[2]
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 2.0])
    assert torch.equal(act(x), torch.tensor([-1.0, -1.0, -0.5, 0.0, 2.0]))


def test_paper18_follows_the_stack_spec() -> None:
    model = create_model("elu_paper18", num_classes=100)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # The paper calls it 18-layer; its own stack list holds 19 convolutions counting the 1×1 classifier.
    assert len(convs) == 19
    assert [c.out_channels for c in convs][:6] == [384, 384, 384, 640, 640, 640]
    assert convs[-1].out_channels == 100 and convs[-1].kernel_size == (1, 1)
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 5
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_paper11_has_eleven_layers() -> None:
    convs = [m for m in create_model("elu_paper11").modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 11
    assert convs[0].kernel_size == (5, 5)


@pytest.mark.parametrize("name", MODELS)
def test_export_parity(name: str) -> None:
    """Every model exports with fused ELU ops and computes what torch computes."""
    import numpy as np
    import onnxruntime as ort

    from eluserve.export.exporter import finalize, to_onnx
    from eluserve.export.fusion import DOMAIN, fuse_elu
    from eluserve.export.preprocess import Classifier, MeanStdInput

    torch.manual_seed(0)
    classifier = Classifier(MeanStdInput(np.full(3, 0.5), np.full(3, 0.25)), create_model(name)).eval()
    proto = to_onnx(classifier, 32)
    counts = fuse_elu(proto)
    proto = finalize(proto)
    assert counts["fuse_conv_elu"] + counts["fuse_conv_maxpool_elu"] > 0
    assert not any(n.op_type == "Elu" for n in proto.graph.node)
    assert any(n.domain == DOMAIN for n in proto.graph.node)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": images})[0]
    with torch.no_grad():
        expected = classifier(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_only_the_whitening_filters_are_frozen() -> None:
    """airbench's stem: fitted, not learnt; everything else trains."""
    frozen = [n for n, p in create_model("elubench94").named_parameters() if not p.requires_grad]
    assert frozen == ["whiten.weight"]


def test_whitening_init_decorrelates_patches() -> None:
    """After `init_from_data`, the stem's first 12 channels (before bias) have about unit covariance."""
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.randn(256, 3, 8, 8), size=32, mode="bilinear")
    images = smooth + 0.3 * torch.randn(256, 3, 32, 32)
    model = create_model("elubench_small")
    model.init_from_data(images)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, model.whiten.weight)
    flat = out[:, :12].permute(1, 0, 2, 3).reshape(12, -1)
    covariance = flat @ flat.T / flat.shape[1]
    torch.testing.assert_close(covariance, torch.eye(12), atol=0.02, rtol=0)
    torch.testing.assert_close(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_elubench_fuses_every_conv_and_elu() -> None:
    """Stem ConvElu; per group Conv-BN-ELU-pool → ConvMaxPoolElu and Conv-BN-ELU → ConvElu."""
    import numpy as np

    from eluserve.export.exporter import to_onnx
    from eluserve.export.fusion import CONV_ELU, CONV_MAXPOOL_ELU, fuse_elu
    from eluserve.export.preprocess import Classifier, MeanStdInput

    classifier = Classifier(MeanStdInput(np.full(3, 0.5), np.full(3, 0.25)), create_model("elubench_small"))
    proto = to_onnx(classifier.eval(), 32)
    counts = fuse_elu(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count(CONV_ELU) == 4 and ops.count(CONV_MAXPOOL_ELU) == 3
    assert counts["fuse_conv_elu"] == 4 and counts["fuse_conv_maxpool_elu"] == 3
    assert not {"Conv", "Elu", "MaxPool", "BatchNormalization"} & set(ops)
