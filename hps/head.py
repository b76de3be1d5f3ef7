"""RFC 9112 rules for an HTTP/1.x request head that twisted.web does not apply.

One home for each rule, used by both parsers in front of the resources: the
channel (:mod:`hps.channel`, for everything twisted.web parses) and the fast path
(:mod:`hps.fastpath`, which hands anything it would decide differently to
twisted.web). No Twisted here: plain bytes in, plain answers out.

- **Host** (3.2): an HTTP/1.1 request carries exactly one Host field with a
  valid ``uri-host [":" port]``; HTTP/1.0 at most one. Anything else is 400.
- **Connection** (9.6): the options are every comma-separated token of every
  Connection line; ``close`` anywhere ends the connection after the response.
- **absolute-form** (3.2.2): ``GET http://host/path HTTP/1.1`` is accepted; the
  target's authority replaces Host and the path is routed as origin-form.

Last, :func:`parse_request`: the strict subset the fast path answers itself (its
module docstring lists the rules), so both parsers' head rules sit side by side; and
:func:`parse_stream`, the same subset for an HTTP/2 stream's header list
(:mod:`hps.h2fast`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hps.negotiate import NO_PREFERENCE, Accept, preferences
from hps.urls import LISTING, module_target

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


# -- the fast path's strict subset (see hps.fastpath: anything else goes to twisted.web) --

STRICT_MAX_REQUEST = 8192
STRICT_MAX_HEADERS = 64
_FIELD = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*"
    rb"[\x21-\x7e\x80-\xff])?)?)[ \t]*\Z"
)
_REFUSED = frozenset({
    b"content-length", b"transfer-encoding", b"range", b"expect", b"upgrade",
    b"http2-settings", b"te", b"trailer",
})
_SINGLE = (b"host", b"accept-encoding", b"connection")
_PREFIXES = (b"GET " + LISTING.encode(), b"HEAD " + LISTING.encode())


@dataclass(frozen=True)
class Parsed:
    """What the fast path needs of one request; anything else it refused.

    Shared by every request with the same bytes (see ``ArtifactFastPath.parse``), so
    nothing may change it after parsing.
    """

    method: bytes
    target: bytes
    name: str
    version: str
    headers: dict[bytes, bytes] = field(default_factory=dict)
    close: bool = False
    accept: Accept = NO_PREFERENCE
    head: bool = False


def parse_request(data: bytes) -> Parsed | None:
    """Parse ``data`` if it is one request of the strict subset, else None."""
    if len(data) > STRICT_MAX_REQUEST or not data.startswith(_PREFIXES):
        return None
    end = data.find(b"\r\n\r\n")
    if end != len(data) - 4:
        return None  # incomplete, or more bytes after the head: twisted.web frames it
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or len(lines) > STRICT_MAX_HEADERS:
        return None
    target = module_target(parts[1])
    if target is None:
        return None
    headers = _parse_fields(lines[1:])
    if headers is None:
        return None
    connection = headers.get(b"connection")
    return Parsed(parts[0], parts[1], *target, headers,
                  not keeps_alive(b"HTTP/1.1", connection and [connection]),
                  preferences(headers.get(b"accept-encoding")), parts[0] == b"HEAD")


def _parse_fields(lines: list[bytes]) -> dict[bytes, bytes] | None:
    """Header lines to {lower name: value} for the few names used; None to refuse."""
    seen: dict[bytes, bytes] = {}
    hosts = 0
    for line in lines:
        match = _FIELD.match(line)
        if match is None:
            return None
        name = match.group(1).lower()
        if name in _REFUSED or name.startswith(b"if-"):
            return None
        if name in _SINGLE:
            if name in seen:
                return None
            seen[name] = match.group(2)
            hosts += name == b"host"
        elif name in (b"user-agent", b"referer", b"x-forwarded-for"):
            seen[name] = match.group(2)
    connection = seen.get(b"connection")
    if hosts != 1 or not host_ok([seen[b"host"]], b"HTTP/1.1"):
        return None  # twisted.web's channel answers 400 by the same rule
    if connection is not None and connection.lower() not in (b"keep-alive", b"close"):
        return None
    return seen


_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
_TOKEN = re.compile(rb"[a-z0-9!#$%&'*+.^_`|~-]+")
_VISIBLE = re.compile(rb"(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?")
_NOT_PLAIN = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade", b"te", b"host"})


def plain_fields(fields: list[tuple[bytes, bytes]]) -> bool:
    """Is an HTTP/2 request's header list plainly valid: within what h2 accepts (RFC 9113
    8.2 and 8.3; tests/test_head.py checks it against h2's own checks), so that hps may
    answer it without h2 (:meth:`hps.http2.PluginH2Connection.take_whole`)? The four
    request pseudo-fields first, each once and not empty; then lowercase token names,
    no connection-specific field, no Host, no TE, no empty Cookie; values of visible
    ASCII and inner spaces. Anything else goes through h2's checks."""
    pseudo: set[bytes] = set()
    regular = False
    for name, value in fields:
        if not _VISIBLE.fullmatch(value):
            return False
        if name[:1] == b":":
            if regular or name in pseudo or name not in _PSEUDO or not value:
                return False
            pseudo.add(name)
        elif name in _NOT_PLAIN or not _TOKEN.fullmatch(name) or (
                name == b"cookie" and not value):  # h2 joins crumbs: "a" + "" is "a; "
            return False
        else:
            regular = True
    return len(pseudo) == len(_PSEUDO)
_KEPT = (b"user-agent", b"referer", b"x-forwarded-for")


def parse_stream(fields: list[tuple[bytes, bytes]]) -> Parsed | None:
    """:func:`parse_request`'s subset for an HTTP/2 request's header list, which h2 has
    already checked (lowercase names, the pseudo-header rules, no connection-specific
    fields): ``GET`` or ``HEAD`` of exactly a module's URL, no field of ``_REFUSED`` and
    no ``If-*``, at most one Accept-Encoding. Else None."""
    method = target = None
    kept: dict[bytes, bytes] = {}
    accept: bytes | None = None
    for name, value in fields:
        if name[:1] == b":":
            if name not in _PSEUDO:
                return None
            if name == b":method":
                method = value
            elif name == b":path":
                target = value
        elif name in _REFUSED or name.startswith(b"if-"):
            return None
        elif name == b"accept-encoding":
            if accept is not None:
                return None
            accept = value
        elif name in _KEPT:
            kept[name] = value
    if method not in (b"GET", b"HEAD") or target is None:
        return None
    module = module_target(target)
    if module is None:
        return None
    return Parsed(method, target, *module, kept, False, preferences(accept), method == b"HEAD")
