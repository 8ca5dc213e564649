"""Where a server binds: the address for a host and port, the Unix socket
path made ready, the peer address of a Unix connection, and the checks of
``sock=`` and ``reuse_port=``. Functions only; no state."""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
from typing import Any, Optional

__all__ = ["bind_address", "check_reuse_port", "prepare_unix_path", "check_listening_socket", "unix_peer"]


def bind_address(host: Optional[str], port: int) -> tuple[int, tuple[Any, ...]]:
    if host is None:
        if socket.has_dualstack_ipv6():
            return socket.AF_INET6, ("::", port)
        return socket.AF_INET, ("0.0.0.0", port)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = info[0]
    return family, address


def unix_peer(path: Any) -> tuple[str, int]:
    """The peer address given to connections accepted on the Unix socket
    ``path``: ``("unix:/run/app.sock", 0)``, a ``(host, port)`` tuple that
    logs as ``unix:/run/app.sock`` (``log.format_address``) and that
    ``trusted_proxies=["unix"]`` trusts."""
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    return (f"unix:{path or '(unnamed)'}", 0)


def prepare_unix_path(path: str) -> None:
    """Make ``path`` bindable: remove a stale socket file (one nobody
    listens on any more, left by a server that died); ``OSError`` when a
    server still listens there, or the file is not a socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"unix_path {path!r} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)  # stale
        except FileNotFoundError:
            pass
        return
    except OSError:
        return  # let bind() report what is wrong
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"unix_path {path!r}: another server is listening on it")


def check_listening_socket(sock: Any) -> None:
    """``sock=`` must be a bound, listening stream socket (TCP or Unix)."""
    if not isinstance(sock, socket.socket):
        raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"sock must be a SOCK_STREAM socket, not {sock.type!r}")
    if sock.family not in (socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_UNIX", None)):
        raise ValueError(f"sock must be an AF_INET, AF_INET6 or AF_UNIX socket, not {sock.family!r}")
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except (OSError, AttributeError):
        listening = 1  # not knowable here: accept() will tell
    if not listening:
        raise ValueError("sock must be bound and listening (call sock.listen() first)")


def check_reuse_port() -> None:
    """``reuse_port=True`` is Linux's ``SO_REUSEPORT`` (which balances
    connections among the sockets); elsewhere ``ValueError`` says so."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError(f"reuse_port=True needs Linux's SO_REUSEPORT (this is {sys.platform}): run one process per port, or use Linux")
