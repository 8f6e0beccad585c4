"""The service's own routes straight to its Starlette app, past the parts of BentoML's stack they skip.

BentoML's worker app is a Starlette app of its own: its middleware (traffic metrics, OpenTelemetry,
access log, request deadline, concurrency limit, CORS when configured, BentoML's request context), then
its exception middleware and router, whose mount at "/" is our app (`eluserve.service.app.http_app`),
with an error middleware, exception middleware and router of its own. For a 32×32 image, all of it and
BentoML's access log cost ~0.16 CPU-ms per request, a third of the request path's Python time:
/classify at c=32 served 520 images per CPU-second through them and 567 past them with the access log
off (docs/log/serving-rounds.md, "Round 4"; the access log alone: 464 against 493).

`install` changes the middleware list BentoML's app factory builds, in two ways:

- `OwnRoutes` goes in just before BentoML's request context: a request for one of our routes leaves
  BentoML's stack there, for our app or straight for the route's endpoint. It has been through
  BentoML's traffic metrics (so `bentoml_service_request_*` keep counting our routes), access log
  (when on), request deadline (504), concurrency limit (the contract's 429,
  `eluserve.service.runtime.bentoml_patches`) and CORS (when on), the same middleware instances as every other
  route. It skips the request context (`bentoml.context.request`, which none of our routes reads),
  BentoML's exception middleware and router, and for most routes our own. A path that neither our
  routes nor BentoML's serve goes to our app too, whose 404 is the contract's error body
  (`eluserve.service.api.errors`); BentoML's router answers it in plain text. So does a method other
  than GET or HEAD on one of BentoML's paths: our app's handler answers it, as a 405.
- BentoML's traffic metrics label each request with its route, not its raw path: a route of ours
  with path parameters by its template (`/models/{name}/classify`), a path that no route serves as
  `unmatched`. BentoML labels by the raw path, so every distinct path a client sends (a scanner's
  thousands, or a model name per request) became series of its own in `/metrics`, without bound.
  `EndpointLabel` shows that middleware the label in place of the path; `RealPath` puts the path back
  before anything else reads it.
- OpenTelemetry's middleware is left out while tracing is off. Our routes are in its `excluded_urls`
  then, so for them it only matched the URL against those patterns on every request; BentoML's own
  routes (/metrics, probes) would only make spans that nothing samples or exports.

The unbounded metrics labels are a BentoML bug, written up for upstream in docs/upstream.md ("Traffic
metrics label requests by raw path"); `EndpointLabel` and `RealPath` go when its fix ships. `TARGETS`
lists what this module relies on: tests/service/runtime/test_compat.py fails when any of it changes in
the installed BentoML, while `install` on an unknown BentoML only checks what it can and warns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route

logger = logging.getLogger(__name__)

#: The property replaced, the middleware lists it builds on (the class names `rearrange` matches), and
#: the app whose routes and mounts `BENTOML_PATHS` and `OwnRoutes` mirror.
TARGETS = (
    "_bentoml_impl.server.app:ServiceAppFactory.middlewares",
    "_bentoml_impl.server.app:ServiceAppFactory.__call__",
    "_bentoml_impl.server.app:ContextMiddleware",
    # Labels each request with scope["path"], which `EndpointLabel` rewrites around it.
    "bentoml._internal.server.http.instruments:RunnerTrafficMetricsMiddleware.__call__",
    "bentoml._internal.server.base_app:BaseAppFactory.middlewares",
    "bentoml._internal.server.base_app:BaseAppFactory.get_system_routes",
)

ASGIApp = Callable[..., Any]


class RouteTable:
    """Our app's routes, as `OwnRoutes` and `EndpointLabel` look them up: those without path parameters
    by their path (one dict lookup for the hot routes), the others by their template's regex."""

    def __init__(self, app: Starlette) -> None:
        routes = [route for route in app.routes if isinstance(route, Route)]
        self.exact = {route.path: route for route in routes if "{" not in route.path}
        self.templated = tuple((route.path, route.path_regex) for route in routes if "{" in route.path)

    def template(self, path: str) -> str | None:
        """The route that serves `path` (any method), as its path or template; None if none does."""
        if path in self.exact:
            return path
        return next((template for template, pattern in self.templated if pattern.match(path)), None)


class OwnRoutes:
    """ASGI middleware: our app's routes and unknown paths to `ours`, BentoML's on through its stack.

    A request for a route without path parameters (`/classify`, `/classify_batch`, `/model`, ...) with
    one of its methods goes straight to the route's endpoint: our app's error and exception middleware
    and router would only find that route again, and the endpoints answer every error themselves
    (`eluserve.service.api.classify.Frontend`). Anything else (templated routes, a wrong method: our app's
    405) goes through our app.
    """

    def __init__(self, app: ASGIApp, ours: Starlette) -> None:
        self.app = app
        self.ours = ours
        self.routes = RouteTable(ours)

    def is_ours(self, path: str) -> bool:
        """Whether `path` is one of our routes (any method: our app answers 405 for a wrong one)."""
        return self.routes.template(path) is not None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.routes.exact.get(scope["path"])
        if route is not None and route.methods is not None and scope["method"] in route.methods:
            response = await route.endpoint(Request(scope, receive))
            await response(scope, receive, send)
        elif self.is_ours(scope["path"]) or not bentoml_serves(scope["path"]):
            await self.ours(scope, receive, send)
        elif scope["method"] not in BENTOML_METHODS and HTTPException in self.ours.exception_handlers:
            handler = self.ours.exception_handlers[HTTPException]
            refusal = HTTPException(405, headers={"Allow": ", ".join(sorted(BENTOML_METHODS))})
            response = await handler(Request(scope, receive), refusal)
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)


#: BentoML 1.4's own routes (besides the mount of our app): exact paths, and the prefix of a mount.
BENTOML_PATHS = frozenset({"/", "/livez", "/healthz", "/readyz", "/metrics", "/schema.json", "/docs.json"})
BENTOML_PREFIXES = ("/static_content",)
#: The methods BentoML's own routes take (Starlette's default for a `Route`, and its static files).
BENTOML_METHODS = frozenset({"GET", "HEAD"})
#: The label of a path that no route serves.
UNMATCHED = "unmatched"
#: Where `EndpointLabel` keeps the real path while BentoML's traffic metrics read the label.
_REAL_PATH = "eluserve.real_path"


def bentoml_serves(path: str) -> bool:
    """Whether one of BentoML's own routes (`BENTOML_PATHS`, `BENTOML_PREFIXES`) serves `path`."""
    return path in BENTOML_PATHS or any(path.startswith(prefix + "/") for prefix in BENTOML_PREFIXES)


class EndpointLabel:
    """ASGI middleware around BentoML's traffic metrics: `scope["path"]` reads as the request's route
    (a bounded set of values) until `RealPath` restores it."""

    def __init__(self, app: ASGIApp, ours: Starlette) -> None:
        self.app = app
        self.routes = RouteTable(ours)

    def label(self, path: str) -> str:
        """The route that serves `path`, as its template, or `UNMATCHED`."""
        if path in BENTOML_PATHS:
            return path
        template = self.routes.template(path)
        if template is not None:
            return template
        return next((prefix for prefix in BENTOML_PREFIXES if path.startswith(prefix + "/")), UNMATCHED)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            label = self.label(scope["path"])
            if label != scope["path"]:
                scope[_REAL_PATH] = scope["path"]
                scope["path"] = label
        await self.app(scope, receive, send)


class RealPath:
    """ASGI middleware just inside BentoML's traffic metrics: the request's path again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if _REAL_PATH in scope:
            scope["path"] = scope.pop(_REAL_PATH)
        await self.app(scope, receive, send)


def rearrange(middleware: Iterable[Middleware], ours: Starlette, *, tracing: bool) -> list[Middleware]:
    """BentoML's middleware list with `OwnRoutes` before its request context, its traffic metrics
    between `EndpointLabel` and `RealPath` (when metrics are on), and without OpenTelemetry's
    middleware unless `tracing`.

    Raises:
        ValueError: the list has no `ContextMiddleware`, so there is no place that all of BentoML's
            traffic handling precedes.
    """
    rearranged: list[Middleware] = []
    for entry in middleware:
        name = entry.cls.__name__
        if name == "OpenTelemetryMiddleware" and not tracing:
            continue
        if name == "ContextMiddleware":
            rearranged.append(Middleware(OwnRoutes, ours=ours))
        if name == "RunnerTrafficMetricsMiddleware":
            rearranged += [Middleware(EndpointLabel, ours=ours), entry, Middleware(RealPath)]
        else:
            rearranged.append(entry)
    names = [entry.cls.__name__ for entry in rearranged]
    if "ContextMiddleware" not in names:
        raise ValueError(f"no ContextMiddleware in BentoML's middleware list {names}")
    return rearranged


def install(ours: Starlette, *, tracing: bool) -> bool:
    """Rearrange the middleware of the app BentoML builds for a service that mounts `ours` at "/".

    Returns:
        whether BentoML's app factory has the shape this was written for; otherwise every request goes
        through BentoML's whole stack, as it would without this module (and the log says so).
    """
    try:
        from _bentoml_impl.server.app import ServiceAppFactory
    except ImportError:
        logger.warning("BentoML's ServiceAppFactory moved; every request goes through its whole stack")
        return False
    built = ServiceAppFactory.middlewares
    if not isinstance(built, property) or built.fget is None:
        logger.warning("BentoML's app factory changed shape; every request goes through its whole stack")
        return False
    bentoml_middleware = built.fget
    if getattr(bentoml_middleware, "eluserve_fast_path", False):
        return True

    def middleware(factory: Any) -> list[Middleware]:
        entries = bentoml_middleware(factory)
        if not any(app is ours and path == "/" for app, path, _ in factory.service.mount_apps):
            return entries
        try:
            return rearrange(entries, ours, tracing=tracing)
        except ValueError as exc:
            logger.warning("%s; every request goes through BentoML's whole stack", exc)
            return entries

    middleware.eluserve_fast_path = True  # type: ignore[attr-defined]
    ServiceAppFactory.middlewares = property(middleware)
    return True
