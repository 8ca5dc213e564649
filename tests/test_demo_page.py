"""The demo page in headless Chromium: ``python -m ws_multipath`` run as a
process, two windows join its chat with different names, each sees both on
the roster, a message typed in one shows in the other, and the echo box
echoes.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them),
driven by Selenium, which is given both paths so that Selenium Manager never
runs (and ``SE_OFFLINE`` in case it did). Skipped, saying why, without them.

The screenshot of the first window is kept as ``demo-page.png`` (or
``demo-page-failed.png``) in ``$WS_MULTIPATH_ARTIFACTS``, else
``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .cluster_support import free_port, own_redis, spawn, stop_process  # noqa: F401 - own_redis: a fixture
from .conftest import wait_until
from .test_main import demo  # noqa: F401 - the fixture: the demo server as a process

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1040,700",
]
WAIT = 30  # seconds for each condition: Chromium can be slow on two loaded cores

_missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
pytestmark = [
    pytest.mark.skipif(
        bool(_missing), reason=f"no {' or '.join(_missing)}: apt-get install chromium chromium-driver (as .ci/run does)"
    ),
    pytest.mark.timeout(60),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = Path(os.environ.get("WS_MULTIPATH_ARTIFACTS") or Path(__file__).parent / "artifacts")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")))
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


def texts(driver, selector):
    """The text of every element matching ``selector``, read in one go (no stale elements)."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", selector)


def until(driver, condition, what):
    return WebDriverWait(driver, WAIT).until(lambda d: condition(d), message=f"waited {WAIT} s for {what}")


def open_page(driver, url):
    driver.get(url)
    until(driver, lambda d: d.find_element(By.ID, "echo-send").is_enabled(), "the echo box to connect")


def join(driver, name):
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "join").click()
    until(driver, lambda d: d.find_element(By.ID, "say").is_enabled(), f"{name} to join")


def say(driver, text):
    driver.find_element(By.ID, "say").send_keys(text)
    driver.find_element(By.ID, "send").click()


def test_two_windows_chat_with_a_live_roster_and_the_echo_box_echoes(demo, browser):  # noqa: F811
    process, (_, _, page_url) = demo
    shot = ARTIFACTS / "demo-page-failed.png"
    try:
        open_page(browser, page_url)
        alice = browser.current_window_handle
        join(browser, "Alice")
        until(browser, lambda d: texts(d, "#roster li") == ["Alice"], "Alice on her roster")

        browser.switch_to.new_window("window")
        open_page(browser, page_url)
        join(browser, "Bob")
        until(browser, lambda d: texts(d, "#roster li") == ["Alice", "Bob"], "both names on Bob's roster")
        browser.switch_to.window(alice)
        until(browser, lambda d: texts(d, "#roster li") == ["Alice", "Bob"], "both names on Alice's roster")

        say(browser, "Hello Bob, this is the demo page!")
        browser.switch_to.window(browser.window_handles[1])
        until(browser, lambda d: texts(d, "#log li") == ["AliceHello Bob, this is the demo page!"], "Alice's message at Bob's")
        say(browser, "Hi Alice, it works here too.")
        browser.switch_to.window(alice)
        expected = ["AliceHello Bob, this is the demo page!", "BobHi Alice, it works here too."]
        until(browser, lambda d: texts(d, "#log li") == expected, "Bob's reply at Alice's")

        browser.find_element(By.ID, "echo-input").send_keys("ping")
        browser.find_element(By.ID, "echo-send").click()
        until(browser, lambda d: texts(d, "#echo-log .echoed .text") == ["ping"], "the echo of ping")

        assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
        assert texts(browser, "#chat-status") == ["joined as Alice"]
        shot = ARTIFACTS / "demo-page.png"
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            browser.save_screenshot(str(shot))
        except Exception:  # noqa: BLE001 - a broken browser: keep the test's own error
            if shot.name == "demo-page.png":
                raise
    assert process.poll() is None


def _holder(client, name):
    """The worker (node id) whose presence in Redis holds the member ``name``, or None."""
    for node in client.smembers("ws_multipath:@presence:nodes"):
        for field, value in client.hgetall(b"ws_multipath:@presence:" + node).items():
            if field != b"@v" and json.loads(value)[2].get("name") == name:
                return node.decode()
    return None


@pytest.mark.timeout(120)
def test_the_roster_and_messages_span_two_workers(own_redis, browser):  # noqa: F811
    """``serve ws_multipath.demo:create_server --workers 2`` with Redis: two
    windows whose chats are on different workers (the second rejoins until
    the kernel put it on the other one, as Redis's presence says) see one
    roster and each other's messages."""
    import redis

    port = free_port()
    supervisor = spawn(["-m", "ws_multipath", "serve", "ws_multipath.demo:create_server", "--port", str(port), "--host", "127.0.0.1", "--workers", "2", "--broker", own_redis.url], stderr=subprocess.PIPE, start_new_session=True)
    client = redis.Redis.from_url(own_redis.url)
    shot = ARTIFACTS / "demo-workers-failed.png"
    try:
        for _ in range(2):
            assert supervisor.stdout.readline().split()[:1] == ["worker"]
        assert wait_until(lambda: client.scard("ws_multipath:@presence:nodes") == 2, timeout=WAIT)  # both workers wrote their presence
        page_url = f"http://127.0.0.1:{port}/"
        open_page(browser, page_url)
        alice = browser.current_window_handle
        join(browser, "Alice")
        assert wait_until(lambda: _holder(client, "Alice"), timeout=WAIT)
        browser.switch_to.new_window("window")
        bob = browser.current_window_handle
        for attempt in range(20):
            open_page(browser, page_url)
            join(browser, "Bob")
            assert wait_until(lambda: _holder(client, "Bob"), timeout=WAIT)
            if _holder(client, "Bob") != _holder(client, "Alice"):
                break
        assert _holder(client, "Bob") != _holder(client, "Alice"), "20 joins all on Alice's worker"
        until(browser, lambda d: texts(d, "#roster li") == ["Alice", "Bob"], "both names on Bob's roster")
        browser.switch_to.window(alice)
        until(browser, lambda d: texts(d, "#roster li") == ["Alice", "Bob"], "both names on Alice's roster (another worker)")
        say(browser, "Hello from the first worker")
        browser.switch_to.window(bob)
        until(browser, lambda d: texts(d, "#log li") == ["AliceHello from the first worker"], "Alice's message at Bob's, once")
        say(browser, "Hello from the second")
        browser.switch_to.window(alice)
        expected = ["AliceHello from the first worker", "BobHello from the second"]
        until(browser, lambda d: texts(d, "#log li") == expected, "Bob's reply at Alice's, once")
        browser.switch_to.window(bob)
        browser.close()  # Bob's window goes: he leaves Alice's roster
        browser.switch_to.window(alice)
        until(browser, lambda d: texts(d, "#roster li") == ["Alice"], "Bob gone from Alice's roster")
        assert texts(browser, "#log li") == expected  # no raw text from the other worker
        assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
        shot = ARTIFACTS / "demo-workers.png"
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            browser.save_screenshot(str(shot))
        except Exception:  # noqa: BLE001
            pass
        client.close()
        stop_process(supervisor)
