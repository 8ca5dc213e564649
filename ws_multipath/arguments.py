"""Checks of ``MultipathServer``'s arguments: each error is a ``TypeError``
or ``ValueError`` that names the argument. And what stands in for an
argument: ``NO_PORT``, the default that says ``port`` was not given, and
``NoListen``, the ``listen`` that ``auto_listen=True`` takes away."""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any, Callable, Optional

from .http.proxies import TrustedProxies
from .http.wsgi import WSGIOptions
from .sync.binding import check_listening_socket

__all__ = ["NO_PORT", "NoListen", "check_arguments", "check_listen_arguments", "check_path", "wsgi_options"]


class _NoPort(int):
    """The default of ``port``: not given (``sock=`` or ``unix_path=`` may stand in)."""

    def __repr__(self) -> str:
        return "<no port>"


NO_PORT: int = _NoPort(0)


class NoListen:
    """``server.listen`` exists only with ``auto_listen=False`` (as in
    ws-multipath): ``hasattr(server, "listen")`` is False otherwise, and
    ``server.listen()`` raises an ``AttributeError`` that says why."""

    def __get__(self, server: Optional[object], owner: type) -> Callable[[], None]:
        if server is None:
            return self  # type: ignore[return-value]
        raise AttributeError(
            "MultipathServer has no listen() here: it listens in its constructor (auto_listen=True); "
            "pass auto_listen=False to call listen() yourself"
        )


def wsgi_options(
    app: Any, websockets: Any, max_body_size: Any, keepalive_timeout: Any, body_timeout: Any,
    write_timeout: Any, graceful_timeout: Any, head_timeout: float, max_header_size: int, max_headers: int,
    proxies: TrustedProxies, max_target_size: int, threads: Any,
) -> Optional[WSGIOptions]:
    if app is not None and not callable(app):
        raise TypeError(f"wsgi_app must be a WSGI callable, not {type(app).__name__}")
    if not isinstance(websockets, bool):
        raise TypeError(f"wsgi_websockets must be a bool, not {type(websockets).__name__}")
    if websockets and app is None:
        raise ValueError("wsgi_websockets=True needs a wsgi_app")
    if not isinstance(max_body_size, int) or isinstance(max_body_size, bool) or max_body_size < 0:
        raise ValueError(f"http_max_body_size must be an int >= 0, not {max_body_size!r}")
    for name, value in (
        ("http_keepalive_timeout", keepalive_timeout),
        ("http_body_timeout", body_timeout),
        ("http_write_timeout", write_timeout),
        ("http_graceful_timeout", graceful_timeout),
    ):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a number of seconds > 0, not {value!r}")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"wsgi_threads must be a positive int, not {threads!r}")
    if app is None:
        return None
    return WSGIOptions(
        app, websockets, max_body_size, float(keepalive_timeout), float(body_timeout),
        float(write_timeout), float(graceful_timeout), head_timeout, max_header_size, max_headers, proxies, max_target_size,
        threads,
    )


_AF_UNIX: int = getattr(socket, "AF_UNIX", -1)


def check_listen_arguments(has_port: bool, host: Any, sock: Any, unix_path: Any, reuse_port: Any) -> None:
    """One of ``port``, ``sock`` and ``unix_path``; ``host`` and ``reuse_port`` go with ``port`` only."""
    given = [name for name, value in (("sock", sock), ("unix_path", unix_path)) if value is not None]
    if has_port:
        given.insert(0, "port")
    if len(given) > 1:
        raise TypeError(f"give one of port, sock and unix_path, not {' and '.join(given)}")
    if not given:
        raise TypeError("MultipathServer() needs a port (or sock= or unix_path=)")
    if given[0] != "port":
        if host is not None:
            raise TypeError(f"host goes with port, not with {given[0]}")
        if reuse_port:
            raise ValueError(f"reuse_port=True goes with port, not with {given[0]} (bind that socket with SO_REUSEPORT yourself)")
    if sock is not None:
        check_listening_socket(sock)
    if unix_path is not None:
        if _AF_UNIX == -1:
            raise ValueError("unix_path needs Unix sockets, which this system lacks")
        if not isinstance(unix_path, (str, os.PathLike)) or not os.fspath(unix_path):
            raise TypeError(f"unix_path must be a non-empty str or path, not {unix_path!r}")


def check_path(path: Any) -> None:
    """``create_handler``'s path: a str that starts with ``/``, without query or fragment."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', not {path!r}")
    if "?" in path or "#" in path:
        raise ValueError(f"path must not contain a query or fragment: {path!r}")


def check_arguments(
    port: Any, host: Any, open_timeout: Any, max_connections: Any, ssl_context: Any, backlog: Any, max_header_size: Any, max_headers: Any,
    max_target_size: Any = 8190,  # strictness.MAX_TARGET_SIZE
) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535, not {port!r}")
    if host is not None and not isinstance(host, str):
        raise TypeError(f"host must be a str or None, not {type(host).__name__}")
    if not isinstance(open_timeout, (int, float)) or isinstance(open_timeout, bool) or open_timeout <= 0:
        raise ValueError(f"open_timeout must be a number of seconds > 0, not {open_timeout!r}")
    if max_connections is not None and (not isinstance(max_connections, int) or max_connections < 1):
        raise ValueError(f"max_connections must be a positive int or None, not {max_connections!r}")
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
    for name, value in (("backlog", backlog), ("max_header_size", max_header_size), ("max_headers", max_headers), ("max_target_size", max_target_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, not {value!r}")
