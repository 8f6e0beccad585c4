"""The ELU model zoo: importing this package registers every variant."""

from eluserve.export.zoo import airbench, fastnet, paper
from eluserve.export.zoo.activations import ACTIVATIONS, get_act_layer
from eluserve.export.zoo.registry import UnknownModelError, create_model, list_models, register_model

DEFAULT_CFGS = {
    "elufast": fastnet.DEFAULT_CFG,
    "elufast_res": fastnet.DEFAULT_CFG,
    "elufast_res9": fastnet.DEFAULT_CFG,
    "elufast_small": fastnet.DEFAULT_CFG,
    "elufast_small_nonorm": fastnet.DEFAULT_CFG,
    "elu_paper18": paper.DEFAULT_CFG,
    "elu_paper11": paper.DEFAULT_CFG,
    "elubench94": airbench.DEFAULT_CFG,
    "elubench_small": airbench.DEFAULT_CFG,
}

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_CFGS",
    "UnknownModelError",
    "create_model",
    "get_act_layer",
    "list_models",
    "register_model",
]
