"""The answer to a request no route serves: the contract's error body, with Starlette's status."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

#: The error code of each status Starlette's router raises.
CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_exception(request: Request, exc: Exception) -> Response:
    """`{"error": {"code", "message"}}` for Starlette's 404 (no route has the path: an unknown route,
    or a path parameter with an encoded "/") and 405 (the route has other methods, in `Allow`)."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 405:
        message = (
            f"{request.method} is not allowed on {request.url.path}; allowed: {exc.headers.get('Allow', '')}"
        )
    elif status == 404:
        message = f"no route serves {request.url.path}"
    else:
        message = exc.detail
    error = {"code": CODES.get(status, "http_error"), "message": message}
    return JSONResponse({"error": error}, status_code=status, headers=exc.headers)
