"""One request and its response on an HTTP/1.1 connection served to the
WSGI app, over h11: calling the app (``start_response``, streaming,
hop-by-hop checks, ``result.close()``), the request body (``wsgi.input``,
``100-continue``, its limits), error responses, and draining an unread
body so that the connection can serve the next request.
``HTTPExchange`` is the base of ``wsgi_connection.HTTPConnection``, which
holds the connection's life (the request loop, parking, upgrades); it runs
on the thread that runs the connection's turn.
"""

from __future__ import annotations

import socket
import ssl
import time
from email.utils import formatdate
from typing import Any, Optional

import h11

from ..errors import HandshakeError
from ..log import format_address, logger
from .chunked import ChunkedChecker, MalformedChunk
from .environ import SERVER_SOFTWARE, build_environ
from .handover import SocketHandover
from .request import Request, request_from_h11
from .upgrade import error_response, phrase
from .wsgi_body import (
    BodyTimeout,
    BodyTooLarge,
    ClientDisconnected,
    ClientGone,
    MalformedBody,
    WSGIInput,
)
from .wsgi_response import AppResponse
from .wsgi_socket import DRAIN_LIMIT, ClientSocket

__all__ = ["HTTPExchange"]


class HTTPExchange:
    """The request-level state of one HTTP connection (``options``: the
    server's ``WSGIOptions``), used by one thread at a time."""

    def __init__(self, options: Any, sock: socket.socket, first: Request) -> None:
        self.options = options
        self.sock = sock
        self.address = first.remote_address  # the client, for log lines
        self.peer = first.peer_address  # the TCP peer, to resolve later requests' clients
        self.secure = isinstance(sock, ssl.SSLSocket)  # the transport's; a proxy may say otherwise per request
        try:
            self.local = sock.getsockname()
            if not isinstance(self.local, tuple):  # a Unix socket's path: no SERVER_NAME/PORT in it
                self.local = None
        except OSError:
            self.local = None
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=options.max_header_size)
        self._chunked: Optional[ChunkedChecker] = None
        self._socket = ClientSocket(sock, options.write_timeout)
        self._handover: Optional[SocketHandover] = None
        self._body_deadline: Optional[float] = None
        self._body_received = 0
        self._must_close = False

    def _refuse(self, error: HandshakeError) -> None:
        logger.info("refused %s: %s", format_address(self.address), error)
        self._socket.send(error_response(error))
        self._socket.linger()

    def _receive_body(self, data: bytes) -> None:
        """Bytes after a head, for h11; a chunked body's are checked first."""
        if self._chunked is not None and not self._chunked.done:
            self._chunked.feed(data)
        self.h11.receive_data(data)

    def _request(self, event: h11.Request) -> Request:
        return request_from_h11(event, remote_address=self.peer, secure=self.secure, proxies=self.options.proxies)


    def _next_cycle(self) -> bool:
        """After a response: drain what is left of the body, then get ready
        for the next request; False when the connection must close."""
        if self._must_close or self.h11.our_state is not h11.DONE:
            return False
        if self.h11.their_state is h11.SEND_BODY:
            try:
                self._drain()
            except Exception:  # noqa: BLE001 - too large, too slow, gone, malformed
                return False
        if self.h11.their_state is not h11.DONE:
            return False
        return not self._socket.closing

    def _drain(self) -> None:
        """Read and drop an unread body, at most ``DRAIN_LIMIT`` bytes within
        ``keepalive_timeout``; raises when it cannot (the connection closes)."""
        limit = self._body_received + DRAIN_LIMIT
        until = time.monotonic() + self.options.keepalive_timeout
        self._body_deadline = until if self._body_deadline is None else min(self._body_deadline, until)
        while True:
            chunk = self._body_chunk(limit=limit)
            if chunk is None:
                return

    # -- one request -----------------------------------------------------------

    def _serve(self, event: h11.Request, request: Request) -> bool:
        """Answer one request; False when the connection must close."""
        self._body_deadline = None
        self._body_received = 0
        length = _content_length(request)
        if length is not None and length > self.options.max_body_size:
            logger.info("refused %s: body of %d bytes larger than http_max_body_size (413)", format_address(self.address), length)
            self._send_error(413, f"request body larger than {self.options.max_body_size} bytes")
            return False
        body = WSGIInput(self)
        environ = build_environ(request, body, self.local)
        if self._handover is not None:
            environ["werkzeug.socket"] = self._handover
        return self._call_app(environ, request)

    def _call_app(self, environ: dict[str, Any], request: Request) -> bool:
        response = AppResponse(lambda data: self._send_data(response, data, request))
        try:
            response.run(self.options.app, environ)
            if self._handover is None or not self._handover.taken:
                self._send_event(h11.EndOfMessage())
        except ClientGone:
            raise
        except (BodyTooLarge, BodyTimeout, ClientDisconnected) as exc:
            logger.info("refused %s %s %s: %s", format_address(self.address), request.method, request.target, exc)
            answer = _BODY_ERRORS.get(type(exc))
            if not response.sent and answer is not None:
                self._send_error(*answer)
            return False
        except Exception:  # noqa: BLE001 - the app's bug: 500, logged, and the server goes on
            logger.exception(
                "the WSGI app failed on %s %s HTTP/%s from %s%s",
                request.method, request.target, request.http_version, format_address(self.address),
                "" if not response.sent else " after sending the response headers; closing the connection",
            )
            if not response.sent:
                self._send_error(500, "internal server error")
            return False
        return True

    def _send_data(self, response: AppResponse, data: bytes, request: Request) -> None:
        handover = self._handover
        if handover is not None and handover.taken:  # the app owns the socket now
            response.sent = True
            return
        out = b"" if response.sent else self._head(response)
        if data and request.method != "HEAD":
            out += self.h11.send(h11.Data(data=data))
        if out:  # the head and the first piece of the body in one write
            self._socket.send(out, required=True)

    def _head(self, response: AppResponse) -> bytes:
        """The response head, as h11 frames it; ``response.sent`` from here on."""
        assert response.status is not None
        code, _, reason = response.status.partition(" ")
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers]
        names = {n.lower() for n, _ in response.headers}
        if "date" not in names:
            headers.append((b"Date", formatdate(usegmt=True).encode("ascii")))
        if "server" not in names:
            headers.append((b"Server", SERVER_SOFTWARE.encode("ascii")))
        if self._socket.closing or self._must_close or self._handover is not None or self._waiting_for_100():
            headers.append((b"Connection", b"close"))
            self._must_close = True
        data = self.h11.send(h11.Response(status_code=int(code), headers=headers, reason=reason.encode("latin-1")))
        response.sent = True
        return data

    def _waiting_for_100(self) -> bool:
        """The client waits for a 100 it will not get: it may or may not send
        the body, so the connection cannot be reused."""
        return self.h11.they_are_waiting_for_100_continue

    def _send_event(self, event: Any) -> None:
        data = self.h11.send(event)  # LocalProtocolError: the app's response breaks HTTP (a body with 204, ...)
        if data:
            self._socket.send(data, required=True)

    def _send_error(self, status: int, text: str) -> None:
        """An error response that ends the connection (before any response head)."""
        if self._handover is not None and self._handover.taken:
            return
        body = (text + "\n").encode("utf-8")
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        response = AppResponse(lambda data: None)
        response.status, response.headers = f"{status} {phrase(status)}", headers
        self._must_close = True
        try:
            if self.h11.our_state is h11.SEND_RESPONSE:
                self._socket.send(self._head(response), required=True)
                if self._request_method() != b"HEAD":
                    self._send_event(h11.Data(data=body))
                self._send_event(h11.EndOfMessage())
            else:
                self._socket.send(error_response(HandshakeError(status, text)))
        except h11.LocalProtocolError:
            pass
        self._socket.linger()

    def _request_method(self) -> Optional[bytes]:
        return getattr(self.h11, "_request_method", None)

    # -- the request body (wsgi.input) ------------------------------------------

    def _body_chunk(self, limit: Optional[int] = None) -> Optional[bytes]:
        """The next piece of the body, None at its end."""
        if self.h11.their_state is not h11.SEND_BODY:
            return None
        if self._body_deadline is None:
            self._body_deadline = time.monotonic() + self.options.body_timeout
        if self.h11.they_are_waiting_for_100_continue and self.h11.our_state is h11.SEND_RESPONSE:
            self._send_event(h11.InformationalResponse(status_code=100, headers=[]))
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._must_close = True
                raise MalformedBody(f"malformed or incomplete request body: {exc}") from None
            if isinstance(event, h11.Data):
                self._body_received += len(event.data)
                if self._body_received > (limit if limit is not None else self.options.max_body_size):
                    self._must_close = True
                    raise BodyTooLarge(f"request body larger than {self.options.max_body_size} bytes")
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                return None
            if event is not h11.NEED_DATA:
                self._must_close = True
                raise ClientDisconnected("connection closed in the middle of the request body")
            try:
                data = self._socket.recv_until(self._body_deadline, "request body")
            except ClientGone as exc:
                self._must_close = True
                raise ClientDisconnected(str(exc)) from None
            if data is None:
                self._must_close = True
                raise BodyTimeout(f"request body not received within {self.options.body_timeout}s")
            try:
                self._receive_body(data)
            except MalformedChunk as exc:
                self._must_close = True
                raise MalformedBody(f"malformed chunked request body: {exc}") from None


#: The status of a request body's failure, before the response started (a
#: client that broke the connection gets none).
_BODY_ERRORS = {
    BodyTooLarge: (413, "request body too large"),
    BodyTimeout: (408, "request body not received in time"),
    MalformedBody: (400, "malformed request body"),
}


def _content_length(request: Request) -> Optional[int]:
    if request.headers.get_all("Transfer-Encoding"):
        return None
    values = request.headers.get_all("Content-Length")
    return int(values[0]) if values and values[0].strip().isdigit() else None
