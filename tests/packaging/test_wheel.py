"""The wheel works outside the checkout: built, installed into a fresh venv, run from an empty folder.

What `make wheel` builds is what a user gets from `pip install eluserve-*.whl`: one top-level package
(`eluserve`) with the default model as package data, no torch or Ray among its base dependencies, and
the commands working with nothing of the checkout on the path. The venv is installed from pip's cache
(the dev venv's install filled it), so the module takes about a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from load_tests import REPO_ROOT
from load_tests.servers import ServerProcess, free_port
from tests.conftest import CIFAR10_LABELS as LABELS
from tests.deadlines import COMMAND_S, STARTUP_S

pytestmark = pytest.mark.integration  # builds, installs and runs the wheel in subprocesses

#: Base dependencies the serving install must never pull in.
HEAVY = ("torch", "ray", "onnxscript")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    #: An empty folder outside the checkout, where every command runs.
    cwd: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = COMMAND_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "eluserve"), *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _run(command: list[str], cwd: Path, timeout: float = COMMAND_S) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.is_relative_to(REPO_ROOT)
    dist = root / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), "."],
        REPO_ROOT,
    )
    (wheel,) = dist.glob("eluserve-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root)
    _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile", str(wheel)],
        root,
        timeout=COMMAND_S,
    )
    cwd = root / "cwd"
    cwd.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ELUSERVE_", "BENTOML_", "PYTHON", "VIRTUAL_ENV"))
    }
    env |= {"BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(root / "bentoml-home")}
    return Installed(wheel, venv, cwd, env)


def test_the_wheel_holds_one_package_with_the_default_model(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert {name.split("/")[0] for name in names} == {
        "eluserve",
        installed.wheel.name.split("-py3")[0] + ".dist-info",
    }
    assert "eluserve/models/elufast-cifar10/model.onnx" in names
    assert "eluserve/service/app.py" in names and "eluserve/core/contract.py" in names
    assert not any(name.startswith(("eluserve/load_tests", "eluserve/tests")) for name in names)
    base = [
        line.removeprefix("Requires-Dist: ").split(";")[0].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    ]
    assert "onnxruntime<2,>=1.20" in base and "bentoml<1.5,>=1.4.40" in base
    assert "eluserve/service/runtime/__init__.py" in names and "eluserve/service/device/host.py" in names
    assert "eluserve/service/api/classify.py" in names
    assert not [requirement for requirement in base if requirement.startswith(HEAVY)]


def test_the_package_is_imported_from_the_venv(installed: Installed) -> None:
    python = str(installed.venv / "bin" / "python")
    script = "import eluserve, eluserve.service; print(eluserve.__file__); print(eluserve.service.__file__)"
    result = subprocess.run(
        [python, "-c", script],
        cwd=installed.cwd,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
    )
    assert result.returncode == 0, result.stderr
    for path in result.stdout.split():
        assert Path(path).is_relative_to(installed.venv) and "site-packages" in path


def test_models_and_info_describe_the_packaged_default(installed: Installed) -> None:
    models = installed.run("models")
    assert models.returncode == 0, models.stderr
    assert "elufast-cifar10" in models.stdout and "(default)" in models.stdout
    assert str(installed.venv) in models.stdout  # the package data, not the checkout's models/
    info = installed.run("info")
    assert info.returncode == 0, info.stderr
    document = json.loads(info.stdout)
    assert document["name"] == "elufast-cifar10" and document["num_classes"] == 10


def write_images(folder: Path) -> list[Path]:
    """Two JPEGs and a PNG of different sizes, generated here."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    paths = []
    for name, size in (("a.jpg", (32, 32)), ("b.jpg", (64, 48)), ("c.png", (40, 40))):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = folder / name
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_classify_a_folder_with_the_default_model(installed: Installed) -> None:
    images = write_images(installed.cwd / "photos")
    result = installed.run("classify", "photos")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(Path(row["path"]).name for row in rows) == sorted(path.name for path in images)
    assert all(row["label"] in LABELS and not row["error"] for row in rows), rows


@pytest.fixture
def server(installed: Installed) -> Iterator[ServerProcess]:
    port = free_port()
    log_path = installed.cwd.parent / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(installed.venv / "bin" / "eluserve"), "serve", "--port", str(port)],
            cwd=installed.cwd,
            env=installed.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started = ServerProcess("eluserve serve", f"http://127.0.0.1:{port}", "/readyz", process, log_path)
    try:
        started.wait_ready(timeout=STARTUP_S)
        yield started
    finally:
        started.stop()


def test_serve_answers_classify(server: ServerProcess, installed: Installed) -> None:
    (image,) = write_images(installed.cwd / "upload")[:1]
    response = httpx.post(
        f"{server.url}/classify", files={"image": ("a.jpg", image.read_bytes(), "image/jpeg")}, timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"].startswith("elufast-cifar10:") and body["label"] in LABELS
