"""sync/ids.py: connection ids are uuid4s, unique, and a forked child does
not repeat its parent's."""

from __future__ import annotations

import os
import uuid

import pytest

from ws_multipath.sync.ids import new_id


def test_ids_are_version_4_uuids_and_unique_across_batches():
    ids = [new_id() for _ in range(1000)]  # several batches of 256
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == value


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_hands_out_ids_of_its_own():
    new_id()  # a batch is under way in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(new_id() for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 4096).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent = "".join(new_id() for _ in range(4))
    assert len(child) == 128 and child != parent
    assert not {child[i:i + 32] for i in range(0, 128, 32)} & {parent[i:i + 32] for i in range(0, 128, 32)}
