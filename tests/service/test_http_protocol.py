"""`eluserve.service.runtime.http_protocol.install` puts the header deadline where uvicorn looks for its
protocol.

The deadline's behaviour against real slow clients is tested end to end, over both parsers, in
tests/reliability/test_hostile_inputs.py; this checks the wiring that BentoML's worker relies on.
"""

from __future__ import annotations

import pytest
import uvicorn
import uvicorn.config
from starlette.applications import Starlette

from eluserve.service.config import HTTP_PARSERS, load_settings
from eluserve.service.runtime import http_protocol

PROTOCOLS = {"httptools": http_protocol.HttpToolsDeadlineProtocol, "h11": http_protocol.H11DeadlineProtocol}


@pytest.fixture
def uvicorn_protocols(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uvicorn.config, "HTTP_PROTOCOLS", dict(uvicorn.config.HTTP_PROTOCOLS))
    monkeypatch.setattr(http_protocol.HeaderDeadline, "header_timeout_s", 10.0)


def protocol_class(http: str) -> type:
    config = uvicorn.Config(Starlette(), http=http, log_config=None)
    config.load()
    return config.http_protocol_class


@pytest.mark.usefixtures("uvicorn_protocols")
@pytest.mark.parametrize("parser", HTTP_PARSERS)
def test_install_makes_uvicorn_build_the_deadline_protocol(parser: str) -> None:
    http_protocol.install(2.5, parser)
    assert protocol_class("auto") is PROTOCOLS[parser]
    # The named choices are ours too, whichever is the default.
    assert {http: protocol_class(http) for http in HTTP_PARSERS} == PROTOCOLS
    assert http_protocol.HeaderDeadline.header_timeout_s == 2.5


@pytest.mark.usefixtures("uvicorn_protocols")
def test_an_unknown_parser_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown HTTP parser 'picohttp'"):
        http_protocol.install(2.5, "picohttp")


def test_the_deadline_and_parser_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELUSERVE_HEADER_TIMEOUT_S", "4.5")
    monkeypatch.setenv("ELUSERVE_HTTP_PARSER", "h11")
    settings = load_settings()
    assert (settings.header_timeout_s, settings.http_parser) == (4.5, "h11")
    assert load_settings({}).http_parser == "httptools"
    monkeypatch.setenv("ELUSERVE_HEADER_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="header_timeout_s"):
        load_settings()
