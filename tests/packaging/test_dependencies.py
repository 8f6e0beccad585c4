"""Every third-party package that installed code imports is a declared dependency (tests/packaging/
test_lock.py checks the ranges hold the locked releases).

Installed code is eluserve/, service/, export/ and models/ (pyproject's package-dir). An import that no
declaration covers works here only because something else pulls the package in (uvicorn and h11 came
with BentoML), and breaks the day that something stops. The serving install (`pip install eluserve`,
the Bento) holds no extra: what the serving side imports when its modules load must be in
``dependencies`` itself; a module of an extra's feature (torch in export/, Ray in distributed
classification) imports its packages from that extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: The folders installed as eluserve.* (`[tool.setuptools.package-dir]`).
INSTALLED = ("eluserve", "service", "export", "models")
#: The serving install's modules, which import only from ``dependencies`` when they load.
SERVING = ("eluserve/core", "eluserve/classify", "eluserve/cli.py", "eluserve/__init__.py", "service")


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


DEPENDENCIES = {_name(r) for r in PROJECT["dependencies"]}
EXTRAS = {_name(r) for extra in PROJECT["optional-dependencies"].values() for r in extra}
#: Top-level import name -> the distributions that install it (here, in the tested environment).
PROVIDERS = {
    top: {re.sub(r"[-_.]+", "-", dist).lower() for dist in dists}
    for top, dists in importlib.metadata.packages_distributions().items()
}


def _type_checking_only(node: ast.AST) -> bool:
    """An `if TYPE_CHECKING:` block: its imports are for type checkers, never run."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> Iterator[tuple[str, bool]]:
    """Each absolute import's top-level name in `path`, and whether it runs as the module loads."""
    tree = ast.parse(path.read_text(), str(path))
    deferred: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or _type_checking_only(node):
            deferred.update(id(inner) for inner in ast.walk(node) if inner is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("eluserve", "__future__"):
                yield top, id(node) not in deferred


def _third_party_imports() -> dict[str, dict[str, bool]]:
    """Relative path -> top-level name -> imported as the module loads (anywhere in the file)."""
    found: dict[str, dict[str, bool]] = {}
    for folder in INSTALLED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            imports: dict[str, bool] = {}
            for top, at_load in _imports(path):
                imports[top] = imports.get(top, False) or at_load
            if imports:
                found[path.relative_to(ROOT).as_posix()] = imports
    return found


IMPORTS = _third_party_imports()


def test_the_scan_sees_the_imports_it_is_about() -> None:
    assert IMPORTS["service/runtime/http_protocol.py"] == {"h11": True, "uvicorn": True}
    assert IMPORTS["eluserve/classify/ray_runner.py"]["ray"] is False  # deferred to the Ray runner


def test_every_third_party_import_of_installed_code_is_declared() -> None:
    undeclared = {
        f"{path}: {top} (installed by {sorted(PROVIDERS.get(top, ())) or 'nothing here'})"
        for path, imports in IMPORTS.items()
        for top in imports
        if not PROVIDERS.get(top, set()) & (DEPENDENCIES | EXTRAS)
    }
    assert not undeclared, "declare these in pyproject.toml:\n" + "\n".join(sorted(undeclared))


def test_the_serving_side_loads_with_the_serving_install_alone() -> None:
    outside = {
        f"{path}: {top}"
        for path, imports in IMPORTS.items()
        if path.startswith(SERVING)
        for top, at_load in imports.items()
        if at_load and not PROVIDERS.get(top, set()) & DEPENDENCIES
    }
    assert not outside, "imported as the module loads, not in `dependencies`:\n" + "\n".join(sorted(outside))
