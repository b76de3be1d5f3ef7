"""The access log: one line per response, combined format or JSON lines.

Both twisted.web responses (via :mod:`hps.site`) and the fast path call
:meth:`AccessLog.record`, so every response is logged the same way.

The client is the TCP peer. ``X-Forwarded-For`` is a header any client can
send, so it is used only with ``trust_forwarded``, and then only its
*rightmost* entry: that is the address our own proxy appended, the one hop we
trust. Entries to its left were written by parties we cannot vouch for.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from typing import TextIO

from twisted.internet.interfaces import IReactorTime


def client_address(peer: str, forwarded: bytes | None, trust_forwarded: bool) -> str:
    """Who to name in the log: the peer, or the proxy's rightmost X-Forwarded-For entry."""
    if not trust_forwarded or not forwarded:
        return peer
    candidate = forwarded.split(b",")[-1].strip().decode("latin-1")
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return peer  # a garbled header must not let text into the log's first field


def _quoted(value: bytes | None) -> str:
    """Header text made safe for a quoted log field (no quotes, controls, non-ASCII)."""
    if not value:
        return "-"
    return json.dumps(value.decode("latin-1"))[1:-1]


TAIL_CACHE = 1024
"""Distinct request/response tails remembered (see ``AccessLog.record``)."""
TAIL_KEY_LIMIT = 512
"""Only tails whose header bytes total less than this are remembered: the cache's memory
stays bounded whatever clients send."""


BATCH_LINES = 512
"""Lines buffered before a write even between flushes, so a burst cannot pile up memory."""


class AccessLog:
    """Formats and writes access lines; ``style`` is combined, json or off."""

    def __init__(self, style: str = "combined", trust_forwarded: bool = False,
                 stream: TextIO | None = None, clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock: IReactorTime = clock
        """Where a line's time comes from: the service's reactor (a test's moves when told)."""
        self.style = style
        self.trust_forwarded = trust_forwarded
        # twistd swaps sys.stdout for a logging file; access lines go to the real one.
        self.stream = stream or sys.__stdout__ or sys.stdout
        self._second = -1
        self._stamp = ""
        # Lines wait here until the site's sweep (or a full batch) writes them in one call:
        # under PYTHONUNBUFFERED a write per line is a syscall per response.
        self._lines: list[str] = []
        self.tails: dict[tuple[bytes, bytes, bytes, int, int, bytes | None, bytes | None],
                         str] = {}

    @property
    def enabled(self) -> bool:
        return self.style != "off"

    def record(self, *, peer: str, forwarded: bytes | None, method: bytes, uri: bytes,
               proto: bytes, status: int, nbytes: int, referer: bytes | None = None,
               agent: bytes | None = None, aborted: bool = False) -> None:
        """Log one response. Call it once the response is finished or cut."""
        line = self.line(peer=peer, forwarded=forwarded, method=method, uri=uri, proto=proto,
                         status=status, nbytes=nbytes, referer=referer, agent=agent,
                         aborted=aborted, now=self.clock.seconds())
        if line is not None:
            self.add(line)

    def line(self, *, peer: str, forwarded: bytes | None, method: bytes, uri: bytes,
             proto: bytes, status: int, nbytes: int, referer: bytes | None = None,
             agent: bytes | None = None, aborted: bool = False,
             now: float) -> str | None:
        """The line :meth:`record` would log at ``now`` (only its second counts), or None."""
        if not self.enabled:
            return None
        client = client_address(peer, forwarded, self.trust_forwarded)
        if self.style == "json":
            line = json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + "Z",
                "client": client, "peer": peer, "method": method.decode("latin-1"),
                "uri": uri.decode("latin-1"), "proto": proto.decode("latin-1"),
                "status": status, "bytes": nbytes, "referer": (referer or b"").decode("latin-1"),
                "user_agent": (agent or b"").decode("latin-1"), "aborted": aborted,
            }) + "\n"
        else:
            tail = self._tail(method, uri, proto, status, nbytes, referer, agent)
            line = f"{client} - - [{self._clf_time(now)}] {tail}"
        return line

    def add(self, line: str) -> None:
        """Buffer one line made by :meth:`line`."""
        lines = self._lines
        lines.append(line)
        if len(lines) >= BATCH_LINES:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered; the site calls this every sweep and at shutdown."""
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines = []
        self.stream.write(text)
        self.stream.flush()

    def _tail(self, method: bytes, uri: bytes, proto: bytes, status: int, nbytes: int,
              referer: bytes | None, agent: bytes | None) -> str:
        """Everything after the timestamp. Gateways repeat the same request and get the
        same response, so the escaped text is remembered rather than json-escaped again."""
        key = (method, uri, proto, status, nbytes, referer, agent)
        tail = self.tails.get(key)
        if tail is None:
            tail = (f'"{_quoted(method)} {_quoted(uri)} {_quoted(proto)}" {status} '
                    f'{nbytes or "-"} "{_quoted(referer)}" "{_quoted(agent)}"\n')
            if len(uri) + len(referer or b"") + len(agent or b"") < TAIL_KEY_LIMIT:
                if len(self.tails) >= TAIL_CACHE:
                    self.tails.clear()
                self.tails[key] = tail
        return tail

    def _clf_time(self, now: float) -> str:
        # Formatting a date per request is measurable at high rates; once a second is enough.
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
        return self._stamp
