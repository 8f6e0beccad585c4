"""`make bento`: the eluserve wheel, then `bentoml build`; the Bento holds the package and default model."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.deadlines import COMMAND_S
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
    wheel = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", "dist", "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
    )
    assert wheel.returncode == 0, wheel.stderr
    result = subprocess.run(
        [BENTOML, "build", "--output", "tag"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tag = next(line for line in result.stdout.splitlines() if line.startswith("__tag__:"))
    name, version = tag.removeprefix("__tag__:").split(":")
    path = home / "bentos" / name / version
    assert path.is_dir()
    return path


def test_the_bento_holds_the_package_with_the_default_model_and_no_training_code(bento: Path) -> None:
    src = bento / "src"
    assert (src / "docs" / "model-format.md").is_file()
    for absent in ("tests", "export", "load_tests", "deploy", "service", "models", ".venv"):
        assert not (src / absent).exists(), absent
    (wheel,) = (bento / "env" / "python" / "wheels").glob("eluserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {name.split("/")[0] for name in names} == {"eluserve", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "eluserve/service/app.py" in names and "eluserve/core/session.py" in names
    assert "eluserve/models/elufast-cifar10/model.onnx" in names
    assert not any(name.startswith("eluserve/models/elu-paper18") for name in names)


def test_the_bento_runs_without_torch_and_without_tracking(bento: Path) -> None:
    (wheel,) = (bento / "env" / "python" / "wheels").glob("eluserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("METADATA"))
    runtime = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    for package in ("onnxruntime", "onnx", "pillow", "numpy", "prometheus-client", "bentoml"):
        assert any(line.startswith(package) for line in runtime), package
    assert not any(line.startswith(("torch", "ray")) for line in runtime)
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert {"name": "BENTOML_DO_NOT_TRACK", "value": "True"}.items() <= manifest["envs"][0].items()
    assert manifest["service"] == "eluserve.service.app:EluClassifier"


def test_the_bento_installs_the_serving_lock(bento: Path) -> None:
    """The Bento's environment installs requirements/serving.txt as it is (`lock_packages: false`), then
    the wheel."""

    def pins(text: str) -> set[str]:
        return {line.split()[0] for line in text.splitlines() if "==" in line and not line.startswith("#")}

    python = bento / "env" / "python"
    locked = pins((REPO_ROOT / "requirements" / "serving.txt").read_text())
    assert locked and pins((python / "requirements.txt").read_text()) == locked
    assert not (python / "requirements.lock.txt").exists()
