"""The framework glue's targets are the code it was written against: a failure here is a release of
BentoML, uvicorn or Python whose patched internals changed.

Each module of `eluserve.service.runtime` lists in `TARGETS` what it replaces, extends or relies on (a
method, a class, a table). Each target's code is fingerprinted (its syntax tree without docstrings or
comments, unparsed and hashed) and compared with the fingerprint recorded here for the tested releases
(the lock's, requirements/dev.txt). At run time a patch only checks the shape it can (names,
signatures) and warns when they moved; this test is the strict check, so that a new release in the
lock fails CI, early (no server starts), rather than leaving a patch wrong.

When one fails: read the target's new code in the installed release against the patch's module
docstring, adapt the patch (or delete it, if docs/upstream.md's fix shipped), then record the printed
fingerprint. asyncio's targets are the same code in CPython 3.11 (CI) and 3.12 (the GPU hosts), the
range `requires-python` allows.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest
import uvicorn.config
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
from starlette.applications import Starlette

from eluserve.service import runtime
from eluserve.service.config import load_settings

#: Each target's fingerprint in the tested releases.
FINGERPRINTS = {
    # bentoml 1.4.40
    "_bentoml_impl.server.app:ContextMiddleware": "4d5d196834839aff",
    "_bentoml_impl.server.app:ServiceAppFactory.__call__": "438a970b62856bcd",
    "_bentoml_impl.server.app:ServiceAppFactory.middlewares": "8749b65bfbd21611",
    "_bentoml_impl.worker.service:main": "2ae2b97b9d64e74f",
    "bentoml._internal.configuration.containers:_BentoMLContainerClass.prometheus_multiproc_dir": (
        "60b465b995dc6f58"
    ),
    "bentoml._internal.context:_ComponentContext": "b88d13a204bfe48c",
    "bentoml._internal.server.base_app:BaseAppFactory.get_system_routes": "ac69413b87bf3b66",
    "bentoml._internal.server.base_app:BaseAppFactory.middlewares": "b5741b43e4a0b52c",
    "bentoml._internal.server.http.instruments:RunnerTrafficMetricsMiddleware.__call__": "19d2faff7eda7f7b",
    "bentoml._internal.server.http.traffic:MaxConcurrencyMiddleware.__call__": "120fdceffd96b412",
    "bentoml._internal.server.http.traffic:MaxConcurrencyMiddleware.__init__": "dc519b3be048ebf9",
    "bentoml._internal.server.http.traffic:TimeoutMiddleware.__call__": "7b67703033fcaea8",
    "bentoml._internal.server.http.traffic:TimeoutMiddleware.__init__": "e7bb87f8bb2c3306",
    "bentoml._internal.server.http.traffic:TimeoutMiddleware._set_timer_out": "55cf5e7eb57de7fb",
    "bentoml._internal.utils.analytics.usage_stats:do_not_track": "5cfd29d977fe6efe",
    "bentoml.serving:ensure_prometheus_dir": "87f5100fe1f9161f",
    # uvicorn 0.55.0
    "uvicorn.config:Config.get_loop_factory": "0d6acc540e5450e4",
    "uvicorn.config:Config.load": "b268adba388a8c9b",
    "uvicorn.config:HTTP_PROTOCOLS": "f3233e0e0607f1fd",
    "uvicorn.config:LOOP_FACTORIES": "3f8d1fdd23de58a9",
    "uvicorn.protocols.http.h11_impl:H11Protocol.__init__": "f76cd75e9d0d6a9e",
    "uvicorn.protocols.http.h11_impl:H11Protocol.connection_lost": "3c709c671ca04662",
    "uvicorn.protocols.http.h11_impl:H11Protocol.connection_made": "52a70c678525d887",
    "uvicorn.protocols.http.h11_impl:H11Protocol.data_received": "fdbe8f1922cd7673",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.__init__": "ef1b7c9c785b9967",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.connection_lost": "8a5a84898dabba92",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.connection_made": "52a70c678525d887",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_headers_complete": "f5d7f89383b961ff",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_message_begin": "4f7bac281585eb31",
    # CPython 3.11 and 3.12 (the same code in both)
    "asyncio.selector_events:BaseSelectorEventLoop._accept_connection": "ce515e6650b672a3",
    "asyncio.selector_events:BaseSelectorEventLoop._add_reader": "e0cf4a80620b080d",
    "asyncio.selector_events:BaseSelectorEventLoop._remove_reader": "ecbb790e703228ee",
    "asyncio.selector_events:BaseSelectorEventLoop._start_serving": "04a88ad25a874f70",
    "asyncio.selector_events:BaseSelectorEventLoop._stop_serving": "51d11cecf7f416c3",
}

TARGETS = sorted({(module.__name__, target) for module in runtime.MODULES for target in module.TARGETS})


def _source_file(module: str) -> Path:
    """The file of `module`, found without importing it."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} is not installed"
    return Path(spec.origin)


def _without_docstrings(node: ast.AST) -> ast.AST:
    for inner in ast.walk(node):
        body = getattr(inner, "body", None)
        if (
            isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            inner.body = body[1:] or [ast.Pass()]
    return node


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(target, ast.Name) and target.id == name for target in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    return False


def fingerprint(target: str) -> str:
    """A hash of the code `target` ("module:Class.method", "module:function", "module:TABLE") names.

    Read from the module's file, not from the live object, which the patch may have replaced.
    """
    module, _, qualname = target.partition(":")
    scope: list[ast.stmt] = ast.parse(_source_file(module).read_text()).body
    found: list[ast.stmt] = []
    for part in qualname.split("."):
        found = [node for node in scope if _defines(node, part)]
        assert found, f"{target}: no {part!r} in {module}"
        scope = [inner for node in found for inner in getattr(node, "body", [])]
    code = "\n".join(ast.unparse(_without_docstrings(node)) for node in found)
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def _releases() -> str:
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("bentoml", "uvicorn"))
    return f"{versions}, Python {sys.version.split()[0]}"


def test_every_recorded_fingerprint_is_a_target() -> None:
    targets = {target for _, target in TARGETS}
    stale = set(FINGERPRINTS) - targets
    assert not stale, f"fingerprints of targets no module lists: {sorted(stale)}"


@pytest.mark.parametrize(("module", "target"), TARGETS, ids=[target for _, target in TARGETS])
def test_the_target_is_the_code_the_glue_was_written_against(module: str, target: str) -> None:
    recorded = FINGERPRINTS.get(target)
    found = fingerprint(target)
    assert found == recorded, (
        f"{target}, which {module} relies on, is not the code it was written against ({_releases()}; "
        f"recorded {recorded}, found {found}). Check {module} against the new code (its docstring says "
        "what it assumes; docs/upstream.md whether the upstream fix shipped), then record the new "
        "fingerprint in tests/service/runtime/test_compat.py."
    )


def test_every_change_is_in_place_on_the_tested_releases(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`install` on the tested releases: nothing is left out with a warning. The state it changes is
    put back afterwards (the tables, methods and property it replaces)."""
    for table in ("HTTP_PROTOCOLS", "LOOP_FACTORIES"):
        monkeypatch.setattr(uvicorn.config, table, dict(getattr(uvicorn.config, table)))
    monkeypatch.setattr(TimeoutMiddleware, "__call__", TimeoutMiddleware.__call__)
    monkeypatch.setattr(MaxConcurrencyMiddleware, "__call__", MaxConcurrencyMiddleware.__call__)
    monkeypatch.setattr(ServiceAppFactory, "middlewares", ServiceAppFactory.__dict__["middlewares"])
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")
    from bentoml._internal.configuration.containers import BentoMLContainer

    before = BentoMLContainer.prometheus_multiproc_dir.get()
    try:
        applied = runtime.install(Starlette(), load_settings({}), tmp_path / "prometheus")
        assert BentoMLContainer.prometheus_multiproc_dir.get() == str(tmp_path / "prometheus")
    finally:
        BentoMLContainer.prometheus_multiproc_dir.set(before)
    assert applied == dict.fromkeys(applied, True)
    assert list(applied) == [
        "no_tracking",
        "bentoml_patches",
        "http_protocol",
        "accept_balance",
        "metrics_folder",
        "fast_path",
    ]
