"""The C extension ``ws_multipath._speedups`` against the pure-Python path,
and the switch between them (``WS_MULTIPATH_NO_SPEEDUPS``).

The comparisons need the extension (skipped without it: an install without
a compiler); ``.ci/run`` checks separately that it was built."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from ws_multipath import protocol
from ws_multipath.protocol import _unmask_python

OFFSETS = range(16)  # every alignment of the payload modulo 8, at every mask phase


@pytest.fixture(scope="module")
def speedups():
    return pytest.importorskip("ws_multipath._speedups")


def naive(payload: bytes, mask: bytes) -> bytes:
    return bytes(byte ^ mask[index & 3] for index, byte in enumerate(payload))


def sizes() -> list[int]:
    rng = random.Random(11)
    return [*range(70), 4095, 4096, 4097, 65536, 200_000, *(rng.randrange(200_001) for _ in range(24))]


@pytest.mark.parametrize("size", range(70))
def test_small_sizes_match_a_byte_by_byte_xor(speedups, size):
    payload, mask = os.urandom(size), os.urandom(4)
    for offset in OFFSETS:
        data = os.urandom(offset) + payload + os.urandom(5)
        assert speedups.unmask(data, offset, offset + size, mask) == naive(payload, mask)


@pytest.mark.parametrize("size", sizes())
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_c_and_python_give_the_same_bytes(speedups, size, kind):
    """``unmask`` returning new bytes: the same result, and the C path leaves ``data`` alone."""
    rng = random.Random(size)
    mask = rng.randbytes(4)
    for offset in OFFSETS:
        original = rng.randbytes(offset) + rng.randbytes(size) + rng.randbytes(rng.randrange(9))
        data = kind(original)
        result = speedups.unmask(data, offset, offset + size, mask)
        assert type(result) is bytes
        assert data == original
        assert result == _unmask_python(kind(original), offset, offset + size, mask)


@pytest.mark.parametrize("size", sizes())
def test_c_in_place_matches_python_in_place(speedups, size):
    """``mask_into`` XORs a bytearray in place, as the Python path does with
    large ones; the bytes around ``start:end`` stay as they were."""
    rng = random.Random(-size)
    mask = rng.randbytes(4)
    for offset in OFFSETS:
        head, payload, tail = rng.randbytes(offset), rng.randbytes(size), rng.randbytes(rng.randrange(9))
        buffer = bytearray(head + payload + tail)
        assert speedups.mask_into(buffer, offset, offset + size, mask) is None
        expected = _unmask_python(bytearray(head + payload + tail), offset, offset + size, mask)
        assert buffer == head + expected + tail
        speedups.mask_into(buffer, offset, offset + size, mask)  # XOR twice: back to the start
        assert buffer == head + payload + tail


def test_memoryviews_and_views_with_an_offset(speedups):
    """Any bytes-like object; a memoryview slice moves the base address off alignment."""
    data, mask = os.urandom(1000), os.urandom(4)
    for shift in range(8):
        view = memoryview(data)[shift:]
        assert speedups.unmask(view, 3, 900, mask) == naive(data[shift + 3 : shift + 900], mask)
        buffer = bytearray(data)
        speedups.mask_into(memoryview(buffer)[shift:], 3, 900, bytearray(mask))
        assert bytes(buffer[shift + 3 : shift + 900]) == naive(data[shift + 3 : shift + 900], mask)


def test_bad_arguments_raise(speedups):
    data = bytearray(10)
    for args in [(data, 0, 11, b"abcd"), (data, 5, 4, b"abcd"), (data, -1, 4, b"abcd")]:
        with pytest.raises(ValueError):
            speedups.unmask(*args)
        with pytest.raises(ValueError):
            speedups.mask_into(*args)
    for mask in (b"abc", b"abcde", bytearray(3)):
        with pytest.raises(ValueError):
            speedups.unmask(data, 0, 4, mask)
    with pytest.raises(BufferError):
        speedups.mask_into(bytes(10), 0, 4, b"abcd")  # read-only
    with pytest.raises(TypeError):
        speedups.unmask("text", 0, 4, b"abcd")
    with pytest.raises(TypeError):
        speedups.unmask(data, 0, 4)
    assert data == bytearray(10)


def test_the_frame_reader_uses_the_active_path():
    assert protocol.SPEEDUPS is (protocol.unmask is not _unmask_python)
    if protocol.SPEEDUPS:
        from ws_multipath import _speedups

        assert protocol.unmask is _speedups.unmask


def active_path(value: str | None) -> str:
    env = dict(os.environ)
    env.pop("WS_MULTIPATH_NO_SPEEDUPS", None)
    if value is not None:
        env["WS_MULTIPATH_NO_SPEEDUPS"] = value
    code = "import ws_multipath.protocol as p; print(p.SPEEDUPS, p.unmask is p._unmask_python)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_environment_variable_forces_the_python_path(value):
    assert active_path(value) == "False True"


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_the_environment_variable_the_extension_is_used(speedups, value):
    assert active_path(value) == "True False"
