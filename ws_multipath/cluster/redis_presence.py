"""The Redis presence store (``RedisBroker.presence_store()``).

Keys (docs/scaling.rst, "Presence"), with the broker's prefix ``P``:

- ``P@presence:nodes``: a set of the node ids that wrote presence.
- ``P@presence:<node>``: a hash per node: field ``@v`` is its version,
  every other field a connection id, its value the entry as JSON
  ``[route, path, info]``. The hash's TTL is the store's ``ttl``, renewed
  by each write and refresh: a process that stops refreshing has its hash
  expire in Redis itself, even if no other process is left to sweep.

Three small Lua scripts keep the checks atomic: a write that is not a full
rewrite applies only while the hash exists (else the process rewrites all:
its data expired, or Redis restarted empty), a refresh re-adds the node to
the set only while its hash exists, and the sweep removes a node from the
set only while its hash does not exist. Every call holds one of the
broker's publishing slots (``pool_size``), so presence never takes a
connection beyond that bound, and uses its socket timeouts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from .presence_store import PresenceStore

if TYPE_CHECKING:
    from .redis_broker import RedisBroker

__all__ = ["RedisPresenceStore"]

_WRITE = """
-- ARGV: ttl ms, version, replace (0/1), node, n, then n field/value pairs, then the fields to delete
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1])
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local n = tonumber(ARGV[5])
local args = {'@v', ARGV[2]}
for i = 6, 5 + 2 * n do args[#args + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(args))
if #ARGV > 5 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 6 + 2 * n)) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""

_REFRESH = """
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

_SWEEP = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

CHUNK = 500  # entries per write script: Lua's unpack() takes a few thousand values at most


class RedisPresenceStore(PresenceStore):
    def __init__(self, broker: "RedisBroker", ttl: float, interval: float) -> None:
        self.ttl = float(ttl)
        self.interval = float(interval)
        self.errors = broker._errors
        self._broker = broker
        client = broker.client
        self._client = client
        self._nodes_key = broker.prefix + "@presence:nodes"
        self._hash_prefix = broker.prefix + "@presence:"
        self._write = client.register_script(_WRITE)
        self._refresh = client.register_script(_REFRESH)
        self._sweep = client.register_script(_SWEEP)

    def key(self, node: str) -> str:
        return self._hash_prefix + node

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` holding one of the broker's publishing slots."""
        broker = self._broker
        if not broker._slots.acquire(timeout=broker.pool_timeout):
            raise broker._redis.TimeoutError("no Redis connection came free within pool_timeout")
        try:
            return function(*args, **kwargs)
        finally:
            broker._slots.release()

    def write(self, node: str, version: int, put: Mapping[str, bytes], delete: Iterable[str], replace: bool) -> bool:
        items = list(put.items())
        deleted = list(delete)
        ttl_ms = str(int(self.ttl * 1000))
        first = True
        while first or items or deleted:
            chunk, items = items[:CHUNK], items[CHUNK:]
            gone, deleted = deleted[: CHUNK - len(chunk)], deleted[CHUNK - len(chunk) :]
            argv: list[Any] = [ttl_ms, str(version), "1" if replace and first else "0", node, str(len(chunk))]
            for field, value in chunk:
                argv += [field, value]
            argv += gone
            if not self._call(self._write, keys=[self.key(node), self._nodes_key], args=argv):
                return False
            first = False
        return True

    def refresh(self, node: str) -> bool:
        return bool(self._call(self._refresh, keys=[self.key(node), self._nodes_key], args=[str(int(self.ttl * 1000)), node]))

    def versions(self) -> dict[str, Optional[int]]:
        def read() -> dict[str, Optional[int]]:
            nodes = [n.decode("ascii", "replace") for n in self._client.smembers(self._nodes_key)]
            if not nodes:
                return {}
            pipe = self._client.pipeline(transaction=False)
            for node in nodes:
                pipe.hget(self.key(node), "@v")
            found = pipe.execute()
            result: dict[str, Optional[int]] = {}
            for node, version in zip(nodes, found):
                result[node] = int(version) if version is not None else None
                if version is None:
                    self._sweep(keys=[self.key(node), self._nodes_key], args=[node])
            return result

        result: dict[str, Optional[int]] = self._call(read)
        return result

    def load(self, node: str) -> Optional[tuple[int, dict[str, bytes]]]:
        raw = self._call(self._client.hgetall, self.key(node))
        version = raw.pop(b"@v", None)
        if version is None:
            return None
        return int(version), {k.decode("ascii", "replace"): v for k, v in raw.items()}

    def remove(self, node: str) -> None:
        def remove() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self.key(node))
            pipe.srem(self._nodes_key, node)
            pipe.execute()

        self._call(remove)
