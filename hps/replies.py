"""How twisted.web's requests are answered: plainly, "not here", "retry later", or later.

Every route, listing, artifact and pull-through wait answers through these, so a
503 always carries the same body, type and ``Retry-After``, and a wait always
ends the same way: the answer is written unless the client left, in which case
the wait is cancelled (the work behind it goes on for whoever else waits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import NOT_DONE_YET, Request

NO_STORE = "no-store"
SHORT = "public, max-age=10"
"""Answers that may change with the next catalog (listings, 404s, redirects)."""
TEXT = "text/plain; charset=utf-8"

SOON = 1
"""Seconds to wait for what resolves by itself (the catalog loading, a file being replaced,
a page being built, a full server). The gateway retries a 5xx five times from 0.5 s."""

Body = bytes | int
"""What a page returns: the body, or ``NOT_DONE_YET``."""

_log = Logger(namespace="hps.replies")


def reply(request: Request, code: int, body: bytes, content_type: str,
          cache: str = NO_STORE) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type.encode())
    request.setHeader(b"cache-control", cache.encode())
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def text(request: Request, code: int, body: str, cache: str = NO_STORE) -> bytes:
    return reply(request, code, body.encode(), TEXT, cache)


def not_found(request: Request) -> bytes:
    return text(request, http.NOT_FOUND, "not found\n", SHORT)


def retry_later(request: Request, seconds: int = SOON) -> bytes:
    """503 with ``Retry-After``: something the client may well get by asking again."""
    request.setHeader(b"retry-after", b"%d" % seconds)
    return text(request, http.SERVICE_UNAVAILABLE, "not available yet, retry\n")


def answer_when(request: Request, waiting: Deferred, render: Callable[[Any], Body],
                ) -> int:
    """Answer ``request`` with ``render(outcome)`` once ``waiting`` fires (a result or a
    Failure), unless the client left first: then ``waiting`` is cancelled."""
    gone: list[bool] = []

    def left(_: Failure) -> None:
        gone.append(True)
        waiting.cancel()

    def answer(outcome: object) -> None:
        if gone:
            return
        body = render(outcome)
        if body is not NOT_DONE_YET:
            assert isinstance(body, bytes)
            request.write(body)
            request.finish()

    def failed(failure: Failure) -> None:
        _log.failure("answering {uri!r}", failure, uri=request.uri)
        if not request.finished and not gone:
            if request.startedWriting:
                request.channel.loseConnection()  # a half-sent body must not look whole
            else:
                request.write(retry_later(request))
                request.finish()

    request.notifyFinish().addErrback(left)
    waiting.addBoth(answer).addErrback(failed)
    return NOT_DONE_YET
