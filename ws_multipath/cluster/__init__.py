"""Broadcasts across processes: a broker interface (``Broker``), the
in-process ``LocalBroker``, the Redis pub/sub ``RedisBroker`` (needs the
``redis`` extra, imported only when used), ``Publisher`` and the message
format (``message.py``); presence across processes (``presence.py``,
``presence_sync.py``, the stores in ``presence_store.py`` and
``redis_presence.py``) and ``send_to``'s index (``directory.py``).
docs/scaling.rst describes it all."""

from .broker import Broker, LocalBroker, Subscription, make_broker
from .message import DEFAULT_PREFIX, VERSION, decode, encode
from .presence import PresenceEntry
from .presence_store import LocalPresenceStore, PresenceStore
from .publisher import Publisher
from .redis_broker import RedisBroker  # needs redis only when instantiated

__all__ = ["PresenceEntry", "PresenceStore", "LocalPresenceStore", "Broker", "LocalBroker", "RedisBroker", "Subscription", "Publisher", "make_broker", "DEFAULT_PREFIX", "VERSION", "encode", "decode"]

