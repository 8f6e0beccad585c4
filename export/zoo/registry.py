"""A small model registry, as in timm: variants register themselves, the trainer asks by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}


class UnknownModelError(KeyError):
    """Raised for a model name that no module registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register a variant factory under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered variant, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the variant `name`; an unknown name fails with the list of what exists."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}"
        ) from None
    return factory(**kwargs)
