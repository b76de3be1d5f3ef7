"""RFC 9112 rules for an HTTP/1.x request head that twisted.web does not apply.

One home for each rule, used by both parsers in front of the resources: the
channel (:mod:`hps.site`, for everything twisted.web parses) and the fast path
(:mod:`hps.fastpath`, which hands anything it would decide differently to
twisted.web). No Twisted here: plain bytes in, plain answers out.

- **Host** (3.2): an HTTP/1.1 request carries exactly one Host field with a
  valid ``uri-host [":" port]``; HTTP/1.0 at most one. Anything else is 400.
- **Connection** (9.6): the options are every comma-separated token of every
  Connection line; ``close`` anywhere ends the connection after the response.
- **absolute-form** (3.2.2): ``GET http://host/path HTTP/1.1`` is accepted; the
  target's authority replaces Host and the path is routed as origin-form.
"""

from __future__ import annotations

import re

_HOST = re.compile(
    rb"(?:\[[0-9A-Za-z:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?\Z"
)
"""``uri-host [":" port]`` (RFC 3986): an IP literal, or a reg-name (possibly empty)."""

_ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#]*)([^#]*)\Z")


def host_ok(values: list[bytes] | None, version: bytes) -> bool:
    """Do the Host field lines ``values`` (None: no such line) satisfy RFC 9112 3.2?"""
    count = len(values) if values else 0
    if count > 1 or (count == 0 and version == b"HTTP/1.1"):
        return False
    return count == 0 or _HOST.match(values[0].strip(b" \t")) is not None


def connection_tokens(values: list[bytes] | None) -> frozenset[bytes]:
    """Every option named by every Connection line, lower-cased."""
    if not values:
        return frozenset()
    return frozenset(token.strip(b" \t").lower()
                     for value in values for token in value.split(b","))


def keeps_alive(version: bytes, connection: list[bytes] | None) -> bool:
    """May the connection carry another request after this one's response?

    HTTP/1.1 is persistent unless ``close`` is among the options; HTTP/1.0 (and
    0.9) never is here, as in twisted.web (a 1.0 response has no chunked framing).
    """
    return version == b"HTTP/1.1" and b"close" not in connection_tokens(connection)


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """(origin-form target, authority) for an absolute-form ``http(s)://`` target.

    Any other target comes back unchanged with no authority (routing decides).
    """
    match = _ABSOLUTE.match(target)
    if match is None or not match.group(1) or not _HOST.match(match.group(1)):
        return target, None
    path = match.group(2)
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, match.group(1)
