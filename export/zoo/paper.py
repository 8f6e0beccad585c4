"""The ELU paper's CIFAR networks (Clevert, Unterthiner, Hochreiter, 2015, "Fast and Accurate Deep
Network Learning by Exponential Linear Units (ELUs)", arXiv:1511.07289).

Each network is a list of stacks; each stack a list of (layers, units, receptive field) triples.
A 2×2 max-pool with stride 2 follows every stack until the feature map is 1×1; the last layer of each
stack gets that stack's dropout rate; no batch norm; the final stack is the 1×1 classifier convolution
and has no activation. (The paper's "18-layer" list holds 19 convolutions counting that classifier;
the 11-layer list holds 11.) The default config holds the paper's preprocessing facts (GCN + ZCA whitening).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from eluserve.export.zoo.activations import ActLayer, get_act_layer
from eluserve.export.zoo.registry import register_model

Stack = list[tuple[int, int, int]]

DEFAULT_CFG = {
    "input_size": 32,
    "num_classes": 10,
    "normalization": "gcn_zca",
    "crop": "shorter side to input_size, centre crop",
    "augment": "pad 4 + random crop + horizontal flip",
    # the training layout the flagship was trained in (on a GPU)
    "channels_last": True,
}


@dataclass(frozen=True)
class PaperNetSpec:
    """One variant: the stacks and the dropout rate of each stack's last layer."""

    stacks: tuple[Stack, ...]
    dropout: tuple[float, ...]


ARCHS: dict[str, PaperNetSpec] = {
    "elu_paper18": PaperNetSpec(
        stacks=(
            [(1, 384, 3)],
            [(1, 384, 1), (1, 384, 2), (2, 640, 2)],
            [(1, 640, 1), (3, 768, 2)],
            [(1, 768, 1), (2, 896, 2)],
            [(1, 896, 3), (2, 1024, 2)],
            [(1, 1024, 1), (1, 1152, 2)],
            [(1, 1152, 1)],
        ),
        dropout=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0),
    ),
    "elu_paper11": PaperNetSpec(
        stacks=(
            [(1, 192, 5)],
            [(1, 192, 1), (1, 240, 3)],
            [(1, 240, 1), (1, 260, 2)],
            [(1, 260, 1), (1, 280, 2)],
            [(1, 280, 1), (1, 300, 2)],
            [(1, 300, 1)],
        ),
        dropout=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
    ),
}


class PaperNet(nn.Module):
    """Plain conv stacks + max-pools, ending in a 1×1 convolution to the classes."""

    def __init__(
        self,
        spec: PaperNetSpec,
        num_classes: int = 10,
        input_size: int = 32,
        act_layer: ActLayer = nn.ELU,
    ) -> None:
        super().__init__()
        pools = int(math.log2(input_size))  # pool until the map is 1×1, then stop
        layers: list[nn.Module] = []
        channels = 3
        for index, stack in enumerate(spec.stacks):
            for depth, units, kernel in stack:
                for _ in range(depth):
                    layers += [nn.Conv2d(channels, units, kernel, padding="same"), act_layer()]
                    channels = units
            if spec.dropout[index] > 0:
                layers.append(nn.Dropout(spec.dropout[index]))
            if index < pools:
                layers.append(nn.MaxPool2d(2, 2))
        layers.append(nn.Conv2d(channels, num_classes, 1))
        # No batch norm rescales the signal, so the initialisation must keep its variance through 19
        # convolutions: He et al. (2015), as the paper initialises its nets. PyTorch's default (gain²
        # 1/3 per layer) shrinks the signal by ~1e-9 at the classifier and stalls the first epochs.
        for module in layers:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        # The classifier starts at zero (uniform predictions, loss ln 10): with He-scaled logits and
        # dropout the first loss is ~7.8 and the first steps at lr 0.01 diverge (measured on CPU).
        nn.init.zeros_(layers[-1].weight)
        self.features = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return torch.flatten(torch.mean(x, dim=(2, 3)), 1)


def _paper_net(name: str, num_classes: int, input_size: int, activation: str) -> PaperNet:
    return PaperNet(ARCHS[name], num_classes, input_size, get_act_layer(activation))


@register_model
def elu_paper18(num_classes: int = 10, input_size: int = 32, activation: str = "elu") -> PaperNet:
    """The paper's 18-layer CIFAR network (6.55 % CIFAR-10 / 24.28 % CIFAR-100 test error)."""
    return _paper_net("elu_paper18", num_classes, input_size, activation)


@register_model
def elu_paper11(num_classes: int = 10, input_size: int = 32, activation: str = "elu") -> PaperNet:
    """The paper's 11-layer network used for the ELU vs ReLU/LReLU/SReLU comparison on CIFAR-100."""
    return _paper_net("elu_paper11", num_classes, input_size, activation)
