"""Redis's pub/sub output-buffer limit (issue 21, also seen): a subscriber
that stops reading (here: its process SIGSTOPped, as a long GC pause, swap
or a starved CPU would) while messages keep coming is disconnected by Redis
once ``client-output-buffer-limit pubsub`` is passed; the server notices,
logs it, resubscribes and goes on; what was published meanwhile is lost for
it (at-most-once). docs/scaling.rst says what to set."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from websockets.sync.client import connect

from ws_multipath import Publisher

from .cluster_support import own_redis, spawn, stop_process  # noqa: F401 - own_redis: a fixture
from .conftest import TIMEOUT, wait_until

pytestmark = [pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning"), pytest.mark.timeout(60)]


def test_a_stalled_subscriber_is_cut_by_redis_and_recovers(own_redis) -> None:  # noqa: F811
    import redis

    store = redis.Redis.from_url(own_redis.url)
    store.config_set("client-output-buffer-limit", "pubsub 1mb 256kb 1")
    process = spawn(["tests/cluster_app.py", "0", own_redis.url], stderr=subprocess.PIPE)
    client = None
    try:
        line = process.stdout.readline().split()
        assert line[:1] == ["ready"], line
        client = connect(f"ws://127.0.0.1:{line[2]}/chat", max_size=None)
        client.recv(timeout=TIMEOUT)  # hello
        message = "x" * 10_000
        with Publisher(own_redis.url) as publisher:
            os.kill(process.pid, signal.SIGSTOP)
            try:
                sent = 0
                for i in range(2000):  # 20 MB: past the kernel's socket buffers (a few MB on loopback) and the 1 MB limit
                    assert publisher.broadcast("/chat", f"{i:04d}{message}")
                    sent += 1
                assert wait_until(lambda: "output buffer limits" in (own_redis.directory / "redis.log").read_text(), timeout=10)
            finally:
                os.kill(process.pid, signal.SIGCONT)
            got = []
            while True:  # what reached the process before Redis cut it
                try:
                    got.append(client.recv(timeout=2))
                except TimeoutError:
                    break
            assert 0 < len(got) < sent, len(got)
            assert [int(m[:4]) for m in got] == list(range(len(got)))  # a prefix, in order: the rest was dropped
            # the subscriber resubscribes by itself; new messages arrive again
            deadline = time.monotonic() + 15
            while True:
                publisher.broadcast("/chat", "after")
                try:
                    if client.recv(timeout=0.5) == "after":
                        break
                except TimeoutError:
                    pass
                assert time.monotonic() < deadline, "no delivery after the cut"
        print(f"delivered {len(got)} of {sent} messages of 10 kB before Redis cut the stalled subscriber")
    finally:
        if client is not None:
            client.close()
        stop_process(process)
        store.close()
