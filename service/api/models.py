"""Routes over the model repository: per-model classification, listing, and Triton's load/unload.

    GET  /models                                      every loaded model: versions, state, provider
    GET  /models/{name}                               one model (`ModelRegistry.describe`)
    GET  /models/{name}/versions/{version}            that version's /model document
    POST /models/{name}/classify                      /classify on the latest version of `name`
    POST /models/{name}/classify_batch                /classify_batch on it
    POST /models/{name}/versions/{version}/classify   ... on that version (and classify_batch)
    POST /v2/repository/index                         Triton: every model on disk and its state
    POST /v2/repository/models/{name}/load            Triton: (re)load every version from disk
    POST /v2/repository/models/{name}/unload          Triton: stop serving it

The repository routes take Triton's optional JSON body: nothing, or an object (at most
`MAX_CONTROL_BODY_BYTES`, parsed by `eluserve.service.jsonio`); the index honours ``"ready": true``
(only what is served), load refuses ``parameters`` (Triton's configuration and file overrides, which
the service does not take), anything else is a 400 `invalid_request`.

Errors follow the service's contract, ``{"error": {"code", "message"}}``: an unknown model or version
is 404 `model_not_found`; load and unload are 403 `model_control_disabled` unless the operator set
``ELUSERVE_MODEL_CONTROL=explicit``; a load that fails is 400 `model_load_failed`, naming the file,
and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from eluserve.core.errors import ClientError, ServiceError
from eluserve.service import jsonio
from eluserve.service.api.classify import count_client_error, error_response
from eluserve.service.config import Settings
from eluserve.service.control import LOADED, UNLOADED, Follower
from eluserve.service.repository import ModelLoadError, ModelRegistry

logger = logging.getLogger(__name__)

#: Seconds a load/unload request waits for the other workers to apply it before it answers anyway.
PROPAGATION_TIMEOUT_S = 120.0


class ModelsApi:
    """The handlers; one instance per worker, over that worker's registry."""

    def __init__(self, registry: ModelRegistry, follower: Follower, settings: Settings, workers: int) -> None:
        self.registry = registry
        self.follower = follower
        self.settings = settings
        self.workers = workers
        #: Loads and unloads under way (held here: the event loop keeps tasks only weakly).
        self._changes: set[asyncio.Task[Response]] = set()

    async def list_models(self, _: Request) -> Response:
        loaded = self.registry.loaded()
        return JSONResponse(
            {
                "default_model": self.registry.default_name,
                "model_control": self.settings.model_control,
                "models": [self.registry.describe(name) for name in sorted(loaded)],
            }
        )

    async def get_model(self, request: Request) -> Response:
        return await _guarded(lambda: self._get_model(request))

    async def _get_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if "version" not in request.path_params:
            return JSONResponse(self.registry.describe(name))
        with self.registry.lease(name, request.path_params["version"]) as served:
            return JSONResponse(served.info.to_dict())

    async def classify(self, request: Request) -> Response:
        return await self._on_model(request, "classify", request.path_params["name"])

    async def classify_batch(self, request: Request) -> Response:
        return await self._on_model(request, "classify_batch", request.path_params["name"])

    async def on_default(self, request: Request, endpoint: str) -> Response:
        """/classify, /classify_batch and /model: the default model's latest version."""
        return await self._on_model(request, endpoint, None)

    async def _on_model(self, request: Request, endpoint: str, name: str | None) -> Response:
        """Run `Frontend.<endpoint>` on a leased version: it stays served until the answer is out."""
        try:
            served = self.registry.acquire(name, request.path_params.get("version"))
        except ClientError as exc:
            count_client_error(exc)
            return error_response(exc)
        try:
            if endpoint != "model":
                # Under overload a refusal costs the headers and a small JSON answer, not the multipart
                # parsing and decoding of an upload the batcher would refuse anyway (one image is the
                # least a request can ask; the batcher checks again with the real count).
                served.batcher.admit(1)
            return await getattr(served.frontend, endpoint)(request)
        except ServiceError as exc:
            return error_response(exc)
        finally:
            self.registry.release(served)

    async def index(self, request: Request) -> Response:
        return await _guarded(lambda: self._index(request))

    async def _index(self, request: Request) -> Response:
        options = await control_options(request, allowed=("ready",))
        ready = options.get("ready", False)
        if not isinstance(ready, bool):
            raise ClientError("invalid_request", f"'ready' must be true or false, got {ready!r}")
        rows = await anyio.to_thread.run_sync(self.registry.index)
        return JSONResponse([row for row in rows if row.get("state") == "READY"] if ready else rows)

    async def load(self, request: Request) -> Response:
        return await _guarded(lambda: self._change(request, LOADED))

    async def unload(self, request: Request) -> Response:
        return await _guarded(lambda: self._change(request, UNLOADED))

    async def _change(self, request: Request, state: str) -> Response:
        """Apply a load or unload here and in every worker, even if the request itself gives up.

        Loading a large model (building and warming its sessions) can outlast BentoML's request
        timeout, which cancels the handler: measured with the 97 MB flagship on the shared 2-core
        machine, 30 s and a 504. The change therefore runs as a task of its own that the request only
        waits for, so it still completes and reaches the other workers, and the index then shows it.
        """
        # Triton's unload takes "unload_dependents"; there are no dependents here, so it is moot.
        options = await control_options(request, allowed=("unload_dependents",) if state == UNLOADED else ())
        if not isinstance(options.get("unload_dependents", False), bool):
            raise ClientError("invalid_request", "'unload_dependents' must be true or false")
        name = request.path_params["name"]
        task = asyncio.ensure_future(self._apply_everywhere(name, state))
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)
        task.add_done_callback(_log_failure)
        return await asyncio.shield(task)

    async def _apply_everywhere(self, name: str, state: str) -> Response:
        if not self.settings.explicit_model_control:
            raise ClientError(
                "model_control_disabled",
                "loading and unloading models is off; the operator turns it on with "
                "ELUSERVE_MODEL_CONTROL=explicit",
                403,
            )
        if state == LOADED:
            try:
                versions = await anyio.to_thread.run_sync(self.registry.load, name)
            except ModelLoadError as exc:
                raise ClientError("model_load_failed", str(exc), 400) from exc
        else:
            await anyio.to_thread.run_sync(self.registry.unload, name)
            versions = []
        generation = self.follower.changed(name, state)
        applied, errors = await anyio.to_thread.run_sync(
            self.follower.state.wait_for_workers, generation, self.workers, PROPAGATION_TIMEOUT_S
        )
        if errors:
            raise ServiceError(
                "model_change_incomplete", f"{state} {name}: applied here, but " + "; ".join(errors), 500
            )
        return JSONResponse({"name": name, "state": state, "versions": versions, "workers": applied})


#: A repository request's body: Triton's are a few flags; nothing legitimate comes near this.
MAX_CONTROL_BODY_BYTES = 64 * 1024


async def control_options(request: Request, allowed: tuple[str, ...]) -> dict[str, object]:
    """The JSON object a repository request's body holds ({} for none), with only `allowed` keys.

    Raises:
        ClientError: 400 `invalid_request` for a body that is too large, not JSON, nested deeper than
            `jsonio.MAX_DEPTH`, not an object, or has other keys (``parameters`` among them).
    """
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_CONTROL_BODY_BYTES:
                raise ClientError("invalid_request", f"the body is over {MAX_CONTROL_BODY_BYTES} bytes")
    except ClientDisconnect as exc:
        raise ClientError("invalid_request", "the client went away before its body arrived") from exc
    if not body.strip():
        return {}
    try:
        options = jsonio.loads(body, what="the body")
    except jsonio.JsonError as exc:
        raise ClientError("invalid_request", str(exc)) from exc
    if not isinstance(options, dict):
        raise ClientError("invalid_request", "the body must be a JSON object")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ClientError(
            "invalid_request", f"unsupported options {unknown}; this route takes {list(allowed) or 'none'}"
        )
    return options


def _log_failure(task: asyncio.Task[Response]) -> None:
    """Log a change that failed unexpectedly (contract errors are answers, already given)."""
    error = None if task.cancelled() else task.exception()
    if error is not None and not isinstance(error, ClientError | ServiceError):
        logger.error("model change failed", exc_info=error)


async def _guarded(handler: Callable[[], Awaitable[Response]]) -> Response:
    try:
        return await handler()
    except ClientError as exc:
        count_client_error(exc)
        return error_response(exc)
    except ServiceError as exc:
        return error_response(exc)
