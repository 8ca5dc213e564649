"""The library's logger, and the one way its log lines write an address."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["logger", "format_address"]

logger = logging.getLogger("ws_multipath")


def format_address(address: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6); anything else as ``str``."""
    try:
        host, port = address[0], address[1]
    except (TypeError, IndexError):
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
