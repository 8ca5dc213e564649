"""Route patterns: the routing table on its own (specificity, exact paths
first, conflicts, converters, invalid patterns, removal), then over real
sockets (``request.path_params``, a broadcast to one room)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ws_multipath.http.routing import RoutingTable, compile_pattern

from .conftest import TIMEOUT, echo, raw_request, upgrade_head, url, wait_until


def table(*paths: str) -> RoutingTable[str]:
    """A table whose handler for each path is the path itself."""
    routes: RoutingTable[str] = RoutingTable()
    for path in paths:
        routes.add(path, path)
    return routes


def winner(routes: RoutingTable[str], path: str):
    found = routes.lookup(path)
    return None if found is None else found[0]


# -- converters ----------------------------------------------------------------


def test_converters_match_and_convert():
    routes = table("/s/<name>", "/t/<string:name>", "/i/<int:n>", "/f/<float:x>", "/u/<uuid:u>", "/p/<path:rest>")
    assert routes.lookup("/s/lobby") == ("/s/<name>", {"name": "lobby"})
    assert routes.lookup("/t/lobby") == ("/t/<string:name>", {"name": "lobby"})
    assert routes.lookup("/i/0042") == ("/i/<int:n>", {"n": 42})
    assert routes.lookup("/f/3.25") == ("/f/<float:x>", {"x": 3.25})
    u = "12345678-9ABC-def0-1234-56789abcdef0"
    handler, params = routes.lookup(f"/u/{u}")
    assert handler == "/u/<uuid:u>" and params == {"u": uuid.UUID(u)} and isinstance(params["u"], uuid.UUID)
    assert routes.lookup("/p/a/b/c.txt") == ("/p/<path:rest>", {"rest": "a/b/c.txt"})
    assert type(routes.lookup("/i/7")[1]["n"]) is int


@pytest.mark.parametrize(
    "path",
    [
        "/s/", "/s/a/b", "/s",  # string: one or more chars, no /
        "/i/-1", "/i/+1", "/i/1.5", "/i/", "/i/x", "/i/\u0663",  # int: [0-9]+ only (no sign, ASCII digits)
        "/f/1", "/f/.5", "/f/1.", "/f/-1.5", "/f/1e5", "/f/1.5e3",  # float: [0-9]+\.[0-9]+
        "/u/12345678123456781234567812345678", "/u/12345678-1234-1234-1234-12345678abcg",
        "/p/", "/p",  # path: at least one char
    ],
)
def test_converters_refuse(path):
    routes = table("/s/<name>", "/i/<int:n>", "/f/<float:x>", "/u/<uuid:u>", "/p/<path:rest>")
    assert routes.lookup(path) is None


def test_variables_inside_a_segment():
    routes = table("/v<int:version>/feed", "/files/<name>.<ext>")
    assert routes.lookup("/v2/feed") == ("/v<int:version>/feed", {"version": 2})
    assert routes.lookup("/files/report.pdf") == ("/files/<name>.<ext>", {"name": "report", "ext": "pdf"})
    assert routes.lookup("/vx/feed") is None


def test_values_are_percent_decoded_after_matching_the_path_as_received():
    routes = table("/rooms/<room>", "/p/<path:rest>")
    assert routes.lookup("/rooms/caf%C3%A9%20au%20lait") == ("/rooms/<room>", {"room": "café au lait"})
    # %2F does not split a segment, but the decoded value has the /
    assert routes.lookup("/rooms/a%2Fb") == ("/rooms/<room>", {"room": "a/b"})
    assert routes.lookup("/p/a%2Fb/c") == ("/p/<path:rest>", {"rest": "a/b/c"})
    assert routes.lookup("/rooms/%FF") == ("/rooms/<room>", {"room": "\ufffd"})
    # static text is compared as received: %72 is not "r"
    assert routes.lookup("/%72ooms/a") is None


def test_an_int_too_long_to_convert_is_no_match_and_the_next_pattern_is_tried():
    routes = table("/n/<int:n>", "/n/<name>")
    digits = "1" * 10_000  # beyond sys.get_int_max_str_digits() (4300) where it exists
    found = routes.lookup(f"/n/{digits}")
    if hasattr(sys, "get_int_max_str_digits") and 0 < sys.get_int_max_str_digits() < len(digits):
        assert found == ("/n/<name>", {"name": digits})
    else:
        assert found == ("/n/<int:n>", {"n": int(digits)})
    assert routes.lookup("/n/12") == ("/n/<int:n>", {"n": 12})


# -- which handler wins --------------------------------------------------------


def test_exact_path_wins_over_any_pattern_and_has_no_params():
    routes = table("/rooms/<room>", "/rooms/lobby", "/<path:any>")
    assert routes.lookup("/rooms/lobby") == ("/rooms/lobby", {})
    assert routes.lookup("/rooms/kitchen") == ("/rooms/<room>", {"room": "kitchen"})
    assert routes.lookup("/elsewhere/x") == ("/<path:any>", {"any": "elsewhere/x"})


@pytest.mark.parametrize("order", [1, -1])
def test_specificity_order_does_not_depend_on_registration_order(order):
    patterns = [
        "/a/<x>/<y>",  # two variables
        "/a/<x>",  # one untyped variable
        "/a/<int:x>",  # one typed variable
        "/a/b<x>",  # longer static prefix
        "/a/<x>/<int:y>",
        "/<path:p>",  # path: least specific of all
        "/a/<path:p>",
    ]
    routes = table(*patterns[::order])
    assert winner(routes, "/a/7") == "/a/<int:x>"  # typed before untyped
    assert winner(routes, "/a/q") == "/a/<x>"
    assert winner(routes, "/a/bq") == "/a/b<x>"  # longer static prefix ("/a/b" beats "/a/")
    assert winner(routes, "/a/q/r") == "/a/<x>/<y>"  # two variables beat a <path:> with one
    assert winner(routes, "/a/q/7") == "/a/<x>/<int:y>"  # fewer untyped among two variables
    assert winner(routes, "/a/q/r/s") == "/a/<path:p>"  # longer static prefix among <path:> patterns
    assert winner(routes, "/z/q/r") == "/<path:p>"
    assert winner(routes, "/") is None


def test_fewer_variables_first():
    routes = table("/<a>/<b>/c", "/<a>/b/c")
    assert winner(routes, "/x/b/c") == "/<a>/b/c"
    assert winner(routes, "/x/y/c") == "/<a>/<b>/c"


def test_more_static_text_then_registration_order_break_ties():
    routes = table("/<a>x", "/<a>-x")  # same rank but for static text: "/-x" is longer than "/x"
    assert winner(routes, "/q-x") == "/<a>-x"
    assert winner(routes, "/qx") == "/<a>x"
    first, second = compile_pattern("/k<a>-<b>"), compile_pattern("/k<a>.<b>")
    assert first.rank == second.rank
    routes = table("/k<a>-<b>", "/k<a>.<b>")
    assert winner(routes, "/k1-2.3") == "/k<a>-<b>"  # both match; the first registered wins
    routes = table("/k<a>.<b>", "/k<a>-<b>")
    assert winner(routes, "/k1-2.3") == "/k<a>.<b>"


# -- conflicts and invalid patterns -------------------------------------------


@pytest.mark.parametrize(
    "first, second",
    [
        ("/rooms/<room>", "/rooms/<name>"),
        ("/rooms/<room>", "/rooms/<string:name>"),  # string is the default
        ("/u/<int:id>/<path:rest>", "/u/<int:n>/<path:tail>"),
        ("/rooms/<room>", "/rooms/<room>"),
        ("/echo", "/echo"),
    ],
)
def test_patterns_matching_the_same_paths_are_refused_naming_the_handler_in_the_way(first, second):
    routes = table(first)
    with pytest.raises(ValueError) as info:
        routes.add(second, "second")
    assert repr(first) in str(info.value)
    assert routes.handlers() == [first]


def test_patterns_of_other_shapes_coexist():
    routes = table("/rooms/<room>", "/rooms/<int:n>", "/rooms/<path:p>", "/rooms/lobby", "/rooms/<a>/<b>")
    assert sorted(routes.handlers()) == sorted(["/rooms/<room>", "/rooms/<int:n>", "/rooms/<path:p>", "/rooms/lobby", "/rooms/<a>/<b>"])


@pytest.mark.parametrize(
    "pattern, words",
    [
        ("/x/<foo:x>", "unknown converter 'foo'"),
        ("/x/<x", "unbalanced"),
        ("/x/x>", "unbalanced"),
        ("/x/<<x>", "unbalanced"),
        ("/<a>/<int:a>", "appears twice"),
        ("/x/<>", "empty variable name"),
        ("/x/<int:>", "empty variable name"),
        ("/x/<1st>", "not an identifier"),
        ("/x/<a><b>", "nothing between them"),
    ],
)
def test_invalid_patterns_raise_value_error_naming_the_path(pattern, words):
    with pytest.raises(ValueError) as info:
        RoutingTable().add(pattern, "h")
    assert repr(pattern) in str(info.value) and words in str(info.value)


def test_create_handler_refuses_invalid_and_conflicting_patterns(server):
    server.create_handler(path="/rooms/<room>")
    with pytest.raises(ValueError, match=r"'/rooms/<room>'"):
        server.create_handler(path="/rooms/<name>")
    with pytest.raises(ValueError, match=r"'/x/<foo:y>'"):
        server.create_handler(path="/x/<foo:y>")
    assert server.create_handler(path="/rooms/lobby").path == "/rooms/lobby"


# -- removal -------------------------------------------------------------------


def test_remove_frees_the_pattern_and_its_shape():
    routes = table("/rooms/<room>", "/rooms/lobby")
    assert not routes.remove("/rooms/<room>", "another handler")
    assert routes.remove("/rooms/<room>", "/rooms/<room>")
    assert not routes.remove("/rooms/<room>", "/rooms/<room>")
    assert routes.lookup("/rooms/kitchen") is None
    assert routes.lookup("/rooms/lobby") == ("/rooms/lobby", {})
    routes.add("/rooms/<name>", "again")  # the shape is free again
    assert routes.lookup("/rooms/kitchen") == ("again", {"name": "kitchen"})
    assert sorted(routes.handlers()) == ["/rooms/lobby", "again"]


def test_closing_a_pattern_handler_unregisters_it(server):
    rooms = server.create_handler(path="/rooms/<room>")
    assert server._routes.lookup("/rooms/a")[0] is rooms
    closed = threading.Event()
    rooms.close(closed.set)
    assert closed.wait(TIMEOUT)
    assert server._routes.lookup("/rooms/a") is None
    assert server.create_handler(path="/rooms/<name>").path == "/rooms/<name>"


def test_concurrent_adds_removes_and_lookups_stay_consistent():
    routes: RoutingTable[str] = RoutingTable()
    routes.add("/stay/<int:n>", "stay")
    errors: list[BaseException] = []

    def churn(i: int) -> None:
        try:
            for k in range(200):
                path = f"/t{i}/<x>/{k}"
                routes.add(path, path)
                assert routes.lookup(f"/t{i}/q/{k}") == (path, {"x": "q"})
                assert routes.remove(path, path)
                assert routes.lookup("/stay/3") == ("stay", {"n": 3})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors
    assert routes.handlers() == ["stay"]


# -- over real sockets -------------------------------------------------------


def test_path_params_reach_the_connection_listeners(server):
    seen: list[tuple] = []
    items = server.create_handler(path="/users/<int:user>/items/<uuid:item>")
    lobby = server.create_handler(path="/users/lobby")
    items.on("connection", lambda ws, request: (seen.append(("handler", request.path_params, request.path, ws.path, items.path)), ws.send("ok")))
    lobby.on("connection", lambda ws, request: (seen.append(("lobby", request.path_params)), ws.send("ok")))
    server.on("connection", lambda ws, request, pathname: seen.append(("server", pathname)))
    item = uuid.uuid4()
    with connect(url(server, f"/users/42/items/{item}?x=1"), open_timeout=TIMEOUT) as client:
        assert client.recv(timeout=TIMEOUT) == "ok"
    with connect(url(server, "/users/lobby"), open_timeout=TIMEOUT) as client:
        assert client.recv(timeout=TIMEOUT) == "ok"
    assert wait_until(lambda: len(seen) == 4)
    path = f"/users/42/items/{item}"
    assert seen[0] == ("handler", {"user": 42, "item": item}, path, path, "/users/<int:user>/items/<uuid:item>")
    assert seen[1] == ("server", "/users/<int:user>/items/<uuid:item>")
    assert seen[2:] == [("lobby", {}), ("server", "/users/lobby")]
    assert type(seen[0][1]["user"]) is int
    with pytest.raises(InvalidStatus) as refused:  # an unmatched path is unhandled (400) as before
        connect(url(server, "/users/x/items/y"), open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 400


def test_broadcast_to_one_room(server):
    rooms = server.create_handler(path="/rooms/<room>")
    by_number: dict[int, object] = {}

    @rooms.on("connection")
    def joined(ws, request):
        by_number[int(request.query["n"][0])] = ws
        room = request.path_params["room"]
        ws.on("message", lambda data, is_binary: rooms.broadcast(f"{room}: {data}", path_params={"room": room}))
        ws.send("joined")

    names = ["red", "red", "blue", "caf%C3%A9", "caf%C3%A9"]
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(url(server, f"/rooms/{name}?n={n}"), open_timeout=TIMEOUT)) for n, name in enumerate(names)]
        for client in clients:
            assert client.recv(timeout=TIMEOUT) == "joined"
        assert wait_until(lambda: len(rooms.clients) == len(names))
        clients[0].send("hello")
        assert clients[0].recv(timeout=TIMEOUT) == "red: hello"
        assert clients[1].recv(timeout=TIMEOUT) == "red: hello"
        clients[3].send("salut")  # the room's name arrives decoded
        assert clients[3].recv(timeout=TIMEOUT) == "café: salut"
        assert clients[4].recv(timeout=TIMEOUT) == "café: salut"
        assert rooms.broadcast("to blue", path_params={"room": "blue"}) == 1
        assert rooms.broadcast("nobody", path_params={"room": "green"}) == 0
        assert rooms.broadcast("not red 0", exclude=by_number[0], path_params={"room": "red"}) == 1
        assert clients[2].recv(timeout=TIMEOUT) == "to blue"  # and not the red or café messages before it
        assert clients[1].recv(timeout=TIMEOUT) == "not red 0"
        for client in (clients[0], clients[2], clients[3], clients[4]):
            with pytest.raises(TimeoutError):
                client.recv(timeout=0.2)
        with pytest.raises(TypeError):
            rooms.broadcast("x", path_params=["room"])


def test_paths_that_make_a_regex_backtrack_are_refused_at_once_and_stall_no_one(server):
    # Against a backtracking regex, each of these upgrade requests cost
    # seconds of CPU with the GIL held (cubic in the dots for three
    # variables), stalling every other connection's echoes meanwhile.
    server.create_handler(path="/files/<name>.<ext>")
    server.create_handler(path="/<a>.<b>.<c>")
    server.create_handler(path="/echo").on("connection", echo)
    hostile = ["/files/" + "." * 6_000 + "/", "/" + "." * 4_000 + "/"] * 3
    answers: list[bytes] = []
    with connect(url(server, "/echo"), open_timeout=TIMEOUT) as client:
        threads = [threading.Thread(target=lambda path=path: answers.append(raw_request(server, upgrade_head(path)))) for path in hostile]
        for thread in threads:
            thread.start()
        slowest_echo = 0.0
        while any(thread.is_alive() for thread in threads):
            sent = time.monotonic()
            client.send("ping")
            assert client.recv(timeout=TIMEOUT) == "ping"
            slowest_echo = max(slowest_echo, time.monotonic() - sent)
        for thread in threads:
            thread.join(TIMEOUT)
    assert len(answers) == len(hostile) and all(answer.startswith(b"HTTP/1.1 400 ") for answer in answers)
    assert slowest_echo < TIMEOUT / 2  # was the whole CPU time of the lookups: tens of seconds
