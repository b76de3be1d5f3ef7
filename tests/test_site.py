"""In memory: the channel's limits, deadlines and head rules, through the real site
(tests/support/memory.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hps._twisted import inner_channel
from hps.catalog import identity_of
from hps.files import Source, open_verified
from hps.limits import PROBE_RESERVE, Limits
from tests.support.memory import Harness
from tests.support.server import Tree

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def make(tree: Tree, harness) -> Callable[..., Harness]:
    """``make(**knobs)``: the server in memory over a tree holding demo 1.0.0."""
    tree.add("demo", "1.0.0", size=1000)
    return lambda **knobs: harness(tree.root, **knobs)


def test_a_silent_connection_is_cut_at_the_header_timeout_from_accept(make) -> None:
    site = make(header_timeout=2.0)
    silent = site.connect()
    slow = site.connect().send(b"GET / HTTP/1.1\r\n")
    site.advance(1.5)
    assert not silent.closed and not slow.closed
    site.advance(1.0)
    assert silent.closed, "nothing to answer: the socket just goes"
    assert silent.received() == b""
    assert slow.received().startswith(b"HTTP/1.1 408 ") and slow.closed


def test_at_the_cap_the_oldest_idle_connection_makes_room(make) -> None:
    site = make(max_connections=2)
    oldest = site.connect()
    busy = site.connect()
    inner_channel(busy.server).response_began()  # answering: never evicted
    newest = site.connect().send(HEALTHZ)
    assert oldest.closed and oldest.received() == b""
    assert newest.received().startswith(b"HTTP/1.1 200 ")
    assert len(site.site.connections) == 2


def test_when_everyone_is_answering_probes_still_get_through(make) -> None:
    site = make(max_connections=1)
    busy = site.connect()
    inner_channel(busy.server).response_began()
    probe = site.connect().send(HEALTHZ).received()
    assert probe.startswith(b"HTTP/1.1 200 ") and probe.endswith(b"ok\n")
    assert b"\r\nConnection: close\r\n" in probe
    download = site.raw(b"GET /plugins/demo/1.0.0/plugin.wasm HTTP/1.1\r\nHost: x\r\n\r\n")
    assert download.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nRetry-After: 1\r\n" in download
    # Probe slots held by busy connections run out; then shedding is a 503, not a reset.
    for _ in range(PROBE_RESERVE):
        inner_channel(site.connect().server).response_began()
    shed = site.connect().received()
    assert shed.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in shed


def test_open_files_count_against_the_descriptor_budget(make, tmp_path: Path) -> None:
    module = tmp_path / "module"
    module.write_bytes(b"\0asm")
    held = [open_verified(str(module), identity_of(os.stat(module))) for _ in range(2)]
    site = make()
    site.site.limits = Limits(max_connections=10, descriptors=Source.open + 1)  # one socket
    busy = site.connect()
    inner_channel(busy.server).response_began()
    second = site.raw(b"GET /plugins/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert second.startswith(b"HTTP/1.1 503 "), "two files and a socket: no room"
    del held


def test_generated_error_pages_carry_no_body_on_head(make) -> None:
    site = make()
    for head in (b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"HEAD /plugins/%00 HTTP/1.1\r\nHost: x\r\n\r\n"):
        reply = site.raw(head)
        assert reply.split(b" ")[1] in (b"400", b"404")
        assert reply.endswith(b"\r\n\r\n"), reply
