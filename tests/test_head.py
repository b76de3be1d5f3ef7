"""Unit: the RFC 9112 head rules shared by the channel and the fast path."""

from __future__ import annotations

from collections import Counter

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.utilities
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hps.head import (
    connection_tokens,
    host_ok,
    keeps_alive,
    origin_form,
    parse_stream,
    plain_fields,
)


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


Fields = list[tuple[bytes, bytes]]

_REQUEST = h2.utilities.HeaderValidationFlags(is_client=False, is_trailer=False,
                                              is_response_header=False, is_push_promise=False)


def h2_accepts(fields: Fields) -> bool:
    """Does h2's own inbound validation (what a server's stream runs on a request's
    fields) let ``fields`` through?"""
    try:
        list(h2.utilities.validate_headers(fields, _REQUEST))
    except h2.exceptions.ProtocolError:
        return False
    return True


PSEUDO = [(b":method", b"GET"), (b":scheme", b"https"),
          (b":path", b"/plugins/key-rate-limit/1.0.0/plugin.wasm"), (b":authority", b"hps:8443")]
GO = [(b":authority", b"hps:8443"), (b":method", b"GET"),
      (b":path", b"/plugins/key-rate-limit/1.0.0/plugin.wasm"), (b":scheme", b"https"),
      (b"user-agent", b"Go-http-client/2.0"), (b"accept-encoding", b"gzip")]
"""What Go's http2 client (the gateway's, fetching a module) sends: pseudo-fields in
its own order."""
NGHTTP2 = [*PSEUDO, (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"),
           (b"user-agent", b"h2load nghttp2/1.64.0")]
CURL = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"hps:8443"),
        (b":path", b"/plugins/key-rate-limit/1.0.0/plugin.wasm"),
        (b"user-agent", b"curl/8.14.1"), (b"accept", b"*/*")]


@pytest.mark.parametrize("fields", [GO, NGHTTP2, CURL, PSEUDO,
                                    [*PSEUDO, (b"x-empty", b""), (b"x-inner", b"a  b")]],
                         ids=["go", "nghttp2", "curl", "bare", "empty-and-inner-space"])
def test_real_clients_module_requests_are_plain(fields: Fields) -> None:
    assert plain_fields(fields)
    assert h2_accepts(fields)


def without(name: bytes) -> Fields:
    return [pair for pair in NGHTTP2 if pair[0] != name]


def replaced(name: bytes, value: bytes) -> Fields:
    return [(n, value if n == name else v) for n, v in NGHTTP2]


@pytest.mark.parametrize("fields", [
    [*PSEUDO, (b"User-Agent", b"x")],
    *([*PSEUDO, (name, value)] for name, value in [
        (b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"), (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"), (b"te", b"trailers"), (b"host", b"hps:8443")]),
    [*PSEUDO[:3], (b"accept", b"*/*"), PSEUDO[3]],
    [*PSEUDO, (b":method", b"GET")],
    [*PSEUDO, (b":protocol", b"websocket")],
    [*PSEUDO, (b":status", b"200")],
    without(b":authority"),
    without(b":method"),
    replaced(b":path", b""),
    replaced(b":method", b""),
    [*PSEUDO, (b"accept", b" */*")],
    [*PSEUDO, (b"accept", b"*/*\t")],
    [*PSEUDO, (b"accept", b"*/\t*")],  # h2 takes an inner tab; hps leaves it to h2
    [*PSEUDO, (b"accept", b"*/\x00*")],
    [*PSEUDO, (b"accept", b"*/\r*")],
    [*PSEUDO, (b"accept", b"*/\n*")],
    [*PSEUDO, (b"accept", b"*/*\x7f")],
    [*PSEUDO, (b"accept", "*/\u00e9".encode())],
    [*PSEUDO, (b"x:y", b"1")],
    [*PSEUDO, (b"x y", b"1")],
    [*PSEUDO, (b"", b"1")],
], ids=["uppercase", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
        "upgrade", "te", "host", "pseudo-after-regular", "duplicate-pseudo", "protocol",
        "response-pseudo", "no-authority", "no-method", "empty-path", "empty-method",
        "leading-space", "trailing-tab", "inner-tab", "nul", "cr", "lf", "del", "non-ascii",
        "colon-in-name", "space-in-name", "empty-name"])
def test_each_rule_broken_is_not_plain(fields: Fields) -> None:
    """Each goes to h2 (restated) to be checked there, whether h2 accepts it or not."""
    assert not plain_fields(fields)


_NAMES = [b":method", b":scheme", b":path", b":authority", b":protocol", b":status",
          b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
          b"te", b"host", b"user-agent", b"accept", b"accept-encoding", b"Accept", b"x:y",
          b"x y", b"cookie"]
_NAME_BYTES = b"abcxyz-019_:ABZ \t\x00\r\n!~\x7f\x80"
_VALUE_BYTES = b"abcXYZ019/*.=;, \t\x00\r\n\x7f\x80~\"'"
_VALUES = [b"GET", b"https", b"/", b"/plugins/a/1.0.0/plugin.wasm", b"hps", b"trailers",
           b"gzip", b"", b" gzip", b"gzip\t", b"a b"]


def _field(names: st.SearchStrategy[bytes]) -> st.SearchStrategy[tuple[bytes, bytes]]:
    values = st.one_of(st.sampled_from(_VALUES), st.binary(max_size=6).filter(bool),
                       st.text(alphabet=st.sampled_from(_VALUE_BYTES.decode("latin-1")),
                               max_size=8).map(lambda t: t.encode("latin-1")))
    return st.tuples(names, values)


_ANY_FIELD = _field(st.one_of(
    st.sampled_from(_NAMES),
    st.text(alphabet=st.sampled_from(_NAME_BYTES.decode("latin-1")), max_size=8)
    .map(lambda t: t.encode("latin-1"))))
_REGULAR = st.tuples(st.sampled_from([b"user-agent", b"accept", b"accept-encoding", b"x-a",
                                      b"cookie", b"te", b"host"]),
                     st.sampled_from([b"gzip", b"*/*", b"a b", b"", b"trailers", b"hps"]))


@st.composite
def requests(draw: st.DrawFn) -> Fields:
    """Mostly near-valid requests (the four pseudo-fields in any order, some regular
    fields), with a few fields changed, dropped or put anywhere."""
    fields = draw(st.permutations(PSEUDO)) + draw(st.lists(_REGULAR, max_size=4))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(fields)))
        change = draw(st.sampled_from(["insert", "replace", "drop", "value"]))
        if change == "insert":
            fields.insert(at, draw(_ANY_FIELD))
        elif fields and at < len(fields):
            if change == "replace":
                fields[at] = draw(_ANY_FIELD)
            elif change == "drop":
                del fields[at]
            else:
                fields[at] = (fields[at][0], draw(_ANY_FIELD)[1])
    return fields


def test_whatever_is_plain_h2_accepts() -> None:
    """plain_fields is a strict subset of h2's inbound request checks: a request hps
    answers without h2 is one h2 would have taken. Both answers come up often enough
    that the property is not vacuous."""
    seen: Counter[bool] = Counter()

    @settings(max_examples=600, deadline=None)
    @given(requests())
    def check(fields: Fields) -> None:
        plain = plain_fields(fields)
        seen[plain] += 1
        if plain:
            assert h2_accepts(fields), fields

    check()
    assert seen[True] >= 60 and seen[False] >= 60, seen


def h2_server_takes(fields: Fields) -> bool:
    """Does a server h2 connection, past the preface, take ``fields`` in a HEADERS frame
    with END_STREAM as a request (h2's whole inbound path, not only its header checks:
    the stream's own checks too, such as Content-Length's)?"""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    block = hpack.Encoder().encode(fields)  # the client's h2 would refuse to send some
    frame = len(block).to_bytes(3, "big") + b"\x01\x05" + (1).to_bytes(4, "big") + block
    try:
        events = server.receive_data(frame)
    except h2.exceptions.ProtocolError:
        return False
    return [type(event) for event in events] == [h2.events.RequestReceived,
                                                 h2.events.StreamEnded]


def test_what_the_whole_path_answers_h2_would_have_taken_as_a_request() -> None:
    """hps answers a request without h2 only if plain_fields and parse_stream both pass
    (hps.fastpath.ArtifactFastPath.parse_fields): then h2's whole inbound path takes it.
    (plain_fields alone is within h2's header
    checks, not its stream's: it lets through ``content-length: x``, which h2 refuses;
    parse_stream refuses any Content-Length.)"""
    assert plain_fields([*PSEUDO, (b"content-length", b"x")])
    assert not h2_server_takes([*PSEUDO, (b"content-length", b"x")])
    assert parse_stream([*PSEUDO, (b"content-length", b"x")]) is None
    seen: Counter[bool] = Counter()

    @settings(max_examples=300, deadline=None)
    @given(requests())
    def check(fields: Fields) -> None:
        answered = plain_fields(fields) and parse_stream(fields) is not None
        seen[answered] += 1
        if answered:
            assert h2_server_takes(fields), fields

    check()
    assert seen[True] >= 30 and seen[False] >= 30, seen


def test_split_cookies_ending_empty_are_not_plain() -> None:
    """h2 joins Cookie fields ("a" and "" make "a; ") before validating, and ends the
    connection (PROTOCOL_ERROR) for the trailing space, though each field alone passes its
    header checks: plain_fields refuses an empty Cookie, so take_whole never answers it."""
    fields = [*PSEUDO, (b"cookie", b"a"), (b"cookie", b"")]
    assert h2_accepts(fields)
    assert parse_stream(fields) is not None
    assert not h2_server_takes(fields)
    assert not plain_fields(fields)
