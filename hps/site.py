"""The HTTP layer under the resources: the Site and its Request class.

Limits, timeouts and drain belong here; the resources only route.
"""

from __future__ import annotations

from twisted.web.server import Request, Site

SERVER_NAME = b"hps"


class PluginRequest(Request):
    """A request that never names the Twisted version in ``Server``."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name in (b"Server", b"server", "Server", "server"):
            value = SERVER_NAME
        super().setHeader(name, value)


class PluginSite(Site):
    """A Site that never shows a traceback to a client."""

    requestFactory = PluginRequest
    displayTracebacks = False
    noisy = False
