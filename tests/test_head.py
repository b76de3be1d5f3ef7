"""Unit: the RFC 9112 head rules shared by the channel and the fast path."""

from __future__ import annotations

from hps.head import connection_tokens, host_ok, keeps_alive, origin_form


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
