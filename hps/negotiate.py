"""Pure HTTP decisions about one response: validators, ranges, content codings.

No Twisted here: every function takes header bytes and plain values, so the
twisted.web path (``transfer``), the fast path (``fastpath``) and the listings
(``listings``) share one definition of "matches", "satisfiable" and "which
variant" (:meth:`Accept.choose`), one :class:`Variant`, and one way to name a variant
in headers (:func:`variant_etag`, :func:`variant_fields`): they cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Generic, Protocol, TypeVar

MAX_RANGES = 64
"""More range specs than this is abuse, not a download manager: the header is ignored."""

_ETAGS = re.compile(rb'\s*(\*|(?:W/)?"[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|\Z)')
_SPEC = re.compile(rb"\s*(\d*)\s*-\s*(\d*)\s*\Z")
_CODING = re.compile(
    rb"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*(?:;\s*[qQ]\s*=\s*(0(?:\.\d{0,3})?|1(?:\.0{0,3})?))?\s*\Z"
)


class Unsatisfiable:
    """Marker: a Range header none of whose specs falls inside the body (→ 416)."""


UNSATISFIABLE = Unsatisfiable()
Span = tuple[int, int]
"""(first, last) byte positions, inclusive, as in Content-Range."""


def etag_list(header: bytes) -> list[bytes] | None:
    """The entity tags in an If-None-Match / If-Match value, or None when malformed."""
    tags, pos = [], 0
    while pos < len(header):
        match = _ETAGS.match(header, pos)
        if match is None or match.end() == pos:
            return None
        tags.append(match.group(1))
        pos = match.end()
    return tags


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def none_match(header: bytes, etag: bytes) -> bool:
    """True when If-None-Match names this representation (weak comparison, RFC 9110 13.1.2)."""
    tags = etag_list(header)
    if not tags:
        return False  # malformed: evaluate as if absent, so the client gets the full body
    return any(tag == b"*" or _opaque(tag) == _opaque(etag) for tag in tags)


def parse_date(value: bytes) -> int | None:
    """An HTTP-date as seconds since the epoch, or None when it is not one."""
    try:
        moment = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp())


def not_modified(if_none_match: bytes | None, if_modified_since: bytes | None,
                 etag: bytes, mtime: float) -> bool:
    """Should a GET/HEAD get 304? If-None-Match wins over If-Modified-Since (13.2.2)."""
    if if_none_match is not None:
        return none_match(if_none_match, etag)
    if if_modified_since is not None:
        since = parse_date(if_modified_since)
        return since is not None and int(mtime) <= since
    return False


def range_applies(if_range: bytes | None, etag: bytes, mtime: float) -> bool:
    """If-Range: honour Range only when the validator still names these bytes (13.1.5)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith((b'"', b"W/")):
        return value == etag  # strong comparison; a weak tag never matches
    return parse_date(value) == int(mtime)


def _spec_span(spec: bytes, size: int) -> Span | Unsatisfiable | None:
    """One ``first-last`` / ``first-`` / ``-suffix``; None when malformed."""
    match = _SPEC.match(spec)
    if match is None or match.group(1) == match.group(2) == b"":
        return None
    first, last = match.group(1), match.group(2)
    if first == b"":
        suffix = int(last)
        return (max(0, size - suffix), size - 1) if suffix and size else UNSATISFIABLE
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    return (start, min(end, size - 1))


def coalesce(spans: list[Span]) -> list[Span]:
    """Merge overlapping and adjacent spans, in order."""
    merged: list[Span] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def pick_range(header: bytes | None, size: int) -> Span | Unsatisfiable | None:
    """Decide a Range header: a single span (206), UNSATISFIABLE (416) or None (200).

    Malformed headers, other units, more than MAX_RANGES specs and ranges that
    stay several after coalescing are all ignored (RFC 9110 14.2 lets a server
    ignore Range): no request can make the server announce more than the body.
    """
    if header is None:
        return None
    unit, sep, specs = header.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return None
    parts = specs.split(b",")
    if len(parts) > MAX_RANGES:
        return None
    spans: list[Span] = []
    for part in parts:
        span = _spec_span(part, size)
        if span is None:
            return None
        if isinstance(span, tuple):
            spans.append(span)
    if not spans:
        return UNSATISFIABLE
    merged = coalesce(spans)
    return merged[0] if len(merged) == 1 else None


GZIP = b"gzip"
"""The one content coding hps offers (``x-gzip`` is its alias, RFC 9110 8.4.1.3)."""
OFFER = (GZIP,)
"""What hps offers besides identity, modules and listings alike (whether a variant is
ready is the caller's business)."""
_ALIASES = {b"x-gzip": GZIP}
_IMPLICIT = 0.0001
"""Identity's weight when the field neither names it nor has ``*``: acceptable, but below
0.001, the least preference a qvalue can state, so any coding the client lists wins."""


@dataclass(frozen=True)
class Accept:
    """A request's Accept-Encoding: a weight per named coding, ``*``'s weight, and whether
    the field was sent at all. Its fields never change (only the memo of answers fills), so
    the fast path shares one among every request with the same bytes."""

    weights: dict[bytes, float]
    star: float | None
    present: bool
    chosen: dict[tuple[bytes, ...], bytes | None] = field(default_factory=dict, compare=False,
                                                          repr=False)
    """Answers of :meth:`choose`, per offer: the fast path asks its shared one per download."""

    def weight(self, coding: bytes) -> float:
        """How much the client wants ``coding`` (0: not acceptable), by RFC 9110 12.5.3."""
        if coding in self.weights:
            return self.weights[coding]
        if self.star is not None:
            return self.star
        return _IMPLICIT if coding == b"identity" else 0.0

    def choose(self, offered: tuple[bytes, ...]) -> bytes | None:
        """The coding to send among ``offered``; None: identity, the response as it is.

        The highest weight wins; a tie goes to a coding (smaller on the wire) over
        identity. Identity is the answer when the field is absent (the client states no
        preference, and every client can read identity) and when nothing is acceptable
        (``identity;q=0`` and no offered coding wanted: the field is disregarded, as
        RFC 9110 12.1 allows, rather than answering 406).
        """
        try:
            return self.chosen[offered]
        except KeyError:
            pass
        best, best_weight = None, self.weight(b"identity")
        for coding in offered if self.present else ():
            weight = self.weight(coding)
            if weight > 0 and (weight > best_weight or (weight == best_weight and best is None)):
                best, best_weight = coding, weight
        self.chosen[offered] = best
        return best

    def wants_gzip(self) -> bool:
        """Is gzip the coding to send, of what hps offers (:data:`OFFER`)?"""
        return self.choose(OFFER) == GZIP


NO_PREFERENCE = Accept({}, None, False)


def preferences(header: bytes | None) -> Accept:
    """Parse an Accept-Encoding field value (several field lines joined by commas).

    Codings are case-insensitive, ``x-gzip`` is ``gzip``, a coding named twice keeps
    its highest weight (so the order of elements never matters), and an element that
    is not ``coding[;q=qvalue]`` grants nothing.
    """
    if header is None:
        return NO_PREFERENCE
    weights: dict[bytes, float] = {}
    star: float | None = None
    for item in header.split(b","):
        match = _CODING.match(item)
        if match is None:
            continue  # an empty element, or one we cannot read
        coding = match.group(1).lower()
        coding = _ALIASES.get(coding, coding)
        q = float(match.group(2)) if match.group(2) else 1.0
        if coding == b"*":
            star = q if star is None else max(star, q)
        else:
            weights[coding] = max(weights.get(coding, q), q)
    return Accept(weights, star, True)


class RawHeaders(Protocol):
    """What :func:`requested` reads: twisted.web's ``Headers``, by its public method."""

    def getRawHeaders(self, name: bytes) -> Sequence[bytes] | None: ...


def requested(headers: RawHeaders) -> Accept:
    """The preferences of a request's Accept-Encoding, from all its field lines
    (twisted.web's ``getHeader`` would give only the last)."""
    lines = headers.getRawHeaders(b"accept-encoding")
    return preferences(None if lines is None else b",".join(lines))


def variant_etag(etag: bytes, encoding: bytes | None) -> bytes:
    """The strong tag of one variant: the identity's ``"<sha>"``, or ``"<sha>-gz"`` for gzip
    (each variant is its own representation, RFC 9110 8.8.3)."""
    return etag if encoding is None else etag[:-1] + b'-gz"'


def variant_fields(etag: bytes, encoding: bytes | None,
                   negotiable: bool) -> list[tuple[bytes, bytes]]:
    """The header fields naming one variant, the same on 200, 206, 304 and 416: its ETag,
    its Content-Encoding, and ``Vary: Accept-Encoding`` when the resource is
    ``negotiable`` (another Accept-Encoding could get, now or later, another variant)."""
    fields = [(b"ETag", etag)]
    if encoding is not None:
        fields.append((b"Content-Encoding", encoding))
    if negotiable:
        fields.append((b"Vary", b"Accept-Encoding"))
    return fields


Body = TypeVar("Body")


@dataclass(frozen=True)
class Variant(Generic[Body]):
    """One representation of a resource (a module, its gzip file, a page's encoding), built
    once and shared by every response of it: its tag, coding and size, the header fields
    that are the same on 200, 206, 304 and 416, and where its bytes are (``body``)."""

    etag: bytes
    encoding: bytes | None
    size: int
    fields: tuple[tuple[bytes, bytes], ...]
    body: Body
    lines: bytes = field(init=False, compare=False)
    """``fields`` and Content-Length as header lines, for a head written by hand."""
    openings: dict[object, tuple[bytes, bytes]] = field(
        init=False, compare=False, default_factory=dict)
    """A writer's memo of whole heads built from ``lines`` (keyed by its own terms)."""

    def __post_init__(self) -> None:
        lines = b"".join(b"%s: %s\r\n" % pair for pair in self.fields)
        object.__setattr__(self, "lines", lines + b"Content-Length: %d\r\n" % self.size)
