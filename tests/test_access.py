"""Unit: access lines are formatted as before, and written in batches."""

from __future__ import annotations

import io

from hps import access
from hps.access import AccessLog


def record(log: AccessLog, agent: bytes = b"Go-http-client/1.1") -> None:
    log.record(peer="127.0.0.1", forwarded=None, method=b"GET",
               uri=b"/plugins/a/1.0.0/plugin.wasm", proto=b"HTTP/1.1", status=200,
               nbytes=150_000, referer=None, agent=agent)


def test_lines_wait_for_flush() -> None:
    stream = io.StringIO()
    log = AccessLog("combined", stream=stream)
    record(log)
    record(log, b'say "hi"\x01\xe9')
    assert stream.getvalue() == ""
    log.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("127.0.0.1 - - [")
    assert lines[0].endswith('] "GET /plugins/a/1.0.0/plugin.wasm HTTP/1.1" 200 150000 "-" '
                             '"Go-http-client/1.1"')
    assert lines[1].endswith('"-" "say \\"hi\\"\\u0001\\u00e9"')  # escaped, as before


def test_a_full_batch_is_written_at_once() -> None:
    stream = io.StringIO()
    log = AccessLog("json", stream=stream)
    for _ in range(access.BATCH_LINES):
        record(log)
    assert len(stream.getvalue().splitlines()) == access.BATCH_LINES


def test_long_headers_are_not_remembered() -> None:
    log = AccessLog("combined", stream=io.StringIO())
    record(log, b"x" * access.TAIL_KEY_LIMIT)
    record(log)
    assert len(log.tails) == 1
