"""Unit: the pure HTTP decisions shared by the twisted.web path and the fast path."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hps.negotiate import (
    UNSATISFIABLE,
    accepts_gzip,
    none_match,
    not_modified,
    pick_range,
    range_applies,
)

ETAG = b'"abc"'


def test_single_ranges() -> None:
    assert pick_range(b"bytes=0-9", 100) == (0, 9)
    assert pick_range(b"bytes=90-", 100) == (90, 99)
    assert pick_range(b"bytes=-10", 100) == (90, 99)
    assert pick_range(b"bytes=-1000", 100) == (0, 99)
    assert pick_range(b"bytes=50-1000", 100) == (50, 99)
    assert pick_range(b"bytes=0-0,1-9", 100) == (0, 9)  # adjacent: coalesced
    assert pick_range(b"bytes = 0-4 , 2-9", 100) == (0, 9)


def test_unsatisfiable_and_ignored_ranges() -> None:
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
    assert range_applies(None, ETAG, 0)
    assert range_applies(ETAG, ETAG, 0)
    assert not range_applies(b'W/"abc"', ETAG, 0)  # weak never matches
    assert not range_applies(b'"old"', ETAG, 0)
    assert range_applies(b"Thu, 01 Jan 2026 00:00:00 GMT", ETAG, 1767225600.7)
    assert not range_applies(b"Thu, 01 Jan 2026 00:00:01 GMT", ETAG, 1767225600)


def test_accept_encoding() -> None:
    assert accepts_gzip(b"gzip")
    assert accepts_gzip(b"deflate, gzip;q=0.5")
    assert accepts_gzip(b"*")
    assert accepts_gzip(b"x-gzip")
    assert not accepts_gzip(None)
    assert not accepts_gzip(b"gzip;q=0")
    assert not accepts_gzip(b"gzip;q=0.000, *")
    assert not accepts_gzip(b"*;q=0")
    assert not accepts_gzip(b"br, identity")
    assert not accepts_gzip(b"gzip;q=2")  # unreadable element grants nothing


@given(st.binary(max_size=64))
def test_header_parsers_never_raise(value) -> None:
    accepts_gzip(value)
    none_match(value, ETAG)
    range_applies(value, ETAG, 0)
    span = pick_range(value, 10)
    assert span is None or span is UNSATISFIABLE or span[1] < 10
