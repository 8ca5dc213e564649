"""The WSGI ``environ`` of one request (PEP 3333), built from the parsed
``Request``.

``network_view`` is the one place that says who the client is and which
scheme and host it asked for (``REMOTE_ADDR``, ``REMOTE_PORT``,
``wsgi.url_scheme``, ``HTTP_HOST``, ``SERVER_NAME``, ``SERVER_PORT``): a
reverse proxy in front of the server changes what those mean, and only that
function has to know.
"""

from __future__ import annotations

import sys
from typing import Any, Optional
from urllib.parse import unquote_to_bytes

from .request import Request, _split_target

__all__ = ["build_environ", "network_view", "SERVER_SOFTWARE"]

SERVER_SOFTWARE = "ws_multipath"


def build_environ(request: Request, body: Any, local_address: Optional[tuple[Any, ...]]) -> dict[str, Any]:
    """The environ of ``request``; ``body`` becomes ``wsgi.input``.

    Header fields become ``HTTP_*`` keys, repeated ones joined with ``,``
    (``Cookie`` with ``; ``). A field whose name holds an underscore is left
    out: ``X_Forwarded_For`` would otherwise land on the same key as
    ``X-Forwarded-For`` (nginx and gunicorn drop them too).
    """
    path, query = _split_target(request.target)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "RAW_URI": request.target,
        "REQUEST_URI": request.target,
        "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "wsgi.version": (1, 0),
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,  # reads end at the end of the body, chunked or not
    }
    chunked = bool(request.headers.get_all("Transfer-Encoding"))
    for name, value in request.headers.raw_items():
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if key == "CONTENT_LENGTH" and chunked:
                continue
            environ[key] = value.strip()
            continue
        key = "HTTP_" + key
        if key in environ:
            environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
        else:
            environ[key] = value
    network_view(environ, request.host, request.remote_address, local_address, request.secure)
    return environ


def network_view(
    environ: dict[str, Any], host_header: Optional[str], client: Optional[tuple[Any, ...]], local: Optional[tuple[Any, ...]], secure: bool
) -> None:
    """Set the client's address, the URL scheme and the host of ``environ``:
    the request's view, which trusted proxies may have set
    (``http/proxies.py``): ``REMOTE_ADDR`` the client, ``https`` when the
    client used TLS, ``HTTP_HOST`` the host it asked for (else the local
    address) for ``SERVER_NAME`` and ``SERVER_PORT``.
    """
    scheme = "https" if secure else "http"
    environ["wsgi.url_scheme"] = scheme
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1]) if len(client) > 1 else ""
    else:
        environ["REMOTE_ADDR"] = ""
    default_port = "443" if secure else "80"
    if host_header:
        environ["HTTP_HOST"] = host_header
        name, port = _split_host(host_header, default_port)
    elif local:
        name, port = str(local[0]), str(local[1])
    else:
        name, port = "localhost", default_port
    environ["SERVER_NAME"] = name
    environ["SERVER_PORT"] = port


def _split_host(host: str, default_port: str) -> tuple[str, str]:
    """``("example.com", "8080")`` from ``example.com:8080``; ``[::1]:80`` keeps its brackets off."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        name, rest = (host[1:end], host[end + 1 :]) if end > 0 else (host, "")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, port if port.isdigit() else default_port
