"""`eluserve.service.http_protocol.install` puts the header deadline where uvicorn looks for its protocol.

The deadline's behaviour against real slow clients is tested end to end in
tests/reliability/test_hostile_inputs.py; this checks the wiring that BentoML's worker relies on.
"""

from __future__ import annotations

import pytest
import uvicorn
import uvicorn.config
from starlette.applications import Starlette

from eluserve.service import http_protocol
from eluserve.service.config import load_settings


@pytest.mark.parametrize("http", ["auto", "h11"])
def test_install_makes_uvicorn_build_the_deadline_protocol(
    monkeypatch: pytest.MonkeyPatch, http: str
) -> None:
    monkeypatch.setattr(uvicorn.config, "HTTP_PROTOCOLS", dict(uvicorn.config.HTTP_PROTOCOLS))
    monkeypatch.setattr(http_protocol.HeaderDeadlineProtocol, "header_timeout_s", 10.0)
    http_protocol.install(2.5)
    config = uvicorn.Config(Starlette(), http=http, log_config=None)
    config.load()
    assert config.http_protocol_class is http_protocol.HeaderDeadlineProtocol
    assert http_protocol.HeaderDeadlineProtocol.header_timeout_s == 2.5


def test_the_deadline_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELUSERVE_HEADER_TIMEOUT_S", "4.5")
    assert load_settings().header_timeout_s == 4.5
    monkeypatch.setenv("ELUSERVE_HEADER_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="header_timeout_s"):
        load_settings()
