"""Sending one artifact's bytes: ``static.File`` pinned to a catalog snapshot.

Stock ``static.File`` restats and reopens the path for every request, so a file
replaced between the scan and the request would be sent under the old
snapshot's headers. Here the opened file must be the very file the catalog
hashed (same identity); otherwise the request gets a retryable 503 instead of
mismatched bytes.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from twisted.logger import Logger
from twisted.web import http, static
from twisted.web.server import Request

from hps.catalog import Artifact

WASM_TYPE = "application/wasm"


class Replaced(Exception):
    """The file on disk is no longer the one the catalog describes."""


def identity_of(handle: BinaryIO) -> tuple[int, int, int, int]:
    info = os.fstat(handle.fileno())
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class ArtifactFile(static.File):
    """One artifact, with a content-derived ETag and caching headers."""

    log = Logger()

    def __init__(self, artifact: Artifact, cache_control: str) -> None:
        super().__init__(artifact.path, defaultType="application/octet-stream")
        self.type, self.encoding = WASM_TYPE, None
        self.artifact = artifact
        self.cache_control = cache_control

    def getFileSize(self) -> int:
        return self.artifact.size

    def getModificationTime(self) -> float:
        return self.artifact.mtime

    def openForReading(self) -> BinaryIO:
        handle = super().openForReading()
        if identity_of(handle) != self.artifact.identity:
            handle.close()
            raise Replaced(self.artifact.path)
        return handle

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"etag", self.artifact.etag.encode())
        request.setHeader(b"cache-control", self.cache_control.encode())
        if request.setETag(self.artifact.etag.encode()) is http.CACHED:
            return b""
        try:
            return super().render_GET(request)
        except (Replaced, FileNotFoundError):
            self.log.info("{path} changed since the last scan; asking the client to retry",
                          path=self.artifact.path)
            request.setResponseCode(http.SERVICE_UNAVAILABLE)
            request.setHeader(b"retry-after", b"1")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"plugin is being replaced, retry\n"

    render_HEAD = render_GET
