"""Asking a running hps what a gateway would get: real GETs, answered as the gateway reads them.

The gateway's fetcher (istio-agent ``pkg/wasm``) sends ``Accept-Encoding: gzip`` and
un-gzips the reply, treats only ``200`` as success, fails at once on a ``404`` and retries
other ``5xx`` (not 501, 505, 511), and checks a pinned ``sha256`` against the un-gzipped
module. A probe does the same, with fewer and shorter retries, so aliases, pull-through
and the server's own answers are what is checked, not a model of them. The HTTP client
is a parameter (:data:`Getter`): urllib for a server on the network, the in-memory
harness in tests.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from hps import urls
from hps.guard import is_wasm_module

MAX_MODULE = 256 << 20
"""The gateway cuts a body there."""
ATTEMPTS = 3
NO_RETRY = (501, 505, 511)
"""5xx codes the gateway does not retry."""
_CHUNK = 1 << 16


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: BinaryIO

    def close(self) -> None:
        self.body.close()


Getter = Callable[[str], Reply]
"""GET a path of the server; raises OSError when no answer comes."""


@dataclass(frozen=True)
class Answer:
    """What a gateway would get at one URL: the module's SHA-256, or why not."""

    sha256: str | None
    kind: str = ""  # "" when served; else "missing", "unavailable" or "not-wasm"
    detail: str = ""


def http_getter(server: str, timeout: float) -> Getter:
    """GETs on ``server`` (scheme, host, port and any path prefix) with urllib."""
    base = server.rstrip("/")
    # No cookies, no auth: a plain client. Redirects are followed, as the gateway does.
    opener = urllib.request.build_opener()

    def get(path: str) -> Reply:
        request = urllib.request.Request(
            base + path, headers={"Accept-Encoding": "gzip", "User-Agent": "hps-check"})
        try:
            reply = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as error:  # a status, not a failure to get one
            return Reply(error.code, error.headers, error)
        return Reply(reply.status, reply.headers, reply)

    return get


def probe_module(get: Getter, path: str, sleep: Callable[[float], None] = time.sleep,
                 attempts: int = ATTEMPTS) -> Answer:
    """GET ``path`` as the gateway would, retrying what it retries (fewer times)."""
    last = ""
    for attempt in range(attempts):
        try:
            reply = get(path)
        except OSError as exc:
            last = f"no answer ({getattr(exc, 'reason', None) or exc})"
        else:
            try:
                if reply.status == 200:
                    return _module(reply)
                last = f"HTTP {reply.status}{_said(reply)}"
                if not (reply.status >= 500 and reply.status not in NO_RETRY):
                    return Answer(None, "missing", f"{last} (the gateway fails at once)")
                wait = _retry_after(reply.headers, default=0.5 * 2 ** attempt)
            finally:
                reply.close()
            if attempt + 1 < attempts:
                sleep(wait)
            continue
        if attempt + 1 < attempts:
            sleep(0.5 * 2 ** attempt)
    return Answer(None, "unavailable", f"{last}, {attempts} attempts")


def _module(reply: Reply) -> Answer:
    """The body's SHA-256, un-gzipped when the server gzipped it, as the gateway checks."""
    gzipped = reply.headers.get("Content-Encoding", "").strip().lower() == "gzip"
    inflate = zlib.decompressobj(wbits=31) if gzipped else None
    digest, size, head = hashlib.sha256(), 0, b""
    try:
        while chunk := reply.body.read(_CHUNK):
            if inflate is not None:
                chunk = inflate.decompress(chunk, MAX_MODULE + 1 - size)
            size += len(chunk)
            if size > MAX_MODULE:
                return Answer(None, "not-wasm", "over 256 MiB: the gateway cuts it")
            if len(head) < 4:
                head += chunk[:4]
            digest.update(chunk)
        if inflate is not None and not inflate.eof:
            return Answer(None, "unavailable", "the gzip body ends early")
    except (OSError, zlib.error) as exc:
        return Answer(None, "unavailable", f"the body was cut: {exc}")
    if not is_wasm_module(head):
        return Answer(None, "not-wasm", "HTTP 200 but the body is no WebAssembly module")
    return Answer(digest.hexdigest())


def _said(reply: Reply) -> str:
    """The first line of a short error body (hps names the versions it has)."""
    try:
        text = reply.body.read(512).decode("utf-8", "replace")
    except OSError:
        return ""
    line = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f": {line}" if line else ""


def _retry_after(headers: Mapping[str, str], default: float) -> float:
    """Seconds to wait, from ``Retry-After`` in seconds (capped: a probe must stay short)."""
    try:
        return min(max(float(headers.get("Retry-After", default)), 0.0), 5.0)
    except ValueError:
        return default


def changed_entries(get: Getter) -> list[dict[str, str]] | None:
    """The full index's ``changed`` list (versions whose bytes changed after first being
    served); ``[]`` when the server keeps none, None when the index cannot be read."""
    try:
        reply = get(urls.index_url())
    except OSError:
        return None
    try:
        if reply.status != 200:
            return None
        raw = reply.body.read(64 << 20)
    except OSError:
        return None
    finally:
        reply.close()
    try:
        if reply.headers.get("Content-Encoding", "").strip().lower() == "gzip":
            raw = zlib.decompress(raw, wbits=31)
        doc: Any = json.loads(raw)
    except (ValueError, zlib.error):
        return None
    return parse_changed(doc)


def parse_changed(doc: Any) -> list[dict[str, str]]:
    """The well-formed entries of ``doc["changed"]``: ``{name, version, first, now}``."""
    items = doc.get("changed") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return []
    keys = ("name", "version", "first", "now")
    return [{k: item[k] for k in keys} for item in items
            if isinstance(item, dict) and all(isinstance(item.get(k), str) for k in keys)]
