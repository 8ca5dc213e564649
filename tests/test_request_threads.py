"""request_threads.py: each accepted TLS connection still gets a thread of
its own at once (plain ones wait for their head in the head loop), but a
thread that finished one serves the next instead of a new thread being
started for each."""

from __future__ import annotations

import threading

from ws_multipath.sync.request_threads import BUSY_NAME, IDLE_NAME, RequestThreads

from .conftest import TIMEOUT, wait_until
from .faultkit import tls_contexts
from .tls_client import tls_connect


def test_a_thread_that_served_a_connection_serves_the_next(make_server, certificate):
    server_context, client_context = tls_contexts(*certificate)
    server = make_server(ssl_context=server_context)
    served_on: list[threading.Thread] = []
    handler = server.create_handler(path="/echo")
    handler.on("connection", lambda ws, request: served_on.append(threading.current_thread()))
    for _ in range(3):
        with tls_connect(f"wss://127.0.0.1:{server.port}/echo", client_context, open_timeout=TIMEOUT):
            pass
        # the thread is idle again before the next client comes
        assert wait_until(lambda: [t.name for t in threading.enumerate()].count(IDLE_NAME) == 1)
    assert len(served_on) == 3
    assert served_on[0] is served_on[1] is served_on[2]
    assert served_on[0].name == IDLE_NAME


def test_a_busy_thread_does_not_delay_the_next_connection():
    release = threading.Event()
    started: list[object] = []
    both = threading.Semaphore(0)

    def serve(sock, address):
        started.append(sock)
        both.release()
        if sock == "slow":
            assert release.wait(TIMEOUT)

    threads = RequestThreads(serve, max_idle=4, idle_seconds=TIMEOUT)
    try:
        threads.submit("slow", None)
        assert both.acquire(timeout=TIMEOUT)
        threads.submit("quick", None)  # the slow one's thread is busy: another serves it
        assert both.acquire(timeout=TIMEOUT)
        assert started == ["slow", "quick"]
        assert wait_until(lambda: threads.idle_count() == 1)
        release.set()
        assert wait_until(lambda: threads.idle_count() == 2)
    finally:
        release.set()
        threads.close()


def test_idle_threads_are_bounded_end_when_unused_and_at_close():
    gate = threading.Event()
    running = threading.Semaphore(0)

    def serve(sock, address):
        running.release()
        assert gate.wait(TIMEOUT)

    # threads of earlier tests' servers may carry these names and end meanwhile: count only new ones
    earlier = set(threading.enumerate())

    def ours():
        return [t for t in threading.enumerate() if t.name in (IDLE_NAME, BUSY_NAME) and t not in earlier]

    before = 0
    threads = RequestThreads(serve, max_idle=2, idle_seconds=0.3)
    for index in range(4):
        threads.submit(index, None)
    for _ in range(4):
        assert running.acquire(timeout=TIMEOUT)
    gate.set()
    assert wait_until(lambda: len(ours()) <= before + 2)  # two ended at once: two were idle already
    assert threads.idle_count() <= 2
    assert wait_until(lambda: len(ours()) == before)  # the last two after 0.3 s unused

    threads = RequestThreads(serve, max_idle=2, idle_seconds=TIMEOUT * 10)
    threads.submit("one", None)
    assert running.acquire(timeout=TIMEOUT)
    assert wait_until(lambda: threads.idle_count() == 1)
    threads.close()
    assert wait_until(lambda: len(ours()) == before)
