"""The pure HTTP decisions shared by the twisted.web path, the fast path and the listings:
units and properties, and (at the end) the one content-coding rule seen through the real
site in memory, on a listing and an artifact alike."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from hps.negotiate import (
    GZIP,
    OFFER,
    UNSATISFIABLE,
    none_match,
    not_modified,
    pick_range,
    preferences,
    range_applies,
    requested,
    variant_etag,
    variant_fields,
)

ETAG = b'"abc"'


def test_single_ranges() -> None:
    """One range, a suffix or an open end, clamped to the body, and overlapping or adjacent
    ranges coalesced into one."""
    assert pick_range(b"bytes=0-9", 100) == (0, 9)
    assert pick_range(b"bytes=90-", 100) == (90, 99)
    assert pick_range(b"bytes=-10", 100) == (90, 99)
    assert pick_range(b"bytes=-1000", 100) == (0, 99)
    assert pick_range(b"bytes=50-1000", 100) == (50, 99)
    assert pick_range(b"bytes=0-0,1-9", 100) == (0, 9)  # adjacent: coalesced
    assert pick_range(b"bytes = 0-4 , 2-9", 100) == (0, 9)


def test_unsatisfiable_and_ignored_ranges() -> None:
    """A range past the end is unsatisfiable (416); malformed, reversed, disjoint or too many
    ranges are ignored (full body)."""
    assert pick_range(b"bytes=100-", 100) is UNSATISFIABLE
    assert pick_range(b"bytes=-0", 100) is UNSATISFIABLE
    assert pick_range(b"bytes=200-300,300-", 100) is UNSATISFIABLE
    for ignored in (b"items=0-1", b"bytes=5-1", b"bytes=a-b", b"bytes=", b"bytes=-",
                    b"bytes=0-1,50-60", b"0-1", b",".join([b"bytes=0-"] * 2000)):
        assert pick_range(ignored, 100) is None, ignored


@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 300)),
                          st.one_of(st.none(), st.integers(0, 300))), min_size=1, max_size=80),
       st.integers(1, 250))
def test_a_range_never_announces_more_than_the_body(specs, size) -> None:
    text = b"bytes=" + b",".join(
        b"%s-%s" % (b"" if a is None else b"%d" % a, b"" if b is None else b"%d" % b)
        for a, b in specs)
    span = pick_range(text, size)
    if isinstance(span, tuple):
        assert 0 <= span[0] <= span[1] < size


def test_if_none_match() -> None:
    """If-None-Match compares weakly, accepts lists and *, and treats a malformed value as
    absent."""
    assert none_match(b'"abc"', ETAG)
    assert none_match(b'W/"abc"', ETAG)  # weak comparison
    assert none_match(b'"x", W/"abc"', ETAG)
    assert none_match(b"*", ETAG)
    assert not none_match(b'"abcd"', ETAG)
    assert not none_match(b"abc", ETAG)  # malformed: as if absent
    assert none_match(b'"a,b"', b'"a,b"')


def test_not_modified_prefers_etags() -> None:
    date = b"Thu, 01 Jan 2026 00:00:00 GMT"
    mtime = 1767225600
    assert not_modified(None, date, ETAG, mtime)
    assert not_modified(None, date, ETAG, mtime - 5)
    assert not not_modified(None, date, ETAG, mtime + 1)
    assert not not_modified(b'"other"', date, ETAG, mtime)
    assert not not_modified(None, b"garbage", ETAG, mtime)


def test_if_range() -> None:
    """If-Range applies the range only for the same strong ETag or a date no older than the
    file."""
    assert range_applies(None, ETAG, 0)
    assert range_applies(ETAG, ETAG, 0)
    assert not range_applies(b'W/"abc"', ETAG, 0)  # weak never matches
    assert not range_applies(b'"old"', ETAG, 0)
    assert range_applies(b"Thu, 01 Jan 2026 00:00:00 GMT", ETAG, 1767225600.7)
    assert not range_applies(b"Thu, 01 Jan 2026 00:00:01 GMT", ETAG, 1767225600)


def chosen(header: bytes | None, offered: tuple[bytes, ...] = (GZIP,)) -> bytes | None:
    return preferences(header).choose(offered)


def test_accept_encoding() -> None:
    """Which Accept-Encoding values choose gzip (by name, alias or *, with a non-zero q) and
    which leave identity."""
    for wants in (b"gzip", b"deflate, gzip;q=0.5", b"*", b"x-gzip", b"GZIP", b"identity;q=0, *",
                  b"*;q=0, gzip", b"br;q=1, *;q=0.1", b"gzip;q=1.0, identity; q=0.5, *;q=0",
                  b"gzip, identity", b"gzip ; Q=0.5"):
        assert chosen(wants) == GZIP, wants
    for refuses in (None, b"", b"gzip;q=0", b"gzip;q=0.000, *", b"*;q=0", b"br, identity",
                    b"identity;q=0", b"identity;q=0, gzip;q=0", b"gzip;q=2", b"gzip;q=1.0001",
                    b"gzip;q=0.5, identity", b"gzip;q=0.5, *"):
        assert chosen(refuses) is None, refuses
    assert chosen(b"gzip", ()) is None, "nothing offered: identity"


def lines(*values: bytes) -> Headers:
    return Headers({b"Accept-Encoding": list(values)})


def test_every_field_line_counts() -> None:
    """Two Accept-Encoding lines are one list (RFC 9110 5.3), not the last line alone."""
    assert requested(lines(b"gzip", b"br")).choose((GZIP,)) == GZIP
    assert requested(lines(b"gzip", b"gzip;q=0")).choose((GZIP,)) == GZIP  # the highest weight
    assert requested(Headers()).choose((GZIP,)) is None


@pytest.mark.parametrize(("header", "wanted"), [
    (b"gzip", True), (b"x-gzip", True), (b"*", True), (b"br", False),
    (b"gzip;q=0.5, identity", False), (b"gzip, identity;q=0", True), (None, False),
])
def test_modules_and_listings_offer_gzip_by_one_rule(header: bytes | None,
                                                     wanted: bool) -> None:
    assert OFFER == (GZIP,)
    assert preferences(header).wants_gzip() is wanted


def test_a_variant_is_named_the_same_way_everywhere() -> None:
    assert variant_etag(b'"abc"', None) == b'"abc"'
    assert variant_etag(b'"abc"', GZIP) == b'"abc-gz"'
    assert dict(variant_fields(b'"abc-gz"', GZIP, True)) == {
        b"ETag": b'"abc-gz"', b"Content-Encoding": b"gzip", b"Vary": b"Accept-Encoding"}
    assert dict(variant_fields(b'"abc"', None, False)) == {b"ETag": b'"abc"'}


CODINGS = st.sampled_from([b"gzip", b"x-gzip", b"GZip", b"identity", b"*", b"br", b"deflate"])
QVALUES = st.sampled_from([None, b"0", b"0.0", b"0.001", b"0.5", b"0.500", b"1", b"1.000", b"2",
                           b"0.0001", b"x"])
ELEMENTS = st.lists(st.tuples(CODINGS, QVALUES), max_size=6)


def field(elements: list[tuple[bytes, bytes | None]]) -> bytes:
    return b", ".join(c if q is None else c + b";q=" + q for c, q in elements)


def weight_of(elements: list[tuple[bytes, bytes | None]], coding: bytes) -> float | None:
    """What the field says of ``coding`` by RFC 9110 12.5.3, read naively: the highest weight
    of the elements naming it (x-gzip is gzip), else ``*``'s, else nothing."""
    def readable(q: bytes | None) -> float | None:
        if q is None:
            return 1.0
        try:
            value = float(q)
        except ValueError:
            return None
        ok = q.count(b".") <= 1 and len(q.partition(b".")[2]) <= 3 and 0 <= value <= 1
        return value if ok else None

    def named(name: bytes) -> list[float]:
        found = [readable(q) for c, q in elements
                 if (b"gzip" if c.lower() == b"x-gzip" else c.lower()) == name]
        return [w for w in found if w is not None]

    own = named(coding)
    if own:
        return max(own)
    star = named(b"*")
    return max(star) if star else None


@given(ELEMENTS, st.booleans())
def test_the_chooser_follows_the_clients_weights(elements, offer_gzip) -> None:
    header = field(elements)
    offered = (GZIP,) if offer_gzip else ()
    choice = chosen(header, offered)
    assert choice in (None, *offered)
    gzip_weight = weight_of(elements, b"gzip")
    identity_weight = weight_of(elements, b"identity")
    if choice == GZIP:
        # gzip only when the client accepts it and does not prefer identity.
        assert gzip_weight is not None and gzip_weight > 0
        assert identity_weight is None or identity_weight <= gzip_weight
    elif offer_gzip and gzip_weight:
        # Identity although gzip was acceptable: the client prefers identity, by name.
        assert identity_weight is not None and identity_weight > gzip_weight
    # The order of the elements, and how the lines are split, never matter.
    assert chosen(field(elements[::-1]), offered) == choice
    assert requested(lines(field(elements[:2]), field(elements[2:]))).choose(offered) == choice


@given(st.binary(max_size=64))
def test_header_parsers_never_raise(value) -> None:
    assert preferences(value).choose((GZIP,)) in (None, GZIP)
    none_match(value, ETAG)
    range_applies(value, ETAG, 0)
    span = pick_range(value, 10)
    assert span is None or span is UNSATISFIABLE or span[1] < 10


# -- one rule, every route: through the real site in memory -------------------------------

ARTIFACT = "/plugins/demo/1.0.0/plugin.wasm"
LISTING = "/plugins/index.json"
ASKED = [None, "", "gzip", "x-gzip", "*", "*;q=0", "gzip;q=0", "identity;q=0", "br",
         "gzip;q=0.5, identity", "identity;q=0, *", "identity;q=0, gzip;q=0", "*;q=0, gzip",
         "gzip;q=2", ("br", "gzip")]
"""Accept-Encoding as sent: absent, one line, or (a tuple) several lines."""


def ask(server, path: str, asked: str | tuple[str, ...] | None):
    lines = [] if asked is None else [asked] if isinstance(asked, str) else list(asked)
    head = f"GET {path} HTTP/1.1\r\nHost: t\r\n" + "".join(
        f"Accept-Encoding: {line}\r\n" for line in lines) + "\r\n"
    return server.connect().send(head.encode()).take()


def encoding_view(reply, identity_etag: str) -> tuple[str | None, str | None, str]:
    """What a response says of its variant: Content-Encoding, Vary, and the ETag's form."""
    etag = reply.header("ETag")
    form = "identity" if etag == identity_etag else \
        "gz" if etag == identity_etag[:-1] + '-gz"' else f"other {etag}"
    return reply.header("Content-Encoding"), reply.header("Vary"), form


@pytest.mark.parametrize("gzip_on", [True, False])
def test_a_listing_and_an_artifact_negotiate_alike(tree, harness, gzip_on: bool) -> None:
    body = tree.add("demo", "1.0.0", size=150_000)
    for i in range(20):  # an index.json well above the size worth compressing
        tree.add(f"p{i:02d}", "1.0.0")
    server = harness(tree.root, gzip=gzip_on)
    etags = {path: server.get(path).header("ETag") for path in (ARTIFACT, LISTING)}
    expected_gzip = {"gzip", "x-gzip", "*", "identity;q=0, *", "*;q=0, gzip", ("br", "gzip")}
    for asked in ASKED:
        views = {}
        for path in (ARTIFACT, LISTING):
            reply = ask(server, path, asked)
            assert reply.status == 200
            raw = gzip.decompress(reply.body) if reply.header("Content-Encoding") else reply.body
            assert raw == body if path == ARTIFACT else json.loads(raw)["plugins"], path
            views[path] = encoding_view(reply, etags[path])
        assert views[ARTIFACT] == views[LISTING], asked
        wanted = gzip_on and asked in expected_gzip
        vary = "Accept-Encoding" if gzip_on else None
        assert views[ARTIFACT] == (("gzip", vary, "gz") if wanted else (None, vary, "identity")), \
            asked
