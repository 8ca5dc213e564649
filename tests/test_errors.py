"""The exception hierarchy."""

from ws_multipath import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    PayloadTooBig,
    ProtocolError,
    WebSocketError,
)
from ws_multipath.errors import connection_closed


def test_everything_derives_from_websocket_error():
    for cls in (ConnectionClosed, ConnectionClosedOK, ConnectionClosedError, ProtocolError, PayloadTooBig, HandshakeError):
        assert issubclass(cls, WebSocketError)


def test_connection_closed_carries_code_and_reason_and_picks_its_kind():
    ok, error = connection_closed(1001, "bye"), connection_closed(1006)
    assert isinstance(ok, ConnectionClosedOK) and (ok.code, ok.reason) == (1001, "bye")
    assert isinstance(error, ConnectionClosedError) and "1006" in str(error)


def test_payload_too_big_is_a_1009_protocol_error():
    exc = PayloadTooBig(10)
    assert isinstance(exc, ProtocolError) and exc.code == 1009 and "10" in str(exc)
