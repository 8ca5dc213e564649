"""The negotiation of one upgrade against a handler's options: the checks
and hooks in order (RFC 6455 section 4.2.2, and ws's order), the
subprotocol and the extensions, and the 101's headers. No I/O; the hooks
are user code, called through ``call_hook``.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import HandshakeError
from ..options import HandlerOptions
from ..protocol.deflate import negotiate_deflate
from .hooks import call_hook, chosen_protocol, verify_verdict
from .request import Request
from .upgrade import accept_token, check_upgrade, offered_protocols

__all__ = ["negotiate"]


def negotiate(request: Request, options: HandlerOptions, stage: list[str], closing: Callable[[], bool]) -> tuple[list[tuple[str, str]], str, str, Any]:
    """Check the request and agree on subprotocol and extensions; returns
    the 101's headers, the subprotocol, the extensions and the deflate
    state. Raises ``HandshakeError`` to refuse, ``HookError`` when a hook
    failed. ``stage[0]`` names the step for the refusal counts;
    ``closing()`` says whether the handler started closing."""
    key = check_upgrade(request)
    if options.should_handle is not None:
        stage[0] = "should_handle"
        if not call_hook("should_handle", options.should_handle, request):
            raise HandshakeError(400, "should_handle refused the upgrade")
    if closing():
        stage[0] = "closing"
        raise HandshakeError(503, "this path is closing")
    stage[0] = "origin"
    if not call_hook("allowed_origins", options.origin_allowed, request.origin):
        raise HandshakeError(403, "origin not allowed")
    stage[0] = "verify_client"
    _verify(request, options)
    stage[0] = "handshake_hook"
    protocol = _choose_protocol(request, options)
    stage[0] = "bad_upgrade"
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_token(key))]
    if protocol:
        headers.append(("Sec-WebSocket-Protocol", protocol))
    extensions, deflate = "", None
    if options.per_message_deflate is not None:
        agreed = negotiate_deflate(request.headers.get_all("Sec-WebSocket-Extensions"), options.per_message_deflate, options.payload_limit)
        if agreed is not None:
            extensions, deflate = agreed
            headers.append(("Sec-WebSocket-Extensions", extensions))
    return headers, protocol, extensions, deflate


def _verify(request: Request, options: HandlerOptions) -> None:
    verify = options.verify_client
    if verify is None:
        return
    refusal = verify_verdict(call_hook("verify_client", verify, request))
    if refusal is not None:
        raise refusal


def _choose_protocol(request: Request, options: HandlerOptions) -> str:
    offered = offered_protocols(request)
    if not offered:
        return ""
    choose = options.handle_protocols
    if choose is None:
        return offered[0]
    return chosen_protocol(call_hook("handle_protocols", choose, offered, request), offered)
