"""Unit: the fast path's strict request subset, and what it writes on a StringTransport."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from hps import fastpath
from hps.bodies import BodyCache, build_body
from hps.catalog import scan
from hps.config import Config
from hps.fastpath import parse_request
from hps.resources import Root
from hps.site import PluginSite
from hps.state import ServerState
from hps.transfer import Policy
from tests.support.server import wasm_bytes

GET = b"GET /plugins/demo/1.0.0/plugin.wasm HTTP/1.1\r\nHost: x\r\n"


def test_plain_requests_are_accepted() -> None:
    parsed = parse_request(GET + b"Accept-Encoding: gzip\r\nUser-Agent: Go-http-client/1.1\r\n\r\n")
    assert parsed is not None and (parsed.name, parsed.version) == ("demo", "1.0.0")
    assert parsed.headers[b"accept-encoding"] == b"gzip"
    assert not parsed.close
    assert parse_request(GET + b"Connection: close\r\n\r\n").close
    assert parse_request(b"HEAD" + GET[3:] + b"\r\n") is not None


@pytest.mark.parametrize("data", [
    GET,  # incomplete
    GET + b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",  # pipelined
    GET + b"\r\nxyz",  # body bytes
    GET.replace(b"HTTP/1.1", b"HTTP/1.0") + b"\r\n",
    GET.replace(b"GET", b"POST") + b"\r\n",
    GET.replace(b"demo", b"de%6do") + b"\r\n",
    GET.replace(b"plugin.wasm", b"plugin.wasm?x=1") + b"\r\n",
    GET.replace(b"demo", b"..") + b"\r\n",
    GET.replace(b"Host: x\r\n", b"") + b"\r\n",  # no Host
    GET + b"Host: y\r\n\r\n",  # two Hosts
    GET + b"Range: bytes=0-1\r\n\r\n",
    GET + b"If-None-Match: *\r\n\r\n",
    GET + b"Content-Length: 0\r\n\r\n",
    GET + b"Transfer-Encoding: chunked\r\n\r\n",
    GET + b"Expect: 100-continue\r\n\r\n",
    GET + b"Upgrade: h2c\r\n\r\n",
    GET + b"Connection: upgrade\r\n\r\n",
    GET + b"Accept-Encoding: gzip\r\nAccept-Encoding: br\r\n\r\n",
    GET + b"X-A: 1\r\n folded\r\n\r\n",  # obs-fold
    GET + b"X-A: a\rb\r\n\r\n",  # bare CR
    GET + b"X-A: a\nb\r\n\r\n",  # bare LF
    GET + b"X-A: a\0b\r\n\r\n",
    GET + b"X A: 1\r\n\r\n",
    GET + b"X-A : 1\r\n\r\n",
    GET + b"X-A: " + b"a" * 9000 + b"\r\n\r\n",
])
def test_everything_else_goes_to_twisted_web(data: bytes) -> None:
    assert parse_request(data) is None


@pytest.fixture
def site(tmp_path: Path) -> tuple[PluginSite, bytes]:
    body = wasm_bytes(1_200_000)
    target = tmp_path / "demo" / "1.0.0" / "plugin.wasm"
    target.parent.mkdir(parents=True)
    target.write_bytes(body)
    state = ServerState(config=Config(root=str(tmp_path)), catalog=scan(str(tmp_path)))
    policy = Policy.from_config(300, immutable=False, gzip=True)
    cache = BodyCache(128 << 20, with_gzip=True)
    site = PluginSite(Root(state, cache, policy), state=state)
    fast = fastpath.install(state, site, cache, policy)
    artifact = state.catalog.get("demo", "1.0.0")
    fast.cache.entries[artifact.sha256] = build_body(artifact, body, with_gzip=True)
    return site, body


def connect(site: PluginSite) -> tuple[object, StringTransport]:
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
    proto.makeConnection(transport)
    return proto, transport


def test_fast_path_answers_and_stays_ready(site) -> None:
    site, body = site
    proto, transport = connect(site)
    proto.dataReceived(GET + b"\r\n")
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: %d" % len(body) in head
    # StringTransport never pushes back, so every chunk is written at once.
    assert rest == body
    assert not proto._channel.requests  # twisted.web never saw it
    transport.clear()
    proto.dataReceived(b"HEAD" + GET[3:] + b"Connection: close\r\n\r\n")
    assert transport.value().endswith(b"Connection: close\r\n\r\n")
    assert transport.disconnecting


def test_other_requests_reach_twisted_web(site) -> None:
    site, body = site
    proto, transport = connect(site)
    proto.dataReceived(GET + b"Range: bytes=0-3\r\n\r\n")
    # twisted.web parsed it and is now answering through ArtifactFile.
    assert b"206 Partial Content" in transport.value()
    assert transport.value().endswith(body[:4])
