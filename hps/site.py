"""The HTTP layer under the resources: Site, channel and Request classes.

Limits, timeouts and drain belong here; the resources only route.
"""

from __future__ import annotations

from typing import Protocol

from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

SERVER_NAME = b"hps"


class FastPath(Protocol):
    """Answers the plainest requests without twisted.web's parser (see fastpath)."""

    def handle(self, channel: PluginChannel, data: bytes) -> bool:
        """Serve ``data`` entirely and return True, or touch nothing and return False."""


class PluginRequest(Request):
    """A request that never names the Twisted version in ``Server``."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name in (b"Server", b"server", "Server", "server"):
            value = SERVER_NAME
        super().setHeader(name, value)


class PluginChannel(HTTPChannel):
    """HTTP/1.1 channel with an optional fast path in front of the parser."""

    fast_path: FastPath | None = None

    def dataReceived(self, data: bytes) -> None:
        fast = self.fast_path
        if fast is not None and fast.handle(self, data):
            return
        super().dataReceived(data)

    def progress(self) -> None:
        """A response made progress (bytes left for the client); feeds the send watchdog."""


class PluginSite(Site):
    """A Site that never shows a traceback to a client."""

    requestFactory = PluginRequest
    protocol = PluginChannel
    displayTracebacks = False
    noisy = False
