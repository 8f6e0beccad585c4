"""The lock (requirements/, `make lock`): what CI and the Bento install, in step with pyproject.toml.

`make setup` installs requirements/dev.txt (every extra CI uses), the Bento requirements/serving.txt
(the serving install). These tests keep the two consistent with each other, with pyproject's ranges
and with the environment they run in, and keep the CUDA build of torch out.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEV_LOCK = ROOT / "requirements" / "dev.txt"
SERVING_LOCK = ROOT / "requirements" / "serving.txt"
#: The extras `make setup` installs (the lock's `--extra`s).
LOCKED_EXTRAS = ("train", "dev", "bench", "distributed")
#: NVML's Python bindings (a BentoML dependency, no CUDA libraries): the one nvidia-* package allowed.
NVML = "nvidia-ml-py"


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


DEV = _pins(DEV_LOCK)
SERVING = _pins(SERVING_LOCK)


def test_the_serving_lock_is_the_dev_lock_s_serving_half() -> None:
    assert SERVING and set(SERVING) < set(DEV)
    assert {name: DEV[name] for name in SERVING} == SERVING
    assert "torch" not in SERVING and "ray" not in SERVING and "pytest" not in SERVING


def test_the_locked_releases_lie_in_pyproject_s_ranges() -> None:
    declared = [(r, SERVING) for r in PROJECT["dependencies"]]
    declared += [(r, DEV) for extra in LOCKED_EXTRAS for r in PROJECT["optional-dependencies"][extra]]
    declared += [(r, DEV) for r in PROJECT["dependencies"]]
    for requirement, lock in declared:
        parsed = Requirement(requirement)
        name = canonicalize_name(parsed.name)
        assert name in lock, f"{requirement} is not in the lock: run `make lock`"
        assert parsed.specifier.contains(lock[name], prereleases=True), f"{requirement}: {lock[name]} locked"


def test_torch_is_the_cpu_build_and_no_cuda_libraries_are_locked() -> None:
    assert DEV["torch"] == Version("2.13.0+cpu")
    for lock in (DEV, SERVING):
        assert not [name for name in lock if name.startswith("nvidia-") and name != NVML]


def test_the_bento_installs_the_serving_lock() -> None:
    python = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]
    assert python["requirements_txt"] == SERVING_LOCK.relative_to(ROOT).as_posix()
    assert python["lock_packages"] is False


def test_the_environment_under_test_is_the_lock() -> None:
    """What runs these tests was installed from the lock (`make setup`): a package at another release
    means the results are not the lock's. Packages the environment lacks are skipped (a GPU host swaps
    onnxruntime for onnxruntime-gpu)."""
    drifted = []
    for name, locked in DEV.items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed != locked:
            drifted.append(f"{name}: {installed} installed, {locked} locked")
    assert not drifted, "reinstall with `make setup`, or `make lock` and commit:\n" + "\n".join(drifted)
