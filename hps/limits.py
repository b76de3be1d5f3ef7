"""How much a client may ask of the server: head and body sizes, deadlines, the
connection cap and the descriptor budget behind it.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.logger import Logger

if TYPE_CHECKING:
    from hps.config import Config

_log = Logger()

MAX_HEADERS = 100
MAX_HEAD_BYTES = 16384
MAX_BODY = 1024
"""Only GET and HEAD exist here; a body bigger than this is a mistake or an attack."""


@dataclass(frozen=True)
class Limits:
    send_timeout: float = 30.0
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 4096
    descriptors: int = 0
    """Descriptors connections and open files may use together; 0: twice max_connections."""

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        connections, descriptors = descriptor_budget(config.max_connections)
        return cls(config.send_timeout, config.header_timeout, config.idle_timeout,
                   connections, descriptors)

    @property
    def descriptor_budget(self) -> int:
        return self.descriptors or 2 * self.max_connections


FD_RESERVE = 256
"""Descriptors kept beyond the budget: listening sockets, inotify, logs, probe connections
(PROBE_RESERVE) and connections closed in this reactor turn whose descriptor is not yet
released. Running out makes accept() fail in a busy loop and answers turn into resets."""

PROBE_RESERVE = 32
"""Connections admitted beyond the cap to answer /healthz and /readyz (everything else on
them gets 503): a flood must never make the kubelet restart the pod."""

PROBE_PATHS = (b"/healthz", b"/readyz")
EVICT_SCAN = 64
"""Connections looked at, oldest first, for one that is not answering and can make room."""


def descriptor_budget(requested: int) -> tuple[int, int]:
    """(connections, descriptors) the process can afford for ``requested`` connections.

    Each HTTP/1.1 connection may hold a file besides its socket, so the soft
    descriptor limit is raised (up to the hard one) to twice ``requested`` plus
    FD_RESERVE; the connection cap is lowered when even that is not possible.
    """
    want = 2 * requested + FD_RESERVE
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (OSError, ValueError):
        return requested, 2 * requested
    if soft == resource.RLIM_INFINITY:
        return requested, 2 * requested
    budget = max(2, soft - FD_RESERVE)
    allowed = min(requested, budget // 2)
    if allowed < requested:
        _log.warn("max-connections {requested} exceeds the descriptor limit {soft}; using "
                  "{allowed}", requested=requested, soft=soft, allowed=allowed)
    return allowed, budget


def refuses_body(method: bytes, length: int | None) -> bool:
    """``length`` is Content-Length, or None for chunked: is the body unacceptable?"""
    if length == 0:
        return False
    if method in (b"GET", b"HEAD"):
        return True
    return length is None or length > MAX_BODY
