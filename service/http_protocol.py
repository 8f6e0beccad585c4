"""A deadline for a request's line and headers, which uvicorn (as BentoML runs it) does not have.

uvicorn's only idle timeout, `timeout_keep_alive`, starts after a response and is cancelled by any byte
received, and nothing is armed on a new connection at all. So a client that connects and sends
nothing, or trickles its headers one byte at a time (slowloris), holds a connection, a file
descriptor and a slot of `max_concurrency` for as long as it likes; a few hundred of them starve the
service. ASGI middleware cannot help: it runs only once the headers are complete. The upload of the
body already has its own deadline (`eluserve.service.forms`, 408 `request_timeout`).

`HeaderDeadlineProtocol` is uvicorn's h11 protocol plus one timer per request: armed when a
connection opens and when the first byte of a kept-alive connection's next request arrives, disarmed
once h11 has the complete headers. On expiry the client gets the contract's 408 `request_timeout`
JSON body, the connection closes and `eluserve_client_errors_total{code="request_timeout"}` counts it.
The protocol also reports each connection closed to `eluserve.service.accept_balance`, whose
least-connections accepting spreads connections over the workers. `install` makes uvicorn's `auto` and
`h11` protocol choices mean this class; BentoML's worker builds its uvicorn config after importing the
service, so installing at import is in time.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

import h11
import uvicorn.config
from uvicorn.protocols.http.h11_impl import H11Protocol

from eluserve.core.errors import RequestTimeout
from eluserve.service import accept_balance
from eluserve.service.http_api import count_client_error, error_response

logger = logging.getLogger(__name__)

#: Where uvicorn looks the class up (`import_from_string`).
PROTOCOL_PATH = f"{__name__}:HeaderDeadlineProtocol"


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request's line and headers."""

    #: Seconds a request's line and headers may take to arrive; set by `install`.
    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        # Between requests on a kept-alive connection, uvicorn's keep-alive timer covers the silence;
        # the deadline starts with the next request's first byte.
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        accept_balance.connection_closed()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline_expired)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        error = RequestTimeout(
            f"the request line and headers did not arrive within {self.header_timeout_s:g} s"
        )
        # The endpoints' own error response (body and headers), written past h11, which has no
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


def install(header_timeout_s: float) -> None:
    """Make uvicorn's `auto` and `h11` HTTP protocols `HeaderDeadlineProtocol` with this deadline."""
    HeaderDeadlineProtocol.header_timeout_s = header_timeout_s
    for name in ("auto", "h11"):
        uvicorn.config.HTTP_PROTOCOLS[name] = PROTOCOL_PATH
