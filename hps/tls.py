"""What hps does to the TLS connections Twisted builds for ``ssl:`` and ``tls:`` listeners.

Twisted wraps the site in ``TLSMemoryBIOFactory`` inside the endpoint (``listenSSL``,
``wrapServerTLS``), so hps meets each TLS connection as its protocol's transport, which
hands out its pyOpenSSL ``Connection`` (``getHandle``, public).

``SSL_MODE_RELEASE_BUFFERS`` (what nginx sets): OpenSSL keeps a read and a write buffer
of ~17 KiB each for the life of a connection; with the mode set it frees them whenever
they are empty, so an idle or waiting connection holds neither. It is set per
connection (:func:`hps._twisted.ssl_set_mode`) as each is accepted.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import ISSLTransport

from hps._twisted import ssl_set_mode


def is_tls(transport: Any) -> bool:
    return ISSLTransport.providedBy(transport)


def release_buffers(transport: Any) -> None:
    """Have OpenSSL free ``transport``'s buffers whenever they are empty."""
    handle = transport.getHandle()
    if isinstance(handle, SSL.Connection):
        ssl_set_mode(handle, SSL.MODE_RELEASE_BUFFERS)
