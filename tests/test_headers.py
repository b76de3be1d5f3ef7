"""Every writer of responses carries the common headers: twisted.web's answers, errors and
the canned replies written before parsing (the fast path's: tests/test_fastpath.py)."""

from __future__ import annotations

import pytest

from tests.support.server import Tree


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/plugins/key-auth/1.0.0/plugin.wasm", None, 200),
    ("GET", "/plugins/nope/", None, 404),
    ("DELETE", "/", None, 405),
    ("GET", "/plugins/%00/", None, 400),
    ("GET", "/healthz", b"x", 413),  # canned: refused before twisted.web reads the body
])
def test_every_response_says_hps_and_nosniff(tree: Tree, harness, method: str, path: str,
                                            body: bytes | None, status: int) -> None:
    tree.add("key-auth", "1.0.0")
    reply = harness(tree.root).request(path, method=method, body=body)
    assert reply.status == status
    assert reply.header("Server") == "hps"
    assert reply.header("X-Content-Type-Options") == "nosniff"
