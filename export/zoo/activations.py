"""The activations the ELU paper compares, passed into models as layers (timm's `act_layer`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ActLayer = Callable[[], nn.Module]


class ShiftedReLU(nn.Module):
    """max(-1, x): the paper's "SReLU", a ReLU whose mean activation can go negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp_min(x, -1.0)


ACTIVATIONS: dict[str, ActLayer] = {
    "elu": lambda: nn.ELU(alpha=1.0),
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(negative_slope=0.1),
    "shifted_relu": ShiftedReLU,
}


def get_act_layer(name: str) -> ActLayer:
    """Look up an activation by name; every one of them is monotone, which the pool rewrite relies on."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None
