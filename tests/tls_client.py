"""websockets' sync client over TLS without its race on older Pythons.

websockets' sync client reads on a background thread while the caller's
thread writes, both on one ``ssl.SSLSocket``. Before CPython 3.13.6 the
``ssl`` module let two threads into one OpenSSL connection at once, which
OpenSSL does not allow: now and then the client's first write fails with
``ssl.SSLError: [SSL] internal error`` (seen here on Python 3.10: the
request never reaches the server, whose log says the client closed before
the end of its head). CPython issue 137583 tells that history.

``tls_connect`` does the TLS handshake itself and gives websockets a
socket whose OpenSSL calls never overlap (``SerializedTLS``): each call is
made non-blocking under one lock, and the waits for the socket happen
outside it, so a blocked read never holds up a write.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any, Optional

from websockets.sync.client import connect

__all__ = ["SerializedTLS", "tls_connect"]

#: Bytes given to one SSL_write (a TLS record's worth).
_CHUNK = 16384


class SerializedTLS:
    """An ``ssl.SSLSocket`` seen through one lock (see the module); what it
    does not define is the wrapped socket's."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        tls.setblocking(False)
        self._tls = tls
        self._lock = threading.Lock()
        self._timeout: Optional[float] = None

    def settimeout(self, timeout: Optional[float]) -> None:
        self._timeout = timeout

    def gettimeout(self) -> Optional[float]:
        return self._timeout

    def recv(self, size: int) -> bytes:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                try:
                    return self._tls.recv(size)
                except ssl.SSLWantReadError:
                    writing = False
                except ssl.SSLWantWriteError:
                    writing = True
            self._wait(writing, deadline)

    def sendall(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while view:
            with self._lock:
                try:
                    view = view[self._tls.send(view[:_CHUNK]) :]
                    continue
                except ssl.SSLWantWriteError:
                    writing = True
                except ssl.SSLWantReadError:
                    writing = False
            self._wait(writing, deadline)

    def shutdown(self, how: int) -> None:
        with self._lock:
            self._tls.shutdown(how)

    def close(self) -> None:
        with self._lock:
            self._tls.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tls, name)

    def _wait(self, writing: bool, deadline: Optional[float]) -> None:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise socket.timeout("timed out")
        fileno = self._tls.fileno()
        if fileno < 0:
            raise OSError("the socket is closed")
        watched = ([], [fileno], []) if writing else ([fileno], [], [])
        select.select(*watched, remaining)


def tls_connect(url: str, ssl_context: ssl.SSLContext, **kwargs: Any) -> Any:
    """websockets' ``connect`` to a ``wss://`` URL over a ``SerializedTLS``
    socket (use it with ``with``); the server sees an ordinary TLS client."""
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "wss" and parts.hostname is not None and parts.port is not None, url
    raw = socket.create_connection((parts.hostname, parts.port), timeout=kwargs.get("open_timeout", 10))
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = ssl_context.wrap_socket(raw, server_hostname=parts.hostname)
    except BaseException:
        raw.close()
        raise
    return connect(urllib.parse.urlunsplit(("ws",) + tuple(parts)[1:]), sock=SerializedTLS(tls), **kwargs)
