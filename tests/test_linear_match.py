"""Sequence patterns in linear time (``ws_multipath.linear_match``): the
same matches and groups as a greedy backtracking regex, checked against
Python's ``re`` on generated patterns and texts; and texts that make a
backtracking regex take seconds (cubic in their length for three
variables) matched in a bounded CPU time."""

from __future__ import annotations

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from ws_multipath.linear_match import AnyCount, ByteClass, Literal, Many, One, SequencePattern, Subject

# the pieces over a small alphabet, each with the regex that means the same
ALPHABET = "a./-1é\n"
CLASSES = {
    "[^/]": ByteClass.excluding("/"),
    "[0-9a]": ByteClass.of("0123456789a"),
    "[^\n]": ByteClass.excluding("\n"),
}
NON_ASCII = {"[^/]", "[^\n]"}  # the classes that hold non-ASCII characters


@st.composite
def pieces_and_regex(draw):
    pieces, parts, groups = [], [], []
    previous_class = ""
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["literal", "one", "many", "any", "group"]))
        class_regex = draw(st.sampled_from(sorted(CLASSES)))
        if class_regex in NON_ASCII and previous_class in NON_ASCII:
            # two such classes side by side (or with only AnyCount between) may cut a character in two (the
            # module's docstring): route patterns never have them
            class_regex = "[0-9a]"
        if kind != "any" or class_regex in NON_ASCII:  # an AnyCount may match nothing: still side by side
            previous_class = "" if kind == "literal" else class_regex
        byte_class = CLASSES[class_regex]
        if kind == "literal":
            text = draw(st.text(ALPHABET, min_size=1, max_size=3))
            pieces.append(Literal(text.encode()))
            parts.append(re.escape(text))
        elif kind == "one" and class_regex != "[^/]" and class_regex != "[^\n]":
            pieces.append(One(byte_class))  # one byte is one character only for an ASCII-only class
            parts.append(class_regex)
        elif kind == "any":
            pieces.append(AnyCount(byte_class))
            parts.append(class_regex + "*")
        else:
            if kind == "group":
                groups.append((len(pieces), len(pieces)))
                parts.append(f"({class_regex}+)")
            else:
                parts.append(class_regex + "+")
            pieces.append(Many(byte_class))
    return SequencePattern(pieces, groups), re.compile("".join(parts))


@settings(max_examples=400, deadline=None)
@given(pieces_and_regex(), st.text(ALPHABET, max_size=14))
def test_same_match_and_groups_as_a_greedy_regex(pattern_and_regex, text):
    pattern, regex = pattern_and_regex
    expected = regex.fullmatch(text)
    found = pattern.match(Subject(text))
    if expected is None:
        assert found is None
    else:
        assert found == list(expected.groups())
    assert pattern.matches(Subject(text)) == (expected is not None)


def test_groups_take_the_latest_cuts_as_a_greedy_regex_does():
    dot = Literal(b".")
    name = Many(ByteClass.excluding("/"))
    pattern = SequencePattern([name, dot, name, dot, name], [(0, 0), (2, 2), (4, 4)])
    assert pattern.match(Subject("a.b.c.d.e")) == ["a.b.c", "d", "e"]
    assert pattern.match(Subject("a.b")) is None
    assert pattern.match(Subject("é.ü.x")) == ["é", "ü", "x"]


def _cpu_seconds(call) -> float:
    start = time.thread_time()
    call()
    return time.thread_time() - start


def test_texts_that_make_a_regex_backtrack_cost_linear_time():
    # three variables around dots: a backtracking regex tries every way to
    # cut 8,000 dots in three before it fails on the final "/" (cubic: hours)
    name = Many(ByteClass.excluding("/"))
    pattern = SequencePattern([name, Literal(b"."), name, Literal(b"."), name], [(0, 0), (2, 2), (4, 4)])
    hostile = "." * 8_000 + "/"
    assert _cpu_seconds(lambda: [pattern.match(Subject(hostile)) for _ in range(20)]) < 1.0
    assert pattern.match(Subject(hostile)) is None
    # a glob with several stars, as the broker's pattern subscriptions have
    anything = AnyCount(ByteClass(range(256)))
    glob = SequencePattern([Literal(b"p:"), anything, Literal(b"/x"), anything, Literal(b"/y"), anything, Literal(b"/z")])
    hostile = "p:" + "/x/y" * 4_000
    assert _cpu_seconds(lambda: [glob.matches(Subject(hostile)) for _ in range(20)]) < 1.0
    assert not glob.matches(Subject(hostile))
    assert glob.matches(Subject(hostile + "/z"))
