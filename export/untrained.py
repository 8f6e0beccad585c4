"""Untrained classifiers of the zoo's architectures, for the measurements that do not depend on what
the weights have learnt (`eluserve throughput-ratio`, `eluserve elu-tax`).

A whitening stem (`init_from_data`, airbench's) is fitted, never trained: a trained net carries the
fitted filters, so the untrained one is fitted too (on seeded random images) and its first layers see
activations of a trained net's scale, where ELU's cost lies.
"""

from __future__ import annotations

import numpy as np
import torch

from eluserve.export.preprocess import Classifier, MeanStdInput
from eluserve.export.zoo import create_model

#: CIFAR-10's channel statistics in [0, 1] units: the input transform gets realistic values.
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616])
#: Random uint8 images a whitening stem is fitted on.
FIT_IMAGES = 256


def untrained_classifier(model: str, activation: str = "elu", seed: int = 0) -> Classifier:
    """`model` with weights from `seed` behind CIFAR-10's mean/std input transform, in eval mode.

    The weights depend on `seed` alone, not on `activation` (activations hold no weights), so that
    variants of one architecture differ only in their activation.
    """
    torch.manual_seed(seed)
    net = create_model(model, activation=activation)
    transform = MeanStdInput(CIFAR_MEAN, CIFAR_STD)
    if hasattr(net, "init_from_data"):
        images = torch.randint(
            0, 256, (FIT_IMAGES, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator()
        )
        net.init_from_data(transform(images))
    return Classifier(transform, net).eval()
