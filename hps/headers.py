"""The headers every response carries, whoever writes it.

Three writers answer clients: twisted.web's requests (:class:`hps.channel.PluginRequest`),
the fast path's prebuilt blocks (:mod:`hps.fastpath`) and the canned replies written
before either parses a request (:func:`hps.canned.canned`). Each takes these from here:
the server never names its software version, and no browser sniffs a type.
"""

from __future__ import annotations

SERVER = b"hps"

EVERY_RESPONSE: tuple[tuple[bytes, bytes], ...] = (
    (b"Server", SERVER),
    (b"X-Content-Type-Options", b"nosniff"),
)

EVERY_RESPONSE_LINES = b"".join(b"%s: %s\r\n" % pair for pair in EVERY_RESPONSE)
"""The same, as header lines for a response written by hand."""
