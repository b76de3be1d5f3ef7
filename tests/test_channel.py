"""The HTTP/1.1 channel through the real site in memory: canned refusals, the head rules
(Host, Connection, absolute-form)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hps.limits import Limits
from tests.test_site import Site


@pytest.fixture
def make(tmp_path: Path):
    return lambda **limits: Site(tmp_path / "plugins", Limits(**limits))


def test_canned_replies_to_head_carry_no_body(make) -> None:
    site = make()
    _, big = site.ask(b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert big.value().startswith(b"HTTP/1.1 413 ") and big.value().endswith(b"\r\n\r\n")
    _, long = site.ask(b"HEAD / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n")
    assert long.value().startswith(b"HTTP/1.1 431 ") and long.value().endswith(b"\r\n\r\n")
    _, get = site.ask(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert get.value().endswith(b"\r\n\r\nrequest bodies are not accepted\n")


@pytest.mark.parametrize("head", [
    b"GET /healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET /plugins/demo/1.0.0/plugin.wasm HTTP/1.1\r\nHost: a/b\r\n\r\n",
    b"HEAD /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
])
def test_missing_duplicated_or_bad_host_is_400(make, head: bytes) -> None:
    _, transport = make().ask(head)
    assert transport.value().startswith(b"HTTP/1.1 400 ") and transport.disconnecting
    assert transport.value().endswith(b"\r\n\r\n") == head.startswith(b"HEAD")


@pytest.mark.parametrize("lines", [
    b"Connection: keep-alive\r\nConnection: close\r\n",
    b"Connection: keep-alive,close\r\n",
    b"Connection: TE, Close\r\n",
])
def test_connection_close_anywhere_closes(make, lines: bytes) -> None:
    _, transport = make().ask(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in transport.value()
    assert transport.disconnecting


def test_absolute_form_targets_are_routed_and_name_the_host(make) -> None:
    site = make()
    _, transport = site.ask(b"GET http://hps.example:8080/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ") and transport.value().endswith(b"ok\n")
    _, landing = site.ask(b"GET HTTP://hps.example:8080/ HTTP/1.1\r\nHost: other\r\n\r\n")
    assert b"http://hps.example:8080/plugins/${name}" in landing.value()
