"""The HTTP/1.1 channel through the real site in memory: canned refusals, the head rules
(Host, Connection, absolute-form)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.memory import Harness
from tests.support.server import Tree


@pytest.fixture
def make(tree: Tree, harness) -> Callable[[], Harness]:
    """``make()``: the server in memory over a tree holding demo 1.0.0."""
    tree.add("demo", "1.0.0", size=1000)
    return lambda: harness(tree.root)


def test_canned_replies_to_head_carry_no_body(make) -> None:
    site = make()
    big = site.raw(b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 413 ") and big.endswith(b"\r\n\r\n")
    long = site.raw(b"HEAD / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n")
    assert long.startswith(b"HTTP/1.1 431 ") and long.endswith(b"\r\n\r\n")
    get = site.raw(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert get.endswith(b"\r\n\r\nrequest bodies are not accepted\n")


@pytest.mark.parametrize("head", [
    b"GET /healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET /plugins/demo/1.0.0/plugin.wasm HTTP/1.1\r\nHost: a/b\r\n\r\n",
    b"HEAD /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
])
def test_missing_duplicated_or_bad_host_is_400(make, head: bytes) -> None:
    client = make().connect().send(head)
    assert client.received().startswith(b"HTTP/1.1 400 ") and client.closed
    assert client.received().endswith(b"\r\n\r\n") == head.startswith(b"HEAD")


@pytest.mark.parametrize("lines", [
    b"Connection: keep-alive\r\nConnection: close\r\n",
    b"Connection: keep-alive,close\r\n",
    b"Connection: TE, Close\r\n",
])
def test_connection_close_anywhere_closes(make, lines: bytes) -> None:
    client = make().connect().send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert client.received().startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in client.received()
    assert client.closed


def test_absolute_form_targets_are_routed_and_name_the_host(make) -> None:
    site = make()
    health = site.raw(b"GET http://hps.example:8080/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200 ") and health.endswith(b"ok\n")
    landing = site.raw(b"GET HTTP://hps.example:8080/ HTTP/1.1\r\nHost: other\r\n\r\n")
    assert b"http://hps.example:8080/plugins/${name}" in landing
