"""`bentoml build` from bentofile.yaml: the Bento holds the serving code, the model and no training code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.service.bento_server import BENTOML, REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("build") / "bentoml-home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ELUSERVE_", "BENTOML_"))},
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    result = subprocess.run(
        [BENTOML, "build", "--output", "tag"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tag = next(line for line in result.stdout.splitlines() if line.startswith("__tag__:"))
    name, version = tag.removeprefix("__tag__:").split(":")
    path = home / "bentos" / name / version
    assert path.is_dir()
    return path


def test_the_bento_holds_serving_code_and_docs_only(bento: Path) -> None:
    src = bento / "src"
    assert (src / "service" / "service.py").is_file() and (src / "service" / "inference.py").is_file()
    assert (src / "docs" / "model-format.md").is_file()
    for absent in ("tests", "export", "load_tests", "deploy", ".venv"):
        assert not (src / absent).exists(), absent
    default_model = REPO_ROOT / "models" / "elufast-cifar10" / "model.onnx"
    assert (src / "models" / "elufast-cifar10" / "model.onnx").is_file() == default_model.is_file()


def test_the_bento_runs_without_torch_and_without_tracking(bento: Path) -> None:
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    for package in ("onnxruntime", "onnx", "pillow", "numpy", "prometheus-client", "bentoml"):
        assert package in requirements
    assert "torch" not in requirements
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert {"name": "BENTOML_DO_NOT_TRACK", "value": "True"}.items() <= manifest["envs"][0].items()
    assert manifest["service"] == "service.service:EluClassifier"


def test_the_default_model_path_points_into_the_bento(bento: Path) -> None:
    src = bento / "src"
    code = "from service.config import DEFAULT_MODEL; print(DEFAULT_MODEL)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELUSERVE_")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == src / "models" / "elufast-cifar10" / "model.onnx"
