"""A deadline for a request's line and headers, which uvicorn (as BentoML runs it) does not have.

uvicorn's only idle timeout, `timeout_keep_alive`, starts after a response and is cancelled by any byte
received, and nothing is armed on a new connection at all. So a client that connects and sends
nothing, or trickles its headers one byte at a time (slowloris), holds a connection, a file
descriptor and a slot of `max_concurrency` for as long as it likes; a few hundred of them starve the
service. ASGI middleware cannot help: it runs only once the headers are complete. The upload of the
body already has its own deadline (`eluserve.service.api.forms`, 408 `request_timeout`).

`HeaderDeadline` adds one timer per request to uvicorn's protocols: armed when a connection opens and
when the first byte of a kept-alive connection's next request arrives, disarmed once the parser has the
complete headers. On expiry the client gets the contract's 408 `request_timeout` JSON body, the
connection closes and `eluserve_client_errors_total{code="request_timeout"}` counts it. The protocols
also report each connection closed to `eluserve.service.runtime.accept_balance`, whose least-connections
accepting spreads connections over the workers.

Two parsers, one deadline: `HttpToolsDeadlineProtocol` over httptools (llhttp, C), which uvicorn
prefers when it is installed, and `H11DeadlineProtocol` over h11 (pure Python). The request line,
headers and chunked bodies cost a worker about a third as much CPU with httptools (h11 was 6 % of a
worker's event loop under `/classify` load, docs/log/serving-rounds.md), so `install` makes uvicorn's
`auto` choice the one ``ELUSERVE_HTTP_PARSER`` names (default httptools, or h11). BentoML's
worker builds its uvicorn config after importing the service, so installing at import is in time.

The missing deadline is a uvicorn gap, written up for upstream in docs/upstream.md ("No deadline for a
request's line and headers"); this module goes when uvicorn has one. `TARGETS` lists what the protocols
extend: tests/service/runtime/test_compat.py fails when any of it changes in the installed uvicorn,
while `install` on an unknown uvicorn only checks that the methods it extends exist, and warns.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

import h11
import uvicorn.config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from eluserve.core.errors import RequestTimeout
from eluserve.service.api.classify import count_client_error, error_response
from eluserve.service.config import HTTP_PARSERS
from eluserve.service.runtime import accept_balance

logger = logging.getLogger(__name__)

#: The uvicorn methods each protocol extends (calling uvicorn's), as `install` checks them.
_EXTENDED = {
    H11Protocol: ("connection_made", "connection_lost", "data_received"),
    HttpToolsProtocol: ("connection_made", "connection_lost", "on_message_begin", "on_headers_complete"),
}
#: Those methods, the `__init__`s that set the attributes the protocols read (`loop`, `conn`;
#: `transport` and `client` come from `connection_made`), where uvicorn looks protocols up, and where
#: BentoML asks it to.
TARGETS = (
    *(
        f"{protocol.__module__}:{protocol.__qualname__}.{name}"
        for protocol, names in _EXTENDED.items()
        for name in ("__init__", *names)
    ),
    "uvicorn.config:HTTP_PROTOCOLS",
    "uvicorn.config:Config.load",
    # BentoML's worker builds its uvicorn config (`http` left at "auto") after importing the service.
    "_bentoml_impl.worker.service:main",
)

#: uvicorn's protocol names and where it looks each of our classes up (`import_from_string`).
PROTOCOL_PATHS = {
    "httptools": f"{__name__}:HttpToolsDeadlineProtocol",
    "h11": f"{__name__}:H11DeadlineProtocol",
}


class HeaderDeadline(asyncio.Protocol):
    """The deadline, independent of the parser: subclasses say when headers are pending and arm it."""

    #: Seconds a request's line and headers may take to arrive; set by `install`.
    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None

    def _headers_pending(self) -> bool:
        """Whether a request's line and headers are due or arriving (not between requests)."""
        raise NotImplementedError

    def _arm_header_deadline(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline_expired)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._headers_pending():
            return
        error = RequestTimeout(
            f"the request line and headers did not arrive within {self.header_timeout_s:g} s"
        )
        # The endpoints' own error response (body and headers), written past the parser, which has no
        # request to answer; the connection ends here anyway.
        response = error_response(error)
        status = HTTPStatus(response.status_code)
        head = f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()
        head += b"".join(name + b": " + value + b"\r\n" for name, value in response.raw_headers)
        self.transport.write(head + b"connection: close\r\n\r\n" + response.body)
        self.transport.close()
        count_client_error(error)  # no request, so no model to blame
        # Debug only: a slowloris attack would otherwise write a log line per connection.
        logger.debug(
            "closed a connection from %s: no complete request headers in %gs",
            self.client,
            self.header_timeout_s,
        )

    # Cooperative: `super()` is the parser's uvicorn protocol, which follows this class in the MRO.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        accept_balance.connection_closed()
        super().connection_lost(exc)


class HttpToolsDeadlineProtocol(HeaderDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline.

    llhttp reports a request's first byte (`on_message_begin`) and its complete headers
    (`on_headers_complete`), which are exactly the deadline's two ends.
    """

    _receiving_headers = True

    def _headers_pending(self) -> bool:
        return self._receiving_headers

    def on_message_begin(self) -> None:
        self._receiving_headers = True
        self._arm_header_deadline()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._receiving_headers = False
        self._disarm_header_deadline()
        super().on_headers_complete()


class H11DeadlineProtocol(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with the header deadline.

    h11 keeps the client's state IDLE until a request's headers are complete; the deadline starts on a
    kept-alive connection with the next request's first byte (the keep-alive timer covers the silence
    between requests).
    """

    def _headers_pending(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()


def install(header_timeout_s: float, parser: str = HTTP_PARSERS[0]) -> bool:
    """Make uvicorn's `auto` protocol the deadline protocol over `parser`, and its named choices ours.

    Returns:
        whether the protocols are in place; a uvicorn without the methods they extend or the table of
        protocols is left alone (and the log says so): no header deadline, uvicorn's own parsers.

    Raises:
        ValueError: an unknown parser name.
    """
    if parser not in PROTOCOL_PATHS:
        raise ValueError(f"unknown HTTP parser {parser!r}; choose one of {', '.join(PROTOCOL_PATHS)}")
    missing = [
        f"{protocol.__name__}.{name}"
        for protocol, names in _EXTENDED.items()
        for name in names
        if not callable(getattr(protocol, name, None))
    ]
    if missing or not isinstance(getattr(uvicorn.config, "HTTP_PROTOCOLS", None), dict):
        logger.warning(
            "uvicorn's HTTP protocols changed shape (%s); no deadline for request headers",
            ", ".join(missing) or "no HTTP_PROTOCOLS table",
        )
        return False
    HeaderDeadline.header_timeout_s = header_timeout_s
    uvicorn.config.HTTP_PROTOCOLS.update(PROTOCOL_PATHS)
    uvicorn.config.HTTP_PROTOCOLS["auto"] = PROTOCOL_PATHS[parser]
    return True
