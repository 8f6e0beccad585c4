"""`GET /`: eluserve's own page for people, in place of BentoML's index.

BentoML's index page loads Google Tag Manager, so every person who opened the service in a browser
sent a request to Google whatever `BENTOML_DO_NOT_TRACK` said. Ours (`index.html` beside this file)
has no external asset, and is served with a Content-Security-Policy that allows nothing but this
server: its one inline script and one inline style are allowed by their SHA-256, every other source
(scripts, styles, fonts, frames, other hosts' images or requests) is refused by the browser itself.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

PAGE = "index.html"


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@cache
def page() -> tuple[str, str]:
    """The page and its Content-Security-Policy, built once per worker."""
    html = files("eluserve.service.api").joinpath(PAGE).read_text(encoding="utf-8")
    scripts = [_sha256_source(s) for s in re.findall(r"<script>(.*?)</script>", html, flags=re.S)]
    styles = [_sha256_source(s) for s in re.findall(r"<style>(.*?)</style>", html, flags=re.S)]
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(scripts),
            "style-src " + " ".join(styles),
            "img-src 'self' blob: data:",
            "connect-src 'self'",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html, policy


async def index(_: Request) -> Response:
    html, policy = page()
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": policy,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )
