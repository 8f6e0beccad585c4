"""The short-schedule training ingredients (airbench's, after Page's ResNet-9 tricks), each a switch.

`TrainConfig` turns each on by name and `export.config.RECIPES["airbench"]` turns them on together;
`docs/training-recipe.md` holds the ablation that chose them. The pieces:

- **bf16 that follows the hardware** (`resolve_amp`): autocast only where the device computes bf16
  natively. On a CPU without AVX-512 BF16 or AMX every bf16 convolution is emulated: 25 s a step
  against 1.7 s in fp32 on this project's 2-core AVX2 host.
- **Frozen batch-norm scales, fast biases** (`configure_batch_norm`, `param_groups`): BN weights stay
  1 and BN biases learn at `bias_lr_scale` × the learning rate (the whitening bias at the plain
  one, as in airbench: 64× its lr made the first layers' statistics swing, 76 % after 3 epochs).
  With the scale frozen at a positive 1, BN commutes with max-pooling, so the export's
  Conv→BN→ELU→MaxPool equals airbench's Conv→MaxPool→BN→act at inference.
- **Decoupled weight decay** (`param_groups`): `weight_decay` is the per-step shrink at the peak
  learning rate, whatever `lr` is, so tuning one does not retune the other.
- **Dirac init** (`dirac_init_`): each 3×3 conv starts as the identity on its first `in_channels`
  filters, so the deep net starts close to a shallow one.
- **Lookahead** (`Lookahead`): every 5 steps the weights move to an exponential average of themselves,
  with a decay that grows as the cube of progress; the run ends on the average.
- **Alternating flips** (`flip_schedule`): each image gets one random flip, then flips on every other
  epoch, so two consecutive epochs see both orientations instead of a coin toss.
- A **triangular learning rate** (start, peak, end fractions) lives in `export.train.learning_rate`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

LOOKAHEAD_EVERY = 5  # steps between lookahead updates (airbench's)
LOOKAHEAD_PEAK = 0.95**LOOKAHEAD_EVERY  # the decay reached at the end of training


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: CUDA with bf16 support, a CPU with AVX-512 BF16
    or AMX. Anything else emulates it, far slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_amp(requested: bool | None, device: torch.device, measure: Any = None) -> bool:
    """bf16 autocast or not. `requested` wins when given; `None` (auto) turns it on only where the
    hardware is native, and on a CPU only if `measure(amp) -> seconds` says it is also faster there."""
    if requested is not None:
        return requested
    if not native_bf16(device):
        return False
    if device.type == "cpu" and measure is not None:
        return measure(True) < measure(False)
    return True


def configure_batch_norm(net: nn.Module, momentum: float | None, freeze_weights: bool) -> None:
    """Set every batch norm's running-statistics momentum (None: torch's 0.1) and, if asked, freeze
    its scale at its initial 1. Neither is in the state dict, so a resumed run calls this again."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if momentum is not None:
                module.momentum = momentum
            if freeze_weights and module.weight is not None:
                module.weight.requires_grad_(False)


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, bias_lr_scale: float, decoupled: bool
) -> list[dict[str, Any]]:
    """Weights (decayed), normalisation parameters (not decayed, `bias_lr_scale` × lr) and the other
    biases (not decayed, the plain lr: a conv's bias, the whitening stem's, whose input is whitened
    pixels and which 64× the lr would throw about).

    Each group carries `lr_scale`, the factor the scheduled learning rate is multiplied by. With
    `decoupled`, the decay coefficient is divided by the group's peak learning rate: SGD multiplies it
    back, so a step shrinks a weight by `weight_decay` × the schedule's fraction, independent of `lr`.
    """
    norm = {
        id(param)
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for param in module.parameters()
    }
    weights, norms, biases = [], [], []
    for param in model.parameters():
        if param.requires_grad:  # built before any per-epoch freezing (`whiten_bias_epochs`)
            (weights if param.ndim > 1 else norms if id(param) in norm else biases).append(param)
    coefficient = weight_decay / lr if decoupled else weight_decay
    return [
        {"params": weights, "weight_decay": coefficient, "lr_scale": 1.0},
        {"params": norms, "weight_decay": 0.0, "lr_scale": bias_lr_scale},
        {"params": biases, "weight_decay": 0.0, "lr_scale": 1.0},
    ]


@torch.no_grad()
def dirac_init_(net: nn.Module, skip: nn.Module | None = None) -> int:
    """Identity-initialise every 3×3 conv but `skip` on its first min(in, out) channels (filter i
    passes input i through); the other filters keep their random init. Returns how many it changed."""
    changed = 0
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and module is not skip and module.kernel_size == (3, 3):
            nn.init.dirac_(module.weight[: module.weight.shape[1]], groups=module.groups)
            changed += 1
    return changed


class Lookahead:
    """airbench's weight averaging: every `LOOKAHEAD_EVERY` steps, average ← lerp(average, weights,
    1 − decay) and the weights are set to the average; `decay` grows as (step / total)³ up to
    `LOOKAHEAD_PEAK`, so early training moves freely and the end is a smooth average."""

    def __init__(self, model: nn.Module) -> None:
        self.average = {
            name: value.detach().clone()
            for name, value in model.state_dict().items()
            if value.is_floating_point()
        }

    @staticmethod
    def decay(step: int, total_steps: int) -> float:
        return LOOKAHEAD_PEAK * (step / total_steps) ** 3

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        state = model.state_dict()
        for name, average in self.average.items():
            average.lerp_(state[name], 1.0 - decay)
            state[name].copy_(average)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, average in self.average.items():
            average.copy_(state[name])


def flip_schedule(images: int, seed: int) -> torch.Tensor:
    """Each image's flip in even epochs (odd epochs flip the opposite way): one fair coin per image,
    from a stream of its own, so the run's other random draws are the same with or without it."""
    return torch.rand(images, generator=torch.Generator().manual_seed(seed + 0x5EED)) < 0.5
