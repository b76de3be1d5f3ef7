"""Replies written straight to the transport, before twisted.web is involved.

A connection refused at the cap, a head too big, too slow, with a bad Host or a body:
each gets one complete, closing HTTP/1.1 response from here, with the headers every
response carries (:mod:`hps.headers`).
"""

from __future__ import annotations

from hps.headers import EVERY_RESPONSE_LINES

Canned = tuple[bytes, bytes, bytes]
"""(status line, body, extra header lines) of a reply written before twisted.web is involved."""


def canned(reply: Canned, head: bool = False) -> bytes:
    """A complete, closing HTTP/1.1 response; no body when it answers a HEAD."""
    status, body, extra = reply
    return (b"HTTP/1.1 " + status + b"\r\n" + EVERY_RESPONSE_LINES
            + b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n" + extra + b"\r\n"
            + (b"" if head else body))


SHED: Canned = (b"503 Service Unavailable", b"too many connections, retry\n",
                b"Retry-After: 1\r\n")
TOO_LARGE: Canned = (b"413 Content Too Large", b"request bodies are not accepted\n", b"")
HEAD_TOO_SLOW: Canned = (b"408 Request Timeout", b"request head took too long\n", b"")
HEAD_TOO_BIG: Canned = (b"431 Request Header Fields Too Large", b"request head too large\n", b"")
BAD_HOST: Canned = (b"400 Bad Request", b"one valid Host header is required\n", b"")
