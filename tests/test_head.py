"""Unit: the RFC 9112 head rules shared by the channel and the fast path."""

from __future__ import annotations

import pytest

from hps.head import connection_tokens, host_ok, keeps_alive, origin_form, parse_stream


def test_host_rules() -> None:
    """HTTP/1.1 needs exactly one Host with a valid host[:port] (empty allowed); HTTP/1.0 may
    omit it."""
    assert host_ok([b"example.com"], b"HTTP/1.1")
    assert host_ok([b"example.com:8080"], b"HTTP/1.1")
    assert host_ok([b"[::1]:8080"], b"HTTP/1.1")
    assert host_ok([b""], b"HTTP/1.1")  # an empty reg-name is valid
    assert not host_ok(None, b"HTTP/1.1")
    assert not host_ok([b"a", b"b"], b"HTTP/1.1")
    assert not host_ok([b"a", b"a"], b"HTTP/1.0")
    assert not host_ok([b"a b"], b"HTTP/1.1")
    assert not host_ok([b"a/b"], b"HTTP/1.1")
    assert not host_ok([b"user@a"], b"HTTP/1.1")
    assert host_ok(None, b"HTTP/1.0")


def test_connection_options() -> None:
    """A close token anywhere in any Connection header ends keep-alive; HTTP/1.0 never keeps
    alive."""
    assert connection_tokens([b"keep-alive, Close"]) == {b"keep-alive", b"close"}
    assert not keeps_alive(b"HTTP/1.1", [b"keep-alive", b"close"])
    assert not keeps_alive(b"HTTP/1.1", [b"keep-alive,close"])
    assert not keeps_alive(b"HTTP/1.1", [b"TE, close"])
    assert keeps_alive(b"HTTP/1.1", [b"keep-alive"])
    assert keeps_alive(b"HTTP/1.1", None)
    assert not keeps_alive(b"HTTP/1.0", [b"keep-alive"])


def test_absolute_form() -> None:
    """An http(s) absolute-form target becomes its path and Host; any other target is left as it
    came."""
    assert origin_form(b"http://h:8080/plugins/a?x=1") == (b"/plugins/a?x=1", b"h:8080")
    assert origin_form(b"HTTPS://h") == (b"/", b"h")
    assert origin_form(b"http://h?x") == (b"/?x", b"h")
    for other in (b"/plugins/", b"*", b"ftp://h/x", b"http:///x", b"http://u@h/x"):
        assert origin_form(other) == (other, None)


STREAM = [(b":method", b"GET"), (b":scheme", b"https"),
          (b":path", b"/plugins/key-rate-limit/1.0.0/plugin.wasm"), (b":authority", b"hps"),
          (b"user-agent", b"Go-http-client/2.0"), (b"accept-encoding", b"gzip")]


def test_a_gateways_http2_request_is_in_the_strict_subset() -> None:
    parsed = parse_stream(STREAM)
    assert parsed is not None
    assert (parsed.method, parsed.name, parsed.version, parsed.head) == (
        b"GET", "key-rate-limit", "1.0.0", False)
    assert parsed.headers == {b"user-agent": b"Go-http-client/2.0"}
    assert parsed.accept.present and parsed.accept.weights == {b"gzip": 1.0}
    head = parse_stream([(b":method", b"HEAD"), *STREAM[1:]])
    assert head is not None and head.head


@pytest.mark.parametrize("change", [
    [(b":method", b"POST")],
    [(b":path", b"/plugins/key-rate-limit/1.0.0/plugin.wasm?x=1")],
    [(b":path", b"/plugins/key-rate-limit/1.0.0/metadata.txt")],
    [(b":path", b"/plugins/%6b/1.0.0/plugin.wasm")],
    [(b":protocol", b"websocket")],
    [(b"range", b"bytes=0-1")],
    [(b"if-none-match", b"*")],
    [(b"if-modified-since", b"Mon, 07 Dec 2026 05:10:05 GMT")],
    [(b"content-length", b"0")],
    [(b"accept-encoding", b"br")],  # a second Accept-Encoding line
], ids=lambda change: change[0][0].decode())
def test_anything_else_goes_to_twisted_web(change: list[tuple[bytes, bytes]]) -> None:
    fields = dict(STREAM[:4])
    extra = [pair for pair in change if pair[0] not in fields or pair[0] == b"accept-encoding"]
    fields.update({name: value for name, value in change if name in fields})
    assert parse_stream([*fields.items(), *STREAM[4:], *extra]) is None
