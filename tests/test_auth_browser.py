"""The auth recipes from a real browser (issue 10): headless Chromium, whose
``WebSocket`` cannot set headers, authenticates with a cookie or with the
query string, and is refused without them.

- examples/auth_cookie.py: a page served by the Flask side of the same
  server logs in through the recipe's ``POST /login`` (an HttpOnly session
  cookie), then opens ``new WebSocket(...)``; ``verify_client`` finds the
  user in the cookie and the handler greets ``request.state.user``. Without
  the cookie: 401. From a page on another origin of the same site (another
  port of 127.0.0.1, so the Lax cookie would travel): 403, ``allowed_origins``.
  (A path without ``allowed_origins`` lets that page in with the cookie:
  cross-site WebSocket hijacking, shown on a probe path.)
- examples/auth_query_token.py: ``new WebSocket("ws://...?token=...")``.

The page cannot see why a WebSocket failed (``onerror``, then ``onclose``
with 1006), so the status is asserted on the server: its refusal counts
(``stats()``), its ``refused`` log records, and no ``'error'`` event.

Chromium and Selenium as in tests/test_demo_page.py; skipped without them.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlencode

import pytest

from ws_multipath import MultipathServer

from .test_demo_page import (
    CHROMEDRIVER,
    CHROMIUM,
    WAIT,
    browser,  # noqa: F401 - the fixture: its flags, SE_OFFLINE, a fresh profile
)
from .test_examples import free_port, load

_missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
pytestmark = [
    pytest.mark.skipif(
        bool(_missing), reason=f"no {' or '.join(_missing)}: apt-get install chromium chromium-driver (as .ci/run does)"
    ),
    pytest.mark.timeout(90),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
flask = pytest.importorskip("flask", reason="flask is not installed (the cookie recipe's app)")
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# ?user=NAME: log in first (the recipe's POST /login); ?ws=URL: then open it
# (relative to the page's host, or absolute). Every event is one <li>.
PAGE = """<!doctype html>
<meta charset="utf-8"><title>auth</title>
<ul id="log"></ul>
<script>
const params = new URLSearchParams(location.search);
function log(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = `${kind}: ${text}`;
  document.getElementById("log").append(li);
}
async function run() {
  const user = params.get("user");
  if (user) {
    const response = await fetch("/login", {method: "POST", body: new URLSearchParams({user})});
    log("login", await response.text());
  }
  const url = new URL(params.get("ws"), location.href);
  url.protocol = url.protocol.replace("http", "ws");
  const ws = new WebSocket(url);
  ws.onopen = () => log("open", url.pathname);
  ws.onmessage = (event) => { log("message", event.data); ws.close(1000, "done"); };
  ws.onerror = () => log("error", "the connection failed");
  ws.onclose = (event) => log("close", `${event.code} clean=${event.wasClean}`);
}
run().catch((error) => log("exception", String(error)));
</script>
"""
REFUSED = ["error: the connection failed", "close: 1006 clean=false"]


def add_page(app):
    app.add_url_rule("/page", "page", lambda: PAGE)
    return app


class Served:
    """Servers closed at the end of the test, and every ``'error'`` they emit."""

    def __init__(self):
        self.servers, self.errors = [], []

    def add(self, server):
        self.servers.append(server)
        server.on("error", self.errors.append)  # a handler's or connection's, with none of their own
        return server


@pytest.fixture
def served(caplog):
    caplog.set_level(logging.INFO, logger="ws_multipath")
    record = Served()
    yield record
    for server in record.servers:
        server.close()


def visit(driver, url, expected_events):
    """Load ``url``; wait until its WebSocket has closed; return the page's log."""
    driver.get(url)

    def closed(d):
        events = d.execute_script("return [...document.querySelectorAll('#log li')].map(e => e.textContent)")
        return events if any(e.startswith(("close:", "exception:")) for e in events) else None

    events = WebDriverWait(driver, WAIT).until(closed, message=f"waited {WAIT} s for the WebSocket of {url} to close")
    assert events == expected_events, url
    return events


def no_errors(served, caplog):
    return served.errors == [] and [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def refusals(caplog, path):
    return [(r.status, r.reason) for r in caplog.records if getattr(r, "event", None) == "refused" and r.path == path]


def console_failures(driver, ws_url):
    """What the console (not the page) was told about ``ws_url`` since the last call."""
    marker = f"WebSocket connection to '{ws_url}' failed: "
    return [e["message"].split(marker, 1)[1] for e in driver.get_log("browser") if marker in e["message"]]


UNAUTHORIZED = ["HTTP Authentication failed; no valid credentials available"]  # Chromium's words for a 401
FORBIDDEN = ["Error during WebSocket handshake: Unexpected response code: 403"]


def cookie_server(served, port):
    example = load("auth_cookie")
    add_page(example.app)
    page_origin = f"http://127.0.0.1:{port}"
    server = served.add(example.build(port, "127.0.0.1", origins=[page_origin]))
    return example, server, page_origin


def test_cookie_set_by_the_flask_page_lets_its_websocket_in_and_none_is_refused(browser, served, caplog):  # noqa: F811
    example, server, origin = cookie_server(served, free_port())

    # no cookie yet: verify_client refuses with 401, the page only sees a failure
    visit(browser, f"{origin}/page?" + urlencode({"ws": "/ws/inbox"}), REFUSED)
    assert refusals(caplog, "/ws/inbox") == [(401, "verify_client")]
    assert console_failures(browser, f"ws://127.0.0.1:{server.port}/ws/inbox") == UNAUTHORIZED  # only the console says why

    # the page logs in (the Flask side sets the cookie), then its WebSocket gets in
    visit(browser, f"{origin}/page?" + urlencode({"user": "carol", "ws": "/ws/inbox"}), [
        "login: logged in as carol", "open: /ws/inbox", "message: hello carol", "close: 1000 clean=true",
    ])
    cookie = browser.get_cookie("session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and example.sessions[cookie["value"]] == "carol"
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: the page's script never saw it

    stats = server.stats()["paths"]["/ws/inbox"]
    assert stats["accepted"] == 1 and stats["refused"] == {401: {"verify_client": 1}}
    assert refusals(caplog, "/ws/inbox") == [(401, "verify_client")]
    assert no_errors(served, caplog)


def test_a_page_on_another_origin_is_refused_even_with_the_cookie(browser, served, caplog):  # noqa: F811
    example, server, origin = cookie_server(served, free_port())
    visit(browser, f"{origin}/page?" + urlencode({"user": "carol", "ws": "/ws/inbox"}), [
        "login: logged in as carol", "open: /ws/inbox", "message: hello carol", "close: 1000 clean=true",
    ])
    # another port of 127.0.0.1: another origin but the same site, so the
    # SameSite=Lax cookie goes along, as a path without allowed_origins shows
    probe = server.create_handler("/ws/probe", verify_client=example.verify)
    probe.on("connection", lambda ws, request: ws.send(f"hello {request.state.user}"))
    other = served.add(MultipathServer(port=0, host="127.0.0.1", wsgi_app=add_page(flask.Flask("other"))))
    other_page = f"http://127.0.0.1:{other.port}/page?"
    visit(browser, other_page + urlencode({"ws": f"ws://127.0.0.1:{server.port}/ws/probe"}), [
        "open: /ws/probe", "message: hello carol", "close: 1000 clean=true",  # hijacked
    ])
    # ... and allowed_origins is what stops it on the recipe's path
    target = f"ws://127.0.0.1:{server.port}/ws/inbox"
    visit(browser, other_page + urlencode({"ws": target}), REFUSED)
    assert console_failures(browser, target) == FORBIDDEN

    assert server.stats()["paths"]["/ws/inbox"]["refused"] == {403: {"origin": 1}}
    assert refusals(caplog, "/ws/inbox") == [(403, "origin")]
    assert no_errors(served, caplog)


def test_query_string_token_from_the_browser(browser, served, caplog):  # noqa: F811
    _, _, origin = cookie_server(served, free_port())  # any page: the feed checks no Origin
    feed = served.add(load("auth_query_token").build(0, "127.0.0.1"))
    base = f"ws://127.0.0.1:{feed.port}/feed"

    visit(browser, f"{origin}/page?" + urlencode({"ws": f"{base}?token=s3cr3t-alice"}), [
        "open: /feed", "message: hello alice", "close: 1000 clean=true",
    ])
    for query in ("?token=wrong", ""):
        visit(browser, f"{origin}/page?" + urlencode({"ws": base + query}), REFUSED)
        assert console_failures(browser, base + query) == UNAUTHORIZED

    stats = feed.stats()["paths"]["/feed"]
    assert stats["accepted"] == 1 and stats["refused"] == {401: {"verify_client": 2}}
    assert refusals(caplog, "/feed") == [(401, "verify_client"), (401, "verify_client")]
    assert no_errors(served, caplog)
