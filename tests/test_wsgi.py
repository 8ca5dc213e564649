"""A WSGI app beside the handlers: HTTP/1.1 on h11 (keep-alive, pipelining,
streaming, bodies, limits), errors, close(), and upgrades after requests.

Apps run inside ``wsgiref.validate.validator``: a PEP 3333 violation on the
server's side fails the request with 500, which the tests would see."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from wsgiref.validate import validator

import pytest
from websockets.sync.client import connect

from .conftest import TIMEOUT, echo, read_until_eof, upgrade_head, url


def hello(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body) + len(environ["PATH_INFO"]) + 1))])
    return [environ["PATH_INFO"].encode("latin-1"), b" ", body]


def read_all(environ):
    """The whole body, read the way a chunked-aware app does."""
    chunks = []
    while True:
        chunk = environ["wsgi.input"].read(4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@pytest.fixture
def serve(make_server):
    def factory(app, **kwargs):
        return make_server(wsgi_app=validator(app), **kwargs)

    return factory


def client(server):
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)


def raw(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    return sock


def test_plain_http_without_app_gets_426(server):
    conn = client(server)
    conn.request("GET", "/")
    assert conn.getresponse().status == 426


def test_keep_alive_several_requests_on_one_connection(serve, library_log):
    server = serve(hello)
    conn = client(server)
    conn.request("GET", "/first")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"/first ")
    sock = conn.sock
    for i in range(5):
        conn.request("POST", f"/n{i}", body=b"data%d" % i)
        response = conn.getresponse()
        assert response.read() == b"/n%d data%d" % (i, i)
    assert conn.sock is sock  # never reconnected
    assert response.getheader("Date") and response.getheader("Server") == "ws_multipath"
    assert not library_log.errors()


def test_pipelined_requests_answered_in_order(serve):
    server = serve(hello)
    with raw(server) as sock:
        sock.sendall(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = read_until_eof(sock)
    assert data.count(b"HTTP/1.1 200 OK") == 4
    bodies = [data.index(b) for b in (b"\r\n\r\n/a ", b"\r\n\r\n/b hello", b"\r\n\r\n/c ", b"\r\n\r\n/d ")]
    assert bodies == sorted(bodies)


def test_chunked_body_reaches_the_app(serve):
    def app(environ, start_response):
        body = read_all(environ)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    server = serve(app)
    conn = client(server)
    conn.request("POST", "/", body=iter([b"abc", b"defg", b"h" * 10000]), encode_chunked=True)
    assert conn.getresponse().read() == b"abcdefg" + b"h" * 10000


def streamed(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"one,"
    yield b""
    yield b"two"


def test_streamed_response_is_chunked_for_http11(serve):
    server = serve(streamed)
    with raw(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_until_eof(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"4\r\none,\r\n3\r\ntwo\r\n0\r\n\r\n"


def test_streamed_response_is_close_delimited_for_http10(serve):
    server = serve(streamed)
    with raw(server) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = read_until_eof(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert body == b"one,two"


def test_head_sends_no_body(serve):
    server = serve(hello)
    conn = client(server)
    conn.request("HEAD", "/page")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Length") == "6"
    assert response.read() == b""
    conn.request("GET", "/page")  # the connection is still in sync
    assert conn.getresponse().read() == b"/page "


def test_100_continue_sent_only_when_the_app_reads(serve):
    reads = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/read":
            reads.append(environ["wsgi.input"].read(5))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = serve(app)
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    with raw(server) as sock:
        sock.sendall(head % b"/read")
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"hello")
        response = b""
        while not response.endswith(b"ok"):
            chunk = sock.recv(4096)
            assert chunk
            response += chunk
        assert response.startswith(b"HTTP/1.1 200 ")
    assert reads == [b"hello"]
    with raw(server) as sock:
        sock.sendall(head % b"/ignore")
        data = read_until_eof(sock)  # no 100; the connection cannot be reused
    assert data.startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in data
    assert b"Connection: close" in data


def test_input_never_reads_past_the_body_and_unread_body_is_drained(serve):
    seen = []

    def app(environ, start_response):
        seen.append(environ["wsgi.input"].read(100))  # asks for more than there is
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return []

    def lazy(environ, start_response):  # never reads its body
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return []

    for application in (app, lazy):
        server = serve(application)
        with raw(server) as sock:
            sock.sendall(
                b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                b"POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
                b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert read_until_eof(sock).count(b"HTTP/1.1 200 OK") == 3
    assert seen == [b"abc", b"de", b""]


def test_large_unread_body_closes_the_connection(serve):
    def lazy(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = serve(lazy)
    with raw(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 200000)
        sock.sendall(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_eof(sock)
    assert data.count(b"HTTP/1.1 ") == 1 and data.endswith(b"ok")


def test_hop_by_hop_header_is_a_500(make_server, library_log):
    closed = []

    class Result(list):
        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [("Connection", "keep-alive")])
        return Result([b"no"])

    server = make_server(wsgi_app=app)
    conn = client(server)
    conn.request("GET", "/hop")
    assert conn.getresponse().status == 500
    assert any("hop-by-hop" in r.getMessage() or "hop-by-hop" in str(r.exc_info) for r in library_log.errors())


def test_result_close_always_called(serve, library_log):
    closed = []

    def app(environ, start_response):
        def body():
            try:
                yield b"part"
                if environ["PATH_INFO"] == "/fail":
                    raise RuntimeError("boom")
                yield b"rest"
            finally:
                closed.append(environ["PATH_INFO"])

        start_response("200 OK", [("Content-Type", "text/plain")])
        return body()

    server = serve(app)
    conn = client(server)
    conn.request("GET", "/ok")
    assert conn.getresponse().read() == b"partrest"
    with raw(server) as sock:
        sock.sendall(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_eof(sock)  # headers went out: the connection is closed mid-body
    assert data.startswith(b"HTTP/1.1 200 ") and not data.endswith(b"0\r\n\r\n")
    assert closed == ["/ok", "/fail"]
    assert "after sending the response headers" in library_log.errors()[0].getMessage()


def test_app_that_raises_gets_500_and_a_log_line_and_the_server_goes_on(make_server, library_log):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/bug":
            raise ZeroDivisionError("oops")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = make_server(wsgi_app=app)
    conn = client(server)
    conn.request("GET", "/bug?x=1")
    assert conn.getresponse().status == 500
    record = library_log.errors()[0]
    assert "GET /bug?x=1 HTTP/1.1" in record.getMessage() and record.exc_info[0] is ZeroDivisionError
    conn = client(server)
    conn.request("GET", "/fine")
    assert conn.getresponse().read() == b"ok"


def test_environ_fields(serve):
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return []

    server = serve(app)
    conn = client(server)
    conn.request("GET", "/a%20b/c?q=1&r", headers={"X-Thing": "1", "X_Thing": "spoof", "Cookie": "a=1"})
    conn.getresponse().read()
    assert seen["PATH_INFO"] == "/a b/c" and seen["QUERY_STRING"] == "q=1&r"
    assert seen["REMOTE_ADDR"] == "127.0.0.1" and seen["wsgi.url_scheme"] == "http"
    assert seen["SERVER_NAME"] == "127.0.0.1" and seen["SERVER_PORT"] == str(server.port)
    assert seen["HTTP_X_THING"] == "1" and seen["HTTP_COOKIE"] == "a=1"


def test_body_over_the_limit_gets_413(serve):
    def app(environ, start_response):
        read_all(environ)  # raises BodyTooLarge for the chunked one
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return []

    server = serve(app, http_max_body_size=1000)
    conn = client(server)
    conn.request("POST", "/", body=b"x" * 1001)
    response = conn.getresponse()
    assert response.status == 413 and response.getheader("Connection") == "close"
    conn = client(server)
    conn.request("POST", "/", body=iter([b"x" * 600, b"y" * 600]), encode_chunked=True)
    assert conn.getresponse().status == 413
    conn = client(server)
    conn.request("POST", "/", body=b"x" * 1000)
    assert conn.getresponse().status == 200


def test_idle_keep_alive_connection_is_closed_after_the_timeout(serve):
    server = serve(hello, http_keepalive_timeout=0.2)
    with raw(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        data = read_until_eof(sock)
    assert data.startswith(b"HTTP/1.1 200 ") and time.monotonic() - start < 5


def test_slow_body_gets_408_after_the_body_deadline(serve):
    def app(environ, start_response):
        environ["wsgi.input"].read(100)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return []

    server = serve(app, http_body_timeout=0.3)
    with raw(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        start = time.monotonic()
        data = read_until_eof(sock)
    assert data.startswith(b"HTTP/1.1 408 ") and time.monotonic() - start < 5


def test_close_drops_idle_connections_at_once(serve):
    server = serve(hello)
    conn = client(server)
    conn.request("GET", "/")
    conn.getresponse().read()
    start = time.monotonic()
    server.close()
    assert time.monotonic() - start < 1.0
    assert conn.sock.recv(10) == b""


def test_close_lets_in_flight_requests_finish(serve):
    started, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        started.set()
        release.wait(TIMEOUT)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"done"]

    server = serve(app)
    conn = client(server)
    conn.request("GET", "/")
    assert started.wait(TIMEOUT)
    closer = threading.Thread(target=server.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # waiting for the request
    release.set()
    response = conn.getresponse()
    assert response.read() == b"done" and response.getheader("Connection") == "close"
    closer.join(TIMEOUT)
    assert not closer.is_alive()


def test_close_cuts_a_stuck_request_after_the_graceful_timeout(serve):
    release = threading.Event()
    started = threading.Event()

    def app(environ, start_response):
        started.set()
        release.wait(TIMEOUT)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"late"]

    server = serve(app, http_graceful_timeout=0.3)
    with raw(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert started.wait(TIMEOUT)
        start = time.monotonic()
        server.close()
        assert 0.25 < time.monotonic() - start < 5
        assert read_until_eof(sock) == b""
    release.set()


def test_upgrade_after_requests_goes_to_its_handler(serve):
    server = serve(hello)
    server.create_handler("/echo").on("connection", echo)
    with raw(server) as sock:
        frame = b"\x81\x82\x00\x00\x00\x00hi"  # masked "hi", zero mask
        sock.sendall(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n" + upgrade_head("/echo") + frame)
        data = b""
        while b"\x81\x02hi" not in data:
            chunk = sock.recv(4096)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 101 " in data


def test_upgrade_with_body_after_requests_gets_400(serve):
    server = serve(hello)
    server.create_handler("/echo").on("connection", echo)
    with raw(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + upgrade_head("/echo", "Content-Length: 2\r\n") + b"xx")
        data = read_until_eof(sock)
    assert data.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 400 " in data


def test_upgrades_beside_the_app(serve):
    server = serve(hello)
    server.create_handler("/echo").on("connection", echo)
    with connect(url(server, "/echo"), open_timeout=TIMEOUT) as ws:
        ws.send("ping")
        assert ws.recv(TIMEOUT) == "ping"
    with raw(server) as sock:  # an unhandled path still gets 400, app or not
        sock.sendall(upgrade_head("/nowhere"))
        assert read_until_eof(sock).startswith(b"HTTP/1.1 400 ")


def test_malformed_request_gets_400(serve):
    server = serve(hello)
    with raw(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBAD LINE\r\n\r\n")
        data = read_until_eof(sock)
    assert data.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 400 " in data


def test_unhandled_listeners_still_get_unhandled_upgrades(serve):
    server = serve(hello, reject_unhandled=False)
    got = []

    def take(sock):
        got.append(server.unhandled_request(sock).path)
        sock.sendall(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        sock.close()

    server.on("unhandled", take)
    with raw(server) as sock:
        sock.sendall(upgrade_head("/elsewhere"))
        assert read_until_eof(sock).startswith(b"HTTP/1.1 418 ")
    assert got == ["/elsewhere"]
    conn = client(server)
    conn.request("GET", "/plain")
    assert conn.getresponse().read() == b"/plain "


def test_options_are_checked(make_server):
    with pytest.raises(TypeError):
        make_server(wsgi_app="not an app")
    with pytest.raises(ValueError):
        make_server(wsgi_websockets=True)
    with pytest.raises(ValueError):
        make_server(wsgi_app=hello, http_keepalive_timeout=0)


def test_https_keep_alive_and_url_scheme(serve, tmp_path):
    import ssl

    from .faultkit import make_certificate

    files = make_certificate(str(tmp_path))
    if files is None:
        pytest.skip("no way to make a certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*files)
    schemes = []

    def app(environ, start_response):
        schemes.append(environ["wsgi.url_scheme"])
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = serve(app, ssl_context=context)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=TIMEOUT, context=ssl._create_unverified_context())
    for _ in range(3):
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"
    assert schemes == ["https"] * 3
    start = time.monotonic()
    server.close()  # the idle TLS connection is dropped at once
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("request_head", [
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # the app's answer, then the server closes
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",  # refused (501): closed after it
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",  # a refused upgrade (400)
], ids=["response", "refusal", "upgrade-refusal"])
def test_tls_responses_end_with_close_notify(serve, tmp_path, request_head):
    # without it a TLS client cannot tell the end of a response from a cut
    # connection (RFC 8446 section 6.1): suppress_ragged_eofs=False shows it
    import ssl

    from .faultkit import make_certificate

    files = make_certificate(str(tmp_path))
    if files is None:
        pytest.skip("no way to make a certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*files)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = serve(app, ssl_context=context)
    server.create_handler("/ws")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
        sock = ssl._create_unverified_context().wrap_socket(raw, suppress_ragged_eofs=False)
        sock.sendall(request_head)
        data = b""
        while True:
            chunk = sock.recv(65536)  # SSLEOFError without close_notify
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 ")


def test_the_package_imports_and_serves_http_without_werkzeug():
    """Werkzeug is optional (Flask brings it); a plain install has none."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys, http.client
        class NoWerkzeug:
            def find_spec(self, name, path=None, target=None):
                if name == "werkzeug" or name.startswith("werkzeug."):
                    raise ImportError("no werkzeug here")
        sys.meta_path.insert(0, NoWerkzeug())
        from ws_multipath import MultipathServer
        from ws_multipath.http.wsgi_body import BodyTimeout
        assert issubclass(BodyTimeout, TimeoutError)
        def app(environ, start_response):
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        with MultipathServer(port=0, host="127.0.0.1", wsgi_app=app) as server:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("GET", "/")
            assert connection.getresponse().read() == b"ok"
        print("served")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "served", result.stderr


# -- found by the second attack pass ---------------------------------------------


def test_a_status_line_with_a_line_break_is_a_500_not_a_split_response(make_server, library_log):
    def splitter(environ, start_response):
        start_response("200 OK\r\nSet-Cookie: evil=1", [("Content-Length", "0")])
        return [b""]

    server = make_server(wsgi_app=splitter)
    with raw(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_eof(sock)
    assert answer.startswith(b"HTTP/1.1 500 ") and b"evil" not in answer


def test_content_length_with_transfer_encoding_is_refused(make_server):
    # RFC 9112 section 6.3 lets a server refuse it (or frame it as chunked and close): refused, like gunicorn
    server = make_server(wsgi_app=_read_and_answer)
    with raw(server) as sock:
        sock.sendall(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answer = read_until_eof(sock)
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 400 ") and b"smuggled" not in answer


def _read_and_answer(environ, start_response):
    body = read_all(environ)
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def test_a_later_head_over_the_size_limit_gets_431(serve):
    server = serve(hello, max_header_size=4096)
    with raw(server) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /b HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        answer = read_until_eof(sock)
    assert answer.count(b"HTTP/1.1 200 ") == 1 and b"HTTP/1.1 431 " in answer


def test_a_malformed_chunked_body_on_a_handed_over_upgrade_gets_400(make_server, library_log):
    server = make_server(wsgi_app=hello, wsgi_websockets=True)
    with raw(server) as sock:
        sock.sendall(upgrade_head("/fs", "Transfer-Encoding: chunked\r\n") + b"ZZ\r\n")
        answer = read_until_eof(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert not library_log.errors()


def test_close_does_not_wait_for_a_client_stalled_in_its_next_head(serve):
    server = serve(hello, http_graceful_timeout=5)
    with raw(server) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHo")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 2.0
