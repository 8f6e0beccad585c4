"""Where the packaged models are: package data, never a path into a source checkout.

`eluserve.models` maps to the repository's `models/` folder: in a checkout (editable install) it holds
every shipped model, in a built wheel or Bento only the embedded default.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from eluserve.core.contract import MODEL_FILE

#: The model `eluserve` serves and classifies with when none is named.
DEFAULT_MODEL_NAME = "elufast-cifar10"


def packaged_models_dir() -> Path:
    """The folder of packaged model folders (`<name>/model.onnx` each)."""
    return Path(str(files("eluserve.models")))


def default_model_file() -> Path:
    """The embedded default model's .onnx file."""
    return packaged_models_dir() / DEFAULT_MODEL_NAME / MODEL_FILE


def source_checkout() -> Path | None:
    """The repository this package is installed from (an editable install), or None (a wheel).

    The benchmarks (`load_tests/`) are not installed: `eluserve bench` runs them from here.
    """
    root = Path(__file__).resolve().parents[2]
    return root if (root / "load_tests" / "__main__.py").is_file() else None
