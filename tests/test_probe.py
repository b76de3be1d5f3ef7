"""Probing a server as the gateway fetches: the real urllib client against a real socket on
127.0.0.1 whose answers each test scripts (the gateway-visible cases a healthy hps rarely
gives: 5xx with Retry-After, a cut gzip, a page that is not a module, no server at all).
A real ``twistd hps`` is probed in tests/test_check.py."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hps.probe import changed_entries, http_getter, parse_changed, probe_module
from tests.support.registry import free_port
from tests.support.server import wasm_bytes

MODULE = wasm_bytes(200_000, seed=5)
SHA = hashlib.sha256(MODULE).hexdigest()
Script = list[tuple[int, dict[str, str], bytes]]


@contextmanager
def scripted(script: Script) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A server on 127.0.0.1 answering each GET with the script's next reply (the last one
    repeats); yields its URL and the headers of every request it got."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            status, headers, body = script[min(len(seen), len(script)) - 1]
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def probe(script: Script, waits: list[float] | None = None):
    with scripted(script) as (url, seen):
        answer = probe_module(http_getter(url, 5), "/plugins/a/1.0.0/plugin.wasm",
                              sleep=(waits if waits is not None else []).append)
    return answer, seen


def test_a_module_is_asked_as_the_gateway_asks_and_hashed_as_it_checks() -> None:
    answer, seen = probe([(200, {"Content-Encoding": "gzip"}, gzip.compress(MODULE))])
    assert (answer.sha256, answer.kind) == (SHA, "")
    assert seen[0]["Accept-Encoding"] == "gzip"
    plain, _ = probe([(200, {}, MODULE)])
    assert plain.sha256 == SHA


def test_5xx_is_retried_after_its_retry_after_and_404_is_final() -> None:
    waits: list[float] = []
    answer, seen = probe([(503, {"Retry-After": "1"}, b"loading\n"), (200, {}, MODULE)], waits)
    assert (answer.sha256, len(seen), waits) == (SHA, 2, [1.0])
    waits.clear()
    answer, seen = probe([(500, {}, b"boom\n")], waits)
    assert (answer.kind, len(seen), waits) == ("unavailable", 3, [0.5, 1.0])
    assert answer.detail == "HTTP 500: boom, 3 attempts"
    answer, seen = probe([(404, {}, b"no such version; have 2.0.0\n")])
    assert (answer.kind, len(seen)) == ("missing", 1)
    assert answer.detail == "HTTP 404: no such version; have 2.0.0 (the gateway fails at once)"
    answer, seen = probe([(501, {}, b"")])  # the gateway does not retry 501
    assert (answer.kind, len(seen)) == ("missing", 1)


def test_what_is_not_a_whole_module_is_said() -> None:
    answer, _ = probe([(200, {"Content-Type": "text/html"}, b"<html>login</html>")])
    assert (answer.kind, answer.sha256) == ("not-wasm", None)
    cut = gzip.compress(MODULE)[:-20]
    answer, _ = probe([(200, {"Content-Encoding": "gzip"}, cut)])
    assert answer.kind == "unavailable" and "gzip" in answer.detail


def test_no_server_is_unavailable_after_the_retries() -> None:
    waits: list[float] = []
    answer = probe_module(http_getter(f"http://127.0.0.1:{free_port()}", 2),
                          "/plugins/a/1.0.0/plugin.wasm", sleep=waits.append)
    assert answer.kind == "unavailable" and answer.detail.startswith("no answer (")
    assert waits == [0.5, 1.0]


CHANGED = {"name": "key-auth", "version": "2.0.0", "first": "1" * 64, "now": "2" * 64}


@pytest.mark.parametrize(("doc", "found"), [
    ({"plugins": [], "changed": [CHANGED]}, [CHANGED]),
    ({"plugins": []}, []),  # a server that keeps no record
    ({"changed": [CHANGED, {"name": 1}, "x"]}, [CHANGED]),
    ([], []),
])
def test_the_index_names_what_changed(doc: object, found: list) -> None:
    assert parse_changed(doc) == found


def test_the_index_is_read_from_the_server_gzipped_or_not() -> None:
    body = json.dumps({"plugins": [], "changed": [CHANGED]}).encode()
    for headers, sent in (({}, body), ({"Content-Encoding": "gzip"}, gzip.compress(body))):
        with scripted([(200, headers, sent)]) as (url, _):
            assert changed_entries(http_getter(url, 5)) == [CHANGED]
    with scripted([(404, {}, b"")]) as (url, _):
        assert changed_entries(http_getter(url, 5)) is None
