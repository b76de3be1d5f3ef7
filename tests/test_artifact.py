"""The artifact resource through the real site in memory: where it must differ from
``static.File`` (the reasons it is a plain ``Resource``)."""

from __future__ import annotations

import hashlib

import pytest

from tests.support.server import Tree

URL = "/plugins/demo/1.0.0/plugin.wasm"
FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"


@pytest.fixture
def demo(tree: Tree, harness):
    body = tree.add("demo", "1.0.0", size=50_000)
    return harness(tree.root, gzip=False), body


def test_if_none_match_wins_over_if_modified_since(demo) -> None:
    """RFC 9110 13.2.2: a present If-None-Match makes If-Modified-Since ignored (static.File
    answers 304 on the date alone)."""
    server, body = demo
    reply = server.get(URL, If_None_Match='"other"', If_Modified_Since=FUTURE)
    assert (reply.status, reply.body) == (200, body)
    etag = reply.header("ETag")
    assert etag == f'"{hashlib.sha256(body).hexdigest()[:40]}"'
    assert server.get(URL, If_None_Match=etag).status == 304


def test_a_stale_if_range_gets_the_whole_module(demo) -> None:
    """static.File ignores If-Range and would send the part of a module that changed."""
    server, body = demo
    stale = server.get(URL, Range="bytes=0-9", If_Range='"stale"')
    assert (stale.status, stale.body) == (200, body)
    etag = server.get(URL).header("ETag")
    fresh = server.get(URL, Range="bytes=0-9", If_Range=etag)
    assert (fresh.status, fresh.body) == (206, body[:10])


def test_head_is_get_without_a_body(demo) -> None:
    server, body = demo
    web = {"If-Modified-Since": "x"}  # a header the fast path declines: twisted.web answers
    get, head = server.get(URL, web), server.request(URL, method="HEAD", headers=web)
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == get.header("Content-Length") == str(len(body))
    assert head.header("ETag") == get.header("ETag")
