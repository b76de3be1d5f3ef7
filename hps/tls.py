"""What hps does to the TLS connections Twisted builds for ``ssl:`` and ``tls:`` listeners.

Twisted wraps the site in ``TLSMemoryBIOFactory`` inside the endpoint (``listenSSL``,
``wrapServerTLS``), so hps meets each TLS connection as its protocol's transport, which
hands out its pyOpenSSL ``Connection`` (``getHandle``, public). :func:`tune` does two
things to each as it is accepted:

- ``SSL_MODE_RELEASE_BUFFERS`` (what nginx sets): OpenSSL keeps a read and a write buffer
  of ~17 KiB each for the life of a connection; with the mode set it frees them whenever
  they are empty, so an idle or waiting connection holds neither
  (:func:`hps._twisted.ssl_set_mode`).
- whole writes (:func:`hps._twisted.whole_tls_writes`): once the handshake is done, each
  write (an HTTP/1.1 chunk of 64 KiB, an HTTP/2 turn of ~128 KiB) is encrypted record by
  record straight from the caller's bytes and reaches the TCP transport as one ``write``,
  where Twisted's own path copies it into 16 KiB slices and makes three Python-level calls
  per slice. A connection holds no more than before: OpenSSL's write BIO is drained after
  every record, and the ciphertext is gathered in one buffer shared by all connections.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import ISSLTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol

from hps._twisted import ssl_set_mode, whole_tls_writes


def is_tls(transport: Any) -> bool:
    return ISSLTransport.providedBy(transport)


def tune(transport: Any) -> None:
    """Release OpenSSL's buffers when empty, and write whole, on one TLS ``transport``."""
    release_buffers(transport)
    if isinstance(transport, TLSMemoryBIOProtocol):
        whole_tls_writes(transport)


def release_buffers(transport: Any) -> None:
    """Have OpenSSL free ``transport``'s buffers whenever they are empty."""
    handle = transport.getHandle()
    if isinstance(handle, SSL.Connection):
        ssl_set_mode(handle, SSL.MODE_RELEASE_BUFFERS)
