"""permessage-deflate (RFC 7692): the handler's settings, the negotiation of
a client's offer, and wsproto's extension with a cap on inflated size.

wsproto inflates each chunk without a limit, so a few KiB of compressed
zeros could allocate gigabytes before any size check runs. ``BoundedDeflate``
inflates at most ``max_payload + 1`` bytes per message and fails the
connection with 1009 beyond that.
"""

from __future__ import annotations

import zlib
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, Opcode

__all__ = ["DeflateSettings", "BoundedDeflate", "negotiate_deflate"]

_SYNC_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 section 7.2.2
_NO_LIMIT = contextlib.nullcontext()  # reentrant: one for every connection without a concurrency_limit


@dataclass(frozen=True)
class DeflateSettings:
    """A handler's ``per_message_deflate`` option, validated.

    ``threshold``: messages shorter than this many bytes are sent
    uncompressed (``ws`` uses 1024 too). ``concurrency_limit``: at most
    this many compressions and decompressions at once among the handler's
    connections (ws's ``concurrencyLimit``; None, the default, for no limit:
    here zlib runs on the connections' own threads, not on a shared pool of
    four as in Node, so ws's default of 10 guards against nothing). Window bits are 9-15 (zlib cannot
    produce raw streams with an 8-bit window).

    The defaults are websockets' (4 KiB windows both ways, when the client
    offers ``client_max_window_bits``; zlib memory level 5): it then holds about 32 KiB per connection instead of 256 KiB
    (zlib: ``2**(window_bits + 2) + 2**(memory_level + 9)`` bytes) and
    compresses about 1.6 times faster, for output a few per cent larger
    (measured on 64 KiB of text). ``compression_level`` is zlib's (-1: its
    default, 6; 1 fastest, 9 smallest).
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 12
    client_max_window_bits: Optional[int] = 12
    threshold: int = 1024
    memory_level: int = 5
    compression_level: int = -1
    concurrency_limit: Optional[int] = None
    #: The handler's compressions and decompressions at once, when
    #: ``concurrency_limit`` is set (shared by its connections).
    limiter: Optional[threading.BoundedSemaphore] = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.concurrency_limit, int) and not isinstance(self.concurrency_limit, bool) and self.concurrency_limit > 0:
            object.__setattr__(self, "limiter", threading.BoundedSemaphore(self.concurrency_limit))

    @classmethod
    def from_option(cls, value: Union[bool, dict[str, Any], "DeflateSettings", None]) -> Optional["DeflateSettings"]:
        """``False``/``None`` -> None (off); ``True`` -> defaults; a dict -> checked settings."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"per_message_deflate must be a bool or a dict, not {type(value).__name__}")
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"per_message_deflate: unknown parameter(s) {', '.join(sorted(unknown))}")
        settings = cls(**value)
        for name in ("server_max_window_bits", "client_max_window_bits"):
            bits = getattr(settings, name)
            if bits is not None and (not isinstance(bits, int) or not 9 <= bits <= 15):
                raise ValueError(f"per_message_deflate: {name} must be an int from 9 to 15, not {bits!r}")
        if not isinstance(settings.memory_level, int) or not 1 <= settings.memory_level <= 9:
            raise ValueError(f"per_message_deflate: memory_level must be an int from 1 to 9, not {settings.memory_level!r}")
        if not isinstance(settings.compression_level, int) or not -1 <= settings.compression_level <= 9:
            raise ValueError(f"per_message_deflate: compression_level must be an int from -1 to 9, not {settings.compression_level!r}")
        if not isinstance(settings.threshold, int) or settings.threshold < 0:
            raise ValueError(f"per_message_deflate: threshold must be an int >= 0, not {settings.threshold!r}")
        limit = settings.concurrency_limit
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"per_message_deflate: concurrency_limit must be a positive int or None, not {limit!r}")
        return settings


class BoundedDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate, inflating at most ``max_payload`` bytes per message."""

    def __init__(
        self, max_payload: int, memory_level: int = 8, compression_level: int = -1, limiter: Optional[threading.BoundedSemaphore] = None, **params: Any
    ) -> None:
        super().__init__(**params)
        self._limiter: Any = limiter if limiter is not None else _NO_LIMIT
        self._max_payload = max_payload
        self._inflated = 0
        self._enabled = True
        self._memory_level = memory_level
        self._compression_level = compression_level

    def frame_outbound(self, proto: Any, opcode: Opcode, rsv: Any, data: bytes, fin: bool) -> Any:
        if self._compressor is None and opcode is not Opcode.CONTINUATION:  # wsproto would use zlib's default memory level
            bits = self.client_max_window_bits if proto.client else self.server_max_window_bits
            self._compressor = zlib.compressobj(self._compression_level, zlib.DEFLATED, -int(bits), self._memory_level)
        return super().frame_outbound(proto, opcode, rsv, data, fin)

    def frame_inbound_header(self, proto, opcode, rsv, payload_length):  # type: ignore[no-untyped-def]
        if opcode is not Opcode.CONTINUATION and not opcode.iscontrol():
            self._inflated = 0
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto, data):  # type: ignore[no-untyped-def]
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(data)

    def frame_inbound_complete(self, proto, fin):  # type: ignore[no-untyped-def]
        if not fin or not self._inbound_is_compressible or not self._inbound_compressed:
            return super().frame_inbound_complete(proto, fin)
        result = self._inflate(_SYNC_TAIL)
        if self.client_no_context_takeover:
            self._decompressor = None
        self._inbound_compressed = None
        return result

    def inflate_message(self, payload: bytes) -> Union[bytes, CloseReason]:
        """The whole of one unfragmented compressed message (the reader's hot
        path, beside wsproto's frame machinery, with the same decompressor:
        the context carries between the two)."""
        if self._decompressor is None:
            self._decompressor = zlib.decompressobj(-int(self.client_max_window_bits))
        self._inflated = 0
        out = self._inflate(payload + _SYNC_TAIL)  # one call: zlib lets the GIL go (a hand-off) in each
        if not isinstance(out, CloseReason) and self.client_no_context_takeover:
            self._decompressor = None
        return out

    def deflate_message(self, payload: bytes) -> bytes:
        """One whole outgoing message, compressed (what ``frame_outbound``
        does for a finished frame, without its per-frame enum and checks)."""
        if self._compressor is None:
            self._compressor = zlib.compressobj(self._compression_level, zlib.DEFLATED, -int(self.server_max_window_bits), self._memory_level)
        with self._limiter:
            data = self._compressor.compress(payload) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if self.server_no_context_takeover:
            self._compressor = None
        return data[:-4]

    def deflate_fragment(self, payload: Union[bytes, bytearray, memoryview], fin: bool) -> bytes:
        """One fragment of an outgoing message, compressed: flushed whole
        (``Z_SYNC_FLUSH``, so the peer can inflate it as it comes), the
        0x00 0x00 0xff 0xff that ends the flush removed from the last
        fragment only (RFC 7692 section 7.2.1). The compressor carries from
        fragment to fragment; under ``server_no_context_takeover`` the next
        message gets a fresh one, as with ``deflate_message``."""
        if self._compressor is None:
            self._compressor = zlib.compressobj(self._compression_level, zlib.DEFLATED, -int(self.server_max_window_bits), self._memory_level)
        with self._limiter:
            data = self._compressor.compress(payload) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if not fin:
            return data
        if self.server_no_context_takeover:
            self._compressor = None
        return data[:-4]

    def _inflate(self, data: bytes) -> Union[bytes, CloseReason]:
        assert self._decompressor is not None
        budget = self._max_payload - self._inflated
        try:
            with self._limiter:
                out = self._decompressor.decompress(data, budget + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self._max_payload:
            return CloseReason.MESSAGE_TOO_BIG
        return out


def _parse_offer(offer: str) -> Optional[dict[str, Optional[str]]]:
    """Parameters of one ``permessage-deflate`` offer, or None if it is another extension."""
    name, *raw_params = [part.strip() for part in offer.split(";")]
    if name.lower() != PerMessageDeflate.name:
        return None
    params: dict[str, Optional[str]] = {}
    for raw in raw_params:
        key, sep, value = raw.partition("=")
        key = key.strip().lower()
        if key in params:
            raise ValueError(f"duplicate parameter {key}")
        params[key] = value.strip().strip('"') if sep else None
    return params


def _window_bits(value: Optional[str], *, required: bool) -> Optional[int]:
    if value is None:
        if required:
            raise ValueError("window bits value missing")
        return None
    if not value.isdigit() or not 8 <= int(value) <= 15:
        raise ValueError(f"invalid window bits {value!r}")
    return int(value)


def _accept_offer(params: dict[str, Optional[str]], settings: DeflateSettings) -> Optional[dict[str, Any]]:
    """The agreed parameters for one offer, or None to decline it (RFC 7692 section 7.1)."""
    known = {"server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits", "client_max_window_bits"}
    if set(params) - known:
        return None
    if params.get("server_no_context_takeover", None) is not None or params.get("client_no_context_takeover", None) is not None:
        return None  # these take no value
    try:
        offered_server_bits = _window_bits(params.get("server_max_window_bits"), required="server_max_window_bits" in params)
        offered_client_bits = _window_bits(params.get("client_max_window_bits"), required=False)
    except ValueError:
        return None
    server_bits = settings.server_max_window_bits
    if offered_server_bits is not None:
        if offered_server_bits < 9:
            return None  # zlib cannot compress within an 8-bit window
        server_bits = min(server_bits, offered_server_bits)
    client_bits = None
    if "client_max_window_bits" in params:
        client_bits = settings.client_max_window_bits or offered_client_bits
        if offered_client_bits is not None and client_bits is not None:
            client_bits = min(client_bits, offered_client_bits)
    return {
        "server_no_context_takeover": settings.server_no_context_takeover or "server_no_context_takeover" in params,
        "client_no_context_takeover": settings.client_no_context_takeover or "client_no_context_takeover" in params,
        "server_max_window_bits": server_bits,
        "client_max_window_bits": client_bits,
        "send_server_bits": offered_server_bits is not None or server_bits != 15,
    }


def negotiate_deflate(
    header_values: list[str], settings: DeflateSettings, max_payload: int
) -> Optional[tuple[str, BoundedDeflate]]:
    """Accept the first acceptable ``permessage-deflate`` offer.

    Returns the ``Sec-WebSocket-Extensions`` response value and the extension
    object for the connection, or None when no offer is acceptable.
    """
    for offer in ",".join(header_values).split(","):
        if not offer.strip():
            continue
        try:
            params = _parse_offer(offer)
        except ValueError:
            continue
        if params is None:
            continue
        agreed = _accept_offer(params, settings)
        if agreed is None:
            continue
        response = [PerMessageDeflate.name]
        if agreed["server_no_context_takeover"]:
            response.append("server_no_context_takeover")
        if agreed["client_no_context_takeover"]:
            response.append("client_no_context_takeover")
        if agreed["send_server_bits"]:
            response.append(f"server_max_window_bits={agreed['server_max_window_bits']}")
        if agreed["client_max_window_bits"] is not None:
            response.append(f"client_max_window_bits={agreed['client_max_window_bits']}")
        client_bits = agreed["client_max_window_bits"] or 15
        extension = BoundedDeflate(
            max_payload,
            server_no_context_takeover=agreed["server_no_context_takeover"],
            client_no_context_takeover=agreed["client_no_context_takeover"],
            server_max_window_bits=agreed["server_max_window_bits"],
            client_max_window_bits=max(client_bits, 9),
            memory_level=settings.memory_level,
            compression_level=settings.compression_level,
            limiter=settings.limiter,
        )
        return "; ".join(response), extension
    return None
