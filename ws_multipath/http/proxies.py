"""Who the client is behind reverse proxies the server trusts.

A proxy's headers are believed only when the TCP peer is a trusted proxy
(``MultipathServer(trusted_proxies=[...])``: addresses and networks, IPv4
and IPv6, ``"unix"`` for Unix-socket peers, ``"*"`` for everyone, which
lets any client choose its own address: use it only when nothing but your
proxies can reach the server). Default: none, so the headers are ignored.

Two header styles are read:

- ``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host``: what
  nginx, HAProxy and most load balancers append or set. When present, they
  win.
- RFC 7239 ``Forwarded``: ``for=``, ``proto=``, ``host=`` in each element
  (quoted values, bracketed IPv6 with a port, ``for=unknown``, obfuscated
  ``_identifiers``; several elements, one per proxy, in one or several
  fields), read when there is no ``X-Forwarded-For``. Not the other way
  round: a proxy that appends to ``X-Forwarded-For`` passes a client's own
  ``Forwarded`` through untouched, so letting it win would let any client
  choose its address. A proxy that sets only ``Forwarded`` should remove
  ``X-Forwarded-For`` from what clients send.

The client is the rightmost hop that is not itself a trusted proxy
(uvicorn's rule): everything left of it could have been written by the
client. Its ``proto`` (``http``, ``https``, ``ws``, ``wss``; anything else
is ignored) and ``host`` are the ones the same proxy recorded. A malformed
header is ignored, never an error.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

from .request import Headers

__all__ = ["TrustedProxies", "Forwarding"]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_SECURE = {"https": True, "wss": True, "http": False, "ws": False}
# RFC 7239 section 4: pair = token "=" ( token / quoted-string ). Matched on a
# stripped part: a whitespace run on each side of a value that may be empty
# made a failed match cost the square of the run's length (2.3 s of CPU for
# 16,000 spaces and a quote).
_PAIR = re.compile(r'([!#$%&\'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^;,\s"]*)')


@dataclass(frozen=True)
class Hop:
    """One proxy's record of the request it received."""

    client: Optional[str]  # host (or "unknown", or an obfuscated "_name"); None: not given
    port: int = 0
    proto: Optional[str] = None
    host: Optional[str] = None


@dataclass(frozen=True)
class Forwarding:
    """What the trusted proxies say: the client's address, whether it used
    TLS (None: not said) and the host it asked for (None: not said)."""

    remote_address: tuple[Any, ...]
    secure: Optional[bool] = None
    host: Optional[str] = None


class TrustedProxies:
    """The ``trusted_proxies`` option, parsed once."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        if isinstance(entries, str):
            raise TypeError("trusted_proxies must be a list of addresses or networks, not a str")
        self._everyone = False
        self._unix = False
        self._networks: list[Network] = []
        for entry in entries:
            if not isinstance(entry, str):
                raise TypeError(f"trusted_proxies entries must be str, not {type(entry).__name__}")
            if entry == "*":
                self._everyone = True
            elif entry == "unix":
                self._unix = True
            else:
                try:
                    self._networks.append(ipaddress.ip_network(entry.strip(), strict=False))
                except ValueError:
                    raise ValueError(f"trusted_proxies: {entry!r} is not an address, a network, 'unix' or '*'") from None

    def __bool__(self) -> bool:
        return self._everyone or self._unix or bool(self._networks)

    def trusts(self, peer: object) -> bool:
        """Whether the TCP peer ``peer`` (an address tuple, or a Unix
        socket's address: ``''`` or a path) is a trusted proxy."""
        if self._everyone:
            return True
        if isinstance(peer, tuple):
            host = str(peer[0]) if peer else ""
            if host.startswith("unix:"):  # a Unix socket's peer (sync/acceptor.py: unix_peer)
                return self._unix
            return self._trusts_host(host)
        return self._unix and isinstance(peer, (str, bytes))

    def _trusts_host(self, host: str) -> bool:
        """Whether a hop's address is a trusted proxy ("unknown" and
        obfuscated names never are, except with ``"*"``)."""
        if self._everyone:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def resolve(self, peer: object, headers: Headers) -> Optional[Forwarding]:
        """What the proxy headers say, when ``peer`` is trusted and they say
        something usable; None otherwise (use the TCP peer)."""
        if not self.trusts(peer):
            return None
        hops = _x_forwarded_hops(headers) or _forwarded_hops(headers)
        if not hops:
            return None
        chosen = hops[0]
        for hop in reversed(hops):
            chosen = hop
            if hop.client is None or not self._trusts_host(hop.client):
                break
        if chosen.client is None:
            return None
        proto = (chosen.proto or "").lower()
        return Forwarding((chosen.client, chosen.port), _SECURE.get(proto), chosen.host or None)


# -- RFC 7239 ---------------------------------------------------------------------


def _forwarded_hops(headers: Headers) -> list[Hop]:
    hops: list[Hop] = []
    for field in headers.get_all("Forwarded"):
        for element in _split_outside_quotes(field, ","):
            pairs = _parse_pairs(element)
            if pairs is None:
                return []  # malformed: the whole header is ignored
            if not pairs:
                continue
            client, port = _node(pairs["for"]) if "for" in pairs else (None, 0)
            hops.append(Hop(client, port, pairs.get("proto"), pairs.get("host")))
    return hops


def _parse_pairs(element: str) -> Optional[dict[str, str]]:
    pairs: dict[str, str] = {}
    for part in _split_outside_quotes(element, ";"):
        if not part.strip():
            continue
        match = _PAIR.fullmatch(part.strip())
        if match is None:
            return None
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        pairs[name] = value
    return pairs


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _node(value: str) -> tuple[Optional[str], int]:
    """RFC 7239 section 6: ``192.0.2.43``, ``"[2001:db8::1]:4711"``,
    ``unknown``, ``_hidden``, ``198.51.100.17:_port``."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if not _is_ip(host, version=6):
            return None, 0
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, ""
    if host != "unknown" and not host.startswith("_") and not _is_ip(host):
        return None, 0
    return host, _port(port)


# -- X-Forwarded-* ------------------------------------------------------------------


def _x_forwarded_hops(headers: Headers) -> list[Hop]:
    clients = _list(headers, "X-Forwarded-For")
    if not clients:
        return []
    protos = _list(headers, "X-Forwarded-Proto")
    hosts = _list(headers, "X-Forwarded-Host")
    hops = []
    for index, entry in enumerate(clients):
        host, port = _x_node(entry)
        hops.append(Hop(host, port, _aligned(protos, index, len(clients)), _aligned(hosts, index, len(clients))))
    return hops


def _list(headers: Headers, name: str) -> list[str]:
    return [item.strip() for value in headers.get_all(name) for item in value.split(",") if item.strip()]


def _aligned(values: list[str], index: int, count: int) -> Optional[str]:
    """One value said for every hop, or one per hop: the hop's own."""
    if len(values) == 1:
        return values[0]
    if len(values) == count:
        return values[index]
    return None


def _x_node(entry: str) -> tuple[Optional[str], int]:
    if _is_ip(entry):
        return entry, 0
    if entry.startswith("["):
        return _node(entry)
    host, _, port = entry.rpartition(":")
    if host and _is_ip(host, version=4) and _port(port):
        return host, _port(port)
    return None, 0


def _port(text: str) -> int:
    """A port number, or 0 for anything else (ASCII digits only: ``isdigit``
    alone accepts superscripts, and ``int`` refuses 5,000 digits)."""
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()):
        return 0
    number = int(text)
    return number if number < 65536 else 0


def _is_ip(text: str, version: Optional[int] = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version
