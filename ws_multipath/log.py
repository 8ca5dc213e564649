"""The library's logger, the one way its log lines write an address, and
the demo's and ``serve``'s log setup (text or JSON lines).

What is logged at INFO on the ``ws_multipath`` logger: each accepted
connection (path, client, subprotocol, extensions), each closed one (code,
reason, duration, messages and bytes in and out), each refused upgrade or
request (status and reason) and each connection the library drops (write
or close timeout, heartbeat, slow consumer, protocol violation). Listener
errors nobody listens for are logged at ERROR with the event and the
emitter (a connection's ``repr`` names its path and peer). The accept,
close and refusal records carry their fields as record attributes too
(``record.path``, ``record.code``, ...), which ``JSONFormatter`` writes out.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Optional

__all__ = ["logger", "format_address", "JSONFormatter", "configure_logging"]

logger = logging.getLogger("ws_multipath")


def format_address(address: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6), ``unix:/path`` for a Unix
    socket's peer (its address is ``("unix:/path", 0)``, see
    ``sync/acceptor.py``); anything else as ``str``."""
    try:
        host, port = address[0], address[1]
    except (TypeError, IndexError):
        return str(address)
    if isinstance(host, str) and host.startswith("unix:") and not port:
        return host
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message``, ``process``, ``thread``, the record's extra
    fields (``event``, ``path``, ``client``, ``code``, ...) and
    ``exception`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:  # noqa: N802 - logging's name
        import datetime

        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure_logging(verbose: bool, log_format: str = "text", text_format: str = "%(asctime)s %(name)s %(levelname)s %(message)s") -> None:
    """The command line's log setup: INFO and up with ``verbose`` (the
    connections, closes and refusals), WARNING and up otherwise; ``text``
    lines or ``json`` lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else logging.Formatter(text_format))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
