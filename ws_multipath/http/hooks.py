"""Calling the user's hooks of the opening handshake, under one guard.

The hooks are ``verify_client``, a callable ``allowed_origins``,
``handle_protocols`` and the ``'headers'`` listeners. Whatever goes wrong in
one of them -- an exception, a result of the wrong shape, a response header
that cannot be sent -- becomes a ``HookError`` naming the hook, which the
handler reports to ``'error'`` and answers with 500. A hook may refuse the
upgrade on purpose by raising ``HandshakeError``; that response is sent as
given once it is checked to be a real refusal.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, TypeVar

from ..errors import HandshakeError, HookError
from .request import Request
from .upgrade import check_headers, switching_protocols

__all__ = ["call_hook", "verify_verdict", "chosen_protocol", "final_response"]

T = TypeVar("T")


def call_hook(name: str, hook: Callable[..., T], *args: Any) -> T:
    """``hook(*args)``; raises ``HookError`` (named ``name``) for anything it
    raises but a valid ``HandshakeError``, which passes through."""
    try:
        return hook(*args)
    except HandshakeError as exc:
        problem = _refusal_problem(exc, lowest=300)
        if problem:
            raise HookError(name, f"raised {exc!r}: {problem}") from exc
        raise
    except Exception as exc:  # noqa: BLE001 - user code
        raise HookError(name, f"raised {type(exc).__name__}: {exc}") from exc


def _refusal_problem(error: HandshakeError, lowest: int) -> str:
    """Why ``error`` cannot be sent as a refusal, or ``""`` when it can.

    Hooks may redirect (3xx) by raising, but a returned status must be 4xx or
    5xx; 1xx and 2xx would tell the client the upgrade went through."""
    status = error.status
    if not isinstance(status, int) or isinstance(status, bool) or not lowest <= status <= 599:
        return f"the status must be an int in {lowest}-599"
    if not isinstance(error.reason, str):
        return "the reason must be a str"
    try:
        check_headers(error.headers)
    except ValueError as exc:
        return str(exc)
    return ""


def verify_verdict(verdict: Any) -> Optional[HandshakeError]:
    """What ``verify_client`` returned: None to accept, or the refusal.

    Valid results are a truthy or falsy value, or ``(ok,)``, ``(ok, status)``
    or ``(ok, status, reason)`` with an int status in 400-599 and a str
    reason. Anything else raises ``HookError``.
    """
    if not isinstance(verdict, tuple):
        return None if call_hook("verify_client", bool, verdict) else HandshakeError(401)
    if not 1 <= len(verdict) <= 3:
        raise HookError("verify_client", f"returned {verdict!r}: a tuple must be (ok,), (ok, status) or (ok, status, reason)")
    ok, status, reason = verdict + (401, "")[len(verdict) - 1 :]
    refusal = HandshakeError(status, reason)
    problem = _refusal_problem(refusal, lowest=400)
    if problem:
        raise HookError("verify_client", f"returned {verdict!r}: {problem}")
    return None if call_hook("verify_client", bool, ok) else refusal


def chosen_protocol(chosen: Any, offered: list[str]) -> str:
    """Check what ``handle_protocols`` returned: a falsy value (no subprotocol)
    or one of the ``offered`` ones."""
    if not chosen:
        return ""
    if not isinstance(chosen, str) or chosen not in offered:
        raise HookError("handle_protocols", f"returned {chosen!r}, which the client did not offer")
    return chosen


def final_response(listeners: Iterable[Callable[..., Any]], headers: list[tuple[str, str]], request: Request) -> bytes:
    """Run each ``'headers'`` listener on the 101's ``headers``, in order, and
    build the response. The first listener that fails stops the handshake
    (``emit`` would report it and carry on with a half-changed list)."""
    changed = False
    for listener in listeners:
        call_hook(f"'headers' listener {_describe(listener)}", listener, headers, request)
        changed = True
    try:
        return switching_protocols(headers, checked=not changed)  # negotiate's own headers are valid
    except ValueError as exc:  # the library's own headers are valid: a listener added this
        raise HookError("a 'headers' listener", f"left an invalid response header: {exc}") from exc


def _describe(listener: Callable[..., Any]) -> str:
    listener = getattr(listener, "listener", listener)  # unwrap once()
    return getattr(listener, "__qualname__", None) or repr(listener)
