"""`eluserve elu-tax` measures the architecture the service serves by default, and builds its variants."""

from __future__ import annotations

from pathlib import Path

import onnx

from eluserve.core.contract import read_model_info
from eluserve.core.paths import default_model_file
from eluserve.export.cli import served_architecture
from eluserve.export.elu_tax import VARIANTS, build_variants
from eluserve.export.zoo import list_models


def test_default_is_the_served_models_architecture() -> None:
    architecture = served_architecture()
    assert architecture == read_model_info(default_model_file()).architecture
    assert architecture in list_models()  # elu-tax can build it


def test_variants_differ_only_in_activation(tmp_path: Path) -> None:
    paths = build_variants(served_architecture(), tmp_path)
    assert set(paths) == set(VARIANTS)
    ops = {name: {node.op_type for node in onnx.load(str(path)).graph.node} for name, path in paths.items()}
    assert "Relu" in ops["relu"] and "Elu" not in ops["relu"]
    assert "Elu" in ops["elu_plain"]
    assert "Elu" not in ops["elu_fused"] and "Relu" not in ops["elu_fused"]  # ELUs are fused ops now
